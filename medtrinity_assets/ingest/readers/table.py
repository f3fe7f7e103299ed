"""Table sources: a CSV of image paths (relative to the root) with labels, boxes, reports, QA.

Columns: ``image`` (required), optional ``label``, ``bbox`` (``x0,y0,x1,y1`` in pixels of the
original image; several boxes separated by ``;``), ``report``, ``question``, ``answer``.
Header names are matched case-insensitively and without surrounding whitespace; the delimiter
(``,``, ``;`` or tab) is sniffed, comma when that fails. A CSV without an ``image`` column fails
the source. The CSV is ``<root>/index.csv`` when present, else every ``<root>/*.csv`` in name
order.

Several rows may name the same image (detection datasets list one row per box or finding):
rows are grouped by the resolved image path, across CSVs, into one task whose record carries
every box (``box_labels`` aligned with them; a repeated identical box+label is kept once), the
distinct labels (``label`` joins them with ``"; "``), the distinct non-empty reports joined by a
space, and the question/answer pair of the first row that has one (the pair stays together; a
record holds one pair, later pairs are not carried). A bad row (empty or escaping path, missing
file, malformed box, box outside the image) is quarantined with its own reason; the good rows
of the same image still make the record.

Row keys are ``<csv>:<line>`` (the physical line where the row starts): a record's ``frame``
is the key of its image's first good row, a quarantined row's ``frame`` its own key. A row whose
path is empty, absolute or leaves the root gets the neutral relpath ``<csv>:row<line>`` so a
directory outside the root (which may carry a patient's name) never reaches the manifest.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medtrinity_assets.ingest.readers import register
from medtrinity_assets.ingest.readers.base import InputRejected, Reader, Rejected, ScanResult, Task, Volume
from medtrinity_assets.ingest.readers.files import resolve_inside
from medtrinity_assets.ingest.readers.image_folder import image_volume
from medtrinity_assets.ingest.readers.pil import PIL_FORMATS, read_pages

if TYPE_CHECKING:  # pragma: no cover
    from medtrinity_assets.ingest.registry import SourceSpec

TEXT_COLUMNS = ("label", "report", "question", "answer")
DELIMITERS = ",;\t"
SNIFF_CHARS = 64 * 1024


@dataclass
class TableRow:
    """The good content of one CSV row (its boxes already parsed)."""

    key: str
    boxes: list[list[float]] = field(default_factory=list)
    box_labels: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)


@dataclass
class TableTask(Task):
    """One image with its good rows (``key``: its first row's ``<csv>:<line>``)."""

    path: str = ""
    rows: list[TableRow] = field(default_factory=list)


def parse_bbox(text: str) -> list[list[float]]:
    """``"x0,y0,x1,y1;..."`` -> boxes; raises InputRejected(bad_csv_row) when malformed."""
    boxes = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        vals = [v.strip() for v in part.replace(" ", ",").split(",") if v.strip()]
        try:
            nums = [float(v) for v in vals]
        except ValueError:
            raise InputRejected("bad_csv_row", f"bbox {part!r} is not numbers") from None
        if len(nums) != 4 or not all(math.isfinite(v) for v in nums):
            raise InputRejected("bad_csv_row", f"bbox {part!r} is not four finite numbers")
        if nums[2] <= nums[0] or nums[3] <= nums[1]:
            raise InputRejected("bad_csv_row", f"bbox {part!r} has zero or negative size")
        boxes.append(nums)
    return boxes


def table_files(root: Path) -> list[Path]:
    index = root / "index.csv"
    if index.is_file():
        return [index]
    return sorted(p for p in root.glob("*.csv") if p.is_file() and not p.name.startswith("."))


def _header(sample: str, delimiter: str) -> list[str]:
    first = next(csv.reader(io.StringIO(sample), delimiter=delimiter), [])
    return [c.strip().lower() for c in first]


def _delimiter(sample: str) -> str:
    """The sniffed delimiter among ``,``/``;``/tab (comma when sniffing fails); one whose header
    has no ``image`` column gives way to another that has one."""
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        sniffed = ","
    for d in (sniffed, *(d for d in DELIMITERS if d != sniffed)):
        if "image" in _header(sample, d):
            return d
    return sniffed


def read_rows(csv_path: Path, fh: io.TextIOBase) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, {column: stripped value})`` per non-blank row of an open CSV.

    Raises ValueError (the source fails) when the header has no ``image`` column; csv.Error or
    UnicodeDecodeError propagate from the row where they occur.
    """
    sample = fh.read(SNIFF_CHARS)
    if len(sample) == SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n") + 1]  # no half line for the sniffer
    fh.seek(0)
    delimiter = _delimiter(sample)
    reader = csv.reader(fh, delimiter=delimiter)
    header = [c.strip().lower() for c in next(reader, [])]
    if "image" not in header:
        found = [c for c in header if c]
        raise ValueError(
            f"table CSV {csv_path} has no 'image' column (columns found: {found}, "
            f"delimiter {delimiter!r}); header names are matched case-insensitively"
        )
    index: dict[str, int] = {}
    for i, name in enumerate(header):
        index.setdefault(name, i)
    last = reader.line_num
    for rec in reader:
        start, last = last + 1, reader.line_num
        if not rec:
            continue
        yield start, {name: (rec[i].strip() if i < len(rec) else "") for name, i in index.items()}


def _row_content(key: str, boxes: list[list[float]], row: dict[str, str]) -> TableRow:
    label = row.get("label", "")
    parts = [p.strip() for p in label.split(";")] if ";" in label else []
    if boxes and len(parts) == len(boxes):
        box_labels, labels = parts, [p for p in parts if p]
    elif boxes:
        box_labels, labels = [label] * len(boxes), [label] if label else []
    else:  # no box: "a;b" is two labels of the image
        box_labels, labels = [], ([p for p in parts if p] if parts else [label] if label else [])
    texts = {c: row.get(c, "") for c in TEXT_COLUMNS if c != "label"}
    return TableRow(key, boxes, box_labels, labels, texts)


def list_table(root: Path, include: list[str]) -> list[Task]:
    """One task per image (its good rows grouped) plus one per bad row; unreadable CSVs rejected."""
    tasks: list[Task] = []
    groups: dict[str, TableTask] = {}
    for csv_path in table_files(root):
        try:
            fh = open(csv_path, newline="", encoding="utf-8-sig")  # noqa: SIM115
        except OSError as exc:
            tasks.append(Rejected(csv_path.name, reason=f"bad_csv_row: cannot open ({type(exc).__name__})"))
            continue
        with fh:
            try:
                for lineno, row in read_rows(csv_path, fh):
                    key = f"{csv_path.name}:{lineno}"
                    placeholder = f"{csv_path.name}:row{lineno}"
                    rel = row.get("image", "")
                    if include and rel and not any(fnmatch.fnmatchcase(rel, p) for p in include):
                        continue
                    if not rel:
                        tasks.append(Rejected(placeholder, key, "bad_csv_row: empty image path"))
                        continue
                    try:
                        path = resolve_inside(root, rel)
                    except InputRejected as exc:  # never echo a path outside the root
                        tasks.append(Rejected(placeholder, key, exc.reason))
                        continue
                    if not path.is_file():
                        tasks.append(Rejected(rel, key, "bad_csv_row: image file not found"))
                        continue
                    relpath = path.relative_to(root).as_posix()
                    try:
                        boxes = parse_bbox(row.get("bbox", ""))
                    except InputRejected as exc:
                        tasks.append(Rejected(relpath, key, exc.reason))
                        continue
                    group = groups.get(str(path))
                    if group is None:
                        group = groups[str(path)] = TableTask(relpath, key, path=str(path))
                        tasks.append(group)
                    group.rows.append(_row_content(key, boxes, row))
            except (csv.Error, UnicodeDecodeError) as exc:
                tasks.append(Rejected(csv_path.name, reason=f"bad_csv_row: unreadable CSV ({type(exc).__name__})"))
    return tasks


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def load_row_image(task: TableTask, max_pixels: int, modality: str, label_names: dict[int, str]) -> Iterator[Volume | Rejected]:
    """The image of a task with every box and label of its good rows; rows whose box lies
    outside the image are rejected (with their own record id: key ``""``)."""
    pages = read_pages(Path(task.path), max_pixels, PIL_FORMATS)
    arr = pages.arrays[0]  # boxes refer to the first page
    h, w = arr.shape[:2]
    rows, outside = [], []
    for row in task.rows:
        bad = [b for b in row.boxes if b[0] >= w or b[1] >= h or b[2] <= 0 or b[3] <= 0]
        if bad:
            outside.append(f"{bad[0]} (row {row.key})")
        else:
            rows.append(row)
    if outside:
        why = InputRejected("bad_csv_row", f"bbox lies outside the {w}x{h} image: {', '.join(outside)}")
        if not rows:
            raise why
        # key "" here, the record's is its first row's key: distinct record ids
        yield Rejected(task.relpath, "", why.reason)
    vol = image_volume(task.relpath, arr, modality)
    vol.label_names = dict(label_names)
    vol.frame_key = task.key
    if pages.total > 1:
        vol.warnings.append("first_page_only")
    seen: set[tuple[tuple[float, ...], str]] = set()
    for row in rows:
        for box, lab in zip(row.boxes, row.box_labels, strict=True):
            if (tuple(box), lab) not in seen:
                seen.add((tuple(box), lab))
                vol.boxes.append(list(box))
                vol.box_labels.append(lab)
    qa = next((r.texts for r in rows if r.texts.get("question") or r.texts.get("answer")), {})
    vol.meta = {
        "description": "",
        "body_part": "",
        "label": "; ".join(_unique([lab for r in rows for lab in r.labels])),
        "report": " ".join(_unique([r.texts.get("report", "") for r in rows])),
        "question": qa.get("question", ""),
        "answer": qa.get("answer", ""),
    }
    yield vol


@register
class TableReader(Reader):
    layout = "table"
    requires = ("*.csv",)
    description = "a CSV of image paths with labels, boxes, reports or QA"

    def scan(self, spec: SourceSpec, root: Path, map_ordered) -> ScanResult:
        return ScanResult(list_table(root, list(spec.include)))

    def read(self, task: Task, spec: SourceSpec, root: Path) -> Iterator[Volume | Rejected]:
        assert isinstance(task, TableTask)
        yield from load_row_image(task, spec.max_pixels, spec.modality, dict(spec.labels))
