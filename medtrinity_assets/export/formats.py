"""The export's training formats, written from ``triplets.parquet`` and the stored PNGs.

Under the export folder ``<export>/`` (next to ``triplets.parquet`` and ``images/``):

- ``llava/<split>.json`` — LLaVA conversations (what LLaVA's training scripts read with
  ``--image_folder <export>``): one question (whole image, or the region at its normalised box)
  and the description as the answer;
- ``webdataset/<split>-%06d.tar`` — WebDataset shards (key = ``triplet_id``; ``png`` the stored
  image, ``json`` every column of the table, ``txt`` the description) and
  ``webdataset/shards.json``, the shard list with sizes, hashes and per-shard statistics;
- ``hf/`` — a folder ``datasets.load_dataset(<export>/hf)`` loads offline: Parquet files with the
  image bytes embedded and the features in their schema, and a ``README.md`` whose YAML header
  declares the splits and the features.

Only the splits that have rows get files. Every file is written to a temporary name and renamed
into place; files of an earlier export that this one did not write are removed. Rows are written
one at a time (images read one at a time), so memory does not grow with the export's size beyond
the table itself. ``webdataset`` and ``datasets`` are imported where used: both are slow imports.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import polars as pl

from medtrinity_assets.core.storage import atomic_file, atomic_write_bytes
from medtrinity_assets.core.tables import MEDTRINITY_DATASET
from medtrinity_assets.export.splits import SPLITS

WHOLE_IMAGE = "whole_image"
TAR_MTIME = 946684800  # 2000-01-01: a fixed member time makes shards byte-reproducible
HF_ROWS_PER_FILE = 5_000
HF_ROWS_PER_GROUP = 100  # Parquet row group of image rows (what `datasets` itself uses)

WHOLE_IMAGE_QUESTIONS: tuple[str, ...] = (
    "Describe this medical image.",
    "What does this image show? Describe it in detail.",
    "Give a detailed description of this medical image.",
    "Describe the modality, anatomy and findings visible in this image.",
    "Write a report of what you see in this image.",
)
REGION_QUESTIONS: tuple[str, ...] = (
    "Describe the region at {box} in this image.",
    "What is in the region of interest {box}? Describe it in detail.",
    "Describe the region inside the box {box} (normalised x0, y0, x1, y1).",
    "Give a detailed description of the area {box} of this image and how it relates to its surroundings.",
    "Look at the region {box}. Describe its location, appearance and surroundings.",
)

_HF_KINDS: dict[Any, str] = {
    pl.String: "string",
    pl.Int32: "int32",
    pl.Int64: "int64",
    pl.Float64: "float64",
    pl.Boolean: "bool",
    pl.List(pl.Float64): "float32_list",
}


def _hf_kind(name: str, dtype: Any) -> str:
    try:
        return _HF_KINDS[dtype]
    except KeyError:
        raise TypeError(
            f"column '{name}' ({dtype}) has no Hugging Face feature declared in formats.py"
        ) from None


# the `hf/` columns, name -> kind (see _hf_feature / _hf_yaml): the image, then the table's columns
HF_COLUMNS: dict[str, str] = {
    "image": "image",
    **{name: _hf_kind(name, dtype) for name, dtype in MEDTRINITY_DATASET.schema.items()},
}


# --------------------------------------------------------------------------------------
# shared helpers


def split_frames(df: pl.DataFrame) -> Iterator[tuple[str, pl.DataFrame]]:
    """``(split, rows)`` for each split with rows, in the order train, validation, test; a row
    without one of these splits raises (it would silently vanish from every format)."""
    unknown = sorted({str(s) for s in df["split"].unique().to_list()} - set(SPLITS))
    if unknown:
        raise ValueError(f"triplets with a split outside {', '.join(SPLITS)}: {', '.join(unknown)}")
    for split in SPLITS:
        part = df.filter(pl.col("split") == split)
        if part.height:
            yield split, part


def _remove_stale(folder: Path, pattern: str, keep: set[Path]) -> None:
    """Files of an earlier export matching ``pattern`` that this one did not write."""
    for path in folder.glob(pattern):
        if path not in keep:
            path.unlink()


def _image_bytes(root: Path, row: dict[str, Any]) -> bytes:
    path = root / row["image_file"]
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"triplet {row['triplet_id']}: image {row['image_file']} is missing"
        ) from None


def _json_default(value: Any) -> Any:
    return str(value)


# --------------------------------------------------------------------------------------
# LLaVA


def format_box(bbox_norm: list[float]) -> str:
    """A normalised box as written in a question: ``[0.12, 0.30, 0.48, 0.55]`` (x0, y0, x1, y1)."""
    return "[" + ", ".join(f"{float(v):.2f}" for v in bbox_norm) + "]"


def _pick(seed: int, key: str, n: int) -> int:
    """A stable choice in ``range(n)`` from the seed and a row's key (no global random state)."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def llava_question(row: dict[str, Any], seed: int = 0) -> str:
    """The question of a row: about the whole image, or about the region at its normalised box
    (a whole-image row, or a row without a box, gets a whole-image question)."""
    box = row.get("bbox_norm")
    if row.get("origin") == WHOLE_IMAGE or not box or len(box) != 4:
        return WHOLE_IMAGE_QUESTIONS[_pick(seed, row["triplet_id"], len(WHOLE_IMAGE_QUESTIONS))]
    template = REGION_QUESTIONS[_pick(seed, row["triplet_id"], len(REGION_QUESTIONS))]
    return template.format(box=format_box(box))


def llava_record(row: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """One LLaVA conversation for a triplet row."""
    return {
        "id": row["triplet_id"],
        "image": row["image_file"],
        "conversations": [
            {"from": "human", "value": "<image>\n" + llava_question(row, seed)},
            {"from": "gpt", "value": row["description"] or ""},
        ],
    }


def write_llava(df: pl.DataFrame, export_root: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """``llava/<split>.json`` per split with rows; returns ``{split: path}``. The JSON array is
    written one record per line, so millions of rows never make one string."""
    root = Path(export_root)
    folder = root / "llava"
    cols = ["triplet_id", "image_file", "bbox_norm", "origin", "description"]
    paths: dict[str, Path] = {}
    for split, part in split_frames(df):
        path = folder / f"{split}.json"
        with atomic_file(path) as fh:
            fh.write("[")
            for i, row in enumerate(part.select(cols).iter_rows(named=True)):
                fh.write(("," if i else "") + "\n" + json.dumps(llava_record(row, seed), ensure_ascii=False))
            fh.write("\n]\n")
        paths[split] = path
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale(folder, "*.json", set(paths.values()))
    return paths


# --------------------------------------------------------------------------------------
# JSON arrays, read incrementally (the LLaVA files read back)


class _JsonArray:
    """The items of a JSON array file, parsed a chunk at a time (a LLaVA file of millions of
    conversations is never one string). Raises ``ValueError`` where the JSON is invalid."""

    _WS = re.compile(r"\s*")

    def __init__(self, fh: IO[str], chunk: int = 1 << 20) -> None:
        self.fh, self.chunk = fh, chunk
        self.buf, self.pos = "", 0
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        data = self.fh.read(self.chunk)
        if not data:
            return False
        self.buf, self.pos = self.buf[self.pos :] + data, 0
        return True

    def _peek(self) -> str:
        """The next non-blank character ('' at the end of the file)."""
        while True:
            self.pos = self._WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def _item(self) -> Any:
        self._peek()  # raw_decode does not skip leading blanks
        while True:
            try:
                item, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self._more():
                    continue
                raise
            if end < len(self.buf) or not self._more():  # a number could go on in the next chunk
                self.pos = end
                return item

    def __iter__(self) -> Iterator[Any]:
        if self._peek() != "[":
            raise ValueError("the file is not a JSON array")
        self.pos += 1
        if self._peek() == "]":
            self.pos += 1
        else:
            while True:
                yield self._item()
                sep = self._peek()
                self.pos += 1
                if sep == "]":
                    break
                if sep != ",":
                    raise ValueError(
                        f"expected ',' or ']' after an item, found {sep or 'the end of the file'!r}"
                    )
        if self._peek():
            raise ValueError("data after the closing ']'")


def iter_json_array(path: str | Path) -> Iterator[Any]:
    """The items of the JSON array in ``path``, parsed incrementally."""
    with open(path, encoding="utf-8") as fh:
        yield from _JsonArray(fh)


# --------------------------------------------------------------------------------------
# WebDataset


class _HashingFile:
    """A write-only file that hashes and counts what goes through it (a shard's sha256 and size
    without reading it back)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def webdataset_sample(row: dict[str, Any], png: bytes) -> dict[str, Any]:
    """The sample of a triplet: ``png`` the image, ``json`` every column, ``txt`` the description."""
    meta = json.dumps(row, ensure_ascii=False, default=_json_default).encode("utf-8")
    return {
        "__key__": row["triplet_id"],
        "png": png,
        "json": meta,
        "txt": (row["description"] or "").encode("utf-8"),
    }


def _write_shard(root: Path, path: Path, split: str, rows: pl.DataFrame) -> dict[str, Any]:
    from webdataset import TarWriter

    modalities: Counter[str] = Counter()
    origins: Counter[str] = Counter()
    with atomic_file(path, "wb") as fh:
        out = _HashingFile(fh)
        writer = TarWriter(out, encoder=False, mtime=TAR_MTIME)
        for row in rows.iter_rows(named=True):
            key = row["triplet_id"]
            if not key or "." in key or "/" in key:
                raise ValueError(f"triplet id {key!r} cannot be a WebDataset key (empty, or a '.' or '/')")
            writer.write(webdataset_sample(row, _image_bytes(root, row)))
            modalities[row["modality"] or "unknown"] += 1
            origins[row["origin"] or "unknown"] += 1
        writer.close()
    return {
        "file": path.relative_to(root).as_posix(),
        "split": split,
        "samples": rows.height,
        "bytes": out.size,
        "sha256": out.sha.hexdigest(),
        "modalities": dict(sorted(modalities.items())),
        "origins": dict(sorted(origins.items())),
    }


def write_webdataset(df: pl.DataFrame, export_root: str | Path, *, shard_size: int = 10_000) -> list[dict]:
    """``webdataset/<split>-%06d.tar`` shards of at most ``shard_size`` samples and
    ``webdataset/shards.json``; returns the shard entries of ``shards.json``."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    root = Path(export_root)
    folder = root / "webdataset"
    shards: list[dict[str, Any]] = []
    for split, part in split_frames(df):
        for index, start in enumerate(range(0, part.height, shard_size)):
            path = folder / f"{split}-{index:06d}.tar"
            shards.append(_write_shard(root, path, split, part.slice(start, shard_size)))
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale(folder, "*.tar", {root / s["file"] for s in shards})
    splits = {
        s: {
            "shards": sum(e["split"] == s for e in shards),
            "samples": sum(e["samples"] for e in shards if e["split"] == s),
        }
        for s in SPLITS
    }
    listing = {"format": "webdataset", "shard_size": shard_size, "splits": splits, "shards": shards}
    atomic_write_bytes(folder / "shards.json", json.dumps(listing, indent=2).encode("utf-8"))
    return shards


# --------------------------------------------------------------------------------------
# Hugging Face datasets folder


def _hf_feature(kind: str) -> Any:
    import datasets

    if kind == "image":
        return datasets.Image()
    if kind == "float32_list":
        return datasets.Sequence(datasets.Value("float32"))
    return datasets.Value(kind)


def hf_features() -> Any:
    """The ``datasets.Features`` of the ``hf/`` folder (what ``load_dataset`` must report)."""
    import datasets

    return datasets.Features({name: _hf_feature(kind) for name, kind in HF_COLUMNS.items()})


def _hf_yaml(kind: str) -> dict[str, str]:
    if kind == "float32_list":
        return {"list": "float32"}
    return {"dtype": kind}


def hf_readme(split_rows: dict[str, int]) -> str:
    """``hf/README.md``: the YAML header ``load_dataset`` reads (configs, features, splits)."""
    import yaml

    header = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"data/{s}-*"} for s in split_rows],
            }
        ],
        "dataset_info": {"features": [{"name": n, **_hf_yaml(k)} for n, k in HF_COLUMNS.items()]},
    }
    counts = ", ".join(f"{s}: {n}" for s, n in split_rows.items()) or "none"
    body = (
        "# MedTrinity-style triplets\n\n"
        "Image, region of interest (box, normalised box, COCO RLE mask) and multigranular description, "
        'with its five facets, licence and provenance. Load with `datasets.load_dataset("<this folder>")`.\n\n'
        f"Rows per split: {counts}.\n"
    )
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + body


def _write_hf_parquet(root: Path, rows: pl.DataFrame, path: Path, schema: Any) -> None:
    """One Parquet file of ``rows`` with the image bytes embedded, written a row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_file(path, "wb") as fh, pq.ParquetWriter(fh, schema, compression="zstd") as writer:
        for batch in rows.iter_slices(HF_ROWS_PER_GROUP):
            records = batch.to_dicts()
            for r in records:
                r["image"] = {"bytes": _image_bytes(root, r), "path": Path(r["image_file"]).name}
            writer.write_table(pa.Table.from_pylist(records, schema=schema))


def write_hf_folder(
    df: pl.DataFrame, export_root: str | Path, *, rows_per_file: int = HF_ROWS_PER_FILE
) -> Path:
    """``hf/data/<split>-NNNNN-of-NNNNN.parquet`` (at most ``rows_per_file`` rows each) and
    ``hf/README.md``; returns the ``hf/`` folder. The Parquet schema carries the features
    (``huggingface`` metadata), so the files also load on their own with the image typed."""
    if rows_per_file < 1:
        raise ValueError("rows_per_file must be at least 1")
    root = Path(export_root)
    folder = root / "hf"
    schema = hf_features().arrow_schema
    written: set[Path] = set()
    split_rows: dict[str, int] = {}
    for split, part in split_frames(df):
        n_files = math.ceil(part.height / rows_per_file)
        for i in range(n_files):
            path = folder / "data" / f"{split}-{i:05d}-of-{n_files:05d}.parquet"
            _write_hf_parquet(root, part.slice(i * rows_per_file, rows_per_file), path, schema)
            written.add(path)
        split_rows[split] = part.height
    (folder / "data").mkdir(parents=True, exist_ok=True)
    _remove_stale(folder / "data", "*.parquet", written)
    atomic_write_bytes(folder / "README.md", hf_readme(split_rows).encode("utf-8"))
    return folder
