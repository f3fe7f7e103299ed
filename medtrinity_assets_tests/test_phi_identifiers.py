"""Identifying values are found in any order, case and script, in text and in paths."""

from __future__ import annotations

import random
import re

import polars as pl
import pydicom

from medtrinity_assets.captioning.quality import scan_phi
from medtrinity_assets.ingest.pipeline import ingest_source
from medtrinity_assets.privacy import dicom_identifier_values, scrub_text
from medtrinity_assets.privacy.identifiers import IdentifierMatcher, matcher_for, person_name_tokens
from medtrinity_assets_tests.sources_builders import make_spec, pydicom_file, truncated_copy


def test_short_and_cjk_name_tokens_are_names():
    assert person_name_tokens("Li^Na") == {"Li", "Na"}
    assert person_name_tokens("Wu^Bo^^Dr^Jr") == {"Wu", "Bo"}  # prefix and suffix are not names
    assert person_name_tokens("山田^太郎=ヤマダ^タロウ") == {"山田", "太郎", "ヤマダ", "タロウ"}
    assert person_name_tokens("李^娜") == {"李", "娜"}
    assert person_name_tokens("CompressedSamples^CT1") == {"CompressedSamples"}
    # pseudonyms and placeholders of public datasets are codes, not names to hunt in captions
    assert person_name_tokens("PANCREAS_0001") == set() and person_name_tokens("Anonymized^Patient") == set()
    assert not matcher_for(["PANCREAS_0001"]).search("It shows the pancreas.")
    assert person_name_tokens("O'Brien^J") == {"O'Brien"}  # single Latin letters are initials
    assert matcher_for(["O'Brien^J"]).search("seen by O'BRIEN today")


def test_names_match_as_words_in_any_order_and_case():
    m = matcher_for(["Li^Na"])
    for text in ("Patient Li Na", "NA, LI", "Na Li was scanned", "li^na", "seen by Li."):
        assert m.search(text), text
    for text in ("Liver and nasal cavity", "Lithium", "Linear", "a natural lining"):
        assert not m.search(text), text
    assert scan_phi("Axial CT of the liver of Na LI.", ["Li^Na"]) == ["listed_value"]
    assert scan_phi("Axial CT of the liver.", ["Li^Na"]) == []
    assert scrub_text("Follow-up Na Li, liver lesion", ["Li^Na"]) == "Follow-up , liver lesion"
    cjk = matcher_for(["山田^太郎", "李^娜"])
    assert cjk.search("患者山田太郎様") and cjk.search("太郎山田") and cjk.search("李娜")
    assert not cjk.search("Axial CT of the liver")


def test_paths_carrying_a_name_in_any_form_are_redacted():
    m = matcher_for(["Li^Na", "山田^太郎", "PID12345", "20200101"])
    for rel in ("Li_Na/1.dcm", "NA-LI/1.dcm", "NaLi/1.dcm", "山田太郎/1.dcm", "太郎/1.dcm",
                "x/PID12345_ct/1.dcm", "2020-01-01/1.dcm"):
        red = m.redact_path(rel)
        assert red != rel and red.split("/")[-1] == "1.dcm" and red.startswith(("~", "x/~")), rel
    for rel in ("liver/scan_01.dcm", "Linear/1.dcm", "nasal/1.dcm"):
        assert m.redact_path(rel) == rel


def test_trie_regex_matches_like_a_plain_alternation():
    rng = random.Random(0)
    alphabet = "abcde"
    words = {"".join(rng.choice(alphabet) for _ in range(rng.randint(2, 6))) for _ in range(300)}
    m = IdentifierMatcher(words)
    naive = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, sorted(words, key=len, reverse=True))) + r")(?!\w)")
    for _ in range(500):
        text = " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7))) for _ in range(5))
        assert m.search(text) == bool(naive.search(text)), text
        assert m.sub(text, "#") == naive.sub("#", text), text


def test_dicom_header_names_of_any_length_and_script(tmp_path):
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"), stop_before_pixels=True)
    ds.PatientName = "Li^Na"
    ds.ReferringPhysicianName = "山田^太郎"
    values = dicom_identifier_values(ds)
    assert {"Li", "Na", "Li^Na", "山田", "太郎", "山田太郎", "太郎山田"} <= values


def test_a_patient_named_folder_is_redacted_for_every_file_in_it(tmp_path):
    """Source-wide identifiers: the non-DICOM note and the truncated copy in the patient's
    folder have no header of their own to name the patient, but their paths still do."""
    root = tmp_path / "src"
    for folder, name in (("Na_Li", "Li^Na"), ("山田太郎", "山田^太郎")):
        (root / folder).mkdir(parents=True)
        ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, so the kanji name is stored as written
        ds.PatientName = name
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(root / folder / "ct.dcm")
        (root / folder / "notes.txt").write_text("not an image")
        truncated_copy(root / folder / "ct.dcm", root / folder / "broken.dcm")
    spec = make_spec(tmp_path, "named2", "dicom", root, modality="CT", organ="abdomen")
    out = tmp_path / "out"
    res = ingest_source(spec, out, workers=1)
    m = res.manifest
    assert (m["status"] == "quarantined").sum() == 4 and (m["status"] != "quarantined").sum() == 2
    needles = ("li", "na", "山田", "太郎")
    for col in ("relpath", "reason", "description"):
        for cell in m[col].drop_nulls().to_list():
            tokens = {t.lower() for t in re.split(r"[^\w]+|_", cell) if t}
            assert not tokens & {"li", "na"} and "山田" not in cell and "太郎" not in cell, (col, cell)
    assert all(r.startswith("~") for r in m["relpath"].to_list()), m["relpath"].to_list()
    for f in out.rglob("*"):
        assert not any(n in f.name.lower().split("_") for n in needles), f
    assert ingest_source(spec, out, workers=1).manifest.equals(m)  # stable across reruns
    assert m.filter(pl.col("status") == "quarantined")["reason"].str.contains("not_dicom|truncated").all()


def test_demo_identifiers_do_not_flag_the_demo_vocabulary(demo_registry, tmp_path):
    """Header values of the demo DICOM sources (pseudonyms such as PANCREAS_0001) must not
    make the PHI scan flag the words a description of them has to use."""
    from pathlib import Path

    from medtrinity_assets.core.vocabulary import vocabulary
    from medtrinity_assets.ingest.readers import reader_for
    from medtrinity_assets.ingest.registry import load_registry
    from medtrinity_assets.privacy import identifier_store

    phrases = [m.phrase for m in vocabulary().modalities] + [m.caption for m in vocabulary().modalities]
    specs, _ = load_registry(demo_registry)
    dicom = [s for s in specs if s.layout == "dicom"]
    assert len(dicom) >= 4
    store = identifier_store(tmp_path)
    for spec in dicom:
        scan = reader_for("dicom").scan(spec, Path(spec.resolved_root()), lambda fn, items: map(fn, items))
        assert scan.identifiers, spec.name
        store.save(spec.name, scan.identifiers)
        words = [spec.organ, spec.modality, *spec.labels.values(), *phrases]
        text = "This is an image. " + ". ".join(words)
        assert scan_phi(text, scan.identifiers) == [], (spec.name, text)
        assert scan_phi(text, store.matcher(spec.name)) == [], (spec.name, text)
