"""What the captioner sees for one ROI: :class:`CaptionInput`, joined from the upstream tables.

Upstream tables (see docs/ARCHITECTURE.md): ``roi_set``, ``coarse_captions``,
``retrieved_knowledge`` with the index docstore, and ``preprocessed_images``. Optional
columns may be missing; the matching fields are then ``None`` and nothing downstream claims
anything about them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import polars as pl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Passage:
    """One retrieved knowledge passage."""

    chunk_id: str
    title: str
    text: str
    score: float | None = None
    topic: str = ""


@dataclass
class CaptionInput:
    """Everything known about one ROI of one image (the captioner's whole input)."""

    record_id: str
    source: str
    roi_id: Any
    # image (path relative to the output root; ``out_root`` is not part of the cache key)
    image_path: str | None = None
    image_sha256: str | None = None
    out_root: str | None = None
    # coarse caption and metadata
    coarse_caption: str = ""
    modality: str | None = None
    organ: str | None = None
    terms: list[str] = field(default_factory=list)
    concepts: list[str] = field(default_factory=list)
    synthetic: bool = False
    plane: str | None = None
    sequence: str | None = None
    window: str | None = None
    channels: int | None = None
    # ROI geometry and measured attributes
    label: str | None = None
    origin: str | None = None
    bbox_xyxy: list[float] | None = None
    bbox_norm: list[float] | None = None
    mask_rle: str | None = None
    image_width: int | None = None
    image_height: int | None = None
    area_fraction: float | None = None
    horizontal: str | None = None
    vertical: str | None = None
    patient_lr: str | None = None
    patient_ap: str | None = None
    patient_si: str | None = None
    longest_diameter_mm: float | None = None
    intensity_word: str | None = None
    roi_mean: float | None = None
    ring_mean: float | None = None
    intensity_contrast: float | None = None
    texture_homogeneity_word: str | None = None
    texture_smoothness_word: str | None = None
    shape_word: str | None = None
    circularity: float | None = None
    roi_count: int | None = None
    label_count: int | None = None  # the image's localised regions with this label (this one included)
    relations: list[dict[str, Any]] = field(default_factory=list)
    inside_label: str | None = None
    roi_status: str | None = None
    roi_reason: str | None = None
    # retrieval
    query: str | None = None
    passages: list[Passage] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, Any]:
        return (self.record_id, self.roi_id)

    @property
    def chunk_ids(self) -> list[str]:
        return [p.chunk_id for p in self.passages]

    def image_file(self) -> Path | None:
        """Absolute path of the preprocessed PNG, or None when there is none."""
        if not self.image_path:
            return None
        path = Path(self.image_path)
        if not path.is_absolute() and self.out_root:
            path = Path(self.out_root) / path
        return path

    def hash_payload(self) -> dict[str, Any]:
        """Every input that can change a caption (``out_root`` excluded: relocation is harmless),
        as ``dataclasses.asdict`` gives it, for serialising at once: values are shared, not deep
        copied (a copy of every list cost a third as much as writing the description)."""
        payload = {name: getattr(self, name) for name in _HASHED_FIELDS}
        payload["passages"] = [asdict(p) if is_dataclass(p) else p for p in self.passages]
        return payload


_HASHED_FIELDS = tuple(f.name for f in fields(CaptionInput) if f.name != "out_root")
_ROI_FIELDS = {
    "label": "label",
    "origin": "origin",
    "bbox_xyxy": "bbox_xyxy",
    "bbox_norm": "bbox_norm",
    "mask_rle": "mask_rle",
    "image_width": "image_width",
    "image_height": "image_height",
    "area_fraction": "area_fraction",
    "horizontal": "horizontal",
    "vertical": "vertical",
    "patient_lr": "patient_lr",
    "patient_ap": "patient_ap",
    "patient_si": "patient_si",
    "longest_diameter_mm": "longest_diameter_mm",
    "intensity_word": "intensity_word",
    "roi_mean": "roi_mean",
    "ring_mean": "ring_mean",
    "intensity_contrast": "intensity_contrast",
    "texture_homogeneity_word": "texture_homogeneity_word",
    "texture_smoothness_word": "texture_smoothness_word",
    "shape_word": "shape_word",
    "circularity": "circularity",
    "roi_count": "roi_count",
    "label_count": "label_count",
    "inside_label": "inside_label",
    "status": "roi_status",
    "reason": "roi_reason",
}


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return [value]
        return parsed if isinstance(parsed, list) else [parsed]
    if isinstance(value, pl.Series):
        return value.to_list()
    return list(value)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and value != value:  # NaN
        return None
    if isinstance(value, pl.Series):
        return value.to_list()
    return value


def parse_relations(value: Any) -> list[dict[str, Any]]:
    """``relations`` arrives as a JSON string list (or a list of structs); keep well-formed items."""
    out = []
    for item in _as_list(value):
        if isinstance(item, dict) and item.get("other") is not None and item.get("relation"):
            out.append(
                {
                    "other": str(item["other"]),
                    "relation": str(item["relation"]),
                    "distance_norm": _clean(item.get("distance_norm")),
                    **({"other_label": str(item["other_label"])} if item.get("other_label") else {}),
                }
            )
    return out


def build_caption_inputs(
    roi_set: pl.DataFrame,
    coarse_captions: pl.DataFrame | None = None,
    retrieved_knowledge: pl.DataFrame | None = None,
    docstore: pl.DataFrame | None = None,
    preprocessed_images: pl.DataFrame | None = None,
    *,
    out_root: str | Path | None = None,
    include_flagged: bool = False,
) -> list[CaptionInput]:
    """Join the upstream tables into one :class:`CaptionInput` per ROI row of ``roi_set``.

    Retrieval rows are matched on ``(record_id, roi_id)``, falling back to an image-level row
    (``roi_id`` null). Rows of ``roi_set`` with ``status == "flagged"`` (a refused expert mask, an
    unreadable image) are left out: there is no region to describe; ``include_flagged`` keeps
    them (for review tools).
    """
    tables = _Upstream(
        coarse=_rows_by(coarse_captions, lambda row: row["record_id"]),
        images=_rows_by(preprocessed_images, lambda row: row["record_id"]),
        docs=_rows_by(docstore, lambda row: str(row["chunk_id"])),
        retrieved=_rows_by(retrieved_knowledge, lambda row: (row["record_id"], row.get("roi_id"))),
    )
    root = str(out_root) if out_root is not None else None
    if not include_flagged and "status" in roi_set.columns:
        roi_set = roi_set.filter(pl.col("status").ne_missing("flagged"))
    rois, attrs = _roi_columns(roi_set)
    return [_caption_input(row, attrs, tables, root) for row in rois.iter_rows(named=True)]


@dataclass
class _Upstream:
    """The upstream rows a ROI row is joined with, by their join key."""

    coarse: dict[str, dict]  # record_id -> coarse_captions row
    images: dict[str, dict]  # record_id -> preprocessed_images row
    docs: dict[str, dict]  # chunk_id -> docstore row
    retrieved: dict[tuple, dict]  # (record_id, roi_id or None) -> retrieved_knowledge row


def _rows_by(frame: pl.DataFrame | None, key: Callable[[dict[str, Any]], Any]) -> dict[Any, dict]:
    """The rows of ``frame`` by ``key(row)`` (the last row wins); empty without a frame."""
    rows: dict[Any, dict] = {}
    if frame is not None:
        for row in frame.iter_rows(named=True):
            rows[key(row)] = row
    return rows


def _caption_input(row: dict[str, Any], attrs: list[str], tables: _Upstream, root: str | None) -> CaptionInput:
    """One ROI row (of :func:`_roi_columns`, whose ``attrs`` it holds) joined with its coarse
    caption, image and retrieved passages."""
    rid = row["record_id"]
    roi_id = row["roi_id"]
    kw = {attr: row[attr] for attr in attrs}
    for box in _BOXES:
        if isinstance(kw.get(box), str):  # a box written as JSON text
            kw[box] = [float(v) for v in _as_list(kw[box])]
    relations = parse_relations(row.get("relations"))
    cc = tables.coarse.get(rid, {})
    img = tables.images.get(rid, {})
    ret = tables.retrieved.get((rid, roi_id)) or tables.retrieved.get((rid, None)) or {}
    passages = _passages(ret, tables.docs, rid, roi_id)
    return CaptionInput(
        record_id=rid,
        source=row.get("source") or cc.get("source") or img.get("source") or "",
        roi_id=roi_id,
        image_path=img.get("image_path"),
        image_sha256=img.get("sha256"),
        out_root=root,
        coarse_caption=cc.get("caption") or "",
        modality=cc.get("modality"),
        organ=cc.get("organ"),
        terms=[str(t) for t in _as_list(cc.get("terms"))],
        concepts=[str(t) for t in _as_list(cc.get("concepts"))],
        synthetic=bool(cc.get("synthetic")),
        plane=cc.get("plane"),
        sequence=cc.get("sequence"),
        window=cc.get("window"),
        channels=_int_or_none(cc.get("channels") if cc.get("channels") is not None else img.get("channels")),
        relations=relations,
        query=ret.get("query"),
        passages=passages,
        **kw,
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


_BOXES = ("bbox_xyxy", "bbox_norm")
_COUNTS = ("roi_count", "label_count", "image_width", "image_height")


def _roi_columns(roi_set: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """The ids, source and relations of ``roi_set`` with its ROI geometry and measured attributes
    as :class:`CaptionInput` fields (NaN as null, boxes as float lists, counts as integers,
    ``patient_lr`` from ``patient_side`` where only that is given), made once per table rather
    than per row; and those fields' names."""
    cols = roi_set.schema
    exprs: dict[str, pl.Expr] = {}
    for col, attr in _ROI_FIELDS.items():
        if col not in cols:
            continue
        expr, dtype = pl.col(col), cols[col]
        if dtype.is_float():
            expr = expr.fill_nan(None)
        if attr in _BOXES and isinstance(dtype, pl.List | pl.Array):
            expr = expr.cast(pl.List(pl.Float64))
        if attr in _COUNTS and dtype.is_numeric():
            expr = expr.cast(pl.Int64, strict=False)
        exprs[attr] = expr
    if "patient_side" in cols:
        side = pl.when(pl.col("patient_side").is_in(["left", "right"])).then(pl.col("patient_side"))
        exprs["patient_lr"] = pl.coalesce(exprs["patient_lr"], side) if "patient_lr" in exprs else side
    keep = [c for c in ("record_id", "roi_id", "source", "relations") if c in cols]
    return roi_set.select(*keep, *(e.alias(a) for a, e in exprs.items())), list(exprs)


def _passages(ret: dict[str, Any], docs: dict[str, dict], rid: str, roi_id: Any) -> list[Passage]:
    """The retrieved passages in retrieval order, with their scores; chunks missing from the
    docstore are skipped with a warning."""
    passages = []
    scores = _as_list(ret.get("scores"))
    for i, cid in enumerate(_as_list(ret.get("chunk_ids"))):
        doc = docs.get(str(cid))
        if doc is None:
            log.warning("chunk %s retrieved for %s/%s is not in the docstore", cid, rid, roi_id)
            continue
        score = scores[i] if i < len(scores) else None
        passages.append(
            Passage(
                chunk_id=str(cid),
                title=str(doc.get("title") or ""),
                text=str(doc.get("text") or ""),
                score=None if score is None else float(score),
                topic=str(doc.get("topic") or ""),
            )
        )
    return passages


def describable_rois(out: str | Path, part: str) -> list[str]:
    """The record id of every ROI of one shard that :func:`read_caption_inputs` gives (flagged ones
    have no region), in ``roi_set`` order: their images, sliced by
    :func:`~medtrinity_assets.core.workers.image_slices`, are the unit in which descriptions are
    joined, written and checked."""
    from medtrinity_assets.core.tables import ROI_SET

    rows = ROI_SET.read(out, part, columns=["record_id"], where=pl.col("status").ne_missing("flagged"))
    return rows["record_id"].to_list()


def read_caption_inputs(out: str | Path, part: str, record_ids: list[str] | None = None) -> list[CaptionInput]:
    """The :class:`CaptionInput` of every ROI of one shard (its part name), or only of the images
    ``record_ids``: each upstream table is filtered as it is read, so memory follows the slice."""
    from medtrinity_assets.core.tables import (
        COARSE_CAPTIONS,
        KNOWLEDGE_DOCSTORE,
        PREPROCESSED_IMAGES,
        RETRIEVED_KNOWLEDGE,
        ROI_SET,
    )

    def read(table: Any) -> pl.DataFrame:
        return table.read(out, part) if record_ids is None else table.read_images(out, part, record_ids)

    retrieved = read(RETRIEVED_KNOWLEDGE)
    chunk_ids = retrieved["chunk_ids"].explode().drop_nulls().unique().to_list() if retrieved.height else []
    return build_caption_inputs(
        read(ROI_SET),
        read(COARSE_CAPTIONS),
        retrieved,
        KNOWLEDGE_DOCSTORE.read(out, where=pl.col("chunk_id").is_in(chunk_ids)),
        read(PREPROCESSED_IMAGES),
        out_root=out,
    )
