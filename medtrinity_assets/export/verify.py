"""Verification of an export folder: every file the table lists is there with its hash, every
shard reads back end to end, the LLaVA files parse, the ``hf/`` folder loads with ``datasets``,
and every format holds the same triplets per split as ``triplets.parquet``.

Problems are one-line strings naming the file and the record. Formats are compared per split by
row count and by an order-free digest of their triplet ids (so memory does not grow with the
export); only a split that disagrees is read again to name the ids that are missing or extra.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl

from medtrinity_assets.core.storage import atomic_write_bytes, sha256_file
from medtrinity_assets.core.tables import MEDTRINITY_DATASET
from medtrinity_assets.export.formats import hf_features, iter_json_array
from medtrinity_assets.export.splits import SPLITS

MAX_PROBLEMS = 1000  # listed in a report; the rest are counted (`not_listed`)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ID_EXAMPLES = 5
_FORMAT_FILES = {
    "llava": "llava/{split}.json",
    "webdataset": "webdataset/{split}-*.tar",
    "hf": "hf/data/{split}-*.parquet",
}


@dataclass
class VerifyReport:
    """What :func:`verify_export` found: ``problems`` (one line each), ``counts`` (rows per format,
    plus ``images`` and ``shards``) and ``per_split`` (rows per format and split)."""

    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    per_split: dict[str, dict[str, int]] = field(default_factory=dict)
    not_listed: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.not_listed

    def add(self, problem: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.not_listed += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "problems_not_listed": self.not_listed,
            "counts": self.counts,
            "per_split": self.per_split,
        }


@dataclass
class _Tally:
    """Rows per split and an order-free digest of their ids (sum of 64-bit hashes)."""

    count: dict[str, int] = field(default_factory=dict)
    digest: dict[str, int] = field(default_factory=dict)

    def add(self, split: str, key: Any) -> None:
        h = int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "big")
        self.count[split] = self.count.get(split, 0) + 1
        self.digest[split] = (self.digest.get(split, 0) + h) % 2**64

    def same(self, other: _Tally, split: str) -> bool:
        return self.count.get(split, 0) == other.count.get(split, 0) and self.digest.get(
            split
        ) == other.digest.get(split)


def _one_line(exc: BaseException) -> str:
    first = (
        exc.args[0] if len(exc.args) > 1 and isinstance(exc.args[0], str) else None
    )  # tarfile: (msg, fileobj, ...)
    text = " ".join((first or str(exc)).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _png_problem(data: bytes, width: Any = None, height: Any = None) -> str | None:
    """Why ``data`` is not a readable PNG of the given size (its header decoded), or None."""
    if not data.startswith(PNG_SIGNATURE):
        return "not PNG data"
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
    except Exception as exc:  # noqa: BLE001 - PIL raises several types on a bad header
        return f"PNG header does not decode ({_one_line(exc)})"
    if width is not None and height is not None and size != (width, height):
        return f"PNG is {size[0]}x{size[1]}, the table says {width}x{height}"
    return None


# --------------------------------------------------------------------------------------
# the table and its images


_VERIFY_COLUMNS = ["triplet_id", "split", "image_file", "image_sha256"]


def _check_table(root: Path, report: VerifyReport) -> pl.DataFrame | None:
    try:
        # only what the checks need: the descriptions alone are most of a large table's memory
        df = MEDTRINITY_DATASET.read_path(root / "triplets.parquet", _VERIFY_COLUMNS)
    except Exception as exc:  # noqa: BLE001 - missing, foreign or unreadable: one line either way
        report.add(f"triplets.parquet: {_one_line(exc)}")
        return None
    dups = df.filter(pl.col("triplet_id").is_duplicated())["triplet_id"].unique().sort()
    if dups.len():
        report.add(
            f"triplets.parquet: {dups.len()} duplicated triplet_id(s), e.g. {', '.join(map(str, dups[:_ID_EXAMPLES]))}"
        )
    bad = df.filter(pl.col("split").is_null() | ~pl.col("split").is_in(list(SPLITS)))
    if bad.height:
        r = bad.row(0, named=True)
        report.add(
            f"triplets.parquet: {bad.height} row(s) with a split outside {', '.join(SPLITS)} "
            f"(e.g. triplet {r['triplet_id']}: {r['split']!r})"
        )
    return df


def _image_problem(root: Path, rel: Any, shas: list[str], n: int, tid: str) -> str | None:
    where = f"{rel} (triplet {tid}" + (f" and {n - 1} more)" if n > 1 else ")")
    parts = PurePosixPath(str(rel)).parts
    if not rel or PurePosixPath(str(rel)).is_absolute() or ".." in parts:
        return f"triplets.parquet: triplet {tid}: image_file {rel!r} is not a path inside the export"
    if len(shas) != 1:
        return f"{rel}: {len(shas)} different image_sha256 values in triplets.parquet"
    path = root / str(rel)
    if not path.is_file():
        return f"{where}: image file is missing"
    actual = sha256_file(path)
    if actual != shas[0]:
        return f"{where}: sha256 {actual[:16]}... does not match image_sha256 {str(shas[0])[:16]}..."
    return None


def _check_images(root: Path, df: pl.DataFrame, report: VerifyReport, workers: int) -> None:
    """Each distinct image file exists and hashes to its ``image_sha256`` (hashed in threads:
    hashlib releases the GIL, and the work is mostly reading)."""
    files = df.group_by("image_file", maintain_order=True).agg(
        pl.col("image_sha256").unique().alias("shas"),
        pl.len().alias("n"),
        pl.col("triplet_id").first().alias("tid"),
    )
    report.counts["images"] = files.height
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for batch in files.iter_slices(10_000):
            for problem in pool.map(lambda r: _image_problem(root, *r), batch.iter_rows()):
                if problem:
                    report.add(problem)


# --------------------------------------------------------------------------------------
# WebDataset


def _sample_problem(sample: dict[str, Any], split: str) -> str | None:
    missing = [k for k in ("png", "json", "txt") if k not in sample]
    if missing:
        return f"no {', '.join(missing)} member"
    try:
        meta = json.loads(sample["json"])
        sample["txt"].decode("utf-8")
    except ValueError as exc:
        return f"json/txt does not decode ({_one_line(exc)})"
    if meta.get("triplet_id") != sample["__key__"]:
        return f"json triplet_id {meta.get('triplet_id')!r} is not the sample key"
    if meta.get("split") != split:
        return f"json split {meta.get('split')!r} in a {split} shard"
    bad = _png_problem(sample["png"], meta.get("image_width"), meta.get("image_height"))
    return f"png: {bad}" if bad else None


def _read_shard(
    path: Path, split: str, rel: str, tally: _Tally, report: VerifyReport
) -> tuple[int, Counter, Counter]:
    """Iterate every sample of a shard with ``webdataset``; returns (samples, modalities, origins)."""
    import webdataset as wds

    n, modalities, origins = 0, Counter(), Counter()
    try:
        for sample in wds.WebDataset([str(path)], shardshuffle=False, empty_check=False):
            n += 1
            problem = _sample_problem(sample, split)
            if problem:
                report.add(f"{rel}: sample {sample.get('__key__')}: {problem}")
                continue
            meta = json.loads(sample["json"])
            tally.add(split, sample["__key__"])
            modalities[meta.get("modality") or "unknown"] += 1
            origins[meta.get("origin") or "unknown"] += 1
    except Exception as exc:  # noqa: BLE001 - a damaged tar raises from tarfile or webdataset
        report.add(f"{rel}: unreadable after {n} sample(s): {_one_line(exc)}")
    return n, modalities, origins


def _check_shard(root: Path, entry: dict[str, Any], tally: _Tally, report: VerifyReport) -> None:
    rel = str(entry.get("file"))
    path = root / rel
    if not path.is_file():
        report.add(f"{rel}: shard listed in webdataset/shards.json is missing")
        return
    size = path.stat().st_size
    if sha256_file(path) != entry.get("sha256"):
        report.add(
            f"{rel}: sha256 does not match webdataset/shards.json ({size} bytes, listed {entry.get('bytes')})"
        )
    n, modalities, origins = _read_shard(path, str(entry.get("split")), rel, tally, report)
    if n != entry.get("samples"):
        report.add(f"{rel}: {n} sample(s) read back, webdataset/shards.json lists {entry.get('samples')}")
    elif dict(modalities) != entry.get("modalities") or dict(origins) != entry.get("origins"):
        report.add(f"{rel}: modality/origin counts differ from webdataset/shards.json")


def _check_webdataset(root: Path, report: VerifyReport) -> _Tally:
    tally = _Tally()
    listing_path = root / "webdataset" / "shards.json"
    try:
        shards = json.loads(listing_path.read_text(encoding="utf-8"))["shards"]
    except FileNotFoundError:
        report.add("webdataset/shards.json: missing")
        return tally
    except (ValueError, KeyError, TypeError) as exc:
        report.add(f"webdataset/shards.json: not a shard listing ({_one_line(exc)})")
        return tally
    for entry in shards:
        _check_shard(root, entry, tally, report)
    listed = {str(e.get("file")) for e in shards}
    for path in sorted((root / "webdataset").glob("*.tar")):
        if path.relative_to(root).as_posix() not in listed:
            report.add(f"{path.relative_to(root).as_posix()}: shard not listed in webdataset/shards.json")
    report.counts["shards"] = len(shards)
    return tally


# --------------------------------------------------------------------------------------
# LLaVA


def _llava_problem(rec: Any, exists: Callable[[str], bool]) -> str | None:
    if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
        return "not a record with a string id"
    conv = rec.get("conversations")
    turns_ok = isinstance(conv, list) and len(conv) >= 2 and all(isinstance(t, dict) for t in conv)
    if not turns_ok or [t.get("from") for t in conv[:2]] != ["human", "gpt"]:
        return "conversations are not a human turn then a gpt turn"
    if not all(isinstance(t.get("value"), str) for t in conv) or "<image>" not in conv[0]["value"]:
        return "a turn's value is not text, or the first turn has no <image> token"
    image = rec.get("image")
    if not isinstance(image, str) or not exists(image):
        return f"image {image!r} does not exist"
    return None


def _check_llava(root: Path, report: VerifyReport) -> _Tally:
    tally = _Tally()
    folder = root / "llava"
    if not folder.is_dir():
        report.add("llava/: missing")
        return tally
    seen: dict[str, bool] = {}

    def exists(rel: str) -> bool:
        if rel not in seen:
            seen[rel] = ".." not in PurePosixPath(rel).parts and (root / rel).is_file()
        return seen[rel]

    for path in sorted(folder.glob("*.json")):
        rel, split, i = path.relative_to(root).as_posix(), path.stem, 0
        if split not in SPLITS:
            report.add(f"{rel}: not a split of the export ({', '.join(SPLITS)})")
            continue
        try:
            for i, rec in enumerate(iter_json_array(path), start=1):
                problem = _llava_problem(rec, exists)
                if problem:
                    report.add(
                        f"{rel}: record {i - 1} (id {rec.get('id') if isinstance(rec, dict) else None}): {problem}"
                    )
                if isinstance(rec, dict) and "id" in rec:
                    tally.add(split, rec["id"])
        except (ValueError, UnicodeDecodeError) as exc:
            report.add(f"{rel}: invalid JSON after {i} record(s): {_one_line(exc)}")
    return tally


# --------------------------------------------------------------------------------------
# Hugging Face datasets folder


def _check_hf(root: Path, report: VerifyReport) -> _Tally:
    """Load ``hf/`` with ``datasets.load_dataset`` (streaming: nothing is copied into the cache)
    and read every row, the image bytes undecoded but their PNG header checked."""
    tally = _Tally()
    folder = root / "hf"
    if not (folder / "README.md").is_file():
        report.add("hf/README.md: missing")
        return tally
    if not any((folder / "data").glob("*.parquet")):
        return tally  # an empty export: nothing to load (the count comparison says if rows are due)
    try:
        import datasets

        loaded = datasets.load_dataset(str(folder), streaming=True)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types
        report.add(f"hf/: datasets.load_dataset failed: {_one_line(exc)}")
        return tally
    want = hf_features()
    for split, part in loaded.items():
        if part.features != want:
            diff = sorted(
                k for k in set(want) | set(part.features or {}) if (part.features or {}).get(k) != want.get(k)
            )
            report.add(f"hf/ split {split}: features differ from the declared ones: {', '.join(diff)}")
        n = 0
        try:
            for batch in part.decode(False).iter(batch_size=1000):
                columns = (batch["triplet_id"], batch["image"], batch["image_width"], batch["image_height"])
                for tid, image, w, h in zip(*columns, strict=True):
                    n += 1
                    bad = _png_problem((image or {}).get("bytes") or b"", w, h)
                    if bad:
                        report.add(f"hf/ split {split}: row {tid}: image {bad}")
                    tally.add(split, tid)
        except Exception as exc:  # noqa: BLE001
            report.add(f"hf/ split {split}: unreadable after {n} row(s): {_one_line(exc)}")
    return tally


# --------------------------------------------------------------------------------------
# the formats against the table


def _complete_tar_keys(path: Path) -> set[str]:
    """Sample keys of a tar whose every member reads in full (a truncated sample is not there)."""
    complete: dict[str, bool] = {}
    key = None
    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                key = member.name.split(".", 1)[0]
                before, complete[key] = complete.get(key, True), False
                data = tar.extractfile(member).read() if member.isfile() else b""
                complete[key] = before and len(data) == member.size
    except (OSError, tarfile.TarError, EOFError):
        if key is not None:
            complete[key] = False
    return {k for k, ok in complete.items() if ok}


def _format_ids(root: Path, fmt: str, split: str) -> set[str]:
    """Every triplet id a format holds for a split, read again (only for a split that disagrees)."""
    ids: set[str] = set()
    if fmt == "llava":
        try:
            ids.update(
                str(r.get("id"))
                for r in iter_json_array(root / "llava" / f"{split}.json")
                if isinstance(r, dict)
            )
        except (OSError, ValueError):
            pass
    elif fmt == "webdataset":
        for path in sorted((root / "webdataset").glob(f"{split}-*.tar")):
            ids.update(_complete_tar_keys(path))
    elif fmt == "hf":
        import pyarrow.parquet as pq

        for path in sorted((root / "hf" / "data").glob(f"{split}-*.parquet")):
            try:
                ids.update(pq.read_table(path, columns=["triplet_id"])["triplet_id"].to_pylist())
            except Exception:  # noqa: BLE001, S112 - an unreadable file was reported by the load
                continue
    return ids


def _compare(root: Path, table: pl.DataFrame, found: dict[str, _Tally], report: VerifyReport) -> None:
    expected = _Tally()
    for tid, split in zip(table["triplet_id"], table["split"], strict=True):
        expected.add(str(split), tid)
    report.per_split["table"] = {s: expected.count[s] for s in SPLITS if s in expected.count}
    for fmt, tally in found.items():
        for split in SPLITS:
            if expected.same(tally, split):
                continue
            want = set(table.filter(pl.col("split") == split)["triplet_id"].to_list())
            have = _format_ids(root, fmt, split)
            line = (
                f"{_FORMAT_FILES[fmt].format(split=split)}: {tally.count.get(split, 0)} row(s), "
                f"triplets.parquet has {expected.count.get(split, 0)} {split} row(s)"
            )
            for label, ids in (("missing", want - have), ("not in the table", have - want)):
                if ids:
                    more = f" and {len(ids) - _ID_EXAMPLES} more" if len(ids) > _ID_EXAMPLES else ""
                    line += f"; {label}: {', '.join(sorted(ids)[:_ID_EXAMPLES])}{more}"
            report.add(line)


def verify_export(export_root: str | Path, *, workers: int | None = None) -> VerifyReport:
    """Check an export folder (see the module docstring); ``workers`` threads hash the images."""
    root = Path(export_root)
    report = VerifyReport()
    table = _check_table(root, report)
    if table is not None:
        report.counts["table"] = table.height
        _check_images(root, table, report, workers or min(16, os.cpu_count() or 4))
    found = {
        "llava": _check_llava(root, report),
        "webdataset": _check_webdataset(root, report),
        "hf": _check_hf(root, report),
    }
    for fmt, tally in found.items():
        report.counts[fmt] = sum(tally.count.values())
        report.per_split[fmt] = {s: tally.count[s] for s in SPLITS if s in tally.count}
    if table is not None:
        _compare(root, table, found, report)
    return report


def write_report(report: VerifyReport, export_root: str | Path) -> Path:
    """``<export>/verification.json``: ok, problems, counts per format and per split."""
    path = Path(export_root) / "verification.json"
    atomic_write_bytes(path, json.dumps(report.to_dict(), indent=2).encode("utf-8"))
    return path
