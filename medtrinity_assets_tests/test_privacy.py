"""One privacy module: what the scrubber leaves, the detector never flags; every free-text column of
a table source is scrubbed in ingestion; a source's identifiers reach the final check as hashes."""

from __future__ import annotations

import json
import os
import stat

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from medtrinity_assets.privacy import find_phi, identifier_store, scrub_text
from medtrinity_assets.privacy.patterns import KINDS

TITLES = ["Dr.", "Dr", "Mr.", "Mr", "Mrs.", "Mrs", "Ms.", "Ms", "Prof.", "Prof"]
NAMES = ["Smith", "Jones", "Okafor", "Nguyen", "O'Brien", "Müller", "García-López", "Li", "Kowalski"]
GIVEN = ["Jane", "John", "Amara", "Wei", "Olga", "Sean"]
MONTHS = ["January", "Feb", "March", "Apr.", "May", "June", "Jul", "August", "Sept", "October", "Nov", "December"]
WORDS = ["CT", "MRI", "axial", "lesion", "of", "the", "liver", "left", "seen", "on", "follow-up", "mass", "3.5 mm",
         "0.55-0.55", "contrast 0.147", "42%", "T2-weighted", "no", "change", "since", "report", "and", ":", ",", ".", "(", ")"]


@st.composite
def phi_piece(draw) -> str:
    kind = draw(st.sampled_from(["titled", "iso", "us", "dmy", "mdy", "phone", "email", "record", "digits"]))
    y, m, d = draw(st.integers(1950, 2030)), draw(st.integers(1, 12)), draw(st.integers(1, 28))
    if kind == "titled":
        who = draw(st.sampled_from(NAMES))
        if draw(st.booleans()):
            who = f"{draw(st.sampled_from(GIVEN))} {who}"
        return f"{draw(st.sampled_from(TITLES))} {who}"
    if kind == "iso":
        return f"{y}-{m:02d}-{d:02d}"
    if kind == "us":
        return f"{m:02d}/{d:02d}/{y}"
    if kind == "dmy":
        return f"{d} {draw(st.sampled_from(MONTHS))} {y}"
    if kind == "mdy":
        return f"{draw(st.sampled_from(MONTHS))} {d}, {y}"
    if kind == "phone":
        a, b, c = draw(st.integers(200, 999)), draw(st.integers(200, 999)), draw(st.integers(1000, 9999))
        return draw(st.sampled_from([f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"+1 {a} {b} {c}", f"+44 20 {b}{c % 10} {c}"]))
    if kind == "email":
        return f"{draw(st.sampled_from(GIVEN)).lower()}.{draw(st.sampled_from(NAMES)).lower()}@hospital.org"
    if kind == "record":
        return f"{draw(st.sampled_from(['MRN', 'MRN:', 'ID', 'Acc#', 'Accession', 'Record no.']))} {draw(st.integers(1000, 99999999))}"
    return str(draw(st.integers(100000, 10**12)))


@st.composite
def report_text(draw) -> str:
    parts = draw(st.lists(st.one_of(st.sampled_from(WORDS), phi_piece()), min_size=1, max_size=14))
    return " ".join(parts)


@settings(max_examples=400, deadline=None)
@given(report_text(), st.lists(st.sampled_from(["Doe^Jane", "PID12345", "20210303", "Springfield General"]), max_size=3))
def test_nothing_the_scrubber_outputs_is_flagged(text, identifiers):
    scrubbed = scrub_text(text, identifiers)
    assert find_phi(scrubbed, identifiers) == [], (text, scrubbed)


@settings(max_examples=200, deadline=None)
@given(phi_piece())
def test_every_generated_phi_piece_is_detected(piece):
    assert find_phi(f"Seen by the team: {piece} today.") != [], piece
    assert find_phi(f"Seen by the team ({piece}).") != [], piece


def test_the_cases_the_issue_names():
    for text in ("Mr. Smith", "Dr. Jane Doe", "March 3, 2021", "3 March 2021", "03/04/2021", "2021-03-04",
                 "call 555-123-4567", "jane.doe@hospital.org", "MRN 1234567"):
        assert find_phi(text), text
        scrubbed = scrub_text(f"Liver lesion, {text}, stable.")
        assert scrubbed.startswith("Liver lesion,") and scrubbed.endswith("stable.") and not find_phi(scrubbed)
    assert set(KINDS) >= {"titled_name", "date", "phone", "email", "identifier", "dicom_name"}


def test_descriptions_stay_clean():
    """What descriptions legitimately hold is not PHI."""
    text = ("An axial T2-weighted MR image; its box spans 0.55-0.55 of the width and 0.13-0.34 of the height, "
            "it covers 4.4% of the image area (mean 132 inside versus 119 around it, contrast 0.0528), "
            "longest diameter 43.4 mm, normalised distance 0.23. MR shows a hyperintense mass [0a1b2c3d4e5f6071].")
    assert find_phi(text) == []


def test_identifier_store_keeps_hashes_only(tmp_path):
    store = identifier_store(tmp_path)
    assert store.save("src", ["Doe^Jane", "PID12345", "1.2.840.10008.1"]) > 0
    raw = store.path("src").read_text()
    for value in ("doe", "jane", "pid12345"):  # letters outside hex digits: never in a digest by chance
        assert value not in raw.lower()
    assert stat.S_IMODE(os.stat(store.path("src")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "_private").st_mode) == 0o700
    m = store.matcher("src")
    assert m.search("seen: JANE doe") and m.search("Doe, Jane") and m.search("uid 1.2.840.10008.1 here")
    assert m.search("Jane's neighbour")  # a name token alone is the patient's given name
    assert not m.search("pid123456") and not m.search("a CT of the liver") and not m.search("Janet Doel")
    assert not identifier_store(tmp_path).matcher("absent").search("Doe Jane")
    assert json.loads(raw)["format"] == "medtrinity-identifiers-v1"


def test_a_project_key_gives_a_patient_one_group_and_split_across_output_roots(tmp_path, monkeypatch):
    """Output roots keyed by one project key file give a patient the same group id (so the same
    split); the key is never copied into a root, which records only a check of it and refuses any
    other key afterwards; a key file others can read, or of the wrong size, is refused clearly."""
    import pytest

    from medtrinity_assets.export.splits import hashed_split
    from medtrinity_assets.ingest.pipeline import ingest_source
    from medtrinity_assets.privacy.store import KEY_FILE_ENV, PseudonymKeyError
    from medtrinity_assets_tests.sources_builders import copy_dicoms, make_spec

    spec = make_spec(tmp_path, "ct", "dicom", copy_dicoms(tmp_path / "src", ["CT_small.dcm", "MR_small.dcm"]),
                     modality="CT", organ="head")

    def groups(out):
        return ingest_source(spec, tmp_path / out, workers=1).manifest["group_id"].drop_nulls().to_list()

    alone = [groups("own_a"), groups("own_b")]
    assert alone[0] and alone[0] != alone[1], "each root's own key: other pseudonyms"

    key = tmp_path / "project.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    monkeypatch.setenv(KEY_FILE_ENV, str(key))
    shared = [groups("project_a"), groups("project_b")]
    assert shared[0] == shared[1] and set(shared[0]).isdisjoint(alone[0])
    assert [hashed_split(g) for g in shared[0]] == [hashed_split(g) for g in shared[1]]
    for out in ("project_a", "project_b"):
        files = [p for p in (tmp_path / out).rglob("*") if p.is_file()]
        assert not (tmp_path / out / "_private" / "identifiers.key").exists()
        assert all(key.read_bytes() not in p.read_bytes() for p in files), "the key stays out of the root"

    with pytest.raises(PseudonymKeyError, match="another pseudonym key"):
        groups("own_a")  # a root keyed by its own key refuses the project's
    monkeypatch.delenv(KEY_FILE_ENV)
    with pytest.raises(PseudonymKeyError, match="built with a project pseudonym key"):
        groups("project_a")  # and a project root refuses a key of its own
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    monkeypatch.setenv(KEY_FILE_ENV, str(other))
    with pytest.raises(PseudonymKeyError, match="another pseudonym key"):
        groups("project_a")
    other.chmod(0o644)
    with pytest.raises(PseudonymKeyError, match="readable by others"):
        groups("fresh")
    other.chmod(0o600)
    other.write_bytes(b"short")
    with pytest.raises(PseudonymKeyError, match="not 32 to 64 random bytes"):
        groups("fresh")


def test_table_source_free_text_is_scrubbed_in_ingestion(tmp_path):
    """A titled name and an MM/DD/YYYY date in a report, a question, an answer and a label reach
    neither the manifest nor the coarse captions."""
    from medtrinity_assets.ingest import ingest_source
    from medtrinity_assets.metadata.coarse_captions import build_coarse_captions
    from medtrinity_assets_tests.sources_builders import make_spec

    root = tmp_path / "t"
    (root / "images").mkdir(parents=True)
    Image.effect_noise((64, 48), 60).save(root / "images" / "a.png")
    (root / "index.csv").write_text(
        "image,label,report,question,answer\n"
        'images/a.png,nodule seen by Dr. Okafor,"Reviewed by Mr. Smith on 03/04/2021, call 555-123-4567.",'
        '"Was Mrs. Jones seen on March 3, 2021?","yes, by Prof. Li (MRN 7654321)"\n'
    )
    spec = make_spec(tmp_path, "t", "table", root, modality="X-ray", organ="chest")
    res = ingest_source(spec, tmp_path / "out", workers=1)
    row = res.manifest.row(0, named=True)
    captions = build_coarse_captions(res.manifest, res.images, spec)
    texts = [row[c] or "" for c in ("label", "report", "question", "answer")] + list(row["labels"])
    texts += captions["caption"].to_list() + captions["terms"].explode().to_list()
    for text in texts:
        assert find_phi(text) == [], text
        for leaked in ("Okafor", "Smith", "Jones", "2021", "555", "7654321"):
            assert leaked not in text, (leaked, text)
    assert "nodule" in row["label"] and "Reviewed by" in row["report"]
    assert pl.Series(texts).str.contains("nodule").any()
