"""ROI locating (stage 2): region geometry per image, from masks, boxes, expert models or the image.

Order of sources for one image of ``preprocessed_images``:

1. its label map (``mask_path``): one ROI per connected component of each label value
   (``scipy.ndimage.label``; no cap on the number; components under ``min_area_px`` dropped
   and counted);
2. its boxes, as given (clipped to the image, clipping recorded in ``reason``);
3. with neither: the expert model for the modality when one is given, else for modalities
   where it makes sense (``roi_config.yaml: classical.modalities``) an Otsu-threshold
   segmentation (origin ``classical``);
4. when nothing usable remains: one ``whole_image`` region.

Bad input never crashes the stage: empty masks, mask values named neither in ``spec.labels``
nor by the source, degenerate or out-of-image boxes, unreadable files and mask/image size
mismatches are recorded as rows with ``status='flagged'`` and a ``reason`` (``<code>: <detail>``), and an image that is
left without an ``ok`` ROI gets a ``whole_image`` row, so no image is silently dropped.

Coordinates: ``bbox_xyxy`` is in pixels of the preprocessed image with pixel ``(r, c)``
covering ``[c, c+1) x [r, r+1)`` (a mask component spanning columns 10..20 has x0=10, x1=21);
``bbox_norm`` divides by width/height. ``mask_rle`` is COCO's uncompressed RLE
(``{"size": [h, w], "counts": [...]}``, column-major, starting with a run of zeros) as JSON.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image, ImageDraw
from scipy import ndimage

from medtrinity_assets.core.images import read_label_map, read_png, to_grey
from medtrinity_assets.core.tables import ROI_SET
from medtrinity_assets.core.vocabulary import canonical_modality
from medtrinity_assets.ingest.labels import label_names_of
from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.rois.attributes import (
    RoiConfig,
    default_config,
    inside_labels,
    measure_roi,
    relations,
)
from medtrinity_assets.segmentation.classical import classical_segment

WHOLE_IMAGE_LABEL = "whole_image"
PREDICTED_LABEL = "region"
ROI_SCHEMA = ROI_SET.schema


@dataclass
class RoiSetResult:
    """The ROI table of one source and its summary counts."""

    rois: pl.DataFrame
    counts_by_origin: dict[str, int] = field(default_factory=dict)
    counts_by_label: dict[str, int] = field(default_factory=dict)
    flagged_counts: dict[str, int] = field(default_factory=dict)
    dropped_counts: dict[str, int] = field(default_factory=dict)
    n_images: int = 0


# --------------------------------------------------------------------------------------
# COCO RLE (uncompressed counts, column-major)


def _rle_counts_from_crop(crop: np.ndarray, r0: int, c0: int, h: int, w: int) -> list[int]:
    """Run lengths of a mask given as a crop placed at (r0, c0) in an h x w image."""
    cc, rr = np.nonzero(np.asarray(crop, bool).T)  # sorted by column, then row
    if cc.size == 0:
        return [h * w]
    idx = (cc.astype(np.int64) + c0) * h + (rr.astype(np.int64) + r0)
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate([idx[:1], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], idx[-1:]]) + 1  # exclusive
    counts = np.empty(2 * starts.size + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[1::2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = h * w - ends[-1]
    out = counts.tolist()
    if out[-1] == 0:
        out.pop()
    return out


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE of a 2D boolean mask: ``{"size": [h, w], "counts": [...]}``."""
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {m.shape}")
    h, w = m.shape
    return {"size": [h, w], "counts": _rle_counts_from_crop(m, 0, 0, h, w)}


def rle_decode(rle: dict[str, Any] | str) -> np.ndarray:
    """Inverse of :func:`rle_encode` (accepts the dict or its JSON string)."""
    if isinstance(rle, str):
        rle = json.loads(rle)
    h, w = (int(x) for x in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if isinstance(rle["counts"], str):
        raise ValueError("compressed (string) COCO counts are not supported; use list counts")
    if counts.sum() > h * w or (counts < 0).any():
        raise ValueError("RLE counts do not fit the declared size")
    values = np.zeros(counts.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    flat = np.pad(flat, (0, h * w - flat.size))
    return flat.reshape((w, h)).T.copy()


def rle_json(rle: dict[str, Any]) -> str:
    return json.dumps(rle, separators=(",", ":"))


# --------------------------------------------------------------------------------------
# candidates


@dataclass
class _Roi:
    label: str | None
    origin: str
    status: str = "ok"
    reason: str | None = None
    label_value: int | None = None
    crop: np.ndarray | None = None  # boolean mask crop
    window: tuple[int, int, int, int] | None = None  # r0, r1, c0, c1
    bbox: list[float] | None = None
    has_mask: bool = False


def _structure(cfg: RoiConfig) -> np.ndarray:
    return np.ones((3, 3), bool) if cfg.connectivity_8 else ndimage.generate_binary_structure(2, 1)


def components(
    binary: np.ndarray, min_area: int, cfg: RoiConfig, offset: tuple[int, int] = (0, 0)
) -> tuple[list[tuple[np.ndarray, tuple[int, int, int, int]]], int]:
    """Connected components of a boolean array as (crop mask, window) pairs, and the count dropped."""
    labelled, n = ndimage.label(binary, structure=_structure(cfg))
    if n == 0:
        return [], 0
    areas = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    out = []
    dropped = 0
    for i, sl in enumerate(ndimage.find_objects(labelled)):
        if sl is None:
            continue
        if areas[i] < min_area:
            dropped += 1
            continue
        crop = labelled[sl] == i + 1
        r0, c0 = sl[0].start + offset[0], sl[1].start + offset[1]
        out.append((crop, (r0, r0 + crop.shape[0], c0, c0 + crop.shape[1])))
    return out, dropped


def _mask_rois(
    label_map: np.ndarray, names: dict[int, str], cfg: RoiConfig, dropped: Counter
) -> list[_Roi]:
    out: list[_Roi] = []
    if label_map.max() <= 0:
        if label_map.min() < 0:
            return [_Roi(None, "mask", "flagged", "negative_mask_values: label map has values < 0")]
        return [_Roi(None, "mask", "flagged", "empty_mask: the label map has no foreground")]
    slices = ndimage.find_objects(np.clip(label_map, 0, None).astype(np.int64))
    for value_minus_1, sl in enumerate(slices):
        if sl is None:
            continue
        value = value_minus_1 + 1
        crop_binary = label_map[sl] == value
        comps, n_dropped = components(crop_binary, cfg.min_area_px, cfg, (sl[0].start, sl[1].start))
        name = names.get(value)
        if n_dropped:
            dropped[f"below_min_area:{name or value}"] += n_dropped
        for crop, win in comps:
            r0, r1, c0, c1 = win
            roi = _Roi(
                name if name is not None else f"unknown_{value}",
                "mask",
                label_value=value,
                crop=crop,
                window=win,
                bbox=[float(c0), float(r0), float(c1), float(r1)],
                has_mask=True,
            )
            if name is None:
                roi.status = "flagged"
                roi.reason = f"unknown_label_value: mask value {value} is not named in the source's labels"
            out.append(roi)
    if not out:
        out.append(
            _Roi(None, "mask", "flagged", f"components_below_min_area: all under {cfg.min_area_px} px")
        )
    return out


def _box_rois(row: dict[str, Any], h: int, w: int) -> list[_Roi]:
    boxes = row.get("boxes") or []
    labels = list(row.get("box_labels") or [])
    clipped_upstream = list(row.get("box_clipped") or [])
    out: list[_Roi] = []
    for i, box in enumerate(boxes):
        label = labels[i] if i < len(labels) and labels[i] else "box"
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            out.append(_Roi(label, "box", "flagged", f"degenerate_box: not four numbers: {box!r}"))
            continue
        given = [x0, y0, x1, y1]
        if not all(math.isfinite(v) for v in given):
            out.append(_Roi(label, "box", "flagged", f"degenerate_box: non-finite coordinates {given}"))
            continue
        if x1 <= x0 or y1 <= y0:
            out.append(
                _Roi(label, "box", "flagged", f"degenerate_box: zero or negative size {given}", bbox=given)
            )
            continue
        cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
        if cx1 <= cx0 or cy1 <= cy0:
            out.append(
                _Roi(label, "box", "flagged", f"box_outside_image: {given} vs image {w}x{h}", bbox=given)
            )
            continue
        reasons = []
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            reasons.append(f"box_clipped: {given} clipped to the {w}x{h} image")
        if i < len(clipped_upstream) and clipped_upstream[i]:
            reasons.append("box_clipped_upstream: clipped during preprocessing")
        r0, r1 = int(math.floor(cy0)), int(math.ceil(cy1))
        c0, c1 = int(math.floor(cx0)), int(math.ceil(cx1))
        if r1 <= r0 or c1 <= c0:
            out.append(_Roi(label, "box", "flagged", f"degenerate_box: under one pixel {given}", bbox=given))
            continue
        out.append(
            _Roi(
                label,
                "box",
                reason="; ".join(reasons) or None,
                crop=np.ones((r1 - r0, c1 - c0), bool),
                window=(r0, r1, c0, c1),
                bbox=[cx0, cy0, cx1, cy1],
            )
        )
    return out


def _predicted_rois(mask: np.ndarray, origin: str, cfg: RoiConfig, dropped: Counter) -> list[_Roi]:
    comps, n_dropped = components(np.asarray(mask, bool), cfg.predicted_min_area_px, cfg)
    if n_dropped:
        dropped[f"below_min_area:{origin}"] += n_dropped
    return [
        _Roi(
            PREDICTED_LABEL,
            origin,
            crop=crop,
            window=win,
            bbox=[float(win[2]), float(win[0]), float(win[3]), float(win[1])],
            has_mask=True,
        )
        for crop, win in comps
    ]


def _whole(h: int, w: int, reason: str | None) -> _Roi:
    return _Roi(
        WHOLE_IMAGE_LABEL,
        "whole_image",
        reason=reason,
        crop=np.ones((h, w), bool),
        window=(0, h, 0, w),
        bbox=[0.0, 0.0, float(w), float(h)],
    )


# --------------------------------------------------------------------------------------
# the stage


def _spacing(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(vals) < 2 or not all(math.isfinite(v) and v > 0 for v in vals[:2]):
        return None
    return vals[0], vals[1]


def _rows_for_image(
    row: dict[str, Any],
    image: np.ndarray | None,
    rois: list[_Roi],
    label_map: np.ndarray | None,
    label_names: dict[int, str],
    spec: SourceSpec,
    cfg: RoiConfig,
    h: int,
    w: int,
) -> list[dict[str, Any]]:
    grey = to_grey(image) if image is not None else None
    rng = (float(grey.min()), float(grey.max())) if grey is not None else None
    spacing = _spacing(row.get("original_spacing"))
    records: list[dict[str, Any]] = []
    for n, roi in enumerate(rois):
        rec: dict[str, Any] = dict.fromkeys(ROI_SCHEMA)
        rec.update(
            record_id=row["record_id"],
            source=row.get("source") or spec.name,
            roi_id=f"{row['record_id']}:{n}",
            label=roi.label,
            label_value=roi.label_value,
            origin=roi.origin,
            status=roi.status,
            reason=roi.reason,
            image_width=w,
            image_height=h,
        )
        if roi.bbox is not None:
            rec["bbox_xyxy"] = [float(v) for v in roi.bbox]
            if w > 0 and h > 0:
                rec["bbox_norm"] = [roi.bbox[0] / w, roi.bbox[1] / h, roi.bbox[2] / w, roi.bbox[3] / h]
        if roi.crop is not None and roi.window is not None:
            r0, r1, c0, c1 = roi.window
            if roi.has_mask:
                rec["mask_rle"] = rle_json(
                    {"size": [h, w], "counts": _rle_counts_from_crop(roi.crop, r0, c0, h, w)}
                )
            if grey is not None:
                rec.update(
                    measure_roi(
                        image,
                        roi.crop,
                        spacing=spacing,
                        display_right=row.get("display_right"),
                        display_down=row.get("display_down"),
                        modality=spec.modality,
                        config=cfg,
                        whole_image=roi.origin == "whole_image",
                        _grey=grey,
                        _range=rng,
                        _window=roi.window,
                    )
                )
            else:
                area = int(roi.crop.sum())
                rec["area_px"] = area
                rec["area_fraction"] = area / float(h * w) if h * w else None
        records.append(rec)

    # Per-image relations among the ok regions that have geometry (whole_image excluded).
    geo = [
        i
        for i, r in enumerate(records)
        if r["status"] == "ok" and r["centroid_norm"] is not None and rois[i].origin != "whole_image"
    ]
    ok_count = sum(1 for r in records if r["status"] == "ok")
    for r in records:
        r["roi_count"] = ok_count
        r["relations"] = "[]" if r["status"] == "ok" else None
    if len(geo) >= 2:
        rel = relations(
            [records[i]["roi_id"] for i in geo],
            np.array([records[i]["centroid_norm"] for i in geo]),
            np.array([records[i]["bbox_norm"] for i in geo]),
            cfg,
            labels=[records[i]["label"] for i in geo],
        )
        for i, js in zip(geo, rel, strict=True):
            records[i]["relations"] = js
    with_mask = [i for i, r in enumerate(rois) if r.crop is not None and r.origin != "whole_image"]
    if label_map is not None and with_mask:
        names = inside_labels(
            [(rois[i].crop, rois[i].window) for i in with_mask],
            [rois[i].label_value for i in with_mask],
            label_map,
            label_names,
            cfg,
        )
        for i, name in zip(with_mask, names, strict=True):
            records[i]["inside_label"] = name
    return records


def build_roi_set(
    images: pl.DataFrame,
    spec: SourceSpec,
    out: str | Path,
    *,
    expert: Any | None = None,
    config: RoiConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = 32,
) -> RoiSetResult:
    """ROI rows with measured attributes for every image of one source's ``preprocessed_images``.

    ``expert`` is an :class:`~medtrinity_assets.segmentation.ExpertPredictor` (anything with
    ``.name`` and ``.predict(list[np.ndarray]) -> list[np.ndarray]``), used only for images with
    no mask and no box. ``progress(done, total)`` is called after each image.
    """

    cfg = config or default_config()
    out = Path(out)
    modality = canonical_modality(spec.modality)
    use_classical = expert is None and modality in cfg.classical_modalities
    dropped: Counter = Counter()
    records: list[dict[str, Any]] = []
    rows = images.to_dicts()
    total = len(rows)
    for start in range(0, total, batch_size):
        chunk = rows[start : start + batch_size]
        loaded: list[tuple[np.ndarray | None, str | None]] = []
        for row in chunk:
            try:
                loaded.append((read_png(out / str(row["image_path"])), None))
            except Exception as exc:  # unreadable file: recorded, never fatal
                loaded.append((None, f"image_unreadable: {type(exc).__name__}: {exc}"[:300]))
        needs_prediction = [
            i
            for i, row in enumerate(chunk)
            if loaded[i][0] is not None and not row.get("mask_path") and not (row.get("boxes") or [])
        ]
        predicted: dict[int, np.ndarray] = {}
        predict_error: str | None = None
        if needs_prediction and expert is not None:
            try:
                masks = expert.predict([loaded[i][0] for i in needs_prediction])
                predicted = dict(zip(needs_prediction, masks, strict=True))
            except Exception as exc:
                predict_error = f"expert_failed: {type(exc).__name__}: {exc}"[:300]
        for i, row in enumerate(chunk):
            image, image_error = loaded[i]
            if image is not None:
                h, w = image.shape[:2]
            else:
                h, w = int(row.get("height") or 0), int(row.get("width") or 0)
            rois: list[_Roi] = []
            label_map = None
            label_names = label_names_of(row, spec)
            if image_error:
                bbox = [0.0, 0.0, float(w), float(h)] if h > 0 and w > 0 else None
                rois.append(_Roi(None, "whole_image", "flagged", image_error, bbox=bbox))
            else:
                if row.get("mask_path"):
                    try:
                        lm = read_label_map(out / str(row["mask_path"]))
                        if lm.shape != (h, w):
                            rois.append(
                                _Roi(
                                    None,
                                    "mask",
                                    "flagged",
                                    f"mask_shape_mismatch: mask {lm.shape} vs image {(h, w)}",
                                )
                            )
                        else:
                            label_map = lm
                            rois.extend(_mask_rois(lm, label_names, cfg, dropped))
                    except Exception as exc:
                        rois.append(
                            _Roi(
                                None, "mask", "flagged", f"mask_unreadable: {type(exc).__name__}: {exc}"[:300]
                            )
                        )
                rois.extend(_box_rois(row, h, w))
                if i in needs_prediction:
                    if i in predicted:
                        rois.extend(_predicted_rois(predicted[i], f"expert:{expert.name}", cfg, dropped))
                    elif predict_error:
                        rois.append(_Roi(None, f"expert:{expert.name}", "flagged", predict_error))
                    elif use_classical:
                        try:
                            rois.extend(
                                _predicted_rois(classical_segment(image, modality, smooth_sigma=cfg.classical_smooth_sigma, opening_radius=cfg.classical_opening_radius), "classical", cfg, dropped)
                            )
                        except Exception as exc:
                            rois.append(
                                _Roi(
                                    None,
                                    "classical",
                                    "flagged",
                                    f"classical_failed: {type(exc).__name__}: {exc}",
                                )
                            )
            if image_error:
                pass  # the flagged row is the record of this image
            elif not any(r.status == "ok" for r in rois) and h > 0 and w > 0:
                if i in needs_prediction and (expert is not None or use_classical) and not predict_error:
                    reason = "nothing_segmented: the expert/classical method found no region"
                elif rois:
                    reason = "fallback: no usable annotation (see flagged rows)"
                else:
                    reason = None
                rois.append(_whole(h, w, reason))
            elif not rois:
                rois.append(_Roi(None, "whole_image", "flagged", "no_size: image size unknown"))
            records.extend(_rows_for_image(row, image, rois, label_map, label_names, spec, cfg, h, w))
            if progress is not None:
                progress(start + i + 1, total)

    df = (
        pl.DataFrame(records, schema=dict(ROI_SCHEMA), orient="row") if records else ROI_SET.empty()
    )
    flagged = df.filter(pl.col("status") == "flagged")
    flagged_counts = Counter(str(r).split(":", 1)[0] for r in flagged["reason"].to_list())
    return RoiSetResult(
        rois=df,
        counts_by_origin=dict(Counter(df["origin"].to_list())),
        counts_by_label=dict(Counter(str(x) for x in df.filter(pl.col("status") == "ok")["label"].to_list())),
        flagged_counts=dict(flagged_counts),
        dropped_counts=dict(dropped),
        n_images=total,
    )


# --------------------------------------------------------------------------------------
# rendering

PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
]


def draw_roi_overlay(
    image: np.ndarray, rois: list[dict[str, Any]], *, labels: bool = True, width: int = 1
) -> np.ndarray:
    """An RGB uint8 copy of ``image`` with each ROI's box and mask outline in its own colour.

    ``rois`` are roi_set rows (dicts with ``bbox_xyxy``, optional ``mask_rle``, ``label``,
    ``origin``). ``whole_image`` rows and rows without geometry are not drawn. The input array
    (and any file it came from) is never modified.
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = ((arr - lo) / (hi - lo if hi > lo else 1.0) * 255).clip(0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    rgb = np.array(arr[..., :3], dtype=np.uint8, copy=True)
    h, w = rgb.shape[:2]
    drawn = [r for r in rois if r.get("origin") != "whole_image" and r.get("bbox_xyxy") is not None]
    for k, roi in enumerate(drawn):
        colour = np.array(PALETTE[k % len(PALETTE)], dtype=np.uint8)
        rle = roi.get("mask_rle")
        if rle:
            try:
                m = rle_decode(rle)
                if m.shape == (h, w):
                    edge = m & ~ndimage.binary_erosion(m)
                    rgb[edge] = colour
            except (ValueError, KeyError, TypeError):
                pass
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    for k, roi in enumerate(drawn):
        colour = PALETTE[k % len(PALETTE)]
        x0, y0, x1, y1 = (float(v) for v in roi["bbox_xyxy"])
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
            continue
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=width)
        if labels and roi.get("label"):
            draw.text((x0 + 2, max(0.0, y0 - 11)), str(roi["label"])[:24], fill=colour)
    return np.asarray(canvas)
