"""The VQA data stage: benchmark readers, generated questions, leakage refusal and scoring."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from medtrinity_assets.core.storage import sha256_file
from medtrinity_assets.core.tables import VQA_DATASET, VQA_EVALUATION
from medtrinity_assets.vqa.generate import article, generate_vqa, location_words
from medtrinity_assets.vqa.leakage import VQALeakageError, find_vqa_leaks, refuse_vqa_leaks
from medtrinity_assets.vqa.metrics import (
    closed_correct,
    closest_candidate,
    exact_match,
    majority_rows,
    normalise,
    score_rows,
    summarise,
    token_recall,
    tokens,
)
from medtrinity_assets.vqa.readers import VQA_LAYOUTS, read_vqa_set

# --------------------------------------------------------------------------------------
# fixtures: tiny images in each benchmark's layout


def _image_bytes(fmt: str, colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format=fmt)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _by_id(frame: pl.DataFrame) -> dict[str, dict]:
    return {r["question_id"]: r for r in frame.iter_rows(named=True)}


def _vqa_rad(tmp_path: Path) -> Path:
    root = tmp_path / "vqa_rad"
    folder = root / "VQA_RAD Image Folder"
    _write(folder / "synpic1.jpg", _image_bytes("JPEG", (200, 10, 10)))
    _write(folder / "synpic2.png", _image_bytes("PNG", (10, 200, 10)))
    _write(folder / "broken.jpg", b"\xff\xd8\xff not really a jpeg")
    outside = _write(tmp_path / "outside.jpg", _image_bytes("JPEG", (1, 2, 3)))
    os.symlink(outside, folder / "link.jpg")
    base = {"question_type": "PRES", "image_organ": "HEAD"}
    records = [
        {**base, "qid": 1, "image_name": "synpic1.jpg", "question": " Is there a mass? ", "answer": "Yes",
         "answer_type": "CLOSED ", "phrase_type": "freeform"},
        {**base, "qid": 2, "image_name": "synpic2.png", "question": "How many lesions?", "answer": 3,
         "answer_type": "open", "phrase_type": "test_para", "question_type": "PRES, POS"},
        {**base, "qid": 3, "image_name": "missing.jpg", "question": "q?", "answer": "no",
         "answer_type": "CLOSED", "phrase_type": "freeform"},
        {**base, "qid": 4, "image_name": "../../outside.jpg", "question": "q?", "answer": "no",
         "answer_type": "CLOSED", "phrase_type": "freeform"},
        {**base, "qid": 5, "image_name": "link.jpg", "question": "q?", "answer": "no",
         "answer_type": "CLOSED", "phrase_type": "freeform"},
        {**base, "qid": 6, "image_name": "synpic1.jpg", "question": "Is this a CT?", "answer": "no",
         "answer_type": "closed", "phrase_type": "test_freeform"},
        {**base, "qid": 7, "image_name": "broken.jpg", "question": "q?", "answer": "no",
         "answer_type": "CLOSED", "phrase_type": "para"},
        {**base, "qid": 8, "image_name": "/etc/hostname", "question": "q?", "answer": "no",
         "answer_type": "CLOSED", "phrase_type": "para"},
    ]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(records), encoding="utf-8")
    return root


def test_vqa_rad_reader(tmp_path, monkeypatch):
    import medtrinity_assets.vqa.readers as readers

    root = _vqa_rad(tmp_path)
    hashed: list[str] = []
    monkeypatch.setattr(readers, "sha256_file", lambda p: hashed.append(Path(p).name) or sha256_file(p))
    read = read_vqa_set("vqa-rad", "vqa-rad", root, tmp_path / "work")
    assert sorted(hashed) == ["synpic1.jpg", "synpic2.png"]  # each distinct image once
    assert read.frame.columns == VQA_DATASET.columns
    rows = _by_id(read.frame)
    assert sorted(rows) == ["vqa-rad:1", "vqa-rad:2", "vqa-rad:6"]
    first, second = rows["vqa-rad:1"], rows["vqa-rad:2"]
    assert (first["split"], second["split"], rows["vqa-rad:6"]["split"]) == ("train", "test", "test")
    assert (first["answer_type"], second["answer_type"], rows["vqa-rad:6"]["answer_type"]) == ("closed", "open", "closed")
    assert first["question"] == "Is there a mass?" and first["answer"] == "Yes"
    assert second["answer"] == "3" and second["question_type"] == "PRES, POS"
    image = root / "VQA_RAD Image Folder" / "synpic1.jpg"
    assert first["image_file"] == str(image.resolve()) and first["image_sha256"] == sha256_file(image)
    assert rows["vqa-rad:6"]["image_sha256"] == first["image_sha256"]
    assert first["origin_id"] == "synpic1.jpg" and first["vqa_set"] == "vqa-rad"
    reasons = {q["question_id"]: q["reason"] for q in read.quarantined}
    assert reasons == {
        "vqa-rad:3": "image_missing",
        "vqa-rad:4": "path_escapes_root",
        "vqa-rad:5": "path_escapes_root",
        "vqa-rad:7": "image_unreadable",
        "vqa-rad:8": "path_escapes_root",
    }
    assert {q["origin_id"] for q in read.quarantined} >= {"missing.jpg", "link.jpg"}


def test_slake_reader_keeps_english_and_maps_validate(tmp_path):
    root = tmp_path / "slake"
    for i in (1, 2, 3):
        _write(root / "imgs" / f"xmlab{i}" / "source.jpg", _image_bytes("JPEG", (i * 40, 0, 0)))

    def rec(qid, img, lang="en", answer="Yes", answer_type="CLOSED"):
        return {"qid": qid, "img_name": f"xmlab{img}/source.jpg", "question": "Does the image show the lung?",
                "answer": answer, "q_lang": lang, "answer_type": answer_type, "content_type": "Organ",
                "modality": "CT", "location": "Lung"}

    (root / "train.json").write_text(json.dumps([rec(1, 1), rec(2, 1, lang="zh", answer="是")]))
    (root / "validate.json").write_text(json.dumps([rec(3, 2, answer="Lung", answer_type="OPEN")]))
    (root / "test.json").write_text(json.dumps([rec(4, 3), rec(5, 9)]))
    read = read_vqa_set("slake", "slake", root, tmp_path / "work")
    rows = _by_id(read.frame)
    assert sorted(rows) == ["slake:1", "slake:3", "slake:4"]  # the Chinese question is not read
    assert [rows[q]["split"] for q in ("slake:1", "slake:3", "slake:4")] == ["train", "validation", "test"]
    assert rows["slake:3"]["answer_type"] == "open" and rows["slake:1"]["question_type"] == "organ"
    assert rows["slake:4"]["image_sha256"] == sha256_file(root / "imgs" / "xmlab3" / "source.jpg")
    assert read.quarantined == [{"origin_id": "xmlab9/source.jpg", "question_id": "slake:5", "reason": "image_missing"}]

    (root / "validate.json").unlink()
    with pytest.raises(ValueError, match="validate.json"):
        read_vqa_set("slake", "slake", root, tmp_path / "work")


def _pathvqa_file(path: Path, rows: list[tuple[bytes | None, str, str]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "image": pa.array([{"bytes": b, "path": None} for b, _, _ in rows], type=image_type),
        "question": [q for _, q, _ in rows],
        "answer": [a for _, _, a in rows],
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_pathvqa_parquet_reader_writes_images_content_addressed(tmp_path):
    root, work = tmp_path / "pathvqa", tmp_path / "work"
    png, jpeg = _image_bytes("PNG", (5, 5, 5)), _image_bytes("JPEG", (250, 250, 250))
    gif = _image_bytes("GIF", (1, 1, 1))
    _pathvqa_file(root / "data" / "train-00000-of-00001.parquet", [
        (png, "Is this tissue inflamed?", "yes"),
        (png, "What is present?", " granuloma "),
        (gif, "Is it a GIF?", "no"),
        (png[:40], "Is it truncated?", "no"),
    ])
    _pathvqa_file(root / "data" / "validation-00000-of-00001.parquet", [(jpeg, "where are the cells?", "dermis")])
    _pathvqa_file(root / "data" / "test-00000-of-00001.parquet", [(jpeg, "Does it show fibrosis?", "No")])
    read = read_vqa_set("pathvqa", "pathvqa", root, work)
    rows = _by_id(read.frame)
    assert sorted(rows) == ["pathvqa:test:0", "pathvqa:train:0", "pathvqa:train:1", "pathvqa:validation:0"]
    assert rows["pathvqa:train:0"]["answer_type"] == "closed" and rows["pathvqa:train:0"]["question_type"] == "yes/no"
    assert rows["pathvqa:train:1"]["answer"] == "granuloma" and rows["pathvqa:train:1"]["question_type"] == "what"
    assert rows["pathvqa:validation:0"]["question_type"] == "where" and rows["pathvqa:test:0"]["split"] == "test"
    png_sha, jpeg_sha = hashlib.sha256(png).hexdigest(), hashlib.sha256(jpeg).hexdigest()
    assert rows["pathvqa:train:0"]["image_file"] == str((work / "images" / png_sha[:2] / f"{png_sha}.png").resolve())
    assert rows["pathvqa:test:0"]["image_file"].endswith(f"{jpeg_sha}.jpg")
    assert rows["pathvqa:train:1"]["image_sha256"] == png_sha
    assert sha256_file(rows["pathvqa:test:0"]["image_file"]) == jpeg_sha
    assert sorted(p.name for p in (work / "images").rglob("*.*")) == sorted([f"{png_sha}.png", f"{jpeg_sha}.jpg"])
    reasons = {q["question_id"]: q["reason"] for q in read.quarantined}
    assert reasons == {"pathvqa:train:2": "unsupported_image_format", "pathvqa:train:3": "image_unreadable"}


class _Boom:
    """Unpickling this creates a file: proof that the reader never unpickles."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (str(self.sentinel), "w"))


def test_pathvqa_pickle_layout_refused_without_unpickling(tmp_path):
    root, sentinel = tmp_path / "pathvqa", tmp_path / "unpickled"
    _write(root / "qas" / "train_vqa.pkl", pickle.dumps(_Boom(sentinel)))
    with pytest.raises(ValueError, match="unpickling can run arbitrary code.*Parquet release") as err:
        read_vqa_set("pathvqa", "pathvqa", root, tmp_path / "work")
    assert "qas/train_vqa.pkl" in str(err.value)
    assert not sentinel.exists()


def test_unknown_layout_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="unknown VQA layout 'vqa-med'; known layouts: pathvqa, slake, vqa-rad"):
        read_vqa_set("x", "vqa-med", tmp_path, tmp_path)
    assert set(VQA_LAYOUTS) == {"vqa-rad", "slake", "pathvqa"}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="expected the file 'VQA_RAD Dataset Public.json'"):
        read_vqa_set("x", "vqa-rad", empty, tmp_path)
    with pytest.raises(ValueError, match=r"data/train-\*\.parquet"):
        read_vqa_set("x", "pathvqa", empty, tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        read_vqa_set("x", "slake", tmp_path / "nowhere", tmp_path)


# --------------------------------------------------------------------------------------
# leakage


def _vqa_row(qid: str, split: str, sha: str, vqa_set: str = "s") -> dict:
    return {"vqa_set": vqa_set, "question_id": qid, "split": split, "image_file": f"/x/{sha}.png",
            "image_sha256": sha, "question": "q?", "answer": "yes", "answer_type": "closed",
            "question_type": "presence", "origin_id": "o"}


def test_same_image_in_train_and_test_is_refused_naming_ids():
    df = VQA_DATASET.frame([
        _vqa_row("s:1", "train", "a"), _vqa_row("s:2", "test", "a"), _vqa_row("s:3", "test", "b"),
        _vqa_row("t:1", "train", "b", vqa_set="t"),  # another set: not a leak of set s
    ])
    leaks = find_vqa_leaks(df)
    assert leaks == [{"kind": "split", "vqa_set": "s", "image_sha256": "a", "n_test_questions": 1,
                      "other_splits": ["train"], "test_question_ids": ["s:2"], "other_question_ids": ["s:1"]}]
    with pytest.raises(VQALeakageError, match=r"1 test question\(s\) leak.*: s:2$") as err:
        refuse_vqa_leaks(df)
    assert err.value.leaks == leaks
    refuse_vqa_leaks(df.filter(pl.col("question_id") != "s:1"))  # no leak: nothing raised


def test_pretraining_overlap_is_refused_with_first_ten_ids_and_count():
    df = VQA_DATASET.frame([_vqa_row(f"s:{i:02d}", "test", "p") for i in range(12)] + [_vqa_row("s:x", "test", "q")])
    leaks = find_vqa_leaks(df, pretraining_hashes={"p", "zzz"})
    assert [(leak["kind"], leak["image_sha256"], leak["n_test_questions"]) for leak in leaks] == [("pretraining", "p", 12)]
    with pytest.raises(VQALeakageError, match="seen in pretraining") as err:
        refuse_vqa_leaks(df, ["p"])
    message = str(err.value)
    assert "s:00" in message and "s:09" in message and "s:10" not in message and "and 2 more" in message
    assert "s:x" not in message


# --------------------------------------------------------------------------------------
# generated questions


def _triplets() -> pl.DataFrame:
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    rows = [
        ("t-a0", a, None, None, "whole_image", "mri", "brain", "train"),
        ("t-a1", a, [0.1, 0.1, 0.3, 0.3], "tumor", "mask", "mri", "brain", "train"),
        ("t-b0", b, None, None, "whole_image", "x-ray", "chest", "test"),
        ("t-b1", b, [0.6, 0.45, 0.8, 0.55], "nodule", "box", "x-ray", "chest", "test"),
        ("t-c0", c, None, None, "whole_image", "mri", "brain", "validation"),
        ("t-c1", c, [0.4, 0.4, 0.6, 0.6], "edema", "expert:brats", "mri", "brain", "validation"),
    ]
    cols = ["triplet_id", "image_sha256", "bbox_norm", "label", "origin", "modality", "organ", "split"]
    df = pl.DataFrame([dict(zip(cols, r, strict=True)) for r in rows],
                      schema={**dict.fromkeys(cols, pl.String), "bbox_norm": pl.List(pl.Float64)})
    return df.with_columns(
        image_file=pl.format("images/{}/{}.png", pl.col("image_sha256").str.slice(0, 2), pl.col("image_sha256")),
        description=pl.lit("never read"),
    )


def test_generated_questions_come_from_facts(tmp_path):
    df = generate_vqa(_triplets(), tmp_path, vqa_set="demo", seed=0, per_image=100)
    assert df.columns == VQA_DATASET.columns and VQA_DATASET.validate(df).height == df.height
    a = {r["question"]: r for r in df.filter(pl.col("image_sha256") == "a" * 64).iter_rows(named=True)}
    expected = {
        "Is this an MRI image?": ("yes", "modality", "t-a0"),
        "Is this an X-ray image?": ("no", "modality", "t-a0"),
        "What imaging modality is this?": ("MRI", "modality", "t-a0"),
        "Does this image show the brain?": ("yes", "organ", "t-a0"),
        "Does this image show the chest?": ("no", "organ", "t-a0"),
        "Which organ is shown?": ("brain", "organ", "t-a0"),
        "Is the tumor in the left half of the image?": ("yes", "position", "t-a1"),
        "Is the tumor in the right half of the image?": ("no", "position", "t-a1"),
        "Is the tumor in the upper half of the image?": ("yes", "position", "t-a1"),
        "Is the tumor in the lower half of the image?": ("no", "position", "t-a1"),
        "Where is the tumor in the image?": ("upper left", "location", "t-a1"),
        "Is any tumor visible in this image?": ("yes", "presence", "t-a1"),
        "Is any edema visible in this image?": ("no", "presence", "t-a0"),
    }
    assert {q: (r["answer"], r["question_type"], r["origin_id"]) for q, r in a.items()} == expected
    assert {r["answer_type"] for q, r in a.items() if r["answer"] in ("yes", "no")} == {"closed"}
    assert a["Where is the tumor in the image?"]["answer_type"] == "open"
    first = a["Is this an MRI image?"]
    assert first["split"] == "train" and first["image_file"] == str(tmp_path.resolve() / "images" / "aa" / ("a" * 64 + ".png"))
    qhash = hashlib.sha256(("a" * 64 + "Is this an MRI image?").encode()).hexdigest()[:16]
    assert first["question_id"] == f"demo:{qhash}" and df["question_id"].is_unique().all()
    b = {r["question"]: r["answer"] for r in df.filter(pl.col("image_sha256") == "b" * 64).iter_rows(named=True)}
    assert b["Is the nodule in the right half of the image?"] == "yes" and b["Where is the nodule in the image?"] == "right"
    assert not any("upper half" in q or "lower half" in q for q in b)  # the centre row is near the middle
    assert "Is any tumor visible in this image?" not in b  # tumors are labelled in MRI only
    c = {r["question"]: r["answer"] for r in df.filter(pl.col("image_sha256") == "c" * 64).iter_rows(named=True)}
    assert c["Where is the edema in the image?"] == "centre" and not any("half" in q for q in c)
    splits = dict(df.group_by("image_sha256").agg(pl.col("split").unique()).iter_rows())
    assert splits == {"a" * 64: ["train"], "b" * 64: ["test"], "c" * 64: ["validation"]}


def test_generated_selection_is_deterministic_and_balanced(tmp_path):
    triplets = _triplets()
    small = generate_vqa(triplets, tmp_path, seed=3, per_image=4)
    assert small.equals(generate_vqa(triplets, tmp_path, seed=3, per_image=4))
    assert small.group_by("image_sha256").len()["len"].max() <= 4
    answers = small.filter(pl.col("answer_type") == "closed")["answer"].to_list()
    assert answers.count("yes") >= 1 and answers.count("no") >= 1
    assert abs(answers.count("yes") - answers.count("no")) <= 2
    picks = {tuple(sorted(generate_vqa(triplets, tmp_path, seed=s, per_image=4)["question"])) for s in range(6)}
    assert len(picks) > 1  # the seed chooses


def test_generation_refuses_an_image_in_two_splits(tmp_path):
    bad = _triplets().with_columns(
        split=pl.when(pl.col("triplet_id") == "t-a1").then(pl.lit("test")).otherwise(pl.col("split"))
    )
    with pytest.raises(ValueError, match="several splits"):
        generate_vqa(bad, tmp_path)


def test_articles_and_locations():
    assert [article(t) for t in ("CT", "MRI", "X-ray", "ultrasound", "fundus", "PET")] == ["a", "an", "an", "an", "a", "a"]
    assert location_words(0.9, 0.9) == "lower right" and location_words(0.5, 0.1) == "upper"


# --------------------------------------------------------------------------------------
# metrics


def test_metrics_on_hand_computed_examples():
    assert normalise("  The X-ray, shows 2.5 cm!  It's ") == "the x ray shows 2.5 cm its"
    assert tokens("Left-lung mass.") == ["left", "lung", "mass"]
    assert token_recall("a mass in the left lobe", "left lung mass") == pytest.approx(2 / 3)
    assert token_recall("anything", "") == 0.0
    assert closed_correct("Yes, it is.", "yes") and closed_correct("no", "No")
    assert not closed_correct("It is unclear, but yes", "no") and not closed_correct("unclear", "no")
    assert closed_correct("the left side", "left") and not closed_correct("right side", "left")
    assert exact_match("Brain.", "brain") and not exact_match("the brain", "brain")
    assert closest_candidate("a lesion in the left lung", ["left lung", "lung", "liver"]) == "lung"  # tie: shorter
    assert closest_candidate("a lesion in the left lung", ["right lung", "liver", "left kidney"]) == "right lung"
    assert closest_candidate("a lesion in the left lung", ["right lung", "left liver"]) == "left liver"  # then a-z
    assert closest_candidate("nothing here", ["liver"]) is None


def test_score_rows():
    rows = [
        {"question_id": "1", "answer_type": "closed", "answer": "yes", "prediction": "Yes, it is"},
        {"question_id": "2", "answer_type": "open", "answer": "left lung", "prediction": "In the left lung."},
        {"question_id": "3", "answer_type": "open", "answer": "liver", "prediction": "the spleen"},
    ]
    scored = score_rows(rows, ["left lung", "liver", "spleen"])
    assert [r["closed_correct"] for r in scored] == [True, None, None]
    assert [r["candidate_correct"] for r in scored] == [None, True, False]
    assert [r["token_recall"] for r in scored] == [1.0, 1.0, 0.0]
    assert [r["exact_match"] for r in scored] == [False, False, False]
    assert scored[0]["question_id"] == "1"
    assert [r["candidate_correct"] for r in score_rows(rows, None)] == [None, None, None]


def _evaluation(variant: str, seed: int, closed_ok: bool, recall: float) -> list[dict]:
    base = {"vqa_set": "s", "variant": variant, "seed": seed, "exact_match": False, "candidate_correct": None}
    return [
        {**base, "question_id": "1", "answer_type": "closed", "question_type": "presence", "answer": "yes",
         "prediction": "yes" if closed_ok else "no", "closed_correct": closed_ok, "token_recall": float(closed_ok)},
        {**base, "question_id": "2", "answer_type": "open", "question_type": "location", "answer": "upper left",
         "prediction": "upper", "closed_correct": None, "token_recall": recall},
    ]


def test_summarise_mean_and_std_across_seeds():
    df = VQA_EVALUATION.frame(
        _evaluation("pretrained", 0, True, 1.0) + _evaluation("pretrained", 1, False, 0.5)
        + _evaluation("base", 0, False, 0.0)
    )
    summary = summarise(df)
    assert sorted(summary) == ["base", "pretrained"]
    pre = summary["pretrained"]
    assert pre["seeds"] == [0, 1] and pre["n_closed"] == 1 and pre["n_open"] == 1
    assert pre["closed_accuracy"] == pytest.approx(0.5) and pre["closed_accuracy_std"] == pytest.approx(math.sqrt(0.5))
    assert pre["open_recall"] == pytest.approx(0.75) and pre["open_recall_std"] == pytest.approx(math.sqrt(0.125))
    assert pre["exact_match"] == 0.0 and pre["candidate_accuracy"] is None and pre["candidate_accuracy_std"] is None
    assert pre["by_question_type"]["location"] == {"n": 1, "accuracy_or_recall": 0.75, "std": pytest.approx(math.sqrt(0.125))}
    assert pre["per_seed"][1]["closed_accuracy"] == 0.0
    assert summary["base"]["closed_accuracy"] == 0.0 and summary["base"]["closed_accuracy_std"] is None
    with pytest.raises(ValueError, match="one VQA set"):
        summarise(df.with_columns(vqa_set=pl.when(pl.col("seed") == 1).then(pl.lit("t")).otherwise(pl.col("vqa_set"))))


def test_the_majority_baseline_answers_the_commonest_training_answer_of_each_kind():
    """Per answer type and question type from the training split only (a kind unseen in training
    falls back to its answer type; ties to the alphabetically first), scored as a model's answers."""
    def q(qid, split, atype, qtype, answer):
        return {"question_id": qid, "split": split, "answer_type": atype, "question_type": qtype, "answer": answer}

    vqa = pl.DataFrame([
        q("t1", "train", "closed", "presence", "Yes"), q("t2", "train", "closed", "presence", "yes"),
        q("t3", "train", "closed", "presence", "no"), q("t4", "train", "closed", "modality", "no"),
        q("t5", "train", "open", "organ", "liver"), q("t6", "train", "open", "organ", "brain"),
        q("t7", "validation", "open", "organ", "lung"), q("t8", "validation", "open", "organ", "lung"),
        q("e1", "test", "closed", "presence", "no"), q("e2", "test", "closed", "modality", "no"),
        q("e3", "test", "closed", "laterality", "yes"), q("e4", "test", "open", "organ", "brain"),
    ])
    rows = majority_rows(vqa, "s")
    assert [(r["question_id"], r["prediction"]) for r in rows] == [("e1", "yes"), ("e2", "no"), ("e3", "no"), ("e4", "brain")]
    assert {r["variant"] for r in rows} == {"majority"} and {r["seed"] for r in rows} == {0}
    scored = score_rows(rows, ["brain", "liver", "lung"])
    summary = summarise(VQA_EVALUATION.frame(scored))["majority"]
    assert summary["closed_accuracy"] == pytest.approx(1 / 3) and summary["open_recall"] == 1.0


def test_the_build_summary_says_when_there_is_nothing_to_evaluate_or_learn_from(tmp_path):
    """A user's small folder: a VQA set with no test question and a checkpoint trained on a few
    triplets are named as such at the end of a build, not reported as results."""
    import json

    from medtrinity_assets.llava.model import CARD
    from medtrinity_assets.llava.recipe import FEW_TRAIN_SAMPLES, checkpoint_line, pretrained_dir
    from medtrinity_assets.vqa.metrics import summary_lines

    folder = VQA_EVALUATION.path(tmp_path, "demo").parent
    folder.mkdir(parents=True)
    VQA_EVALUATION.frame([]).write_parquet(VQA_EVALUATION.path(tmp_path, "demo"))
    VQA_EVALUATION.frame(_evaluation("pretrained", 0, True, 1.0)).write_parquet(VQA_EVALUATION.path(tmp_path, "mine"))
    empty, filled = summary_lines(tmp_path)
    assert empty.startswith("VQA demo: no test question to evaluate") and "closed" not in empty
    assert filled.startswith("VQA mine (1 closed + 1 open test questions, seeds [0]): pretrained: closed 1.000")

    card = pretrained_dir(tmp_path) / CARD
    card.parent.mkdir(parents=True)
    for samples, warned in ((2, True), (FEW_TRAIN_SAMPLES, False)):
        card.write_text(json.dumps({"stages": [{"stage": "alignment", "steps": 1, "first_loss": 2.0, "final_loss": 2.0}],
                                    "lineage": {"train_samples": samples}, "wall_s": 1.0, "device": "cpu"}))
        line = checkpoint_line(tmp_path)
        assert line.startswith("LLaVA-Tri checkpoint: alignment 1 steps, loss 2.00 -> 2.00; 1s on cpu")
        assert ("trained on 2 triplet(s) only: too few to learn from" in line) is warned
