"""Readers for the public file layouts of VQA benchmarks, each into the ``vqa_dataset`` shape.

A user points at the folder a benchmark was unpacked into; the layout names how it is laid out:

- ``vqa-rad`` (the OSF release): ``VQA_RAD Dataset Public.json`` and ``VQA_RAD Image Folder/``;
- ``slake`` (SLAKE 1.0): ``train.json``, ``validate.json``, ``test.json`` and ``imgs/``
  (English questions only);
- ``pathvqa`` (the Hugging Face Parquet release): ``data/{train,validation,test}-*.parquet``
  with the images embedded; they are written content-addressed under ``<work_dir>/images/``.
  The original release's pickles (``qas/*.pkl``) are refused: unpickling can run code.

A question whose image is missing, cannot be decoded (Pillow restricted to PNG and JPEG) or
whose path leaves the root is quarantined with a reason and the read goes on. Each distinct
image is decoded and hashed (sha256 of its bytes, the hash leakage is checked on) once.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import polars as pl

from medtrinity_assets.core.storage import content_path, sha256_bytes, sha256_file, write_content_file
from medtrinity_assets.core.tables import VQA_DATASET

SPLITS: tuple[str, ...] = ("train", "validation", "test")
PIL_FORMATS: tuple[str, ...] = ("PNG", "JPEG")
YES_NO = frozenset({"yes", "no"})
QUESTION_WORDS: tuple[str, ...] = ("what", "where", "how", "which", "who", "whose", "when", "why")

VQA_RAD_FILE = "VQA_RAD Dataset Public.json"
VQA_RAD_IMAGES = "VQA_RAD Image Folder"
SLAKE_FILES: dict[str, str] = {"train.json": "train", "validate.json": "validation", "test.json": "test"}
SLAKE_IMAGES = "imgs"
PATHVQA_COLUMNS: tuple[str, ...] = ("image", "question", "answer")
PICKLE_REFUSAL = (
    "pathvqa: found the original release's pickled files ({found}); pickled files are never read "
    "because unpickling can run arbitrary code. Use the Hugging Face Parquet release instead "
    "(data/train-*.parquet, data/validation-*.parquet, data/test-*.parquet)."
)


@dataclass
class VQARead:
    """A benchmark read: its questions (``vqa_dataset`` columns) and the questions set aside."""

    frame: pl.DataFrame
    quarantined: list[dict[str, Any]] = field(default_factory=list)


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _text(value: Any) -> str:
    """A JSON value as stripped text (VQA-RAD answers are sometimes numbers)."""
    return "" if value is None else str(value).strip()


def _root(root: str | Path, layout: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ValueError(f"{layout}: the benchmark root {path} is not a folder")
    return path.resolve()


def _inside(root: Path, folder: str, name: str) -> Path:
    """``root/folder/name`` resolved; raises ``path_escapes_root`` when ``name`` is absolute, has
    a ``..`` part or resolves (through a symlink) outside ``root``."""
    rel = name.replace("\\", "/")
    if not rel or rel.startswith("/") or re.match(r"^[A-Za-z]:", rel) or ".." in PurePosixPath(rel).parts:
        raise _Rejected("path_escapes_root")
    try:
        resolved = (root / folder / rel).resolve()
    except (OSError, RuntimeError):
        raise _Rejected("path_escapes_root") from None
    if root not in resolved.parents:
        raise _Rejected("path_escapes_root")
    return resolved


def _decodes(source: Path | BinaryIO, expected: str | None = None) -> bool:
    """Whether Pillow, restricted to PNG and JPEG, decodes the image (as ``expected`` if given)."""
    from PIL import Image

    try:
        with Image.open(source, formats=list(PIL_FORMATS)) as im:
            im.load()
            return expected is None or im.format == expected
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return False


class _ImageFiles:
    """Image files under a root: each distinct file contained, decoded and hashed once."""

    def __init__(self, root: Path, folder: str) -> None:
        self.root, self.folder = root, folder
        self._seen: dict[Path, tuple[str, str] | str] = {}

    def get(self, name: str) -> tuple[str, str]:
        """``(absolute path, sha256)`` of the image ``name``; raises :class:`_Rejected`."""
        path = _inside(self.root, self.folder, name)
        if path not in self._seen:
            self._seen[path] = self._check(path)
        found = self._seen[path]
        if isinstance(found, str):
            raise _Rejected(found)
        return found

    @staticmethod
    def _check(path: Path) -> tuple[str, str] | str:
        if not path.is_file():
            return "image_missing"
        if not _decodes(path):
            return "image_unreadable"
        try:
            return str(path), sha256_file(path)
        except OSError:
            return "image_unreadable"


def image_format(data: bytes) -> str | None:
    """``PNG`` or ``JPEG`` from an image's magic bytes, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    return None


class _EmbeddedImages:
    """Embedded image bytes: each distinct image checked, hashed and written once to
    ``<work_dir>/images/<sha[:2]>/<sha>.<png|jpg>``."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self._seen: dict[str, tuple[str, str] | str] = {}

    def get(self, data: bytes | None) -> tuple[str, str]:
        if not data:
            raise _Rejected("image_missing")
        sha = sha256_bytes(data)
        if sha not in self._seen:
            self._seen[sha] = self._store(sha, data)
        found = self._seen[sha]
        if isinstance(found, str):
            raise _Rejected(found)
        return found

    def _store(self, sha: str, data: bytes) -> tuple[str, str] | str:
        fmt = image_format(data)
        if fmt is None:
            return "unsupported_image_format"
        if not _decodes(io.BytesIO(data), fmt):
            return "image_unreadable"
        path = content_path(self.work_dir, "images", sha, ".png" if fmt == "PNG" else ".jpg")
        write_content_file(path, data)
        return str(path.resolve()), sha


class _Collector:
    """The rows of a read, unique question ids, and the questions quarantined."""

    def __init__(self, vqa_set: str) -> None:
        self.vqa_set = vqa_set
        self.rows: list[dict[str, Any]] = []
        self.quarantined: list[dict[str, Any]] = []
        self._ids: set[str] = set()

    def reject(self, origin_id: str, question_id: str | None, reason: str) -> None:
        self.quarantined.append({"origin_id": origin_id, "question_id": question_id, "reason": reason})

    def add(self, image: Callable[[], tuple[str, str]], **row: Any) -> None:
        """Add a question whose image ``image()`` resolves (or quarantine it, with the reason)."""
        qid, origin = row["question_id"], row["origin_id"]
        if not row["question"] or not row["answer"]:
            self.reject(origin, qid, "malformed_record: empty question or answer")
            return
        if qid in self._ids:
            self.reject(origin, qid, "duplicate_question_id")
            return
        try:
            path, sha = image()
        except _Rejected as rejected:
            self.reject(origin, qid, rejected.reason)
            return
        self._ids.add(qid)
        answer_type = _answer_type(row.pop("answer_type_raw", None), row["answer"])
        self.rows.append(
            {"vqa_set": self.vqa_set, **row, "image_file": path, "image_sha256": sha, "answer_type": answer_type}
        )

    def result(self) -> VQARead:
        return VQARead(VQA_DATASET.frame(self.rows), self.quarantined)


def _answer_type(raw: Any, answer: str) -> str:
    """``closed`` | ``open`` from a benchmark's own (``CLOSED ``, ``open``...), else from the answer."""
    given = _text(raw).lower()
    if given in ("closed", "open"):
        return given
    return "closed" if answer.lower() in YES_NO else "open"


def _load_json_list(root: Path, name: str, layout: str) -> list[Any]:
    path = root / name
    if not path.is_file():
        raise ValueError(f"{layout}: expected the file '{name}' in {root}; it is not there")
    if root not in path.resolve().parents:
        raise ValueError(f"{layout}: {path} resolves outside the benchmark root {root}")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{layout}: cannot read {path} as JSON: {exc}") from None
    if not isinstance(data, list):
        raise ValueError(f"{layout}: {path} should hold a JSON list of questions, not {type(data).__name__}")
    return data


def read_vqa_rad(name: str, root: str | Path, work_dir: str | Path) -> VQARead:
    """VQA-RAD (OSF release). ``phrase_type`` test_freeform / test_para is the test split."""
    root = _root(root, "vqa-rad")
    records = _load_json_list(root, VQA_RAD_FILE, "vqa-rad")
    images, out = _ImageFiles(root, VQA_RAD_IMAGES), _Collector(name)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or _text(rec.get("qid")) == "" or not _text(rec.get("image_name")):
            out.reject(f"record {i}", None, "malformed_record: no qid or image_name")
            continue
        image_name = _text(rec["image_name"])
        out.add(
            lambda n=image_name: images.get(n),
            question_id=f"vqa-rad:{_text(rec['qid'])}",
            split="test" if _text(rec.get("phrase_type")).lower().startswith("test") else "train",
            question=_text(rec.get("question")),
            answer=_text(rec.get("answer")),
            answer_type_raw=rec.get("answer_type"),
            question_type=_text(rec.get("question_type")),
            origin_id=image_name,
        )
    return out.result()


def read_slake(name: str, root: str | Path, work_dir: str | Path) -> VQARead:
    """SLAKE 1.0, English questions only; ``validate.json`` is the validation split."""
    root = _root(root, "slake")
    splits = [(_load_json_list(root, file, "slake"), split) for file, split in SLAKE_FILES.items()]
    images, out = _ImageFiles(root, SLAKE_IMAGES), _Collector(name)
    for records, split in splits:
        for i, rec in enumerate(records):
            if not isinstance(rec, dict) or _text(rec.get("qid")) == "" or not _text(rec.get("img_name")):
                out.reject(f"{split} record {i}", None, "malformed_record: no qid or img_name")
                continue
            if _text(rec.get("q_lang")).lower() != "en":
                continue
            image_name = _text(rec["img_name"])
            out.add(
                lambda n=image_name: images.get(n),
                question_id=f"slake:{_text(rec['qid'])}",
                split=split,
                question=_text(rec.get("question")),
                answer=_text(rec.get("answer")),
                answer_type_raw=rec.get("answer_type"),
                question_type=_text(rec.get("content_type")).lower(),
                origin_id=image_name,
            )
    return out.result()


def _parquet_files(root: Path) -> dict[str, list[Path]]:
    """The Parquet files of each split; refuses the pickle layout and files outside the root."""
    files = {split: sorted((root / "data").glob(f"{split}-*.parquet")) for split in SPLITS}
    if not any(files.values()):
        pickles = sorted({*root.glob("qas/*.pkl"), *root.glob("*.pkl"), *root.glob("qas/**/*.pkl")})
        if pickles:
            found = ", ".join(p.relative_to(root).as_posix() for p in pickles[:3])
            raise ValueError(PICKLE_REFUSAL.format(found=found + (", ..." if len(pickles) > 3 else "")))
        raise ValueError(
            f"pathvqa: expected the Parquet release's files data/train-*.parquet, data/validation-*.parquet "
            f"or data/test-*.parquet in {root}; none is there"
        )
    for path in (p for paths in files.values() for p in paths):
        if root not in path.resolve().parents:
            raise ValueError(f"pathvqa: {path} resolves outside the benchmark root {root}")
    return files


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a PathVQA Parquet file, a batch at a time (the images are embedded)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ValueError(f"pathvqa: cannot read {path} as Parquet: {exc}") from None
    missing = [c for c in PATHVQA_COLUMNS if c not in pf.schema_arrow.names]
    if missing:
        raise ValueError(f"pathvqa: {path} has no column(s) {', '.join(missing)}")
    for batch in pf.iter_batches(batch_size=64, columns=list(PATHVQA_COLUMNS)):
        yield from batch.to_pylist()


def pathvqa_question_type(question: str, closed: bool) -> str:
    """``yes/no`` for a closed question, else its question word (what, where, how...) or ``open``."""
    if closed:
        return "yes/no"
    words = re.findall(r"[a-z]+", question.lower())
    return words[0] if words and words[0] in QUESTION_WORDS else "open"


def read_pathvqa(name: str, root: str | Path, work_dir: str | Path) -> VQARead:
    """PathVQA (Hugging Face Parquet release); images are written under ``<work_dir>/images/``."""
    root = _root(root, "pathvqa")
    files = _parquet_files(root)
    images, out = _EmbeddedImages(Path(work_dir)), _Collector(name)
    for split, paths in files.items():
        index = 0
        for path in paths:
            for rec in _parquet_rows(path):
                image = rec.get("image")
                data = image.get("bytes") if isinstance(image, dict) else None
                answer = _text(rec.get("answer"))
                closed = answer.lower() in YES_NO
                question = _text(rec.get("question"))
                out.add(
                    lambda d=data: images.get(d),
                    question_id=f"pathvqa:{split}:{index}",
                    split=split,
                    question=question,
                    answer=answer,
                    answer_type_raw="closed" if closed else "open",
                    question_type=pathvqa_question_type(question, closed),
                    origin_id=_text(image.get("path") if isinstance(image, dict) else None)
                    or (sha256_bytes(data) if data else f"{split}:{index}"),
                )
                index += 1
    return out.result()


VQA_LAYOUTS: dict[str, Callable[[str, str | Path, str | Path], VQARead]] = {
    "vqa-rad": read_vqa_rad,
    "slake": read_slake,
    "pathvqa": read_pathvqa,
}
"""The benchmark layouts by name: ``reader(vqa_set, root, work_dir) -> VQARead``."""


def read_vqa_set(name: str, layout: str, root: str | Path, work_dir: str | Path) -> VQARead:
    """Read the VQA set ``name`` laid out as ``layout`` under ``root``.

    Raises ValueError for an unknown layout (naming the known ones), a root that is not a folder,
    or a layout whose expected files are not there (naming the file expected).
    """
    reader = VQA_LAYOUTS.get(layout.strip().lower())
    if reader is None:
        raise ValueError(f"unknown VQA layout '{layout}'; known layouts: {', '.join(sorted(VQA_LAYOUTS))}")
    return reader(name, root, work_dir)
