"""Overlays of an image's ROIs for inspection: each ROI's box and mask outline in its own colour."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from medtrinity_assets.rois.rle import rle_decode

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


MIN_SIDE = 256


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without scalable default font
        return ImageFont.load_default()


def _rgb(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = ((arr - lo) / (hi - lo if hi > lo else 1.0) * 255).clip(0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return np.array(arr[..., :3], dtype=np.uint8, copy=True)


def _outline(rgb: np.ndarray, roi: dict[str, Any], colour: tuple[int, int, int], scale: float) -> None:
    """Draw a ROI's mask outline (at the upscaled size) onto ``rgb`` in place."""
    rle = roi.get("mask_rle")
    if not rle:
        return
    try:
        m = rle_decode(rle)
    except (ValueError, KeyError, TypeError):
        return
    if scale != 1.0:
        h, w = rgb.shape[:2]
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 0
    if m.shape == rgb.shape[:2]:
        edge = m & ~ndimage.binary_erosion(m, iterations=max(1, int(round(scale))))
        rgb[edge] = colour


def draw_roi_overlay(
    image: np.ndarray, rois: list[dict[str, Any]], *, labels: bool = True, width: int = 2, min_side: int = MIN_SIDE
) -> np.ndarray:
    """An RGB uint8 copy of ``image``, upscaled so its shorter side is at least ``min_side`` px,
    with each ROI's mask outline and box in its own colour and its label name written beside it.

    ``rois`` are roi_set rows (dicts with ``bbox_xyxy``, optional ``mask_rle``, ``label``,
    ``origin``). ``whole_image`` rows and rows without geometry are not drawn. The input array
    (and any file it came from) is never modified.
    """
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    scale = max(1.0, min_side / max(1, min(h, w)))
    if scale > 1.0:
        rgb = np.asarray(Image.fromarray(rgb).resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)).copy()
    drawn = [r for r in rois if r.get("origin") != "whole_image" and r.get("bbox_xyxy") is not None]
    for k, roi in enumerate(drawn):
        _outline(rgb, roi, PALETTE[k % len(PALETTE)], scale)
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(12, min(canvas.size) // 24))
    for k, roi in enumerate(drawn):
        colour = PALETTE[k % len(PALETTE)]
        x0, y0, x1, y1 = (float(v) * scale for v in roi["bbox_xyxy"])
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
            continue
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=width)
        if labels and roi.get("label"):
            text = str(roi["label"]).replace("_", " ")[:28]
            tx, ty = x0 + 2, max(0.0, y0 - font.size - 4) if hasattr(font, "size") else max(0.0, y0 - 14)
            box = draw.textbbox((tx, ty), text, font=font)
            draw.rectangle(box, fill=(0, 0, 0))
            draw.text((tx, ty), text, fill=colour, font=font)
    return np.asarray(canvas)
