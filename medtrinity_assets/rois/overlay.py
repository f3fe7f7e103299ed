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
