"""Prompt, embedded captioner, caption batches, quality checks and the local-VLM backend."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image

from medtrinity_assets.captioning import (
    CAPTION_COLUMNS,
    FACETS,
    PROMPT_VERSION,
    CaptionerConfigError,
    CaptionInput,
    CaptionResult,
    EmbeddedCaptioner,
    build_caption_inputs,
    build_messages,
    build_user_text,
    check_captions,
    inputs_hash,
    make_captioner,
    parse_reply,
    render_overlay,
    run_caption_batch,
    run_caption_slices,
)
from medtrinity_assets.captioning.backends.base import Captioner
from medtrinity_assets.captioning.batch import parts_dir
from medtrinity_assets.captioning.claims import position_claims
from medtrinity_assets.captioning.prompt import FacetParseError, image_data_url
from medtrinity_assets.captioning.quality import check_caption, scan_phi
from medtrinity_assets.captioning.samples import realistic_inputs
from medtrinity_assets.core.storage import sha256_file
from medtrinity_assets.core.vocabulary import organ_terms

# -- inputs ---------------------------------------------------------------------------------------


def _tables(tmp_path):
    img = np.zeros((64, 96), dtype=np.uint8)
    img[20:40, 10:30] = 200
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.fromarray(img).save(tmp_path / "images" / "a.png")
    roi = pl.DataFrame({
        "record_id": ["rec1", "rec1"], "source": ["demo", "demo"], "roi_id": [0, 1],
        "label": ["liver lesion", "liver"], "origin": ["mask", "mask"],
        "bbox_xyxy": [[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 96.0, 64.0]],
        "bbox_norm": [[10 / 96, 20 / 64, 30 / 96, 40 / 64], [0.0, 0.0, 1.0, 1.0]],
        "area_fraction": [0.065, 0.9], "horizontal": ["left", "centre"], "vertical": ["middle", "middle"],
        "patient_lr": [None, None], "longest_diameter_mm": [None, None],
        "intensity_word": ["hyperintense", None],
        "relations": [json.dumps([{"other": "liver", "relation": "inside", "distance_norm": 0.0}]), "[]"],
        "roi_count": [2, 2], "inside_label": ["liver", None], "status": ["ok", "flagged"], "reason": [None, "big"],
    })  # no texture/shape/ring columns: optional
    coarse = pl.DataFrame({"record_id": ["rec1"], "caption": ["MRI of the liver with a liver lesion."],
                           "modality": ["MRI"], "organ": ["liver"], "terms": [["MRI", "liver", "liver lesion"]]})
    retrieved = pl.DataFrame({"record_id": ["rec1", "rec1"], "roi_id": [0, None], "query": ["q0", "qimg"],
                              "chunk_ids": [["c2", "c1", "missing"], ["c1"]], "scores": [[0.9, 0.8, 0.1], [0.5]]})
    docstore = pl.DataFrame({"chunk_id": ["c1", "c2"], "title": ["Liver", "Lesions"],
                             "text": ["The liver is the largest solid organ.", "Metastases are often multiple."]})
    images = pl.DataFrame({"record_id": ["rec1"], "image_path": ["images/a.png"], "sha256": ["ab" * 32]})
    return roi, coarse, retrieved, docstore, images


def test_build_caption_inputs_joins_and_tolerates_missing_columns(tmp_path):
    items = build_caption_inputs(*_tables(tmp_path), out_root=tmp_path, include_flagged=True)
    assert [i.roi_id for i in items] == [0, 1]
    a, b = items
    assert a.modality == "MRI" and a.organ == "liver" and a.coarse_caption.startswith("MRI")
    assert a.relations == [{"other": "liver", "relation": "inside", "distance_norm": 0.0}]
    assert [p.chunk_id for p in a.passages] == ["c2", "c1"]  # unknown chunk skipped, order kept
    assert a.passages[0].text == "Metastases are often multiple." and a.passages[0].score == 0.9
    assert b.query == "qimg" and b.chunk_ids == ["c1"]  # image-level retrieval as fallback
    assert a.texture_homogeneity_word is None and a.ring_mean is None
    assert a.image_file() == tmp_path / "images" / "a.png"
    assert len(build_caption_inputs(*_tables(tmp_path))) == 1  # a flagged row has no region to describe
    assert len(build_caption_inputs(*_tables(tmp_path), include_flagged=True)) == 2


# -- prompt ---------------------------------------------------------------------------------------


def test_prompt_carries_every_input(tmp_path):
    item = build_caption_inputs(*_tables(tmp_path), out_root=tmp_path)[0]
    text = build_user_text(item)
    assert PROMPT_VERSION == "mtri-v1"
    assert "MRI of the liver with a liver lesion." in text
    assert "[0.104, 0.312, 0.312, 0.625]" in text and "[10, 20, 30, 40]" in text
    assert "[1] (chunk c2) Lesions: Metastases" in text and "[2] (chunk c1) Liver:" in text
    assert "hyperintense" in text and "do not state patient left/right" in text and "do not state sizes in mm" in text
    for key in FACETS:
        assert f'"{key}"' in text
    msgs = build_messages(item, image_data_url(item))
    assert msgs[0]["role"] == "system" and msgs[1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_overlay_outlines_roi_on_a_copy(tmp_path):
    item = build_caption_inputs(*_tables(tmp_path), out_root=tmp_path)[0]
    path = item.image_file()
    before = sha256_file(path)
    img = np.asarray(render_overlay(item))
    assert sha256_file(path) == before  # original untouched
    assert img.shape == (64, 96, 3)
    assert tuple(img[20, 15]) == (255, 0, 0) and tuple(img[30, 10]) == (255, 0, 0)  # box edges
    assert tuple(img[30, 20]) == (200, 200, 200)  # inside unchanged
    assert tuple(img[5, 60]) == (0, 0, 0)


def test_inputs_hash_covers_every_input():
    item = realistic_inputs(2)[1]
    assert item.passages and item.horizontal != "right"
    base = inputs_hash(item, "b", "m", {"t": 0.1}, PROMPT_VERSION)
    assert base == inputs_hash(dataclasses.replace(item), "b", "m", {"t": 0.1}, PROMPT_VERSION)
    assert base == inputs_hash(dataclasses.replace(item, out_root="/elsewhere"), "b", "m", {"t": 0.1})
    changed = [
        inputs_hash(dataclasses.replace(item, label="other"), "b", "m", {"t": 0.1}),
        inputs_hash(dataclasses.replace(item, passages=item.passages[:1]), "b", "m", {"t": 0.1}),
        inputs_hash(dataclasses.replace(item, image_sha256="00"), "b", "m", {"t": 0.1}),
        inputs_hash(dataclasses.replace(item, horizontal="right"), "b", "m", {"t": 0.1}),
        inputs_hash(item, "b2", "m", {"t": 0.1}),
        inputs_hash(item, "b", "m2", {"t": 0.1}),
        inputs_hash(item, "b", "m", {"t": 0.2}),
        inputs_hash(item, "b", "m", {"t": 0.1}, "mtri-v2"),
    ]
    assert base not in changed and len(set(changed)) == len(changed)
    assert re.fullmatch(r"[0-9a-f]{64}", base)


def test_inputs_hash_is_that_of_the_whole_input_as_asdict_gives_it():
    """The hash payload shares the input's values instead of deep-copying them; the cache keys stay
    those of ``dataclasses.asdict`` (a changed key would describe every cached ROI again)."""
    for item in realistic_inputs(200, seed=5):
        whole = dataclasses.asdict(item)
        whole.pop("out_root")
        payload = {"input": whole, "backend": "b", "model": "m", "params": {"t": 0.1}, "prompt_version": PROMPT_VERSION}
        blob = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"), ensure_ascii=False)
        assert inputs_hash(item, "b", "m", {"t": 0.1}) == hashlib.sha256(blob.encode()).hexdigest()


def test_parse_reply_variants():
    facets = {k: f"{k} text here" for k in FACETS}
    para, got = parse_reply("A paragraph about the image and its ROI.\n```json\n" + json.dumps(facets) + "\n```")
    assert got == facets and para == "A paragraph about the image and its ROI."
    para, got = parse_reply(json.dumps(facets))
    assert para.startswith("modality text here") and got == facets
    with pytest.raises(FacetParseError):
        parse_reply('Text {"modality": "x"} and {broken')
    with pytest.raises(FacetParseError):
        parse_reply(json.dumps({**facets, "organ": ""}))


# -- embedded captioner ---------------------------------------------------------------------------


def test_embedded_is_deterministic_grounded_and_varied():
    items = realistic_inputs(260, seed=11)
    cap = EmbeddedCaptioner()
    a, b = cap.caption(items), EmbeddedCaptioner().caption(items)
    assert [r.text for r in a] == [r.text for r in b]
    assert all(r.status == "ok" and set(r.facets) == set(FACETS) for r in a)
    openings = {r.facets["roi_location"].split(" ")[0] for r in a} | {r.facets["modality"].split(" ")[0] for r in a}
    assert len(openings) >= 4  # several templates in use
    quoted = 0
    for item, res in zip(items, a, strict=True):
        if item.patient_lr is None or item.origin == "whole_image":
            assert "patient's left" not in res.text and "patient's right" not in res.text
        else:
            assert f"patient's {item.patient_lr}" in res.text
        outlined = item.origin not in ("box", "whole_image")
        assert (" mm" in res.text) == (outlined and item.longest_diameter_mm is not None)
        cited = re.findall(r"\[([0-9a-z]+)\]", res.facets["relationship"])
        assert set(cited) <= set(item.chunk_ids)
        quoted += bool(cited)
        if not cited:
            assert "No reference passage" in res.facets["relationship"]
        if item.intensity_word and item.origin != "whole_image":
            assert item.intensity_word in res.facets["roi_texture"]
    assert quoted > len(items) // 2


def test_embedded_says_only_what_fits_the_region():
    items = realistic_inputs(260, seed=4)
    for item, res in zip(items, EmbeddedCaptioner().caption(items), strict=True):
        if item.origin == "whole_image":
            assert "No region was localised" in res.facets["roi_location"]
            assert not re.search(r"%|\bmm\b|outline|diameter|third", res.text), res.text
            # said once (a review by eye found it three times in one whole-image description)
            assert len(re.findall(r"no region was locali[sz]ed", res.text, re.I)) == 1, res.text
            assert len(re.findall(r"whole image", res.text, re.I)) == 1, res.text
        if item.organ and not item.synthetic:  # the organ's synonyms are not repeated as findings
            also = re.search(r"also (?:names|mention) (.+?)\.", res.text)
            assert also is None or not set(re.split(r", | and ", also.group(1).lower())) & set(organ_terms(item.organ)), res.text
        if item.origin == "box":
            assert "outline" not in res.text and "diameter" not in res.text
        assert "heterogeneous and smooth" not in res.text and "homogeneous and coarse" not in res.text
        if (item.texture_homogeneity_word, item.texture_smoothness_word) == ("heterogeneous", "smooth") and item.origin != "whole_image":
            assert "heterogeneous but smooth" in res.text, res.text
        assert "0.0%" not in res.text and not re.search(r"spans (\d+)-\1%", res.text)
        assert "region #" not in res.text and "labelled 'region'" not in res.text
        for rel in item.relations:
            if rel.get("other_label") == "region":
                assert f"{rel['relation']} the region" not in res.text
    one = realistic_inputs(30, seed=5)[11]  # a fundus photograph
    assert one.modality == "Fundus"
    grey, colour = (EmbeddedCaptioner().facets(dataclasses.replace(one, channels=c))["modality"] for c in (1, 3))
    assert "colour" in colour and "colour" not in grey and "greyscale" in grey
    phantom = dataclasses.replace(items[2], synthetic=True, organ="phantom", label="lesion")
    text = " ".join(EmbeddedCaptioner().facets(phantom).values())
    assert "synthetic phantom" in text and "no clinical finding" in text


def test_embedded_says_nothing_it_did_not_measure():
    item = CaptionInput(record_id="x", source="s", roi_id=0, coarse_caption="", modality=None, organ=None)
    [res] = EmbeddedCaptioner().caption([item])
    assert res.status == "ok"
    assert "not recorded" in res.facets["modality"] and "not measured" in res.facets["roi_texture"]
    assert not re.search(r"\b(left|right|mm|CT|MRI|upper|lower)\b", res.text)


# -- quality --------------------------------------------------------------------------------------


def _frame(items, results, captioner=None) -> pl.DataFrame:
    rows = []
    for item, r in zip(items, results, strict=True):
        rows.append({"record_id": item.record_id, "roi_id": item.roi_id, "backend": "test", "status": r.status,
                     "error": r.error, "text": r.text, "retrieved_chunk_ids": item.chunk_ids,
                     "facets": json.dumps(r.facets), **{f"facet_{k}": r.facets.get(k) for k in FACETS}})
    return pl.DataFrame(rows)


def test_embedded_passes_every_check_on_realistic_inputs():
    items = realistic_inputs(390, seed=21)
    results = EmbeddedCaptioner().caption(items)
    q = check_captions(_frame(items, results), {i.key: i for i in items})
    bad = q.filter(~pl.col("passed"))
    assert bad.height == 0, bad.select("record_id", "issues").head(5).to_dicts()
    assert q["consistent"].all() and not q["phi_found"].any()
    assert {"facets_present", "position_ok", "laterality_ok", "modality_ok", "organ_ok", "issues",
            "judge_modality"} <= set(q.columns)


def _one(**changes) -> CaptionInput:
    base = realistic_inputs(30, seed=5)
    item = next(i for i in base if i.modality == "MRI" and i.organ == "liver" and i.origin != "whole_image")
    return dataclasses.replace(item, **changes)


def _check(item: CaptionInput, edit=None, drop=None, **kw) -> dict:
    [res] = EmbeddedCaptioner().caption([item])
    text = edit(res.text) if edit else res.text
    facets = {k: (edit(v) if edit else v) for k, v in res.facets.items() if k != drop}
    row = {"record_id": item.record_id, "roi_id": item.roi_id, "status": "ok", "text": text,
           "retrieved_chunk_ids": item.chunk_ids, **{f"facet_{k}": v for k, v in facets.items()}}
    return check_caption(row, item, **kw)


def _upper_left_mask() -> tuple[str, list[float], float]:
    """An elliptic region in the upper-left third of a 256 px image: its RLE, box and area fraction."""
    from medtrinity_assets.rois.rle import rle_encode, rle_json

    yy, xx = np.mgrid[0:256, 0:256]
    mask = ((yy - 40) / 20) ** 2 + ((xx - 50) / 30) ** 2 <= 1
    rows, cols = np.nonzero(mask)
    box = [cols.min() / 256, rows.min() / 256, (cols.max() + 1) / 256, (rows.max() + 1) / 256]
    return rle_json(rle_encode(mask)), box, float(mask.mean())


def test_claims_are_read_from_the_text_and_contradictions_flagged():
    rle, box, area = _upper_left_mask()
    item = _one(horizontal="left", vertical="upper", patient_lr=None, patient_ap=None, intensity_word="hyperintense",
                texture_homogeneity_word="homogeneous", longest_diameter_mm=None, mask_rle=rle, bbox_norm=box,
                area_fraction=area, origin="mask")
    assert _check(item)["consistent"]
    # image position read from free text, in several phrasings
    assert not _check(item, lambda t: t.replace("left third", "right third"))["position_ok"]
    assert not _check(item, lambda t: t + " It sits in the lower half of the image.")["position_ok"]
    assert not _check(item, lambda t: t + " Seen in the bottom-right corner of the image.")["position_ok"]
    assert _check(item, lambda t: t + " It is in the upper-left quadrant of the image.")["position_ok"]
    # patient laterality without known orientation, and against a measured side
    r = _check(item, lambda t: t + " The lesion is in the left lobe.")
    assert not r["laterality_ok"] and any("patient side unknown" in i for i in r["issues"])
    known = dataclasses.replace(item, patient_lr="right")
    assert _check(known, lambda t: t + " It lies in the right lobe.")["laterality_ok"]
    assert not _check(known, lambda t: t + " It lies in the left lobe.")["laterality_ok"]
    assert not _check(dataclasses.replace(item, patient_ap="anterior"), lambda t: t + " It is posterior.")["laterality_ok"]
    # relational image-frame words are not patient laterality
    assert _check(item, lambda t: t + " In the image it lies left of the kidney.")["laterality_ok"]
    # modality and organ
    assert not _check(item, lambda t: t + " This CT slice shows it well.")["modality_ok"]
    assert not _check(item, lambda t: t.replace("magnetic resonance (MR) image", "ultrasound image"))["modality_ok"]
    assert not _check(item, lambda t: t + " It abuts the cerebellum.")["organ_ok"]
    other = dataclasses.replace(item, label="focal lesion", inside_label=None)
    assert _check(other)["organ_ok"]
    assert not _check(other, lambda t: t.replace("The liver", "The spleen").replace("the liver", "the spleen"))["organ_ok"]
    # texture and size
    assert not _check(item, lambda t: t + " It is hypointense.")["texture_ok"]
    assert not _check(item, lambda t: t + " It looks heterogeneous.")["texture_ok"]
    assert not _check(item, lambda t: t + " It measures 12 mm.")["size_ok"]
    sized = dataclasses.replace(item, longest_diameter_mm=20.0)
    assert _check(sized, lambda t: t + " Its short axis is 12 mm.")["size_ok"]
    assert not _check(sized, lambda t: t + " It spans 3.5 cm.")["size_ok"]
    # citations are knowledge, not claims about this image
    cid = item.passages[0].chunk_id
    r = _check(item, lambda t: t + f' Background: "CT shows the left lung as hypodense" [{cid}].')
    assert all(r[c] for c in ("position_ok", "laterality_ok", "modality_ok", "organ_ok", "texture_ok"))
    # ... but a quote must be the passage's own words
    assert not r["quotes_ok"] and any("not in passage" in i for i in r["issues"])
    genuine = item.passages[0].text.split(". ")[0]
    assert _check(item, lambda t: t + f' Background: "{genuine}" [{cid}].')["quotes_ok"]
    # facets and length
    r = _check(item, lambda t: "Too short.")
    assert not r["length_ok"] and not r["consistent"]
    r = _check(item, drop="roi_texture")
    assert not r["facet_roi_texture_present"] and not r["facets_present"] and r["facet_modality_present"]


def test_how_an_image_was_made_is_said_only_as_its_metadata_say():
    """A technique ("phase-contrast", "contrast-enhanced") the metadata name is part of the modality
    facet; one they do not name fails the modality check, whoever wrote it."""
    item = _one(origin="mask")
    item = dataclasses.replace(item, coarse_caption=item.coarse_caption.replace("contrast-enhanced ", ""))
    assert "contrast" not in item.coarse_caption.lower() and not any("contrast" in t.lower() for t in item.terms)
    [plain] = EmbeddedCaptioner().caption([item])
    assert "contrast-enhanced" not in plain.facets["modality"]
    r = _check(item, lambda t: t.replace("magnetic resonance (MR) image", "contrast-enhanced magnetic resonance (MR) image"))
    assert not r["modality_ok"] and any("says contrast-enhanced" in i for i in r["issues"])
    assert _check(item, lambda t: t + " No contrast agent is recorded.")["modality_ok"]  # a word, not a technique

    enhanced = dataclasses.replace(item, coarse_caption=item.coarse_caption + " Description: contrast enhanced.")
    [res] = EmbeddedCaptioner().caption([enhanced])
    assert "contrast-enhanced magnetic resonance (MR) image" in res.facets["modality"]
    assert _check(enhanced)["consistent"]
    assert not _check(enhanced, lambda t: t.replace("contrast-enhanced", "contrast-enhanced fat-suppressed"))["modality_ok"]

    cells = next(i for i in realistic_inputs(200, seed=3) if i.modality.lower() == "microscopy")
    cells = dataclasses.replace(cells, terms=[*cells.terms, "phase-contrast microscopy"])
    [res] = EmbeddedCaptioner().caption([cells])
    assert "phase-contrast microscopy image" in res.facets["modality"]
    assert _check(cells)["modality_ok"]
    assert not _check(cells, lambda t: t.replace("phase-contrast", "fluorescence"))["modality_ok"]


def test_a_small_image_is_said_to_be_one_and_its_size_is_checked():
    """An image under 128 px on its longest side is described as small, with its size in pixels;
    a wrong size fails the size check, and the numbers are not taken for unexplained ones."""
    item = _one(origin="mask")
    assert max(item.image_width, item.image_height) >= 128
    [res] = EmbeddedCaptioner().caption([item])
    assert "pixels" not in res.text and _check(item)["consistent"]
    small = dataclasses.replace(item, image_width=33, image_height=41)
    [res] = EmbeddedCaptioner().caption([small])
    assert "It is a small image of 33 by 41 pixels." in res.facets["modality"]
    r = _check(small)
    assert r["consistent"], r["issues"]
    r = _check(small, lambda t: t.replace("33 by 41 pixels", "41 by 33 pixels"))
    assert not r["size_ok"] and r["numbers_ok"] and any("41 by 33 pixels, it is 33 by 41" in i for i in r["issues"])


#: the files whose code or data decide the embedded captioner's sentences
SENTENCE_CODE = ["medtrinity_assets/captioning/backends/embedded.py", "medtrinity_assets/captioning/backends/phrases.yaml",
                 "medtrinity_assets/captioning/phrasing.py", "medtrinity_assets/captioning/wording.py",
                 "medtrinity_assets/core/vocabulary.yaml", "medtrinity_assets/knowledge/quotes.py",
                 "medtrinity_assets/knowledge/queries.py"]


def test_the_phrases_version_follows_the_code_that_writes_sentences():
    """``PHRASES_VERSION`` keys the description cache: code that changes the sentences without a new
    version leaves an upgraded build with the old descriptions. The snapshot pairs the version with a
    digest of that code, so a change to it must come with a decision (a new version, or only a new
    digest when no sentence can change)."""
    from pathlib import Path

    from medtrinity_assets.captioning.backends.embedded import PHRASES_VERSION

    repo = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for name in SENTENCE_CODE:
        h.update(name.encode() + b"\0" + (repo / name).read_bytes() + b"\0")
    recorded = json.loads((repo / "medtrinity_assets_tests" / "snapshots" / "phrases_version.json").read_text())
    now = {"phrases_version": PHRASES_VERSION, "digest": h.hexdigest()[:16]}
    assert now == recorded, (
        f"the embedded captioner's sentence code changed ({now}, snapshot {recorded}): if a description can "
        "change, bump PHRASES_VERSION in captioning/backends/embedded.py; then write both values to "
        "medtrinity_assets_tests/snapshots/phrases_version.json")


def test_checks_use_the_mask_and_ontologies_not_the_attribute_table():
    """Claims are checked against evidence the description was not written from: the ROI's own
    mask (recomputed from its RLE), the ontologies, the metadata and the retrieved passages."""
    rle, box, area = _upper_left_mask()
    item = _one(horizontal="left", vertical="upper", patient_lr=None, patient_ap=None, longest_diameter_mm=None,
                mask_rle=rle, bbox_norm=box, area_fraction=area, origin="mask", relations=[], inside_label=None)
    assert _check(item)["consistent"], _check(item)["issues"]
    # the table says lower-right, the mask upper-left: the description written from the table fails
    lied = dataclasses.replace(item, horizontal="right", vertical="lower")
    assert not _check(lied)["position_ok"]
    pct = f"{area * 100:.1f}%"
    assert not _check(item, lambda t: t.replace(pct, "12.0%"))["size_ok"]
    assert not _check(dataclasses.replace(item, area_fraction=0.3))["size_ok"]  # the table's area is wrong
    assert not _check(item, lambda t: t + " Its bounding box spans 60-90% of the image width and 60-90% of its height.")[
        "size_ok"]
    # whole image and box: no extent, no outline
    whole = dataclasses.replace(item, origin="whole_image")
    r = _check(item, lambda t: t + " No region was localised in this image.")
    assert not r["size_ok"]
    box_item = dataclasses.replace(item, origin="box", shape_word=None)
    assert not _check(box_item, lambda t: t + " It has a round outline.")["size_ok"]
    # an outline word only where a shape was measured, and only that one (or its synonym)
    oval = dataclasses.replace(item, shape_word="oval")
    assert _check(dataclasses.replace(item, shape_word="round"), lambda t: t + " It has a circular outline.")["size_ok"]
    assert not _check(oval, lambda t: t + " It has an elongated outline.")["size_ok"]
    r = _check(oval, lambda t: t + " It has a round outline.")
    assert not r["size_ok"] and "outline: says round, measured oval" in r["issues"], r["issues"]
    unmeasured = dataclasses.replace(item, origin="classical", shape_word=None)
    assert _check(unmeasured)["size_ok"]
    r = _check(unmeasured, lambda t: t + " It has a lobulated outline.")
    assert not r["size_ok"] and "outline: says lobulated, no shape was measured" in r["issues"], r["issues"]
    assert not _check(whole, lambda t: t + " It lies horizontally in the left third of the image.")["position_ok"]
    # containment recomputed from the masks of the image's regions
    assert not _check(item, lambda t: t + " It lies within the white matter.", nested=set())["relations_ok"]
    assert _check(item, lambda t: t + " It lies within the white matter.",
                  nested={("lies within", "white matter")})["relations_ok"]
    # anatomy outside the organ, a diagnosis from nowhere, numbers from nowhere
    r = _check(item, lambda t: t + " It abuts the splenic bile canaliculus.")
    assert not r["terms_ok"], r["issues"]
    r = _check(item, lambda t: t + " It is consistent with glioblastoma.")
    assert not r["terms_ok"] and any("Glioblastoma" in i for i in r["issues"])
    assert not _check(item, lambda t: t + " It is one of 7 similar foci.")["numbers_ok"]
    # a quote from a passage below the relevance floor
    low = dataclasses.replace(item, passages=[dataclasses.replace(item.passages[0], score=0.1)])
    sentence = low.passages[0].text.split(". ")[0]
    r = _check(low, lambda t: t + f' Background: "{sentence}" [{low.passages[0].chunk_id}].')
    assert not r["quotes_ok"] and any("relevance floor" in i for i in r["issues"])


def test_nesting_is_recomputed_from_the_masks():
    from medtrinity_assets.captioning.evidence import nesting
    from medtrinity_assets.rois.rle import rle_encode, rle_json

    outer = np.zeros((64, 64), bool)
    outer[8:56, 8:56] = True
    outer[24:40, 24:40] = False  # a hole: the inner region lies within the outline
    inner = np.zeros((64, 64), bool)
    inner[26:38, 26:38] = True
    apart = np.zeros((64, 64), bool)
    apart[0:4, 60:64] = True
    items = [CaptionInput(record_id="r", source="s", roi_id=str(i), label=lab, origin="mask",
                          mask_rle=rle_json(rle_encode(m)))
             for i, (lab, m) in enumerate([("liver", outer), ("lesion", inner), ("cyst", apart)])]
    found = nesting(items)

    def nested(key):
        return {r for r in found.get(key, set()) if r[0] in ("lies within", "encloses", "bordered by", "borders")}

    assert nested(("r", "1")) == {("lies within", "liver")}
    assert nested(("r", "0")) == {("encloses", "lesion")}
    assert nested(("r", "2")) == set()
    # directions between centroids, and the names of the image's other regions
    assert {("below and left of", "cyst"), ("below", "cyst"), ("left of", "cyst"), ("named", "cyst")} <= found[("r", "1")]
    assert ("named", "cyst") not in found[("r", "2")] and ("above and right of", "lesion") in found[("r", "2")]


def test_phi_scan():
    assert scan_phi("Patient DOE^JOHN was imaged.") == ["dicom_name"]
    assert scan_phi("Seen on 2023-04-05.") == ["date"]
    assert scan_phi("Seen on 5 March 2021.") == ["date"]
    assert scan_phi("Record 123456789 shows") == ["identifier"]
    assert scan_phi("MRN: 0012345") == ["identifier"]
    assert scan_phi("Mr. Smith's liver") == ["titled_name"]
    assert scan_phi("it spans 0.13-0.34 of the width, contrast 0.147, 4.4% area, 43.4 mm") == []
    assert scan_phi("cited [0a1b2c3d4e5f601234567890]", chunk_ids=["0a1b2c3d4e5f601234567890"]) == []
    assert scan_phi("The Springfield clinic", phi_values={"springfield"}) == ["listed_value"]
    item = _one()
    r = _check(item, lambda t: t + " Imaged 2019-02-03.")
    assert r["phi_found"] and r["position_ok"] and r["texture_ok"]  # PHI is its own finding
    q = check_captions(_frame([item], EmbeddedCaptioner().caption([item])), {item.key: item},
                       phi_values={item.label})
    assert q["phi_found"].to_list() == [True] and q["passed"].to_list() == [False]


def test_position_claim_parser():
    claims, rest = position_claims("Positioned horizontally at the left-centre and vertically in the lower third.")
    assert ("h", "left") in claims and ("v", "lower") in claims and "left" not in rest


def test_failed_and_unmatched_captions_are_reported():
    item = _one()
    df = pl.DataFrame([
        {"record_id": item.record_id, "roi_id": item.roi_id, "status": "failed", "error": "HTTP 500",
         "text": None, "retrieved_chunk_ids": [], **{f"facet_{k}": None for k in FACETS}},
        {"record_id": "nope", "roi_id": item.roi_id, "status": "ok", "error": None, "text": "x" * 100,
         "retrieved_chunk_ids": [], **{f"facet_{k}": "present facet" for k in FACETS}},
    ])
    q = check_captions(df, {item.key: item})
    assert q["consistent"].to_list() == [False, False]
    assert "caption failed: HTTP 500" in q["issues"][0].to_list()
    assert "no input found for this caption" in q["issues"][1].to_list()


# -- batches --------------------------------------------------------------------------------------


class Counting(EmbeddedCaptioner):
    def __init__(self, fail_ids=()):
        super().__init__()
        self.seen: list[str] = []
        self.fail_ids = set(fail_ids)

    def caption(self, items):
        self.seen.extend(i.record_id for i in items)
        out = super().caption(items)
        return [CaptionResult.failed("boom", raw="r") if i.record_id in self.fail_ids else r
                for i, r in zip(items, out, strict=True)]


def test_batch_caches_resumes_and_writes_contract_columns(tmp_path):
    items = realistic_inputs(70, seed=8)
    path = tmp_path / "caption_batch" / "demo.parquet"
    progress = []
    cap = Counting(fail_ids={items[3].record_id})
    res = run_caption_batch(items + items[:5], cap, path, chunk_size=16, progress=lambda d, t: progress.append((d, t)))
    assert (res.total, res.computed, res.cached, res.failed, res.duplicates_dropped) == (70, 70, 0, 1, 5)
    assert res.chunks_written == 5 and progress[0] == (0, 70) and progress[-1] == (70, 70)
    assert not parts_dir(path).exists()
    df = pl.read_parquet(path)
    assert df.columns == CAPTION_COLUMNS
    assert df.height == 70 and df.select("record_id", "roi_id").n_unique() == 70
    row = df.filter(pl.col("record_id") == items[0].record_id).row(0, named=True)
    assert row["backend"] == "embedded" and row["prompt_version"] == PROMPT_VERSION
    assert json.loads(row["facets"])["modality"] == row["facet_modality"]
    assert row["retrieved_chunk_ids"] == items[0].chunk_ids and row["created_at"] is not None
    assert row["inputs_hash"] == cap.inputs_hash(items[0])
    failed = df.filter(pl.col("status") == "failed").row(0, named=True)
    assert failed["error"] == "boom" and failed["raw"] == "r" and failed["text"] is None

    # rerun: only the failed one is retried
    cap2 = Counting()
    res2 = run_caption_batch(items, cap2, path, chunk_size=16)
    assert cap2.seen == [items[3].record_id] and res2.failed == 0 and res2.cached == 69
    # a changed input (new passage text) recomputes just that ROI; the rest comes from the cache
    changed = list(items)
    changed[10] = dataclasses.replace(items[10], coarse_caption="changed")
    cap3 = Counting()
    run_caption_batch(changed, cap3, path, chunk_size=16)
    assert cap3.seen == [items[10].record_id]
    assert pl.read_parquet(path).height == 70
    # leftover parts from a killed run are picked up, duplicates merged
    cap4 = Counting()
    run_caption_batch(changed, cap4, path)
    assert cap4.seen == []


def test_caption_slices_are_row_groups_and_a_rerun_reads_cached_rows_slice_by_slice(tmp_path):
    """A shard described in slices holds one slice at a time: the table has one row group per
    slice, equal to the table of one batch; a rerun in other slices computes nothing and reads
    each slice's cached rows back by hash; an input repeated in a later slice is dropped."""
    items = realistic_inputs(60, seed=3)
    whole, sliced = tmp_path / "whole.parquet", tmp_path / "caption_batch" / "demo.parquet"
    run_caption_batch(items, EmbeddedCaptioner(), whole)
    slices = [items[:25], items[25:50], [*items[50:], items[0]]]  # chunks of 8 within each: 4 + 4 + 2
    res = run_caption_slices(iter(slices), Counting(), sliced, total=60, chunk_size=8)
    assert (res.total, res.computed, res.duplicates_dropped, res.chunks_written) == (60, 60, 1, 10)
    assert pq.ParquetFile(sliced).metadata.num_row_groups == 3
    keep = pl.exclude("created_at")
    assert pl.read_parquet(sliced).select(keep).equals(pl.read_parquet(whole).select(keep))
    again = Counting()
    res2 = run_caption_slices(iter([items[:10], items[10:]]), again, sliced, total=60)
    assert again.seen == [] and (res2.cached, res2.computed) == (60, 0)
    assert pq.ParquetFile(sliced).metadata.num_row_groups == 2
    assert pl.read_parquet(sliced).select(keep).equals(pl.read_parquet(whole).select(keep))


def test_batch_writes_its_contract_and_handles_empty(tmp_path):
    """Integer roi ids are written as the contract's strings (as roi_set writes them)."""
    items = [dataclasses.replace(i, roi_id=k) for k, i in enumerate(realistic_inputs(5))]
    run_caption_batch(items, EmbeddedCaptioner(), tmp_path / "a.parquet")
    table = pl.read_parquet(tmp_path / "a.parquet")
    assert table["roi_id"].dtype == pl.String and table["roi_id"].to_list() == ["0", "1", "2", "3", "4"]
    res = run_caption_batch([], EmbeddedCaptioner(), tmp_path / "b.parquet")
    assert res.total == 0 and pl.read_parquet(tmp_path / "b.parquet").columns == CAPTION_COLUMNS


# -- local VLM backend ----------------------------------------------------------------------------


def test_transformers_local_refuses_missing_or_bad_paths(tmp_path):
    from medtrinity_assets.captioning.backends.transformers_local import TransformersLocalCaptioner

    with pytest.raises(CaptionerConfigError, match="model_path"):
        make_captioner({"backend": "transformers_local", "model_path": None})
    with pytest.raises(CaptionerConfigError, match="not a local folder"):
        TransformersLocalCaptioner(tmp_path / "absent")
    with pytest.raises(CaptionerConfigError, match="not a local folder"):
        TransformersLocalCaptioner("someorg/some-vlm")  # a hub id is never downloaded
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptionerConfigError, match="config.json"):
        TransformersLocalCaptioner(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "no-such-vlm"}))
    with pytest.raises(CaptionerConfigError, match="local files only"):
        TransformersLocalCaptioner(bad).load()


class _FakeBatch(dict):
    def to(self, device):
        return self


class _FakeProcessor:
    def __init__(self, replies):
        self.replies = replies
        self.calls = []
        self.tokenizer = type("T", (), {"padding_side": "right"})()

    def apply_chat_template(self, convs, **kw):
        import torch

        self.calls.append((convs, kw))
        return _FakeBatch(input_ids=torch.zeros((len(convs), 3), dtype=torch.long))

    def batch_decode(self, ids, skip_special_tokens):
        return [self.replies.pop(0) for _ in range(ids.shape[0])]


class _FakeModel:
    def __init__(self):
        self.kwargs = []

    def generate(self, **kw):
        import torch

        self.kwargs.append(kw)
        return torch.zeros((kw["input_ids"].shape[0], 5), dtype=torch.long)

    def to(self, device):
        return self

    def eval(self):
        return self


def test_transformers_local_loads_local_only_and_generates_in_batches(tmp_path, monkeypatch):
    import transformers


    path = tmp_path / "vlm"
    path.mkdir()
    (path / "config.json").write_text("{}")
    good = json.dumps({k: f"{k} facet text" for k in FACETS})
    proc = _FakeProcessor([good, "no json here", good, "still no json"])
    model = _FakeModel()
    seen = {}

    def fake_proc(p, **kw):
        seen["processor"] = (p, kw)
        return proc

    def fake_model(p, **kw):
        seen["model"] = (p, kw)
        return model

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", fake_proc)
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", fake_model)
    cap = make_captioner({"backend": "transformers_local", "model_path": str(path), "device": "cpu"})
    assert isinstance(cap, Captioner) and cap.params["temperature"] == 0.1 and cap.params["max_new_tokens"] == 1024
    fp = cap.params["weights"]
    (path / "model.safetensors").write_bytes(b"x" * 10)
    assert make_captioner({"backend": "transformers_local", "model_path": str(path)}).params["weights"] != fp
    items = realistic_inputs(3)
    res = cap.caption(items)
    for key in ("processor", "model"):
        assert seen[key][1]["local_files_only"] is True and seen[key][1]["trust_remote_code"] is False
    assert [r.status for r in res] == ["ok", "failed", "ok"]
    assert "after one repair" in res[1].error and "still no json" in res[1].raw
    assert len(proc.calls[0][0]) == 3 and proc.tokenizer.padding_side == "left"
    assert model.kwargs[0]["max_new_tokens"] == 1024 and model.kwargs[0]["temperature"] == 0.1
    assert len(proc.calls) == 2 and len(proc.calls[1][0]) == 1  # one repair round, only for the failure


def test_digest_is_stable_across_processes():
    item = realistic_inputs(1)[0]
    h = EmbeddedCaptioner().inputs_hash(item)
    assert h == hashlib.sha256(b"").hexdigest() or len(h) == 64


def test_bordering_is_described_and_checked_against_the_masks():
    """White matter wrapped by a grey-matter ribbon open on one side is "bordered by" it (the builder's
    relation); the checks recompute bordering from the two masks, so a description that puts the
    relation the wrong way round, or names a region that does not touch it, fails."""
    from medtrinity_assets.captioning import check_captions
    from medtrinity_assets.rois.rle import rle_encode, rle_json

    yy, xx = np.mgrid[0:128, 0:128]
    d = np.hypot(yy - 64, xx - 64)
    gm = (d <= 40) & (d > 30) & ~((xx > 90) & (np.abs(yy - 64) < 8))
    wm = d <= 30

    def region(mask, roi_id, label, relation, other):
        rows, cols = np.nonzero(mask)
        box = [cols.min() / 128, rows.min() / 128, (cols.max() + 1) / 128, (rows.max() + 1) / 128]
        return _one(record_id="brain1", roi_id=roi_id, label=label, organ="brain", inside_label=None,
                    mask_rle=rle_json(rle_encode(mask)), bbox_norm=box, area_fraction=float(mask.mean()),
                    origin="mask", roi_count=2, horizontal="centre", vertical="middle",
                    relations=[{"other": other, "relation": relation, "other_label": "grey matter"
                                if label == "white matter" else "white matter", "overlaps": True}])

    items = [region(wm, "0", "white matter", "bordered by", "1"), region(gm, "1", "grey matter", "borders", "0")]
    results = EmbeddedCaptioner().caption(items)
    assert "it is bordered by the grey matter" in results[0].text
    assert "it borders the white matter" in results[1].text
    assert "left of" not in results[0].text and "right of" not in results[0].text

    def checked(edit=lambda i, t: t):
        rows = [{"record_id": i.record_id, "roi_id": i.roi_id, "status": "ok", "text": edit(k, r.text),
                 "retrieved_chunk_ids": i.chunk_ids, **{f"facet_{f}": edit(k, v) for f, v in r.facets.items()}}
                for k, (i, r) in enumerate(zip(items, results, strict=True))]
        table = check_captions(pl.DataFrame(rows), {i.key: i for i in items})
        return table["relations_ok"].to_list(), table["issues"].to_list()

    assert checked()[0] == [True, True]
    flipped, issues = checked(lambda k, t: t.replace("it borders the white matter", "it is bordered by the white matter"))
    assert flipped == [True, False]
    assert "bordering: says it bordered by the white matter, the masks disagree" in issues[1]
    elsewhere, _ = checked(lambda k, t: t.replace("bordered by the grey matter", "bordered by the ventricle"))
    assert elsewhere == [False, True]
    # a name the region lies within is given no second relation (two regions would seem named alike)
    from medtrinity_assets.captioning.phrasing import relation_phrases

    held = dataclasses.replace(items[0], inside_label="grey matter")
    assert relation_phrases(held, 5) == ["it lies within the grey matter"]
    beside = dataclasses.replace(items[0], relations=[*items[0].relations, {"other": "2", "relation": "left of",
                                                                            "other_label": "grey matter"}])
    assert relation_phrases(beside, 5) == ["it is bordered by the grey matter"]


def test_the_guard_checks_a_chunk_against_every_region_of_its_images(tmp_path):
    """A lesion that lies within a liver region of its image: the description saying so is true. In
    chunks of one description, the lesion's chunk holds no liver region; the guard must still
    check the claim against the whole image (as the batch saw it), not reject it and fall back."""
    from medtrinity_assets.captioning.guard import GuardedCaptioner
    from medtrinity_assets.rois.rle import rle_encode, rle_json

    yy, xx = np.mgrid[0:128, 0:128]
    liver, lesion = np.hypot(yy - 64, xx - 64) <= 40, np.hypot(yy - 60, xx - 70) <= 8

    def region(mask, roi_id, label, relation, other, other_label):
        rows, cols = np.nonzero(mask)
        box = [cols.min() / 128, rows.min() / 128, (cols.max() + 1) / 128, (rows.max() + 1) / 128]
        return _one(record_id="img1", roi_id=roi_id, label=label, inside_label=None, origin="mask",
                    mask_rle=rle_json(rle_encode(mask)), bbox_norm=box, area_fraction=float(mask.mean()),
                    horizontal="centre", vertical="middle", roi_count=2,
                    relations=[{"other": other, "relation": relation, "other_label": other_label}])

    items = [region(lesion, "0", "focal lesion", "lies within", "1", "liver"),
             region(liver, "1", "liver", "encloses", "0", "focal lesion")]
    guarded = GuardedCaptioner(EmbeddedCaptioner())
    res = run_caption_batch(items, guarded, tmp_path / "c.parquet", chunk_size=1)
    table = pl.read_parquet(tmp_path / "c.parquet")
    assert table.filter(pl.col("roi_id") == "0")["text"].str.contains("lies within the liver").all()
    assert res.fallbacks == 0, table["fallback_reason"].to_list()
    guarded.see([])  # a chunk of images it has not seen is checked against itself
    [alone] = guarded.caption([items[0]])
    assert alone.fallback_reason and "containment" in alone.fallback_reason


def _checked_after(items, results, column: str, old: str = "", new: str = "", only: int | None = None):
    """``(column values, issues)`` of ``check_captions`` over the embedded descriptions of ``items`` with
    ``old`` replaced by ``new`` in paragraph and facets (of the ``only``-th description alone, if given)."""
    from medtrinity_assets.captioning import check_captions

    def edit(k: int, text: str) -> str:
        return text.replace(old, new) if only is None or k == only else text

    rows = [{"record_id": i.record_id, "roi_id": i.roi_id, "status": "ok", "text": edit(k, r.text),
             "retrieved_chunk_ids": i.chunk_ids, **{f"facet_{f}": edit(k, v) for f, v in r.facets.items()}}
            for k, (i, r) in enumerate(zip(items, results, strict=True))]
    table = check_captions(pl.DataFrame(rows), {i.key: i for i in items})
    return table[column].to_list(), table["issues"].to_list()


def test_a_direction_in_the_image_is_checked_against_the_centroids_of_the_named_regions():
    """"lies left of the cyst in the image" holds when the image's cyst region's centroid is right of
    this region's; the opposite fails; a name no region of the image has is not checked here (the
    terms check reads it)."""
    from medtrinity_assets.rois.rle import rle_encode, rle_json

    yy, xx = np.mgrid[0:128, 0:128]
    left, right = np.hypot(yy - 40, xx - 30) <= 10, np.hypot(yy - 90, xx - 100) <= 12

    def region(mask, roi_id, label, relation, other_label):
        rows, cols = np.nonzero(mask)
        box = [cols.min() / 128, rows.min() / 128, (cols.max() + 1) / 128, (rows.max() + 1) / 128]
        return _one(record_id="img2", roi_id=roi_id, label=label, inside_label=None, origin="mask",
                    mask_rle=rle_json(rle_encode(mask)), bbox_norm=box, area_fraction=float(mask.mean()),
                    horizontal="left" if roi_id == "0" else "right", vertical="upper" if roi_id == "0" else "lower",
                    roi_count=2, relations=[{"other": str(1 - int(roi_id)), "relation": relation,
                                             "other_label": other_label}])

    items = [region(left, "0", "focal lesion", "above and left of", "cyst"),
             region(right, "1", "cyst", "below and right of", "focal lesion")]
    results = EmbeddedCaptioner().caption(items)
    assert "it lies above and left of the cyst in the image" in results[0].text

    def relations_ok(old: str, new: str) -> tuple[list[bool], list[list[str]]]:
        return _checked_after(items, results, "relations_ok", old, new)

    assert relations_ok("", "")[0] == [True, True]
    assert relations_ok("above and left of the cyst", "left of the cyst")[0] == [True, True]
    wrong, issues = relations_ok("above and left of the cyst", "below and left of the cyst")
    assert wrong == [False, True] and "direction: says it below and left of the cyst, the masks disagree" in issues[0]
    assert relations_ok("above and left of the cyst", "to the right of the cyst")[0] == [False, True]
    assert relations_ok("above and left of the cyst", "left of the kidney")[0] == [True, True]


def test_a_region_that_shares_its_label_is_one_of_them_and_the_count_is_checked():
    """White matter cut into two pieces in a slice: each piece is "one of two regions labelled white
    matter", not "the white matter"; the checks count the image's regions of that label, so "one of
    several" (or a count said of a label no other region shares) fails."""
    from medtrinity_assets.rois.rle import rle_encode, rle_json

    yy, xx = np.mgrid[0:128, 0:128]
    pieces = {"0": (np.hypot(yy - 64, xx - 35) <= 14, "white matter"), "1": (np.hypot(yy - 64, xx - 93) <= 14, "white matter"),
              "2": (np.hypot(yy - 20, xx - 64) <= 6, "focal lesion")}

    def region(roi_id):
        mask, label = pieces[roi_id]
        rows, cols = np.nonzero(mask)
        box = [cols.min() / 128, rows.min() / 128, (cols.max() + 1) / 128, (rows.max() + 1) / 128]
        return _one(record_id="img3", roi_id=roi_id, label=label, inside_label=None, origin="mask", organ="brain",
                    mask_rle=rle_json(rle_encode(mask)), bbox_norm=box, area_fraction=float(mask.mean()),
                    horizontal="left" if roi_id == "0" else "right" if roi_id == "1" else "centre",
                    vertical="middle" if roi_id != "2" else "upper", roi_count=3, relations=[],
                    label_count=2 if label == "white matter" else 1)

    items = [region(k) for k in pieces]
    results = EmbeddedCaptioner().caption(items)
    assert "one of two regions labelled white matter" in results[0].text
    assert "regions labelled" not in results[2].text and "is the focal lesion" in results[2].text

    def relations_ok(k: int, old: str, new: str) -> tuple[list[bool], list[list[str]]]:
        return _checked_after(items, results, "relations_ok", old, new, only=k)

    assert relations_ok(0, "", "")[0] == [True, True, True]
    several, issues = relations_ok(0, "one of two regions", "one of several regions")
    assert several == [False, True, True]
    assert any(i.startswith("label count: says it is one of several") for i in issues[0])
    lone, _ = relations_ok(2, "is the focal lesion", "is one of two regions labelled focal lesion")
    assert lone == [True, True, False]


def test_a_region_across_most_of_the_image_gets_no_third_on_that_axis():
    """A band across the image's width lies in no horizontal third: the description gives its vertical
    third and box span only, and a horizontal third said of it fails the checks; a region across the
    whole image in both directions is placed by its box span alone."""
    from medtrinity_assets.rois.rle import rle_encode, rle_json

    def region(mask, roi_id, horizontal, vertical):
        rows, cols = np.nonzero(mask)
        box = [cols.min() / 128, rows.min() / 128, (cols.max() + 1) / 128, (rows.max() + 1) / 128]
        return _one(record_id="img4", roi_id=roi_id, label="lesion", inside_label=None, origin="mask",
                    mask_rle=rle_json(rle_encode(mask)), bbox_norm=box, area_fraction=float(mask.mean()),
                    horizontal=horizontal, vertical=vertical, patient_lr=None, roi_count=2, relations=[],
                    label_count=2)

    band, sheet = np.zeros((128, 128), bool), np.zeros((128, 128), bool)
    band[10:30, 4:120] = True
    sheet[4:124, 4:124] = True
    items = [region(band, "0", None, "upper"), region(sheet, "1", None, None)]
    results = EmbeddedCaptioner().caption(items)
    assert "It lies vertically in the upper third of the image" in results[0].text
    assert "horizontal" not in results[0].text and "horizontal" not in results[1].text
    assert "Its bounding box spans 3-97% of the image width" in results[1].text

    def position_ok(old: str, new: str) -> tuple[list[bool], list[list[str]]]:
        return _checked_after(items, results, "position_ok", old, new)

    assert position_ok("", "")[0] == [True, True]
    said, issues = position_ok("vertically in the upper third of the image",
                               "vertically in the upper third and horizontally in the left third of the image")
    assert said == [False, True]
    assert "image position: says horizontal left, the region spans most of the image along it" in issues[0]


def test_the_checks_read_the_position_words_as_the_roi_configuration_defines_them(monkeypatch):
    """A user who lets a region span more of the image and still be placed in a third
    (``position.max_span`` in ``roi_config.yaml``) has the checks and the prompt read it the same way:
    a band across 91% of the width placed in the centre third passes only under that definition, and a
    prompt says it spans too much of the width for a third only under the packaged one."""
    from medtrinity_assets.captioning.prompt import build_reference_text
    from medtrinity_assets.rois import config as roi_config
    from medtrinity_assets.rois.rle import rle_encode, rle_json

    band = np.zeros((128, 128), bool)
    band[10:30, 4:120] = True
    item = _one(record_id="img5", roi_id="0", label="lesion", inside_label=None, origin="mask",
                mask_rle=rle_json(rle_encode(band)), bbox_norm=[4 / 128, 10 / 128, 120 / 128, 30 / 128],
                area_fraction=float(band.mean()), horizontal="centre", vertical="upper", patient_lr=None,
                roi_count=1, relations=[], label_count=1)
    results = EmbeddedCaptioner().caption([item])
    assert "horizontally in the central third" in results[0].text
    said, issues = _checked_after([item], results, "position_ok")
    assert said == [False] and "the region spans most of the image along it" in issues[0][0]
    unplaced = dataclasses.replace(item, horizontal=None)
    assert "horizontal none: the region spans most" in build_reference_text(unplaced)

    monkeypatch.setattr(roi_config, "_DEFAULT", roi_config.default_config().with_overrides(position_max_span=0.95))
    assert _checked_after([item], results, "position_ok")[0] == [True]
    assert "horizontal unknown" in build_reference_text(unplaced)


def test_a_region_within_one_region_of_a_name_encloses_another_of_it():
    """White matter within the cortex that encloses deep grey matter: "it lies within the grey matter;
    it encloses another grey matter region", never "within the grey matter; encloses the grey matter"."""
    from medtrinity_assets.captioning.phrasing import relation_phrases

    item = _one(label="white matter", inside_label=None, relations=[
        {"other": "2", "relation": "encloses", "other_label": "grey matter"},
        {"other": "1", "relation": "lies within", "other_label": "grey matter"}])
    assert relation_phrases(item, 5) == ["it lies within the grey matter", "it encloses another grey matter region"]
    alone = dataclasses.replace(item, relations=item.relations[:1])
    assert relation_phrases(alone, 5) == ["it encloses the grey matter"]


def test_a_region_is_never_said_to_lie_within_its_own_label():
    """Deep grey nuclei inside the cortex's outline: "grey matter ... lies within the grey matter" (a
    review by eye) reads as a tautology; the region is compared with its immediate surroundings."""
    from medtrinity_assets.captioning.phrasing import holder_label, relation_phrases, surround_phrase

    item = _one(label="grey matter", inside_label="grey matter", relations=[
        {"other": "1", "relation": "lies within", "other_label": "grey matter"},
        {"other": "3", "relation": "bordered by", "other_label": "white matter"}])
    assert holder_label(item) is None and surround_phrase(item) == "its immediate surroundings"
    assert relation_phrases(item, 5) == ["it is bordered by the white matter"]
    text = EmbeddedCaptioner().caption([item])[0].text
    assert "within the grey matter" not in text and "surrounding grey matter" not in text
    inside_other = dataclasses.replace(item, inside_label="brain")
    assert relation_phrases(inside_other, 5)[0] == "it lies within the brain"


def test_the_prompt_tells_a_model_what_the_embedded_captioner_would_say():
    """A model backend reads in its prompt that a region across most of the image width has no
    horizontal third, and that it is one of several regions with its label."""
    from medtrinity_assets.captioning.prompt import build_reference_text

    item = dataclasses.replace(_one(), horizontal=None, bbox_norm=[0.02, 0.1, 0.95, 0.3], label_count=3)
    text = build_reference_text(item)
    assert "horizontal none: the region spans most of the image width (name no third)" in text
    assert f"one of several regions labelled {item.label} in this image" in text
    assert "horizontal unknown" in build_reference_text(dataclasses.replace(item, bbox_norm=None))
