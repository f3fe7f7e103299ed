"""Knowledge base: ingestion, index integrity, incremental rebuild, hybrid retrieval, recall."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from medtrinity_assets.knowledge.corpus import DEFAULT_CORPUS_PATH, ingest_corpora  # noqa: E402
from medtrinity_assets.knowledge.index import (  # noqa: E402
    IndexConfig,
    IndexIntegrityError,
    build_index,
    load_index,
)
from medtrinity_assets.knowledge.retrieval import HybridRetriever, evaluate_retrieval  # noqa: E402

EVAL_PATH = Path(__file__).parent / "data" / "retrieval_eval.jsonl"

DOCS = [
    {
        "id": "nof",
        "title": "Non-ossifying fibroma",
        "topic": "bone",
        "text": "A non-ossifying fibroma is a benign fibrous lesion in the metaphysis of a long bone, "
        "most often the distal tibia or femur of a child. On a radiograph it is an eccentric, "
        "well-defined lucent lesion with a thin sclerotic, scalloped margin.",
    },
    {
        "id": "ptx",
        "title": "Pneumothorax",
        "topic": "chest",
        "text": "Pneumothorax is air in the pleural space. A chest X-ray shows a thin visceral pleural "
        "line with no lung markings beyond it.",
    },
    {
        "id": "hem",
        "title": "Hepatic haemangioma",
        "topic": "liver",
        "text": "Hepatic haemangioma is the most common benign liver tumour. On T2-weighted MRI it is "
        "markedly bright, and after contrast it fills in from the periphery.",
    },
]


def _write_jsonl(path: Path, rows: list) -> None:
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8"
    )


@pytest.fixture(scope="module")
def embedder():
    from medtrinity_assets.knowledge.embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


@pytest.fixture()
def corpus_dir(tmp_path: Path) -> Path:
    d = tmp_path / "kb"
    (d / "sub").mkdir(parents=True)
    _write_jsonl(
        d / "docs.jsonl",
        [
            *DOCS,
            "{not json",
            {"id": "empty", "title": "Empty", "text": "   \n\t "},
            {"id": "long", "title": "Long", "text": "word " * 3000},
            {"title": "no id", "text": "text without an id"},
            # same text as 'ptx' after NFKC + whitespace normalisation -> deduplicated
            {
                "id": "ptx_copy",
                "title": "copy",
                "text": "Pneumothorax  is air in the pleural space.  A\u00a0chest \uff38-ray "
                "shows a thin visceral pleural line with no lung markings beyond it.",
            },
        ],
    )
    (d / "sub" / "retina.md").write_text(
        "# Diabetic retinopathy\n\nMicroaneurysms are the earliest sign of diabetic retinopathy: "
        "tiny red dots on a fundus photograph.\n",
        encoding="utf-8",
    )
    (d / "brain.txt").write_text(
        "Grey matter and white matter are separated well on T1-weighted brain MRI.", encoding="utf-8"
    )
    (d / "broken.txt").write_bytes(b"\xff\xfe\x00\x81 not utf-8 \xc3")
    return d


def test_ingest_quarantines_each_bad_class_and_keeps_the_rest(corpus_dir: Path):
    res = ingest_corpora([str(corpus_dir)], include_default=False, max_doc_chars=5000)
    reasons = {r["reason"].split(":")[0]: r for r in res.quarantine.to_dicts()}
    assert set(reasons) == {"undecodable", "malformed_jsonl", "empty_document", "too_long"}
    assert reasons["undecodable"]["path"].endswith("broken.txt") and reasons["undecodable"]["line"] is None
    assert reasons["empty_document"]["line"] == 5
    assert reasons["too_long"]["line"] == 6
    assert res.quarantine.filter(pl.col("reason").str.starts_with("malformed_jsonl"))["line"].to_list() == [
        4,
        7,
    ]
    docs = set(res.documents["doc_id"])
    assert docs == {"nof", "ptx", "hem", "sub/retina", "brain"}
    assert res.counts["duplicate_documents"] == 1
    assert set(res.chunks["doc_id"]) == docs
    retina = res.documents.filter(pl.col("doc_id") == "sub/retina").row(0, named=True)
    assert retina["title"] == "Diabetic retinopathy" and retina["corpus"] == "kb"
    assert res.chunker.startswith("tokens:")


def test_chunks_keep_provenance(tmp_path: Path):
    paragraphs = [
        f"Paragraph {i}: the tibia and fibula form the lower leg; fracture pattern {i} is described."
        for i in range(60)
    ]
    _write_jsonl(tmp_path / "long.jsonl", [{"id": "leg", "title": "Leg", "text": "\n\n".join(paragraphs)}])
    res = ingest_corpora([str(tmp_path)], include_default=False, chunk_tokens=64, overlap_tokens=12)
    chunks = res.chunks.filter(pl.col("doc_id") == "leg").sort("char_start")
    assert chunks.height > 5
    text = res.documents.filter(pl.col("doc_id") == "leg")["text"][0]
    for row in chunks.iter_rows(named=True):
        assert text[row["char_start"] : row["char_end"]] == row["text"]
        assert row["content_hash"] == hashlib.sha256(row["text"].encode()).hexdigest()
    assert chunks["chunk_id"].n_unique() == chunks.height
    # token-sized: no chunk is longer than the limit in the embedder's tokens
    from medtrinity_assets.knowledge.corpus import load_tokenizer

    tok = load_tokenizer()
    assert max(len(tok.tokenize(t)) for t in chunks["text"]) <= 64
    # the chunks cover the whole document: only whitespace falls between consecutive chunks
    starts, ends = chunks["char_start"].to_list(), chunks["char_end"].to_list()
    assert starts[0] == 0 and ends[-1] == len(text)
    assert all(
        text[e_prev:s].strip() == "" for s, e_prev in zip(starts[1:], ends[:-1], strict=True) if s > e_prev
    )


def test_fsspec_url_and_character_fallback():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/kbtest/a.jsonl", (json.dumps(DOCS[0]) + "\n").encode())
    fs.pipe("/kbtest/b.md", b"# Title B\n\nSome text about the spleen.")
    res = ingest_corpora(["memory://kbtest"], include_default=False, tokenizer=None)
    assert res.chunker.startswith("chars:")
    assert set(res.chunks["doc_id"]) == {"nof", "b"}
    assert all(p.startswith("memory://") for p in res.chunks["path"])


def _chunks(embedder_free_texts: dict[str, str]) -> pl.DataFrame:
    rows = []
    for doc_id, text in embedder_free_texts.items():
        rows.append(
            {
                "chunk_id": f"c_{doc_id}",
                "doc_id": doc_id,
                "corpus": "t",
                "title": doc_id,
                "topic": None,
                "text": text,
                "char_start": 0,
                "char_end": len(text),
                "content_hash": hashlib.sha256(text.encode()).hexdigest(),
            }
        )
    return pl.DataFrame(rows)


def test_index_roundtrip_hash_check_and_incremental(tmp_path: Path, embedder):
    texts = {d["id"]: d["text"] for d in DOCS}
    built = build_index(_chunks(texts), embedder, tmp_path / "v1")
    assert (built.count, built.reused, built.embedded, built.index_type) == (3, 0, 3, "flat_ip")
    meta = json.loads((tmp_path / "v1" / "index.json").read_text())
    assert meta["embedder"] == {"name": embedder.name, "dim": 384}
    assert len(meta["content_hashes"]) == 3 and meta["faiss_sha256"] == built.faiss_sha256
    ki = load_index(tmp_path / "v1")
    assert ki.count == 3 and ki.index_type == "flat_ip"
    emb = ki.embeddings()
    assert emb.dtype == np.float32 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)

    # incremental: one changed, one added, two unchanged
    texts2 = dict(texts)
    texts2["hem"] = texts["hem"] + " It rarely bleeds."
    texts2["new"] = "The spleen lies in the left upper quadrant."
    inc = build_index(_chunks(texts2), embedder, tmp_path / "v2", previous_dir=tmp_path / "v1")
    assert (inc.count, inc.reused, inc.embedded) == (4, 2, 2)
    meta2 = json.loads((tmp_path / "v2" / "index.json").read_text())
    assert (meta2["reused"], meta2["embedded"]) == (2, 2)
    fresh = embedder.encode([texts2[k] for k in ("nof", "ptx", "hem", "new")])
    assert np.allclose(load_index(tmp_path / "v2").embeddings(), fresh, atol=1e-5)
    # in-place rebuild with nothing changed embeds nothing
    again = build_index(_chunks(texts2), embedder, tmp_path / "v2", previous_dir=tmp_path / "v2")
    assert (again.reused, again.embedded) == (4, 0)

    # tampering with the Faiss file is refused before it is read
    faiss_file = tmp_path / "v1" / "index.faiss"
    data = bytearray(faiss_file.read_bytes())
    data[-1] ^= 0xFF
    faiss_file.write_bytes(bytes(data))
    with pytest.raises(IndexIntegrityError, match="refusing"):
        load_index(tmp_path / "v1")
    # a previous build that fails its check is not reused (and does not break the build)
    emb_file = tmp_path / "v2" / "embeddings.npy"
    emb_file.write_bytes(emb_file.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    third = build_index(_chunks(texts2), embedder, tmp_path / "v3", previous_dir=tmp_path / "v2")
    assert third.reused == 0 and third.embedded == 4 and "not reused" in third.previous_note


class _HashEmbedder:
    """Deterministic random unit vectors (no model) to exercise the approximate index path."""

    name = "hash-test"
    dim = 32

    def encode(self, texts):
        out = np.stack(
            [
                np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest()[:8], 16)).standard_normal(32)
                for t in texts
            ]
        )
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_above_threshold(tmp_path: Path, kind: str):
    texts = {f"d{i}": f"document number {i}" for i in range(400)}
    cfg = IndexConfig(exact_max=100, approximate=kind, hnsw_ef_search=64, ivf_nprobe=16)
    built = build_index(_chunks(texts), _HashEmbedder(), tmp_path, config=cfg)
    assert built.index_type.startswith(kind)
    ki = load_index(tmp_path)
    q = _HashEmbedder().encode(["document number 7", "document number 311"])
    _, ids = ki.search(q, 3)
    assert ids[0][0] == 7 and ids[1][0] == 311
    assert ki.meta["params"] == built.params


@pytest.fixture(scope="module")
def small_retriever(tmp_path_factory, embedder):
    d = tmp_path_factory.mktemp("kb_small")
    _write_jsonl(d / "docs.jsonl", DOCS)
    res = ingest_corpora([str(d)], include_default=False)
    out = tmp_path_factory.mktemp("idx_small")
    build_index(res.chunks, embedder, out)
    return HybridRetriever(load_index(out), embedder)


def test_hybrid_search_finds_relevant_passage(small_retriever):
    queries = ["lucent lesion of the distal tibia in a child", "air in the pleural space on chest radiograph"]
    for mode in ("dense", "lexical", "hybrid"):
        res = small_retriever.search(queries, k=2, mode=mode)
        assert res[0][0].doc_id == "nof", mode
        assert res[1][0].doc_id == "ptx", mode
        assert [h.rank for h in res[0]] == list(range(1, len(res[0]) + 1))
    with pytest.raises(ValueError):
        small_retriever.search(["x"], mode="fuzzy")


def test_langchain_retriever_returns_documents(small_retriever):
    from langchain_core.documents import Document

    from medtrinity_assets.knowledge.langchain_adapter import KnowledgeRetriever

    lc = KnowledgeRetriever(retriever=small_retriever, k=2)
    docs = lc.invoke("benign liver tumour bright on T2 MRI")
    assert docs and all(isinstance(d, Document) for d in docs)
    assert docs[0].metadata["doc_id"] == "hem"
    assert {"chunk_id", "doc_id", "title", "score"} <= set(docs[0].metadata)
    assert len(lc.batch_documents(["pneumothorax", "fibroma"])) == 2


@pytest.mark.skipif(
    not (DEFAULT_CORPUS_PATH.exists() and EVAL_PATH.exists()),
    reason="default corpus or eval set not present yet",
)
def test_recall_on_default_corpus(tmp_path: Path, embedder):
    res = ingest_corpora([], include_default=True)
    assert res.counts["documents"] >= 300
    build_index(res.chunks, embedder, tmp_path)
    retriever = HybridRetriever(load_index(tmp_path), embedder)
    rows = [json.loads(line) for line in EVAL_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 50
    scores = evaluate_retrieval(retriever, rows, k=5)
    print("retrieval eval:", json.dumps(scores))
    dense, lexical, hybrid = (scores[m]["recall@k"] for m in ("dense", "lexical", "hybrid"))
    assert hybrid >= max(dense, lexical)
    assert hybrid >= 0.6


@pytest.mark.parametrize("storage", ["sq8", "fp16"])
def test_ivf_scalar_quantised_storage(tmp_path: Path, storage: str):
    texts = {f"d{i}": f"document number {i}" for i in range(400)}
    cfg = IndexConfig(exact_max=100, approximate="ivf", ivf_storage=storage, ivf_nprobe=16, build_batch=64)
    built = build_index(_chunks(texts), _HashEmbedder(), tmp_path, config=cfg)
    assert built.index_type == f"ivf_{storage}_ip" and built.params["storage"] == storage
    ki = load_index(tmp_path)
    assert ki.index_type == built.index_type and ki.faiss_index.nprobe == 16
    q = _HashEmbedder().encode(["document number 7", "document number 311"])
    _, ids = ki.search(q, 3)
    assert ids[0][0] == 7 and ids[1][0] == 311
    # the embeddings file written in batches is exactly what the embedder returns
    assert np.allclose(ki.embeddings(), _HashEmbedder().encode(list(texts.values())), atol=1e-6)


def test_ivf_auto_storage_and_calibrated_nprobe(tmp_path: Path):
    from medtrinity_assets.knowledge.faiss_index import NPROBE_RULE, default_nprobe

    texts = {f"d{i}": f"document number {i}" for i in range(300)}
    auto = IndexConfig(exact_max=100, ivf_nlist=20, ivf_flat_max=250)
    built = build_index(_chunks(texts), _HashEmbedder(), tmp_path / "a", config=auto)
    assert built.index_type == "ivf_sq8_ip"  # above ivf_flat_max
    # the rule gives the starting nprobe; calibration raises it until recall@10 reaches 0.95
    cal = built.params["calibration"]
    assert built.params["nprobe_rule"] == NPROBE_RULE and cal["start"] == default_nprobe(20) == 8
    assert cal["tuned"] and cal["met"] and cal["recall_lower_bound"] >= 0.95 and cal["queries"] == 300
    assert built.params["nprobe"] == cal["chosen"] > 8 and cal["trials"][0][0] == 8
    assert load_index(tmp_path / "a").faiss_index.nprobe == cal["chosen"]  # applied after loading
    flat = IndexConfig(exact_max=100, ivf_nlist=20)
    assert (
        build_index(_chunks(texts), _HashEmbedder(), tmp_path / "f", config=flat).index_type == "ivf_flat_ip"
    )
    assert default_nprobe(1789) == 8 and default_nprobe(4000) == 16 and default_nprobe(5) == 5


def test_streaming_build_reuses_across_batches_and_duplicates(tmp_path: Path):
    """Batches smaller than the table: reuse by content hash and repeated texts stay correct."""
    emb = _HashEmbedder()
    texts = {f"d{i}": f"document number {i % 40}" for i in range(100)}  # each text 2-3 times
    cfg = IndexConfig(build_batch=7)
    first = build_index(_chunks(texts), emb, tmp_path / "v1", config=cfg)
    assert (first.count, first.reused, first.embedded) == (100, 0, 100)
    expected = emb.encode(list(texts.values()))
    assert np.allclose(load_index(tmp_path / "v1").embeddings(), expected, atol=1e-6)

    texts2 = {f"e{i}": f"document number {(i * 7) % 60}" for i in range(90)}  # reordered, 20 new texts
    calls: list[int] = []

    class Counting(_HashEmbedder):
        def encode(self, t):
            calls.append(len(t))
            return super().encode(t)

    again = build_index(
        _chunks(texts2), Counting(), tmp_path / "v1", previous_dir=tmp_path / "v1", config=cfg
    )
    assert again.reused == sum(1 for t in texts2.values() if int(t.split()[-1]) < 40)
    assert sum(calls) == 20  # each new text embedded once, even when repeated across batches
    assert np.allclose(load_index(tmp_path / "v1").embeddings(), emb.encode(list(texts2.values())), atol=1e-6)
