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

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from medtrinity_assets.core.images import read_label_map, read_png, to_grey
from medtrinity_assets.core.tables import ROI_SET
from medtrinity_assets.core.vocabulary import canonical_modality, modality_by_key
from medtrinity_assets.ingest.labels import label_names_of
from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.rois.candidates import (
    RoiCandidate,
    box_candidates,
    mask_candidates,
    predicted_candidates,
    whole_image_candidate,
)
from medtrinity_assets.rois.config import RoiConfig, default_config
from medtrinity_assets.rois.measure import measure_roi
from medtrinity_assets.rois.relations import inside_labels, relations
from medtrinity_assets.rois.rle import rle_counts_from_crop, rle_json
from medtrinity_assets.rois.surroundings import Surroundings, nesting, touching
from medtrinity_assets.segmentation.classical import classical_segment
from medtrinity_assets.segmentation.domain import out_of_domain

ROI_SCHEMA = ROI_SET.schema

LoadedImage = tuple[np.ndarray | None, str | None]
"""An image's pixels, or ``None`` and why it could not be read."""


@dataclass
class RoiSetResult:
    """The ROI table of one source and its summary counts."""

    rois: pl.DataFrame
    counts_by_origin: dict[str, int] = field(default_factory=dict)
    counts_by_label: dict[str, int] = field(default_factory=dict)
    flagged_counts: dict[str, int] = field(default_factory=dict)
    dropped_counts: dict[str, int] = field(default_factory=dict)
    n_images: int = 0


@dataclass
class _Run:
    """What stays fixed during one :func:`build_roi_set` call, and the components it drops."""

    out: Path
    spec: SourceSpec
    cfg: RoiConfig
    experts: list[Any]
    modality: str
    use_classical: bool
    dropped: Counter = field(default_factory=Counter)


@dataclass
class _BatchPredictions:
    """The experts' masks for a batch: which images needed one, ``(expert, mask)`` pairs by index
    in the batch, and the error when an expert failed on the batch."""

    needed: list[int]
    masks: dict[int, list[tuple[Any, np.ndarray]]]
    error: str | None
    failed: Any | None = None


# --------------------------------------------------------------------------------------
# the stage


def build_roi_set(
    images: pl.DataFrame,
    spec: SourceSpec,
    out: str | Path,
    *,
    experts: list[Any] | None = None,
    expert: Any | None = None,
    config: RoiConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = 32,
) -> RoiSetResult:
    """ROI rows with measured attributes for every image of one source's ``preprocessed_images``.

    ``experts`` are :class:`~medtrinity_assets.segmentation.ExpertPredictor` s (anything with
    ``.name``, ``.label`` and ``.predict(list[np.ndarray]) -> list[np.ndarray]``) whose cards
    cover the source, used only for images with no mask and no box; each names its regions with
    its trained label (``expert`` is one of them, for callers with a single one). The source's
    ``rois`` settings override the configuration. ``progress(done, total)`` is called after
    each image.
    """
    cfg = config or default_config()
    if spec.rois:
        cfg = cfg.with_overrides(**spec.rois)
    models = list(experts or []) + ([expert] if expert is not None else [])
    modality = canonical_modality(spec.modality)
    run = _Run(
        out=Path(out),
        spec=spec,
        cfg=cfg,
        experts=models,
        modality=modality,
        use_classical=not models and modality in cfg.classical_modalities,
    )
    records: list[dict[str, Any]] = []
    rows = images.to_dicts()
    total = len(rows)
    for start in range(0, total, batch_size):
        chunk = rows[start : start + batch_size]
        loaded = _read_images(chunk, run.out)
        predictions = _predict_batch(chunk, loaded, models)
        for i, row in enumerate(chunk):
            records.extend(_image_records(run, row, loaded[i], predictions, i))
            if progress is not None:
                progress(start + i + 1, total)
    return _result(records, run.dropped, total)


def _read_images(chunk: list[dict[str, Any]], out: Path) -> list[LoadedImage]:
    """The pixels of each row's image; an unreadable file is recorded, never fatal."""
    loaded: list[LoadedImage] = []
    for row in chunk:
        try:
            loaded.append((read_png(out / str(row["image_path"])), None))
        except Exception as exc:  # unreadable file: recorded, never fatal
            loaded.append((None, f"image_unreadable: {type(exc).__name__}: {exc}"[:300]))
    return loaded


def _predict_batch(chunk: list[dict[str, Any]], loaded: list[LoadedImage], experts: list[Any]) -> _BatchPredictions:
    """Each expert's masks, one call per expert, for the readable images with neither mask nor box."""
    needed = [
        i
        for i, row in enumerate(chunk)
        if loaded[i][0] is not None and not row.get("mask_path") and not (row.get("boxes") or [])
    ]
    batch = _BatchPredictions(needed, {i: [] for i in needed}, None)
    for model in experts if needed else []:
        try:
            masks = model.predict([loaded[i][0] for i in needed])
        except Exception as exc:
            batch.error, batch.failed = f"expert_failed: {type(exc).__name__}: {exc}"[:300], model
            return batch
        for i, mask in zip(needed, masks, strict=True):
            batch.masks[i].append((model, mask))
    return batch


def _image_records(
    run: _Run, row: dict[str, Any], loaded: LoadedImage, predictions: _BatchPredictions, i: int
) -> list[dict[str, Any]]:
    """The roi_set rows of the ``i``-th image of a batch."""
    image, image_error = loaded
    if image is not None:
        h, w = image.shape[:2]
    else:
        h, w = int(row.get("height") or 0), int(row.get("width") or 0)
    label_names = label_names_of(row, run.spec)
    if image_error:
        bbox = [0.0, 0.0, float(w), float(h)] if h > 0 and w > 0 else None
        # the flagged row is the record of this image
        rois = [RoiCandidate(None, "whole_image", "flagged", image_error, bbox=bbox)]
        label_map = None
    else:
        rois, label_map = _annotated_candidates(run, row, h, w, label_names)
        if i in predictions.needed:
            rois.extend(_segmented_candidates(run, image, predictions, i))
        has_segmenter = bool(run.experts) or run.use_classical
        segmenter_ran = i in predictions.needed and has_segmenter and not predictions.error
        _add_fallback(rois, h, w, segmenter_ran)
    return _rows_for_image(row, image, rois, label_map, label_names, run.spec, run.cfg, h, w)


# --------------------------------------------------------------------------------------
# the candidates of one image


def _annotated_candidates(
    run: _Run, row: dict[str, Any], h: int, w: int, label_names: dict[int, str]
) -> tuple[list[RoiCandidate], np.ndarray | None]:
    """Candidates from the image's label map and boxes, and the label map when it was usable."""
    rois: list[RoiCandidate] = []
    label_map = None
    if row.get("mask_path"):
        rois, label_map = _label_map_candidates(run, row, h, w, label_names)
    rois.extend(box_candidates(row, h, w))
    return rois, label_map


def _label_map_candidates(
    run: _Run, row: dict[str, Any], h: int, w: int, label_names: dict[int, str]
) -> tuple[list[RoiCandidate], np.ndarray | None]:
    """Candidates from the row's label map, or one flagged row when it is unreadable or its
    size is not the image's; and the label map once it matched the image."""
    label_map = None
    try:
        lm = read_label_map(run.out / str(row["mask_path"]))
        if lm.shape != (h, w):
            reason = f"mask_shape_mismatch: mask {lm.shape} vs image {(h, w)}"
            return [RoiCandidate(None, "mask", "flagged", reason)], label_map
        label_map = lm
        return mask_candidates(lm, label_names, run.cfg, run.dropped), label_map
    except Exception as exc:
        reason = f"mask_unreadable: {type(exc).__name__}: {exc}"[:300]
        return [RoiCandidate(None, "mask", "flagged", reason)], label_map


def _segmented_candidates(
    run: _Run, image: np.ndarray, predictions: _BatchPredictions, i: int
) -> list[RoiCandidate]:
    """Candidates for an image with neither mask nor box: the expert's mask, the expert's
    error, or (without an expert, for the classical modalities) the classical segmentation."""
    if predictions.error:
        return [RoiCandidate(None, f"expert:{predictions.failed.name}", "flagged", predictions.error)]
    if predictions.masks.get(i):
        out: list[RoiCandidate] = []
        for model, mask in predictions.masks[i]:
            origin = f"expert:{model.name}"
            off = out_of_domain((getattr(model, "card", None) or {}).get("metrics", {}), image, mask)
            if off:
                out.append(RoiCandidate(getattr(model, "label", None), origin, "flagged", off))
                continue
            out += predicted_candidates(mask, origin, run.cfg, run.dropped, label=getattr(model, "label", "region"))
        return out
    if run.use_classical:
        return _classical_candidates(run, image)
    return []


def _classical_candidates(run: _Run, image: np.ndarray) -> list[RoiCandidate]:
    """Components of the classical (Otsu) segmentation, or one flagged row when it fails."""
    cfg = run.cfg
    try:
        mask = classical_segment(
            image,
            run.modality,
            smooth_sigma=cfg.classical_smooth_sigma,
            opening_radius=cfg.classical_opening_radius,
        )
        entry = modality_by_key(run.modality)
        label = entry.classical_label if entry is not None else "region"
        return predicted_candidates(mask, "classical", cfg, run.dropped, label=label)
    except Exception as exc:
        return [RoiCandidate(None, "classical", "flagged", f"classical_failed: {type(exc).__name__}: {exc}")]


def _add_fallback(rois: list[RoiCandidate], h: int, w: int, segmenter_ran: bool) -> None:
    """Append a ``whole_image`` region when no candidate is usable (with why), or a flagged
    row when there is no candidate and the image's size is unknown."""
    if not any(r.status == "ok" for r in rois) and h > 0 and w > 0:
        if segmenter_ran:
            reason = "nothing_segmented: the expert/classical method found no region that is a structure"
        elif rois:
            reason = "fallback: no usable annotation (see flagged rows)"
        else:
            reason = None
        rois.append(whole_image_candidate(h, w, reason))
    elif not rois:
        rois.append(RoiCandidate(None, "whole_image", "flagged", "no_size: image size unknown"))


# --------------------------------------------------------------------------------------
# the rows of one image


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
    rois: list[RoiCandidate],
    label_map: np.ndarray | None,
    label_names: dict[int, str],
    spec: SourceSpec,
    cfg: RoiConfig,
    h: int,
    w: int,
) -> list[dict[str, Any]]:
    """One roi_set row per candidate of an image: identity, box, mask, measured attributes,
    and the image's relations and inside labels."""
    measure = _measurer(row, image, spec, cfg)
    nested = nesting(rois, cfg)
    surroundings = Surroundings(image, rois, nested, h, w, label_map)
    records: list[dict[str, Any]] = []
    for n, roi in enumerate(rois):
        rec = _identity_and_box(row, spec, n, roi, h, w)
        if roi.crop is not None and roi.window is not None:
            outline = roi.origin != "classical" or cfg.shape_named_for_classical
            rec.update(_mask_and_attributes(roi, measure, h, w, surroundings.of(n), outline))
        records.append(rec)
    _set_relations(records, rois, cfg, touching(rois, cfg, nested))
    _set_inside_labels(records, rois, label_map, label_names, cfg)
    return records


def _measurer(
    row: dict[str, Any], image: np.ndarray | None, spec: SourceSpec, cfg: RoiConfig
) -> Callable[..., dict[str, Any]] | None:
    """:func:`measure_roi` bound to this image (its grey image and range computed once), or
    ``None`` when the image could not be read."""
    grey = to_grey(image) if image is not None else None
    if grey is None:
        return None
    return partial(
        measure_roi,
        image,
        spacing=_spacing(row.get("original_spacing")),
        display_right=row.get("display_right"),
        display_down=row.get("display_down"),
        modality=spec.modality,
        config=cfg,
        _grey=grey,
        _range=(float(grey.min()), float(grey.max())),
    )


def _identity_and_box(
    row: dict[str, Any], spec: SourceSpec, n: int, roi: RoiCandidate, h: int, w: int
) -> dict[str, Any]:
    """A roi_set row (all columns, nulls) with the ``n``-th candidate's identity and box."""
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
    return rec


def _mask_and_attributes(
    roi: RoiCandidate,
    measure: Callable[..., dict[str, Any]] | None,
    h: int,
    w: int,
    surround: np.ndarray | None = None,
    outline: bool = True,
) -> dict[str, Any]:
    """The candidate's ``mask_rle`` (mask candidates only) and measured attributes (only the
    area when the image could not be read; no shape words without ``outline``)."""
    r0, _r1, c0, _c1 = roi.window
    out: dict[str, Any] = {}
    if roi.has_mask:
        out["mask_rle"] = rle_json({"size": [h, w], "counts": rle_counts_from_crop(roi.crop, r0, c0, h, w)})
    if measure is not None:
        out.update(measure(roi.crop, whole_image=roi.origin == "whole_image", outline=outline, _window=roi.window,
                           surround=surround))
    else:
        area = int(roi.crop.sum())
        out["area_px"] = area
        out["area_fraction"] = area / float(h * w) if h * w else None
    return out


def _set_relations(
    records: list[dict[str, Any]], rois: list[RoiCandidate], cfg: RoiConfig, nested: dict | None = None
) -> None:
    """``roi_count`` on every row, ``label_count`` (the ok localised regions of the image with its label)
    on every ok localised row, and ``relations`` among the ok regions that have geometry (``whole_image``
    excluded); flagged rows get none."""
    geo = [
        i
        for i, r in enumerate(records)
        if r["status"] == "ok" and r["centroid_norm"] is not None and rois[i].origin != "whole_image"
    ]
    ok_count = sum(1 for r in records if r["status"] == "ok")
    localised = [r["label"] for i, r in enumerate(records) if r["status"] == "ok" and rois[i].origin != "whole_image"]
    for i, r in enumerate(records):
        r["roi_count"] = ok_count
        r["label_count"] = localised.count(r["label"]) if r["status"] == "ok" and rois[i].origin != "whole_image" else None
        r["relations"] = "[]" if r["status"] == "ok" else None
    if len(geo) >= 2:
        rel = relations(
            [records[i]["roi_id"] for i in geo],
            np.array([records[i]["centroid_norm"] for i in geo]),
            np.array([records[i]["bbox_norm"] for i in geo]),
            cfg,
            labels=[records[i]["label"] for i in geo],
            nested={(a, b): rel for a, i in enumerate(geo) for b, j in enumerate(geo) if (rel := (nested or {}).get((i, j)))},
        )
        for i, js in zip(geo, rel, strict=True):
            records[i]["relations"] = js


def _set_inside_labels(
    records: list[dict[str, Any]],
    rois: list[RoiCandidate],
    label_map: np.ndarray | None,
    label_names: dict[int, str],
    cfg: RoiConfig,
) -> None:
    """``inside_label`` of each region with a mask crop: the label whose region holds it."""
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


def _result(records: list[dict[str, Any]], dropped: Counter, total: int) -> RoiSetResult:
    """The roi_set table of all rows, with its counts by origin, label and flag reason."""
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
