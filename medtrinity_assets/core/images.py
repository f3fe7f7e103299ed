"""Reading the pipeline's own PNGs (formats restricted to PNG) and grey conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def read_png(path: str | Path) -> np.ndarray:
    """An image PNG as uint8 grey (H, W) or RGB (H, W, 3); formats restricted to PNG."""
    with Image.open(path, formats=["PNG"]) as im:
        im.load()
        if im.mode in ("L", "RGB"):
            return np.asarray(im)
        if im.mode in ("LA", "I", "I;16", "F"):
            arr = np.asarray(im.convert("L") if im.mode == "LA" else im, dtype=np.float64)
            if im.mode != "LA":
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo if hi > lo else 1.0) * 255.0
            return arr.astype(np.uint8)
        return np.asarray(im.convert("RGB"))


def read_label_map(path: str | Path) -> np.ndarray:
    """A PNG label map (uint8/uint16 values; palette images give their indices)."""
    with Image.open(path, formats=["PNG"]) as im:
        im.load()
        arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.int64, copy=False)


def to_grey(image: np.ndarray) -> np.ndarray:
    """Luminance as float64 (0-255 for uint8 input)."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        if arr.shape[-1] == 4:
            arr = arr[..., :3]
        if arr.shape[-1] == 3:
            arr = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
        else:
            arr = arr[..., 0]
    return arr.astype(np.float64, copy=False)
