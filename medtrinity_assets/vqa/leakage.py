"""Leakage refusal for a VQA set: no test image (by the sha256 of its bytes) in the same set's
train or validation split, and none among the images a checkpoint was pretrained on.

A test question about an image the model has seen (in fine-tuning or in triplet pretraining)
measures memory, not understanding; the evaluation is refused naming the questions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import Any

import polars as pl

SHOWN_IDS = 5  # question ids kept per side in a leak record
NAMED_IDS = 10  # question ids named in the error message


class VQALeakageError(ValueError):
    """A VQA set's test images are also in its training splits or in pretraining."""

    def __init__(self, message: str, leaks: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.leaks = leaks


def _ids(frame: pl.DataFrame) -> list[str]:
    return sorted(frame["question_id"].to_list())


def find_vqa_leaks(df: pl.DataFrame, pretraining_hashes: Collection[str] = ()) -> list[dict[str, Any]]:
    """Every test image also in train/validation of the same set (``kind: split``) and every
    test image among ``pretraining_hashes`` (``kind: pretraining``), one record per set and
    image with a few question ids of each side and the number of test questions."""
    leaks: list[dict[str, Any]] = []
    pretrained = set(pretraining_hashes)
    for (vqa_set,), part in sorted(df.group_by("vqa_set"), key=lambda kv: str(kv[0][0])):
        test = part.filter(pl.col("split") == "test")
        other = part.filter(pl.col("split") != "test")
        seen = set(other["image_sha256"].to_list())
        for (sha,), questions in sorted(test.group_by("image_sha256"), key=lambda kv: str(kv[0][0])):
            test_ids = _ids(questions)
            base = {"vqa_set": vqa_set, "image_sha256": sha, "n_test_questions": len(test_ids)}
            if sha in seen:
                others = other.filter(pl.col("image_sha256") == sha)
                leaks.append({
                    "kind": "split",
                    **base,
                    "other_splits": sorted(set(others["split"].to_list())),
                    "test_question_ids": test_ids[:SHOWN_IDS],
                    "other_question_ids": _ids(others)[:SHOWN_IDS],
                })
            if sha in pretrained:
                leaks.append({"kind": "pretraining", **base, "test_question_ids": test_ids[:SHOWN_IDS]})
    return leaks


def refuse_vqa_leaks(df: pl.DataFrame, pretraining_hashes: Collection[str] = ()) -> None:
    """Raise :class:`VQALeakageError` when :func:`find_vqa_leaks` finds any, naming the first
    test question ids affected and how many there are."""
    leaks = find_vqa_leaks(df, pretraining_hashes)
    if not leaks:
        return
    leaked = {(leak["vqa_set"], leak["image_sha256"]) for leak in leaks}
    test = df.filter(pl.col("split") == "test")
    ids = sorted(
        qid
        for vqa_set, sha, qid in test.select("vqa_set", "image_sha256", "question_id").iter_rows()
        if (vqa_set, sha) in leaked
    )
    kinds = Counter(leak["kind"] for leak in leaks)
    what = ", ".join(
        f"{n} image(s) {'also in train/validation' if kind == 'split' else 'seen in pretraining'}"
        for kind, n in sorted(kinds.items())
    )
    shown = ", ".join(ids[:NAMED_IDS]) + (f", ... and {len(ids) - NAMED_IDS} more" if len(ids) > NAMED_IDS else "")
    raise VQALeakageError(f"refusing to evaluate: {len(ids)} test question(s) leak ({what}): {shown}", leaks)
