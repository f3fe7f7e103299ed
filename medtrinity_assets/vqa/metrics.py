"""VQA scoring with the LLaVA-Med conventions.

- closed questions: correct when the first ``yes``/``no`` of the prediction is the answer's
  ("Yes, it is." answers ``yes``); a closed answer that is not yes/no (VQA-RAD has a few,
  "left", "axial") is correct when every one of its tokens is in the prediction;
- open questions: token recall, the share of the answer's (distinct, normalised) tokens found in
  the prediction; and, given the set's candidate answers, whether the candidate closest to the
  prediction is the answer;
- every question: exact match of the normalised texts.

Next to the models, a ``majority`` variant answers each test question with the most common training
answer of its kind (:func:`majority_rows`): the floor that the models' figures are read against.

Normalising lower-cases, drops apostrophes, turns other punctuation into spaces (a decimal point
between digits is kept: "2.5 cm") and collapses white space.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

METRICS: tuple[str, ...] = ("closed_accuracy", "open_recall", "exact_match", "candidate_accuracy")
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")
_PUNCT = re.compile(r"[^\w\s\x00]|_")


def normalise(text: str | None) -> str:
    """Lower case, apostrophes dropped, punctuation as spaces (digits and decimal points kept),
    white space collapsed."""
    t = (text or "").lower().replace("'", "").replace("\u2019", "")
    t = _PUNCT.sub(" ", _DECIMAL.sub("\x00", t)).replace("\x00", ".")
    return " ".join(t.split())


def tokens(text: str | None) -> list[str]:
    return normalise(text).split()


def _yes_no(text: str | None) -> str | None:
    return next((t for t in tokens(text) if t in ("yes", "no")), None)


def token_recall(prediction: str | None, answer: str | None) -> float:
    """Share of the answer's distinct tokens present in the prediction (0.0 for an empty answer)."""
    wanted = set(tokens(answer))
    if not wanted:
        return 0.0
    return len(wanted & set(tokens(prediction))) / len(wanted)


def closed_correct(prediction: str | None, answer: str | None) -> bool:
    """The first yes/no token of the prediction is the answer's; for a closed answer that is not
    yes/no, every answer token is in the prediction."""
    truth = _yes_no(answer)
    if truth is None:
        return bool(tokens(answer)) and token_recall(prediction, answer) == 1.0
    return _yes_no(prediction) == truth


def exact_match(prediction: str | None, answer: str | None) -> bool:
    return normalise(prediction) == normalise(answer)


def _prepared(candidates: Sequence[str]) -> list[tuple[frozenset[str], str]]:
    """Candidates with their token sets, in tie-break order: shorter first, then alphabetical."""
    unique = {c for c in candidates if tokens(c)}
    return [(frozenset(tokens(c)), c) for c in sorted(unique, key=lambda c: (len(c), c))]


def _closest(predicted: set[str], prepared: list[tuple[frozenset[str], str]]) -> str | None:
    best, best_score = None, 0.0
    for toks, cand in prepared:
        score = len(toks & predicted) / len(toks)
        if score > best_score:  # strictly: an equal score keeps the earlier (shorter) candidate
            best, best_score = cand, score
    return best


def closest_candidate(prediction: str | None, candidates: Sequence[str]) -> str | None:
    """The candidate with the highest share of its tokens in the prediction (ties: the shorter
    candidate, then alphabetical); None when no candidate has a token in it."""
    return _closest(set(tokens(prediction)), _prepared(candidates))


def score_rows(rows: list[dict[str, Any]], candidates: Sequence[str] | None) -> list[dict[str, Any]]:
    """``rows`` (answer, prediction, answer_type...) with closed_correct (None for open questions),
    token_recall, exact_match and candidate_correct (None for closed questions or without
    candidates) added."""
    prepared = _prepared(candidates) if candidates else None
    out = []
    for row in rows:
        prediction, answer = row.get("prediction") or "", row.get("answer") or ""
        closed = row.get("answer_type") == "closed"
        candidate_correct = None
        if prepared and not closed:
            chosen = _closest(set(tokens(prediction)), prepared)
            candidate_correct = chosen is not None and normalise(chosen) == normalise(answer)
        out.append({
            **row,
            "closed_correct": closed_correct(prediction, answer) if closed else None,
            "token_recall": token_recall(prediction, answer),
            "exact_match": exact_match(prediction, answer),
            "candidate_correct": candidate_correct,
        })
    return out


#: The variant that answers without a model: each test question gets the most common training answer
#: of its kind (what a model that ignores the image can reach; the floor the others are read against).
MAJORITY = "majority"


def majority_rows(vqa: pl.DataFrame, vqa_set: str) -> list[dict[str, Any]]:
    """The ``majority`` variant's answers to a VQA set's test questions: the most common answer among
    the training questions of the same answer type and question type (else of the same answer type;
    ties go to the alphabetically first), as rows of the shape the models' answers take."""
    train = vqa.filter(pl.col("split") == "train")
    by_kind: dict[tuple[str, str | None], Counter] = {}
    for answer_type, question_type, answer in train.select("answer_type", "question_type", "answer").iter_rows():
        for kind in ((answer_type, question_type), (answer_type, None)):
            by_kind.setdefault(kind, Counter())[normalise(answer)] += 1

    def commonest(answer_type: str, question_type: str | None) -> str:
        counts = by_kind.get((answer_type, question_type)) or by_kind.get((answer_type, None)) or Counter()
        return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0] if counts else ""

    test = evaluation_questions(vqa)
    predictions = [commonest(t, q) for t, q in test.select("answer_type", "question_type").iter_rows()]
    return answer_rows(test, vqa_set, MAJORITY, 0, predictions)


def evaluation_questions(vqa: pl.DataFrame) -> pl.DataFrame:
    """A VQA set's test questions, in the order every variant answers them."""
    return vqa.filter(pl.col("split") == "test").sort("question_id")


def answer_rows(test: pl.DataFrame, vqa_set: str, variant: str, seed: int,
                predictions: Sequence[str]) -> list[dict[str, Any]]:
    """One ``vqa_evaluation`` row (before scoring) per test question and its predicted answer."""
    return [
        {"vqa_set": vqa_set, "variant": variant, "seed": seed, "question_id": r["question_id"],
         "answer_type": r["answer_type"], "question_type": r["question_type"], "answer": r["answer"],
         "prediction": p}
        for r, p in zip(test.iter_rows(named=True), predictions, strict=True)
    ]


def _mean(series: pl.Series) -> float | None:
    values = series.drop_nulls().cast(pl.Float64)
    return float(values.mean()) if len(values) else None  # type: ignore[arg-type]


def _seed_summary(part: pl.DataFrame) -> dict[str, Any]:
    """The metrics of one (variant, seed): one model's answers to the set's test questions."""
    closed = part.filter(pl.col("answer_type") == "closed")
    opened = part.filter(pl.col("answer_type") != "closed")
    scored = part.with_columns(
        pl.when(pl.col("answer_type") == "closed")
        .then(pl.col("closed_correct").cast(pl.Float64))
        .otherwise(pl.col("token_recall"))
        .alias("_score"),
        pl.col("question_type").fill_null("unknown"),
    )
    by_type = {
        str(qtype): {"n": g.height, "accuracy_or_recall": _mean(g["_score"])}
        for (qtype,), g in sorted(scored.group_by("question_type"), key=lambda kv: str(kv[0][0]))
    }
    return {
        "closed_accuracy": _mean(closed["closed_correct"]),
        "open_recall": _mean(opened["token_recall"]),
        "exact_match": _mean(part["exact_match"]),
        "candidate_accuracy": _mean(part["candidate_correct"]),
        "n_closed": closed.height,
        "n_open": opened.height,
        "by_question_type": by_type,
    }


def _spread(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None below two values) of the non-null values."""
    kept = [v for v in values if v is not None]
    mean = statistics.fmean(kept) if kept else None
    return mean, statistics.stdev(kept) if len(kept) >= 2 else None


def _count(values: list[int]) -> int | float:
    """A count per seed: the count when every seed has the same, else their mean."""
    return values[0] if len(set(values)) == 1 else statistics.fmean(values)


def _across_seeds(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    seeds = list(per_seed.values())
    out: dict[str, Any] = {"seeds": sorted(per_seed), "n_seeds": len(per_seed)}
    for metric in METRICS:
        out[metric], out[f"{metric}_std"] = _spread([s[metric] for s in seeds])
    out["n_closed"] = _count([s["n_closed"] for s in seeds])
    out["n_open"] = _count([s["n_open"] for s in seeds])
    types = sorted({t for s in seeds for t in s["by_question_type"]})
    by_type = {}
    for t in types:
        mine = [s["by_question_type"][t] for s in seeds if t in s["by_question_type"]]
        mean, std = _spread([m["accuracy_or_recall"] for m in mine])
        by_type[t] = {"n": _count([m["n"] for m in mine]), "accuracy_or_recall": mean, "std": std}
    out["by_question_type"] = by_type
    out["per_seed"] = per_seed
    return out


def summarise(df: pl.DataFrame) -> dict[str, Any]:
    """Per variant of a ``vqa_evaluation`` frame (one VQA set): the metrics of each seed, then
    their mean across seeds (``closed_accuracy``...), sample standard deviation
    (``closed_accuracy_std``..., None with one seed) and ``per_seed``.

    A metric with nothing to measure is None (no closed questions, no candidates).
    """
    sets = df["vqa_set"].unique().to_list() if df.height else []
    if len(sets) > 1:
        raise ValueError(f"summarise: one VQA set at a time, got {', '.join(sorted(map(str, sets)))}")
    out: dict[str, Any] = {}
    for (variant,), part in sorted(df.group_by("variant"), key=lambda kv: str(kv[0][0])):
        per_seed = {
            int(seed): _seed_summary(g)
            for (seed,), g in sorted(part.group_by("seed"), key=lambda kv: kv[0][0])
        }
        out[str(variant)] = _across_seeds(per_seed)
    return out


def _pm(entry: dict[str, Any], metric: str) -> str:
    mean, std = entry.get(metric), entry.get(f"{metric}_std")
    if mean is None:
        return "n/a"
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def summary_lines(out: str | Path) -> list[str]:
    """One line per evaluated VQA set: closed accuracy and open recall per variant, mean ± SD
    over seeds (what ``medtrinity build`` prints at the end)."""
    from medtrinity_assets.core.tables import VQA_EVALUATION

    folder = VQA_EVALUATION.path(out, "x").parent
    lines = []
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        summary = summarise(VQA_EVALUATION.read_path(path))
        parts = [f"{v}: closed {_pm(s, 'closed_accuracy')}, open recall {_pm(s, 'open_recall')}"
                 for v, s in summary.items()]
        n = next((s for v, s in summary.items() if v != MAJORITY), {})  # the models' seeds and counts
        if not n.get("n_closed") and not n.get("n_open"):
            lines.append(f"VQA {path.stem}: no test question to evaluate (no image of its test split has one; "
                         f"more images give it some) -> {path}")
            continue
        lines.append(f"VQA {path.stem} ({n.get('n_closed', 0)} closed + {n.get('n_open', 0)} open test questions, "
                     f"seeds {n.get('seeds', [])}): " + "; ".join(parts) + f" -> {path}")
    return lines
