"""Table sources: a CSV of image paths (relative to the root) with labels, boxes, reports, QA.

Columns: ``image`` (required), optional ``label``, ``bbox`` (``x0,y0,x1,y1`` in pixels of the
original image; several boxes separated by ``;``), ``report``, ``question``, ``answer``.
The CSV is ``<root>/index.csv`` when present, else every ``<root>/*.csv`` in name order.
"""

from __future__ import annotations

import csv
import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path

from medtrinity_assets.imaging.common import (
    PIL_FORMATS,
    InputRejected,
    Volume,
    read_pil,
    resolve_inside,
    scrub_text,
)
from medtrinity_assets.imaging.folder import image_volume

TEXT_COLUMNS = ("label", "report", "question", "answer")


@dataclass
class TableTask:
    relpath: str
    path: str | None
    row_key: str
    reason: str | None = None
    boxes: list[list[float]] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)


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


def list_table(root: Path, include: list[str]) -> tuple[list[TableTask], list[tuple[str, str]]]:
    tasks: list[TableTask] = []
    rejected: list[tuple[str, str]] = []
    for csv_path in table_files(root):
        try:
            fh = open(csv_path, newline="", encoding="utf-8-sig")  # noqa: SIM115
        except OSError as exc:
            rejected.append((csv_path.name, f"bad_csv_row: cannot open ({type(exc).__name__})"))
            continue
        with fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "image" not in [c.strip() for c in reader.fieldnames]:
                rejected.append((csv_path.name, "bad_csv_row: no 'image' column"))
                continue
            try:
                for lineno, row in enumerate(reader, start=2):
                    row = {(k or "").strip(): (v if isinstance(v, str) else "") for k, v in row.items()}
                    key = f"{csv_path.name}:{lineno}"
                    rel = (row.get("image") or "").strip()
                    if include and rel and not any(fnmatch.fnmatchcase(rel, p) for p in include):
                        continue
                    task = TableTask(rel or key, None, key)
                    task.texts = {c: (row.get(c) or "").strip() for c in TEXT_COLUMNS}
                    try:
                        if not rel:
                            raise InputRejected("bad_csv_row", "empty image path")
                        path = resolve_inside(root, rel)
                        if not path.is_file():
                            raise InputRejected("bad_csv_row", "image file not found")
                        task.path = str(path)
                        task.boxes = parse_bbox(row.get("bbox") or "")
                    except InputRejected as exc:
                        task.reason = exc.reason
                    tasks.append(task)
            except (csv.Error, UnicodeDecodeError) as exc:
                rejected.append((csv_path.name, f"bad_csv_row: unreadable CSV ({type(exc).__name__})"))
    return tasks, rejected


def load_task(task: TableTask, max_pixels: int, modality: str, label_names: dict[int, str]) -> Volume:
    if task.reason:
        prefix, _, detail = task.reason.partition(":")
        raise InputRejected(prefix, detail.strip())
    assert task.path is not None
    arr = read_pil(Path(task.path), max_pixels, PIL_FORMATS)
    h, w = arr.shape[:2]
    for box in task.boxes:
        if box[0] >= w or box[1] >= h or box[2] <= 0 or box[3] <= 0:
            raise InputRejected("bad_csv_row", f"bbox {box} lies outside the {w}x{h} image")
    vol = image_volume(task.relpath, arr, modality)
    vol.label_names = dict(label_names)
    vol.frame_key = task.row_key
    vol.boxes = [list(b) for b in task.boxes]
    label = task.texts.get("label", "")
    parts = [p.strip() for p in label.split(";")] if ";" in label else []
    vol.box_labels = parts if len(parts) == len(task.boxes) else [label] * len(task.boxes)
    vol.meta = {
        "description": "",
        "body_part": "",
        **{k: scrub_text(v) if k == "report" else v for k, v in task.texts.items()},
    }
    return vol
