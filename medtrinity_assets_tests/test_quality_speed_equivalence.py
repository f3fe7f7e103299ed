"""The quality checks' fast paths give what a plain computation gives (issue: caption_quality cost ten
times the captioner per ROI): every gated expression against its plain ``re`` pattern, masks read off
their run lengths and containment on cropped outlines against full-size masks, the ontology's word
trie against the leftmost-longest scan of its phrase table, the tokenisers against their expressions,
and whole caption_quality tables against a per-row computation with all of that switched off."""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter, defaultdict

import numpy as np
import polars as pl
import pytest
from scipy import ndimage

from medtrinity_assets.captioning import (
    EmbeddedCaptioner,
    check_captions,
    claims,
    evidence,
    reading,
    run_caption_batch,
    wording,
)
from medtrinity_assets.captioning.inputs import CaptionInput, Passage
from medtrinity_assets.captioning.prompt import FACETS
from medtrinity_assets.captioning.quality import check_caption
from medtrinity_assets.captioning.samples import realistic_inputs
from medtrinity_assets.core import ontology, regex_gate
from medtrinity_assets.core.tables import CAPTION_QUALITY
from medtrinity_assets.core.vocabulary import vocabulary
from medtrinity_assets.privacy import identifier_store
from medtrinity_assets.privacy import store as privacy_store
from medtrinity_assets.privacy.patterns import PHI_PATTERNS
from medtrinity_assets.rois.config import default_config
from medtrinity_assets.rois.rle import rle_encode, rle_json

# claims, PHI and quotes a captioner might write, to be added to the embedded captioner's descriptions
NOISE = [
    "Horizontally it lies in the right third of the image.",
    "It sits in the upper third of the image, in the lower-left corner of the image.",
    "The central part of the image shows the left lesion on the right side, anterior and inferior.",
    "It measures 120 mm across, about 1.2 cm in its short axis.",
    "It covers 45% of the image area and covers less than 2% of the image area.",
    "It spans 10-20% of the image width and 30-40% of its height.",
    "It lies within the liver. It encloses the skull region.",
    "Reviewed by Dr Smith on 2020-01-02 (12 March 2019), MRN 1234567, Doe Jane, tel. 020 7946 0958.",
    "The region is hypodense and heterogeneous, with a round outline; no region was localised.",
    "The splenic flexure and pneumonia are seen, as on MRI and CT of the abdomen.",
    "There are 37 such regions, 3 of them in the white matter of the left lung.",
    '"Acute intracranial haemorrhage appears hyperdense on non-contrast CT." [CID]',
    '"Pneumonia is an infection of the lung parenchyma." [CID] It is homogeneous.',
    '"This sentence is not in any passage." [deadbeefdeadbeef]',
    "Befund: hypodense Läsion im rechten Leberlappen, Größe 12 mm.",  # not ASCII: every gate is off
]


def _perturbed(captions: pl.DataFrame) -> pl.DataFrame:
    """Descriptions with added claims, someone else's description, failed rows, a missing facet."""
    rows = captions.to_dicts()
    for j, r in enumerate(rows):
        cids = r.get("retrieved_chunk_ids") or []
        k = j % (len(NOISE) + 3)
        if k < len(NOISE):
            extra = NOISE[k].replace("CID", cids[0] if cids else "0000cafebabe12")
            r["text"] = (r["text"] or "") + " " + extra
            if j % 2:
                r["facet_relationship"] = (r["facet_relationship"] or "") + " " + extra
        elif k == len(NOISE):
            r["text"] = rows[(j + 7) % len(rows)]["text"]
        elif j % 4 == 0:
            r.update(status="failed", error="boom", text=None)
        if j % 13 == 0:
            r["facet_modality"] = None
    return pl.DataFrame(rows, schema=captions.schema)


def _ring(size: int, box: tuple[int, int, int, int], hole: int) -> np.ndarray:
    r0, c0, r1, c1 = box
    m = np.zeros((size, size), bool)
    m[r0:r1, c0:c1] = True
    m[r0 + hole : r1 - hole, c0 + hole : c1 - hole] = False
    return m


def _mask_item(record: str, roi: str, label: str, mask: np.ndarray | None, origin: str = "mask", **kw) -> CaptionInput:
    return CaptionInput(record_id=record, source="s", roi_id=roi, label=label, origin=origin,
                        mask_rle=None if mask is None else rle_json(rle_encode(mask)), **kw)


def _nested_items() -> list[CaptionInput]:
    """Regions that lie within others (a ring and what fills its hole), at the image border, empty,
    unreadable, and a box without a mask."""
    outer, inner = _ring(64, (8, 8, 56, 56), 14), np.zeros((64, 64), bool)
    inner[24:40, 24:40] = True
    edge, corner = _ring(48, (0, 0, 48, 30), 6), np.zeros((48, 48), bool)
    corner[10:30, 8:20] = True
    return [
        _mask_item("n1", "0", "liver", outer), _mask_item("n1", "1", "lesion", inner),
        _mask_item("n1", "2", "cyst", np.eye(64, dtype=bool)), _mask_item("n2", "0", "skull", edge),
        _mask_item("n2", "1", "brain", corner), _mask_item("n2", "2", "blank", np.zeros((48, 48), bool)),
        dataclasses.replace(_mask_item("n2", "3", "odd", None), mask_rle='{"size": [4, 4], "counts": "x"}'),
        _mask_item("n3", "0", "box", None, origin="box", bbox_norm=[0.1, 0.2, 0.5, 0.9]),
    ]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Captions, inputs and the hashed identifier matcher of a varied batch (several ROIs per image)."""
    tmp = tmp_path_factory.mktemp("quality")
    items = [dataclasses.replace(it, record_id=f"img{k // 3:04d}") for k, it in enumerate(realistic_inputs(300, seed=5))]
    items += _nested_items()
    run_caption_batch(items, EmbeddedCaptioner(), tmp / "c.parquet", chunk_size=64)
    captions = _perturbed(pl.read_parquet(tmp / "c.parquet"))
    inputs = {i.key: i for k, i in enumerate(items) if k % 37 != 5}  # some captions without input
    store = identifier_store(tmp / "out")
    store.save("s", ["Doe^Jane", "1234567", "Smith", "20200102"])
    return captions, inputs, store.matcher("s")


# -- the plain computations the fast paths replace ------------------------------------------------


def _dense_facts(item: CaptionInput) -> evidence.RegionFacts | None:
    """Region facts from the full-size decoded mask."""
    if item.origin == "whole_image":
        return evidence.RegionFacts(whole=True)
    mask = evidence.decode(item)
    if mask is None and item.origin == "box" and item.bbox_norm and len(item.bbox_norm) == 4:
        return evidence._box_facts(tuple(float(v) for v in item.bbox_norm))
    if mask is None:
        return None
    (h, w), (rows, cols) = mask.shape, np.nonzero(mask)
    cx, cy = (cols.mean() + 0.5) / w, (rows.mean() + 0.5) / h
    return evidence.RegionFacts(
        whole=False,
        horizontal=_dense_third((cols + 0.5) / w, cx, ("left", "centre", "right"))
        if cols.max() - cols.min() + 1 <= default_config().position_max_span * w else None,
        vertical=_dense_third((rows + 0.5) / h, cy, ("upper", "middle", "lower"))
        if rows.max() - rows.min() + 1 <= default_config().position_max_span * h else None,
        area_fraction=float(mask.mean()),
        bbox_norm=(cols.min() / w, rows.min() / h, (cols.max() + 1) / w, (rows.max() + 1) / h),
    )


def _dense_third(centres: np.ndarray, centroid: float, words: tuple[str, str, str]) -> str:
    """The third holding more than half of the pixel centres, else the centroid's."""
    counts = [np.count_nonzero(centres < 1 / 3), np.count_nonzero((centres >= 1 / 3) & (centres <= 2 / 3)),
              np.count_nonzero(centres > 2 / 3)]
    best = int(np.argmax(counts))
    return words[best] if counts[best] > 0.5 * centres.size else evidence._third(centroid, words)


def _dense_nesting(items) -> dict:
    """Containment from full-size masks, every region's holes filled on the whole image; then the
    bordering of the pairs that do not nest, from each region's full-size 8-neighbour ring."""
    by_record = defaultdict(list)
    for item in items:
        mask = evidence.decode(item) if item.origin != "whole_image" else None
        if mask is not None:
            by_record[item.record_id].append((item, mask))
    out = defaultdict(set)
    for regions in by_record.values():
        nested: set[tuple[int, int]] = set()
        filled = [ndimage.binary_fill_holes(m) for _, m in regions]
        for i, (a, ma) in enumerate(regions):
            for j, (b, mb) in enumerate(regions):
                if i != j and ma.shape == mb.shape and ma.sum() < mb.sum():
                    if (ma & filled[j]).sum() >= default_config().inside_fraction * ma.sum():
                        out[(a.record_id, str(a.roi_id))].add(("lies within", wording.label_text(b.label).lower()))
                        out[(b.record_id, str(b.roi_id))].add(("encloses", wording.label_text(a.label).lower()))
                        nested |= {(id(a), id(b)), (id(b), id(a))}
        for a, ma in regions:
            ring = ndimage.binary_dilation(ma, np.ones((3, 3), bool)) & ~ma
            for b, mb in regions:
                if a is b or (id(a), id(b)) in nested or ma.shape != mb.shape or not ring.any():
                    continue
                if (ring & mb).sum() >= default_config().bordered_share * ring.sum():
                    this, other = wording.label_text(a.label).lower(), wording.label_text(b.label).lower()
                    out[(a.record_id, str(a.roi_id))] |= {("bordered by", other), ("borders", other)}
                    out[(b.record_id, str(b.roi_id))].add(("borders", this))
    _dense_directions(items, out)
    _dense_counts(items, out)
    return dict(out)


def _dense_counts(items, out) -> None:
    """"one of two / several" for each localised region whose label other localised regions of its
    image share."""
    labels = Counter((i.record_id, wording.label_text(i.label).lower()) for i in items if i.origin != "whole_image")
    for i in items:
        n = labels[(i.record_id, wording.label_text(i.label).lower())] if i.origin != "whole_image" else 0
        if n >= 2:
            out[(i.record_id, str(i.roi_id))].add(("one of two" if n == 2 else "one of several",
                                                   wording.label_text(i.label).lower()))


def _dense_directions(items, out) -> None:
    """Directions between the centroids of every two regions of an image (a mask's pixel centres from
    the full-size mask, a box's middle), and the names of the image's other regions."""
    by_record = defaultdict(list)
    for item in items:
        mask = evidence.decode(item) if item.origin != "whole_image" else None
        if mask is not None:
            rows, cols = np.nonzero(mask)
            centre = ((cols.mean() + 0.5) / mask.shape[1], (rows.mean() + 0.5) / mask.shape[0])
            by_record[item.record_id].append((item, centre))
        elif item.origin == "box" and item.bbox_norm:
            x0, y0, x1, y1 = item.bbox_norm
            by_record[item.record_id].append((item, ((x0 + x1) / 2, (y0 + y1) / 2)))
    for regions in by_record.values():
        for a, (ax, ay) in regions:
            for b, (bx, by) in regions:
                if a is b:
                    continue
                other = wording.label_text(b.label).lower()
                side = "left of" if ax < bx else "right of" if ax > bx else None
                level = "above" if ay < by else "below" if ay > by else None
                words = {w for w in ("named", side, level, side and level and f"{level} and {side}") if w}
                out[(a.record_id, str(a.roi_id))] |= {(w, other) for w in words}


def _per_row_reference(captions: pl.DataFrame, inputs: dict, matcher) -> pl.DataFrame:
    """caption_quality row by row, every expression scanning its whole text (each description read in one
piece, not sentence by sentence), masks at full size."""
    by_key = {(rid, str(roi)): item for (rid, roi), item in inputs.items()}
    rows = list(captions.iter_rows(named=True))
    items = [by_key.get((r["record_id"], str(r["roi_id"]))) for r in rows]
    nested = _dense_nesting(i for i in items if i is not None)
    out = []
    with regex_gate.ungated(), reading.whole_text():
        for row, item in zip(rows, items, strict=True):
            res = check_caption(row, item, phi_values=matcher, facts=None if item is None else _dense_facts(item),
                                nested=nested.get((row["record_id"], str(row["roi_id"])), set()))
            res.update({f"judge_{k}": None for k in FACETS}, judge_mean=None,
                       passed=bool(res["consistent"] and not res["phi_found"]))
            out.append({"record_id": row["record_id"], "roi_id": row["roi_id"], "backend": row.get("backend"),
                        "inputs_hash": row.get("inputs_hash"), **res})
    return CAPTION_QUALITY.frame(out)


def test_caption_quality_equals_the_per_row_computation(batch):
    captions, inputs, matcher = batch
    fast = check_captions(captions, inputs, phi_values=matcher)
    reference = _per_row_reference(captions, inputs, matcher)
    assert fast.columns == reference.columns and fast.height == captions.height
    assert fast.equals(reference)
    kinds = set(fast["issues"].explode().drop_nulls().str.split(":").list.first().to_list())
    assert {"phi", "image position", "area", "box span", "containment", "size", "numbers not from the inputs",
            "anatomy not in the metadata", "quote contradicts the measured region", "caption failed"} <= kinds
    assert fast["passed"].sum() > 0 and (~fast["passed"]).sum() > 0


# -- gated expressions ------------------------------------------------------------------------------


def _gated_expressions() -> list[regex_gate.Gated]:
    found = [rx for _, rx in PHI_PATTERNS] + [m.mentions for m in vocabulary().modalities]
    found += list(vocabulary()._region_re.values()) + [rx for rx, _ in claims._POSITION_PATTERNS]
    for module in (claims, wording):
        found += [v for v in vars(module).values() if isinstance(v, regex_gate.Gated)]
    found += [claims._phrase_re(p) for p in ("left lung", "X-ray", "r1", "Precentral L", "grey matter", "T2-weighted")]
    return found


def _texts(n: int, rng: random.Random) -> list[str]:
    """Texts made of caption sentences, the expressions' own needles, numbers, dates, punctuation and a
    few non-ASCII letters, short and long, in mixed case."""
    words = [s for t in NOISE for s in t.split()] + "0.55-0.55 43.4 100% 123-456-7890 +44 (020) 12.03.2021 2021/3/4 " \
        "19850312 Mr. Dr. the of in left right image mm cm % [0001cafe] ſ K ı é “quoted” \t\n".split(" ")
    for rx in _gated_expressions():
        words += [n.strip() for found in (regex_gate.needles(rx.rx) or ((), ()))[0] for _, n in found]
    out = []
    for _ in range(n):
        parts = [rng.choice(words) for _ in range(rng.randint(1, 60))]
        text = "".join(p + rng.choice([" ", "", "-", ". ", ", ", "  "]) for p in parts)
        if rng.random() < 0.5:
            text = "".join(c.upper() if rng.random() < 0.3 else c for c in text)
        out.append(text + " ~" * rng.choice([0, 140]))
    return out


def _everything(rx, text: str) -> tuple:
    m = rx.search(text)
    return (m and m.span(), rx.findall(text), [(m.span(), m.groups()) for m in rx.finditer(text)],
            rx.sub(" ", text), rx.sub(lambda m: f"<{m.group(0)[:2]}>", text), rx.sub("#", text, 1),
            rx.split(text), rx.match(text) and rx.match(text).span())


def test_gated_expressions_find_what_their_patterns_find():
    rng = random.Random(11)
    texts = _texts(150, rng)
    gated_off = 0
    for gate in _gated_expressions():
        for text in texts:
            assert _everything(gate, text) == _everything(gate.rx, text), (gate.pattern, text)
            gated_off += gate.places(text) == []
    assert gated_off > 500  # the gates did skip scans


def _groups() -> list[regex_gate.GateGroup]:
    from medtrinity_assets.privacy.patterns import PHI_GROUP

    voc = vocabulary()
    return [PHI_GROUP, voc._mention_group, voc._region_group, claims._POSITIONS, claims._RELATIONS, claims._MEASURES,
            wording._POLARITIES, wording._HOMOGENEITY, *(m._technique_group for m in voc.modalities if m.techniques)]


def test_gate_groups_keep_every_member_that_matches():
    """A group's live members are every member that matches the text (and it does leave some out)."""
    rng = random.Random(12)
    texts = _texts(150, rng)
    left_out = 0
    for group in _groups():
        for text in texts:
            live = group.live(text)
            assert {k for k, rx in enumerate(group.members) if rx.rx.search(text)} <= set(live), text
            left_out += len(group.members) - len(live)
    assert left_out > 1000


def test_phi_patterns_find_in_a_text_what_they_find_in_its_pieces():
    """The PHI scan reads a text in pieces (memoised), cut at sentence and clause ends that no match
    goes on past: the kinds found are those every pattern finds in the whole text."""
    from medtrinity_assets.privacy import text as phi_text

    rng = random.Random(13)
    words = ("Dr Mr Mrs Prof dr mr MRN ID id no No number record Record case Jan Jan. January sept Sept december 12 "
             "2020 03 1979 12.5 0.9% 020 7946 0958 +44 (020) Jane Doe Smith Doe^Jane a@b.org name: patient's the "
             "image lesion left hyperdense 1234567 ACC-99812 12th of 2nd 2019-03-12 12/03/2021 x-no 12jan 3rdMarch "
             "12thseptember +44May ſep auguſt İD ıd Caſe Acceſſion fluid").split()
    seps = [" ", ". ", "; ", "! ", "? ", ".\n", ";  ", ", ", ".", "-", ": "]
    cut = 0
    for _ in range(4000):
        text = "".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(1, 14)))
        plain = {kind for kind, rx in PHI_PATTERNS if rx.rx.search(text)}
        pieces = phi_text._pieces(text)
        assert set().union(*map(phi_text._kinds, pieces)) == plain, text
        assert "".join("".join(pieces).split()) == "".join(text.split())  # only whitespace is left out
        cut += len(pieces) - 1
    assert cut > 5000


def test_ascii_pieces_are_cut_where_the_split_cuts():
    """ASCII texts are cut without a regex per end (a joining word is the letters before the period):
    the pieces are those of the split that looks at each end's whole word."""
    from medtrinity_assets.privacy import text as phi_text

    rng = random.Random(14)
    words = ("Dr DR. dr_ xdr mr_ Mrs MRS. piano no No. sept SEPTEMBER xseptember 12jan 3rdMarch Jan. ) . ( _ a "
             "the lesion 12.5 0.9% Doe^Jane +44May").split()
    seps = [" ", ". ", "; ", "! ", "? ", ".\n", ".  ", "?! ", ". . ", "", "_. ", ".\t", ".\x0b", ".\x1c", ",", "."]
    cut = 0
    for _ in range(20000):
        text = "".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(0, 12)))
        pieces = phi_text._pieces(text)
        assert pieces == phi_text._pieces_by_split(text), text
        cut += len(pieces) - 1
    assert cut > 20000


def test_readers_that_blank_claims_out_read_what_plain_scans_read():
    """Position and measure claims are blanked out one expression after another; a claim blanked out
    may leave words that make another ("the bottom part of the viewimage-left area"), so which
    expressions may match is asked again after each edit."""
    rng = random.Random(15)
    texts = _texts(300, rng) + ["It is in the bottom part of the viewimage-left area.",
                                "It covers 3% of the imagespans 1-2% of the image width and 3-4% of its height."]
    for text in texts:
        fast = (claims.indexed_position_claims(text), claims.without_claims(text), claims.measures(text, text))
        with regex_gate.ungated():
            assert fast == (claims.indexed_position_claims(text), claims.without_claims(text),
                            claims.measures(text, text)), text
    assert claims.position_claims(texts[-2])[0] == [("v", "lower"), ("h", "left")]


def test_a_name_across_a_sentence_end_is_read_as_in_the_whole_text():
    """A known name that no single piece holds ("St. Left lobe 12") is blanked out of the whole text."""
    sentences = claims.claim_sentences("Seen in the St. Left lobe 12 region; lesion; left side.", [])
    for known in (["St. Left lobe 12"], ["lesion; left side"]):
        fast = reading.read_said(sentences, known, None, None)
        with reading.whole_text():
            assert fast == reading.read_said(sentences, known, None, None)
    assert not reading.read_said(sentences, ["St. Left lobe 12", "lesion; left side"], None, None).patient_sides()


def test_mask_phrases_blanks_what_the_phrase_expressions_blank():
    rng = random.Random(8)
    phrases = ["left lung", "X-ray", "r1", "(a)", "a-b", "CT", "ct", "Lesion", "lung", "_x", "9", "liver lesion",
               "T2-weighted", "ſ", "é", "K"]
    alphabet = [*"abc XYZ-_.()19", "lung", "left", "x-ray", "CT", "lesion", "liver", "ſ", "é", "K"]
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        chosen = rng.sample(phrases, rng.randint(0, 5))
        expected = text
        for p in sorted({p for p in chosen if len(p) >= 2}, key=len, reverse=True):
            expected = claims._phrase_re(p).rx.sub(" ", expected)
        assert claims.mask_phrases(text, chosen) == expected, (text, chosen)


def test_edited_texts_are_folded_as_fresh_ones(batch):
    """A text made by a gated substitution is folded from the text it was made from: the same forms."""
    captions, inputs, matcher = batch
    regex_gate._folded.clear()
    for k in range(0, 60, 3):
        with reading.whole_text():  # sentences are too short to be gated; whole descriptions are not
            check_captions(captions.slice(k, 3), inputs, phi_values=matcher)
        edited = [(text, f) for text, f in regex_gate._folded.items() if f.origin is not None]
        for text, folded in edited:
            assert folded.low == text.translate(regex_gate._LOW)
            assert folded.spaced == " " + text.translate(regex_gate._SPACED) + " "
    assert edited


def test_split_after_cuts_where_a_lookbehind_split_cuts():
    rng = random.Random(14)
    chars = "ab .;!?\n\t\u00a0\u2003é"
    for _ in range(3000):
        text = "".join(rng.choice(chars) for _ in range(rng.randint(0, 30)))
        for mark in (".!?", ".;!?", ";"):
            plain = re.split(f"(?<=[{mark}])\\s+", text)
            assert claims.split_after(re.compile(f"([{mark}])(\\s+)"), text) == plain, (mark, text)


def test_needles_of_a_word_list():
    sets, starts = regex_gate.needles(claims._SIDE.rx)
    assert sets == (((True, " left "), (True, " right ")),) and starts == ((True, 0, " left "), (True, 0, " right "))
    assert regex_gate.needles(re.compile(r"(?<=[.!?])\s+")) is None  # whitespace is in every text


# -- masks --------------------------------------------------------------------------------------------


def test_pixels_facts_and_nesting_equal_full_size_masks():
    rng = np.random.default_rng(3)
    items = _nested_items()
    for k in range(60):
        size = int(rng.integers(8, 80))
        mask = ndimage.binary_dilation(rng.random((size, size)) > 0.97, iterations=int(rng.integers(0, 4)))
        if k % 5 == 0:
            mask = _ring(size, (0, 0, size, size // 2 + 1), 2) | mask
        items.append(_mask_item(f"r{k // 4}", str(k), f"label {k % 3}", mask, origin=["mask", "box"][k % 2],
                                bbox_norm=[0.0, 0.0, 0.5, 0.5]))
    for item in items:
        mask, px = evidence.decode(item), evidence.pixels(item)
        assert (mask is None) == (px is None)
        if mask is not None:
            rows, cols = np.nonzero(mask)
            assert set(zip(px.rows.tolist(), px.cols.tolist(), strict=True)) == set(zip(rows.tolist(), cols.tolist(), strict=True))
        assert evidence.region_facts(item) == _dense_facts(item)
    facts, nested = evidence.batch_evidence(items)
    assert nested == _dense_nesting(items) and nested
    assert all(facts[id(i)] == _dense_facts(i) for i in items)


def test_run_sums_and_box_equal_the_listed_pixels():
    """Sums and box counted run by run (runs that go on into the next column included) are those of
    the pixels themselves."""
    rng = np.random.default_rng(11)
    regions = []
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        mask = rng.random((h, w)) > rng.random()
        if not mask.any():
            continue
        listed = evidence.Pixels.of_mask(mask)
        px = evidence.Pixels(listed.starts, listed.ends, listed.shape)
        rows, cols = np.nonzero(mask)
        assert px.size == rows.size and px.sums() == (rows.sum(), cols.sum())
        assert px.box() == (rows.min(), cols.min(), rows.max(), cols.max())
        assert sorted(zip(px.rows.tolist(), px.cols.tolist(), strict=True)) == sorted(zip(rows.tolist(), cols.tolist(), strict=True))
        regions.append(listed)
    # the facts of all of them at once (runs of every shape in one pass) are each one's own
    one_by_one = [evidence._pixel_facts(evidence.CaptionInput(record_id="r", source="s", roi_id="0"), px) for px in regions]
    fresh = [evidence.Pixels(px.starts, px.ends, px.shape) for px in regions]
    assert evidence._all_facts(fresh) == one_by_one
    assert [(px.sums(), px.box()) for px in fresh] == [(px.sums(), px.box()) for px in regions]


# -- ontology and tokens ---------------------------------------------------------------------------------


def _reference_matches(words: list[str], nested: bool) -> list[tuple[str, tuple]]:
    """Leftmost-longest keys of ``words``, every length tried at every place (the plain scan)."""
    idx, stop = ontology._index(), ontology._lists()["stop"]

    def concepts(a: int, b: int) -> tuple[str, tuple]:
        key = " ".join(words[a:b])
        found = () if b - a == 1 and key in stop else idx.phrases.get(key, ())
        return key, tuple(c for c in found if c.scheme == "vocabulary") if len(key) <= 2 else found

    out, i, n = [], 0, len(words)
    while i < n:
        for j in range(min(n, i + idx.max_words), i, -1):
            key, found = concepts(i, j)
            if found:
                out.append((key, found))
                inner = [concepts(a, b) for a in range(i, j) for b in range(a + 1, j + 1) if b - a < j - i]
                out += [(k, f) for k, f in inner if f] if nested else []
                i = j
                break
        else:
            i += 1
    return out


def test_ontology_trie_finds_what_the_phrase_table_scan_finds(batch):
    captions, _, _ = batch
    rng = random.Random(5)
    labels = rng.sample(sorted(ontology._index().phrases), 400)
    texts = [t for t in captions["text"].to_list()[:120] if t] + labels
    soup = " ".join(texts).split()
    texts += [" ".join(rng.choice(soup) for _ in range(rng.randint(1, 25))) for _ in range(300)]
    for text in texts:
        words = ontology.tokens(text)
        for nested in (False, True):
            tagged = [(k, f) for k, f, inner in ontology._tagged(words) if nested or not inner]
            assert tagged == _reference_matches(words, nested), text


def test_tokenisers_equal_their_expressions():
    rng = random.Random(2)
    alphabet = "abcXYZ019_ -.,;:'\"!?()[]{}\t\n/\\@#&’éſ中" + "non liver Lesions grey x-ray "
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert privacy_store.tokens(text) == privacy_store._TOKEN.findall(text.casefold())
        low = text.lower()
        low = ontology._POSSESSIVE.sub("", low) if ("'" in low or "\u2019" in low) else low
        raw = ontology._TOKEN.findall(low.replace("&", " and "))
        raw = [("non" + t if i and raw[i - 1] == "non" else t) for i, t in enumerate(raw) if t != "non"]
        assert ontology.tokens(text) == [ontology._canon_token(t) for t in raw]


def test_hashed_matcher_finds_what_hashing_every_run_finds(tmp_path):
    store = identifier_store(tmp_path)
    store.save("s", ["Doe^Jane", "1234567", "Main Street 5"])
    matcher = store.matcher("s")
    rng = random.Random(4)
    words = "the jane doe lesion main street 5 1234567 of in left image Jane-Doe DOE".split()

    def reference(text: str) -> bool:
        toks = privacy_store.tokens(text)
        return any(matcher._h(toks[i : i + n]) in matcher._values
                   for i in range(len(toks)) for n in range(1, min(matcher._max, len(toks) - i) + 1))

    for _ in range(3000):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        assert matcher.search(text) == reference(text), text
    assert matcher.search("Seen by jane doe.") and not matcher.search("a plain lesion")


def test_quote_checks_keep_their_passages():
    item = dataclasses.replace(realistic_inputs(1, seed=3)[0],
                               passages=[Passage(chunk_id="c1", title="t", text="Hypodense foci are common.", score=0.9)])
    row = {"status": "ok", "text": 'Background: "Hypodense foci are common." [c1]. ' * 8, "retrieved_chunk_ids": ["c1"]}
    with regex_gate.ungated():
        plain = check_caption(row, item)
    assert check_caption(row, item) == plain
