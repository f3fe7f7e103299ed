"""The offline ontology: concepts named by metadata phrases, their kinds, ICD-10 codes, term cleaning."""

from __future__ import annotations

import time

import pytest

from medtrinity_assets.core import icd_codes, ontology
from medtrinity_assets.core.icd_codes import icd10_for
from medtrinity_assets.core.ontology import (
    Concept,
    anatomy_words,
    clean_term,
    clean_terms,
    find_concepts,
    finding_concepts,
    is_known_term,
    kind_of,
    natural_order,
    normalise,
)

TIMES: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def built_once():
    """Build the indexes once for the module, timing each step (reported by the timing test)."""
    ontology.clear_cache()
    steps = {"load_icd_s": ontology._icd_rows, "load_mesh_s": ontology.load_mesh,
             "build_index_s": ontology._index, "build_icd_search_s": icd_codes._icd_search}
    for name, step in steps.items():
        start = time.perf_counter()
        step()
        TIMES[name] = time.perf_counter() - start


def named(text: str) -> set[tuple[str, str]]:
    return {(c.display.lower(), c.kind) for c in find_concepts(text)}


# --- the demo's metadata strings ---

DEMO = {
    "Non-ossifying fibroma of distal tibia": {("fibroma", "finding"), ("tibia", "anatomy")},
    "Echocardiogram / Transesophageal": {("transesophageal echocardiography", "technique")},
    "marked lesion<MPR Collection>": {("lesion", "finding")},
    "grey matter": {("gray matter", "anatomy")},
    "white matter": {("white matter", "anatomy")},
    "liver lesion": {("liver", "anatomy"), ("lesion", "finding")},
    "cultured cells": {("cultured cells", "anatomy")},
    "microaneurysms": {("microaneurysm", "finding")},
    "diabetic retinopathy": {("diabetic retinopathy", "finding")},
    "Head CT": {("head", "anatomy"), ("ct", "technique")},
    "pancreas": {("pancreas", "anatomy")},
    "whole body": {("whole body", "anatomy")},
    "lesion": {("lesion", "finding")},
}


@pytest.mark.parametrize("text", list(DEMO))
def test_demo_metadata_names_its_concepts(text):
    assert DEMO[text] <= named(text)
    assert is_known_term(text)


def test_demo_metadata_names_nothing_else():
    assert {kind for _, kind in named("Non-ossifying fibroma of distal tibia")} == {"finding", "anatomy"}
    assert "ossifying fibroma" not in {d for d, _ in named("Non-ossifying fibroma of distal tibia")}
    assert named("marked lesion<MPR Collection>") == {("lesion", "finding")}
    assert [c.code for c in find_concepts("diabetic retinopathy") if c.scheme == "ICD-10"] == ["H36.0"]
    assert find_concepts("Lv2") == []


def test_clean_terms_keeps_the_cleaned_terms_that_name_a_concept():
    terms = ["Non-ossifying fibroma of distal tibia", "Echocardiogram / Transesophageal", "Lv2",
             "marked lesion<MPR Collection>", "grey matter", "Grey Matter", "MPR", "cultured cells",
             "Series 3"]
    assert clean_terms(terms) == ["Non-ossifying fibroma of distal tibia", "Echocardiogram / Transesophageal",
                                  "marked lesion", "grey matter", "cultured cells"]
    assert clean_term("  liver_lesion [ROI 2] ") == "liver lesion"
    assert clean_term("<MPR Collection>") == ""


# --- normalisation: spellings, plurals, inverted MeSH labels ---


@pytest.mark.parametrize("british, american", [
    ("grey matter", "gray matter"), ("tumour", "tumor"), ("haematoma", "hematoma"), ("oedema", "edema"),
    ("oesophagus", "esophagus"), ("foetus", "fetus"), ("anaemia", "anemia"), ("haemorrhage", "hemorrhage"),
    ("paediatric", "pediatric"), ("localised", "localized"), ("fibre", "fiber"),
    ("coeliac disease", "celiac disease"),
])
def test_british_and_american_spellings_meet(british, american):
    assert normalise(british) == normalise(american)
    assert find_concepts(british) == find_concepts(american)


@pytest.mark.parametrize("plural, singular", [
    ("microaneurysms", "microaneurysm"), ("lesions", "lesion"), ("vertebrae", "vertebra"),
    ("bacteria", "bacterium"), ("metastases", "metastasis"), ("kidneys", "kidney"), ("polyps", "polyp"),
    ("fungi", "fungus"), ("ganglia", "ganglion"), ("viruses", "virus"), ("abscesses", "abscess"),
    ("echocardiograms", "echocardiography"), ("mycoses", "mycosis"),
])
def test_plurals_meet_their_singular(plural, singular):
    assert normalise(plural) == normalise(singular)
    assert find_concepts(plural)


def test_inverted_mesh_labels_read_in_both_orders():
    assert natural_order("Fibromatosis, Gingival") == "Gingival Fibromatosis"
    assert natural_order("Leukemia, Myeloid, Acute") == "Acute Myeloid Leukemia"
    assert natural_order("Amino Acids, Peptides, and Proteins") == "Amino Acids, Peptides, and Proteins"
    assert natural_order("Chromosomes, Human, Pair 1") == "Chromosomes, Human, Pair 1"
    [concept] = find_concepts("gingival fibromatosis")
    assert (concept.scheme, concept.code, concept.label) == ("MeSH", "D005351", "Fibromatosis, Gingival")
    assert concept.display == "Gingival Fibromatosis" and concept.kind == "finding"
    assert find_concepts("Fibromatosis, Gingival") == [concept]


def test_normalise_glues_non_and_drops_possessives():
    assert normalise("Non-ossifying fibroma") == "nonossifying fibroma"
    assert normalise("Grey-matter tumours") == "gray matter tumor"
    assert {c.scheme for c in find_concepts("Alzheimer's disease")} >= {"MeSH", "ICD-10"}


# --- junk and generic words ---


@pytest.mark.parametrize("text", [
    "Lv2", "MPR", "Patients", "Image", "Study", "Collection", "Series 2", "Left", "Right", "Normal", "Id",
    "<MPR Collection>", "1.2.840.10008.5.1", "", "   ", "Research", "Humans", "Body", "Water",
])
def test_junk_and_generic_words_name_nothing(text):
    assert find_concepts(text) == []
    assert not is_known_term(text)


def test_longest_match_and_nested_anatomy():
    assert [c.display for c in find_concepts("liver neoplasms")] == ["Liver Neoplasms"]
    assert "liver" in anatomy_words("Liver neoplasms")
    assert anatomy_words("grey matter") == anatomy_words("gray matter") == {"gray matter", "grey matter"}
    assert anatomy_words("Head CT") == {"head"}
    assert [c.display for c in finding_concepts("Non-ossifying fibroma of distal tibia")] == ["Fibroma"]
    assert finding_concepts("Head CT") == []


def test_modality_words_and_descriptions():
    assert named("T2 FLAIR") == {("mri", "technique")}  # the vocabulary's expressions
    assert {d for d, _ in named("PET/CT")} == {"pet", "ct"}  # not MeSH "Pets"
    description = ("Axial CT of the abdomen: a hypodense lesion in the right lobe of the liver, consistent "
                   "with hepatocellular carcinoma; no portal vein thrombosis or ascites.")
    findings = {c.display.lower() for c in finding_concepts(description)}
    assert {"lesion", "hepatocellular carcinoma", "portal vein thrombosis", "ascites"} <= findings
    assert {"abdomen", "liver", "portal vein"} <= anatomy_words(description)
    assert {c.code for c in icd10_for(description)} == {"I81", "R18"}  # the descriptions it names


# --- ICD-10 codes ---


def test_icd10_for_diabetic_retinopathy_gives_its_family():
    codes = [c.code for c in icd10_for("diabetic retinopathy")]
    assert codes[0] == "H36.0"
    assert {"E10.3", "E11.3"} <= set(codes)
    cm = {c.code for c in icd10_for("diabetic retinopathy") if c.scheme == "ICD-10-CM"}
    assert {"E10.31", "E11.31"} <= cm
    mesh = next(c for c in find_concepts("diabetic retinopathy") if c.scheme == "MeSH")
    assert icd10_for(mesh)[0].code == "H36.0"


def test_icd10_for_prefers_precision():
    assert icd10_for("tibia") == []  # not a finding
    assert icd10_for("liver lesion") == []  # no ICD-10 heading names a liver lesion
    assert icd10_for("Non-ossifying fibroma of distal tibia") == []  # only a broad heading would
    assert icd10_for("lung cancer")[0].code == "C34"  # the anatomy must be named too
    assert icd10_for("Lv2") == []
    who = Concept("ICD-10", "H36.0", "Diabetic retinopathy", "finding")
    assert icd10_for(who) == [who]
    assert all(c.kind == "finding" for c in icd10_for("pneumonia"))


# --- kinds: measured on labels classified by hand ---

F, A, T, OT = "finding", "anatomy", "technique", "other"
# domain labels, expected kinds written before looking at the heuristic's answer (some rules were then
# written from this list, so it measures the rules on terms the pipeline meets, not on unseen MeSH)
DOMAIN = {
    "Fibroma": F, "Fibromatosis, Gingival": F, "Diabetic Retinopathy": F, "Microaneurysm": F,
    "Liver Neoplasms": F, "Fractures, Bone": F, "Hematoma": F, "Pneumonia": F, "Carcinoma, Hepatocellular": F,
    "Glioblastoma": F, "Macular Degeneration": F, "Pleural Effusion": F, "Fatty Liver": F,
    "Multiple Sclerosis": F, "Osteoporosis": F, "Kidney Calculi": F, "Brain Edema": F, "Melanoma": F,
    "Cholelithiasis": F, "Alzheimer Disease": F, "Hydronephrosis": F, "Atrial Fibrillation": F,
    "Scoliosis": F,
    "Tibia": A, "Gray Matter": A, "White Matter": A, "Cells, Cultured": A, "Retina": A, "Pancreas": A,
    "Liver": A, "Colon": A, "Femoral Artery": A, "Hepatocytes": A, "Muscle, Skeletal": A, "Optic Disk": A,
    "Lymph Nodes": A, "Celiac Plexus": A, "Hippocampus": A, "Mitral Valve": A,
    "Echocardiography, Transesophageal": T, "Immunohistochemistry": T, "Staining and Labeling": T,
    "Microscopy, Phase-Contrast": T, "Tomography, X-Ray Computed": T, "Magnetic Resonance Imaging": T,
    "Ultrasonography, Doppler": T, "Fluorescein Angiography": T, "Positron-Emission Tomography": T,
    "Water": OT, "Humans": OT, "Gadolinium": OT, "Contrast Media": OT, "Research": OT, "Mitosis": OT,
    "Schistosoma mansoni": OT, "Hepatitis B virus": OT, "Geography": OT, "Apoptosis": OT, "Algorithms": OT,
}
# 30 MeSH labels drawn at random (random.Random(2024).sample(sorted(load_mesh()), 30)), classified by hand
# before running the heuristic; mostly "other", as MeSH is
RANDOM = {
    "Saxitoxin": OT, "Cell Cycle": OT, "Phalaris": OT, "Telefacsimile": OT, "Home Care Services": OT,
    "Colinus": OT,
    "Purinergic P1 Receptor Antagonists": OT, "Hyptis": OT, "Endopeptidases": OT, "Hyphomicrobiaceae": OT,
    "Orthoreovirus, Mammalian": OT, "Achromobacter cycloclastes": OT, "Fibrinolysis": OT,
    "Vestibular Function Tests": OT, "Emigration and Immigration": OT, "Aphasia, Primary Progressive": F,
    "Activating Transcription Factors": OT, "Behavior Control": OT, "Surgical Procedures, Operative": OT,
    "Medical Assistance": OT, "Phenyl Ethers": OT, "Urethane": OT, "Bambusa": OT,
    "Receptors, Metabotropic Glutamate": OT, "Dengue Virus": OT, "Hydroxylysine": OT,
    "3,4-Methylenedioxyamphetamine": OT, "Dioscoreaceae": OT, "KB Cells": A, "Trichophyton": OT,
}


@pytest.mark.parametrize("name, labels", [("domain", DOMAIN), ("random MeSH", RANDOM)])
def test_kind_heuristic_is_right_at_least_nine_times_in_ten(name, labels, record_property):
    wrong = {label: (want, kind_of(label)) for label, want in labels.items() if kind_of(label) != want}
    accuracy = 1 - len(wrong) / len(labels)
    record_property(f"kind_accuracy_{name}", accuracy)
    print(f"kind accuracy ({name}): {accuracy:.1%} of {len(labels)}; wrong: {wrong}")
    assert accuracy >= 0.9, wrong


def _same_index(a, b) -> bool:
    return (a.phrases, a.icd_keys, a.prefixes, a.pairs, a.max_words) == (b.phrases, b.icd_keys, b.prefixes, b.pairs,
                                                                         b.max_words)


def test_the_index_is_stored_once_and_read_back_as_built(tmp_path, monkeypatch):
    """Each process of a stage needs the phrase index: it is stored in the user cache under a hash of
    its sources and code and read back equal to the built one; a file that no longer matches its
    stored hash, or other sources, are built again."""
    built = ontology._index()  # built (or read) with the real sources by the module's fixture
    monkeypatch.setenv("MEDTRINITY_CACHE", str(tmp_path))
    builds: list = []
    monkeypatch.setattr(ontology, "_build", lambda mesh, icd: builds.append(mesh) or built)
    try:
        ontology.clear_cache()
        ontology._index()
        stored = sorted((tmp_path / "ontology").iterdir())
        assert len(builds) == 1 and [f.suffix for f in stored] == [".json", ".sha256"]
        ontology.clear_cache()
        assert _same_index(ontology._index(), built) and len(builds) == 1  # read back, not built
        stored[0].write_bytes(stored[0].read_bytes().replace(b'"anatomy"', b'"finding"', 1))
        ontology.clear_cache()
        assert _same_index(ontology._index(), built) and len(builds) == 2  # changed since written: built again
        monkeypatch.setattr(ontology, "load_mesh", lambda: [("D000001", "Calcimycin")])
        ontology.clear_cache()
        ontology._index()
        assert builds[-1] == [("D000001", "Calcimycin")] and len(builds) == 3  # other sources: another index
        assert len(list((tmp_path / "ontology").iterdir())) == 2  # the other version's file was removed
    finally:
        ontology.clear_cache()


def test_a_cache_that_cannot_be_reached_only_means_building(monkeypatch):
    """Without a home directory (a container user with no passwd entry) or a writable cache, the
    index is built as before."""
    from medtrinity_assets.core import user_cache

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(user_cache, "user_cache_dir", no_home)
    user_cache.write_record("ontology", "phrase-index", "k" * 64, {"x": 1})
    assert user_cache.read_record("ontology", "phrase-index", "k" * 64) is None
    built = ontology._index()
    try:
        ontology.clear_cache()
        assert _same_index(ontology._index(), built)
    finally:
        ontology.clear_cache()


# --- speed (reported, not asserted) ---


def test_index_build_and_lookup_times(record_property):
    index = ontology._index()
    phrases = list(DEMO) * 50
    start = time.perf_counter()
    for text in phrases:
        find_concepts(text)
    per_lookup = (time.perf_counter() - start) / len(phrases)
    start = time.perf_counter()
    for text in list(DEMO) * 5:
        icd10_for(text)
    per_icd = (time.perf_counter() - start) / (len(DEMO) * 5)
    times = {**TIMES, "find_concepts_us": per_lookup * 1e6, "icd10_for_ms": per_icd * 1e3}
    for key, value in times.items():
        record_property(key, value)
    print(f"index: {len(index.phrases)} keys; " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))
    assert index.max_words <= ontology.MAX_WORDS


# --- without MeSH (last: it rebuilds the index) ---


@pytest.fixture
def without_mesh(monkeypatch):
    monkeypatch.setattr(ontology, "load_mesh", lambda: [])
    ontology._index.cache_clear()  # the ICD-10 rows and search do not depend on MeSH
    yield
    ontology._index.cache_clear()  # the next use rebuilds with MeSH, once monkeypatch is undone


def test_load_mesh_is_empty_without_the_package(monkeypatch):
    monkeypatch.setattr(ontology.importlib.util, "find_spec", lambda name: None)
    assert ontology.load_mesh() == []


def test_without_mesh_icd10_and_the_vocabulary_still_work(without_mesh):
    assert {c.scheme for c in find_concepts("diabetic retinopathy")} == {"ICD-10"}
    assert named("liver lesion") >= {("liver", "anatomy"), ("lesion", "finding")}
    assert named("Head CT") >= {("head", "anatomy"), ("ct", "technique")}
    assert find_concepts("Lv2") == [] and find_concepts("Patients") == []
    kept = clean_terms(["marked lesion<MPR Collection>", "Lv2", "grey matter"])
    assert kept == ["marked lesion", "grey matter"]
    assert icd10_for("diabetic retinopathy")[0].code == "H36.0"
    assert not any(c.scheme == "MeSH" for text in DEMO for c in find_concepts(text))
    assert kind_of("Fibroma") == "finding" and kind_of("Tibia") == "anatomy"
