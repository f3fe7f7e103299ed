"""Coarse captions from metadata, retrieval queries and retrieved knowledge tables."""

from __future__ import annotations

import polars as pl

from medtrinity_assets.core.tables import COARSE_CAPTIONS, RETRIEVED_KNOWLEDGE
from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.knowledge.queries import build_queries, retrieve_for_records
from medtrinity_assets.knowledge.retrieval import Hit
from medtrinity_assets.metadata.coarse_captions import build_coarse_captions

COARSE_SCHEMA = dict(COARSE_CAPTIONS.schema)
RETRIEVED_SCHEMA = dict(RETRIEVED_KNOWLEDGE.schema)

MANIFEST_COLUMNS = {
    "record_id": pl.String,
    "source": pl.String,
    "relpath": pl.String,
    "status": pl.String,
    "reason": pl.String,
    "modality": pl.String,
    "organ": pl.String,
    "labels": pl.List(pl.String),
    "split": pl.String,
    "body_part": pl.String,
    "description": pl.String,
    "label": pl.String,
    "report": pl.String,
    "question": pl.String,
    "answer": pl.String,
}


def _manifest(rows: list[dict]) -> pl.DataFrame:
    full = [{c: r.get(c) for c in MANIFEST_COLUMNS} for r in rows]
    return pl.DataFrame(full, schema=MANIFEST_COLUMNS)


def test_tibia_xray_description_row():
    spec = SourceSpec(
        name="xray_tibia", layout="dicom", root=".", modality="X-ray", organ="tibia", license="MIT"
    )
    manifest = _manifest(
        [
            {
                "record_id": "r1",
                "source": "xray_tibia",
                "relpath": "RG3_J2KR.dcm",
                "status": "ok",
                "modality": "CR",
                "organ": None,
                "body_part": "EXTREMITY",
                "description": "Non-ossifying fibroma of distal tibia",
                "split": "train",
            },
            {
                "record_id": "r2",
                "source": "xray_tibia",
                "relpath": "bad.dcm",
                "status": "quarantined",
                "reason": "truncated: x",
            },
            {"record_id": "r3", "source": "xray_tibia", "relpath": "dup.dcm", "status": "duplicate"},
        ]
    )
    images = pl.DataFrame({"record_id": ["r1"], "image_path": ["images/ab/ab.png"]})
    coarse = build_coarse_captions(manifest, images, spec)
    assert coarse.schema == pl.Schema(COARSE_SCHEMA)
    assert coarse.height == 1
    row = coarse.row(0, named=True)
    assert row["modality"] == "x-ray" and row["organ"] == "tibia" and row["source"] == "xray_tibia"
    assert row["caption"].startswith("X-ray radiograph of the tibia.")
    assert "Non-ossifying fibroma of distal tibia" in row["caption"]
    assert "Body part: extremity." in row["caption"]
    assert row["terms"][:2] == ["X-ray", "tibia"]
    assert "Non-ossifying fibroma of distal tibia" in row["terms"]

    queries = build_queries(coarse, None)
    assert queries.to_dicts() == [
        {
            "record_id": "r1",
            "roi_id": None,
            "query": "radiograph (X-ray) tibia extremity Non-ossifying fibroma of distal tibia",
        }
    ]


def test_mask_label_row_and_roi_queries():
    spec = SourceSpec(
        name="mni152_brain",
        layout="nifti_msd",
        root=".",
        modality="MRI",
        organ="brain",
        license="x",
        labels={1: "grey_matter", 2: "white_matter"},
    )
    manifest = _manifest(
        [
            {
                "record_id": "m1",
                "source": "mni152_brain",
                "relpath": "imagesTr/t1.nii.gz",
                "status": "ok",
                "labels": ["grey_matter", "white_matter"],
                "split": "train",
            },
            {
                "record_id": "m2",
                "source": "mni152_brain",
                "relpath": "imagesTr/t1.nii.gz",
                "status": "ok",
                "labels": None,
                "label": "atrophy",
                "question": "Is there atrophy?",
                "answer": "yes",
                "report": "Mild   generalised atrophy.",
            },
            {"record_id": "not_kept", "source": "mni152_brain", "relpath": "x", "status": "ok"},
        ]
    )
    images = pl.DataFrame(
        {"record_id": ["m1", "m2"], "mask_labels": [[1, 2], [2]], "box_labels": [[], []]},
        schema={"record_id": pl.String, "mask_labels": pl.List(pl.Int64), "box_labels": pl.List(pl.String)},
    )
    coarse = build_coarse_captions(manifest, images, spec).sort("record_id")
    assert coarse["record_id"].to_list() == ["m1", "m2"]
    m1, m2 = coarse.to_dicts()
    assert m1["caption"] == "MRI image of the brain. Labels: grey matter, white matter."
    assert m1["terms"] == ["MRI", "brain", "grey matter", "white matter"]
    # mask value 2 of m2 maps to its registry name; class label, report and QA are kept
    assert "white matter" in m2["terms"] and "atrophy" in m2["terms"] and "yes" not in m2["terms"]
    assert "Report: Mild generalised atrophy." in m2["caption"]
    assert "Q: Is there atrophy? A: yes" in m2["caption"]

    rois = pl.DataFrame(
        {
            "record_id": ["m1", "m1"],
            "roi_id": ["m1_0", "m1_1"],
            "label": ["grey_matter", "whole_image"],
            "origin": ["mask", "whole_image"],
            "intensity_word": ["hypointense", "isointense"],
            "shape_word": ["irregular", None],
        }
    )
    queries = build_queries(coarse, rois).sort("record_id", "roi_id", nulls_last=True)
    assert queries.height == 3
    q = {(r["record_id"], r["roi_id"]): r["query"] for r in queries.to_dicts()}
    assert q[("m1", "m1_0")] == "magnetic resonance (MR) image brain grey matter white matter"
    assert q[("m1", "m1_1")] == "magnetic resonance (MR) image brain grey matter white matter"
    assert ("m2", None) in q


class _FakeRetriever:
    def __init__(self):
        self.calls = []

    def search(self, queries, k=5, mode="hybrid"):
        self.calls.append(list(queries))
        return [
            [
                Hit(chunk_id=f"{q[:3]}{i}", score=1.0 / (i + 1), rank=i + 1, text="t", title="x")
                for i in range(k)
            ]
            for q in queries
        ]


def test_retrieve_for_records_batches_and_dedupes():
    queries = pl.DataFrame(
        {
            "record_id": ["a", "b", "c"],
            "roi_id": [None, "b0", "c0"],
            "query": ["MRI brain", "CT liver", "MRI brain"],
        },
        schema={"record_id": pl.String, "roi_id": pl.String, "query": pl.String},
    )
    fake = _FakeRetriever()
    out = retrieve_for_records(queries, fake, k=2)
    assert out.schema == pl.Schema(RETRIEVED_SCHEMA)
    assert fake.calls == [["MRI brain", "CT liver"]]
    assert out["chunk_ids"].to_list() == [["MRI0", "MRI1"], ["CT 0", "CT 1"], ["MRI0", "MRI1"]]
    assert out["scores"][0].to_list() == [1.0, 0.5]
    assert out["mode"].to_list() == ["hybrid"] * 3
    assert retrieve_for_records(queries.head(0), fake).height == 0


def _one_caption(spec: SourceSpec, image: dict | None = None, **row) -> dict:
    manifest = _manifest([{"record_id": "r", "source": spec.name, "relpath": "x", "status": "ok", **row}])
    images = pl.DataFrame([{"record_id": "r", "image_path": "images/x.png", **(image or {})}])
    return build_coarse_captions(manifest, images, spec).row(0, named=True)


def test_header_noise_never_reaches_a_caption_and_concepts_are_coded():
    ct = SourceSpec(name="ct_head", layout="dicom", root=".", modality="CT", organ="head", license="x")
    row = _one_caption(ct, {"window": "ct:40/80", "display_right": "L", "display_down": "P", "channels": 1},
                       modality="CT", description="Lv2", split="train")
    assert "Lv2" not in row["caption"] and "Lv2" not in row["terms"]
    assert row["caption"] == "Axial CT image of the head, brain window (L40/W80)."
    assert row["plane"] == "axial" and row["window"] == "brain window (L40/W80)" and row["channels"] == 1
    mr = SourceSpec(name="mr", layout="dicom", root=".", modality="MRI", organ="liver", license="x")
    row = _one_caption(mr, modality="MRI", description="marked lesion<MPR Collection>", labels=["liver lesion"],
                       split="train")
    assert "<" not in row["caption"] and "MPR" not in row["caption"] and "marked lesion" in row["caption"]
    assert "Liver (MeSH D008099)" in row["concepts"]
    xr = SourceSpec(name="xr", layout="dicom", root=".", modality="X-ray", organ="eye", license="x")
    row = _one_caption(xr, modality="X-ray", description="diabetic retinopathy", split="train")
    assert "Diabetic retinopathy (ICD-10 H36.0)" in row["concepts"]


def test_vqa_answer_enters_a_caption_from_a_training_split_only():
    spec = SourceSpec(name="vqa", layout="table", root=".", modality="MRI", organ="brain", license="x")
    qa = {"question": "What abnormality is seen?", "answer": "glioblastoma", "modality": "MRI"}
    train = _one_caption(spec, split="train", **qa)
    test = _one_caption(spec, split="test", **qa)
    assert "glioblastoma" in train["caption"] and "glioblastoma" in train["terms"]
    assert "glioblastoma" not in test["caption"] and "glioblastoma" not in " ".join(test["terms"])
    assert "abnormality" not in test["caption"] and test["split"] == "test"


def test_unspecified_organ_from_the_technique_and_synthetic_said():
    us = SourceSpec(name="us", layout="dicom", root=".", modality="Ultrasound", organ="unspecified", license="x")
    echo = _one_caption(us, modality="Ultrasound", description="Echocardiogram / Transesophageal Echocardiogram")
    assert echo["organ"] == "heart" and echo["caption"].startswith("Ultrasound image of the heart.")
    bare = _one_caption(us, modality="Ultrasound")
    assert bare["caption"] == "Ultrasound image (body part not recorded)." and "unspecified" not in bare["caption"]
    ph = SourceSpec(name="ph", layout="image_folder", root=".", modality="MRI", organ="phantom", license="x",
                    synthetic=True)
    row = _one_caption(ph, modality="MRI")
    assert row["synthetic"] and row["caption"].startswith("Synthetic MRI image")
