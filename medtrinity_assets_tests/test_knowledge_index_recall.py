"""The approximate index's calibrated search depth holds on real MiniLM sentence embeddings.

The default corpus split into sentences (about 2,000) is embedded with the default MiniLM
embedder once and kept in a cache folder (reused by content hash through the incremental
build, sha256-checked; ``MEDTRINITY_TEST_VECTOR_CACHE`` names another folder, ``off`` disables
it). An IVF index (forced with ``exact_max=0``) over 7/8 of the sentences must record a
calibrated recall@10 >= 0.95, and a fresh exact search must agree at that level for the held-out
1/8 and for the eval queries, which the index never saw.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from medtrinity_assets.knowledge.corpus import DEFAULT_CORPUS_PATH  # noqa: E402
from medtrinity_assets.knowledge.index import IndexConfig, build_index, load_embeddings, load_index  # noqa: E402

EVAL_PATH = Path(__file__).parent / "data" / "retrieval_eval.jsonl"
HELD_OUT_EVERY = 8


def _sentences() -> list[str]:
    """The default corpus's titles and sentences of at least four words, deduplicated."""
    seen: dict[str, None] = {}
    for line in DEFAULT_CORPUS_PATH.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            seen.setdefault(row["title"].strip(), None)
            for sent in re.split(r"(?<=[.;:!?])\s+", row["text"]):
                if len(sent.split()) >= 4:
                    seen.setdefault(sent.strip(), None)
    return list(seen)


def _chunks(texts: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "chunk_id": [f"s{i}" for i in range(len(texts))],
            "text": texts,
            "content_hash": [hashlib.sha256(t.encode()).hexdigest() for t in texts],
        }
    )


def _sentence_cache() -> Path | None:
    where = os.environ.get("MEDTRINITY_TEST_VECTOR_CACHE", "")
    if where.lower() == "off":
        return None
    base = Path(where) if where else Path(tempfile.gettempdir()) / f"medtrinity-test-vectors-{os.getuid()}"
    path = base.parent / f"{base.name}-sentences"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    return path


def _recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact, strict=True)]))


@pytest.mark.skipif(
    not (DEFAULT_CORPUS_PATH.exists() and EVAL_PATH.exists()), reason="default corpus or eval set not present"
)
def test_ivf_calibrated_recall_holds_on_real_sentence_embeddings(tmp_path: Path):
    import faiss

    from medtrinity_assets.knowledge.embedder import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder()
    chunks = _chunks(_sentences())
    cache = _sentence_cache()
    every = tmp_path / "all"
    previous = cache if cache is not None and (cache / "index.json").exists() else None
    all_built = build_index(chunks, embedder, every, previous_dir=previous)  # exact: n < exact_max
    if cache is not None and all_built.embedded:
        shutil.copytree(every, cache, dirs_exist_ok=True)
    vectors = load_embeddings(every)

    held = np.arange(chunks.height) % HELD_OUT_EVERY == 0
    built = build_index(
        chunks.filter(pl.Series(~held)),
        embedder,
        tmp_path / "ivf",
        previous_dir=every,
        config=IndexConfig(exact_max=0),
    )
    assert built.embedded == 0 and built.index_type == "ivf_flat_ip" and built.count > 1500
    cal = built.params["calibration"]
    assert cal["param"] == "nprobe" and cal["tuned"] and cal["met"] and cal["k"] == 10
    assert cal["recall_lower_bound"] >= 0.95 and cal["recall"] >= 0.95
    # the fixed rule alone (nprobe 8) fell short on these vectors: calibration had to raise it
    assert cal["start"] == 8 and cal["trials"][0][1] < 0.95 and built.params["nprobe"] == cal["chosen"] > 8

    ki = load_index(tmp_path / "ivf")
    assert ki.faiss_index.nprobe == cal["chosen"] and ki.meta["params"]["calibration"] == cal
    rows = [json.loads(x) for x in EVAL_PATH.read_text(encoding="utf-8").splitlines() if x.strip()]
    eval_q = embedder.encode([r["query"] for r in rows])
    exact = faiss.IndexFlatIP(ki.dim)
    exact.add(ki.embeddings())
    for queries in (vectors[held], eval_q):  # never in the index
        _, gt = exact.search(queries, 10)
        _, ids = ki.search(queries, 10)
        assert _recall(ids, gt) >= 0.95, (len(queries), _recall(ids, gt), cal)
