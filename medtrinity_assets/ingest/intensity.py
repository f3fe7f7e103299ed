"""Intensity mapping to 8 bit: a Hounsfield window for CT (by organ, or the registry's), the
registry's window for other grey modalities, else robust percentiles; colour kept as colour."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medtrinity_assets.ingest.readers.base import InputRejected, Volume
from medtrinity_assets.ingest.registry import SourceSpec

#: CT windows (center, width) in Hounsfield units by organ keyword; first match wins.
ORGAN_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "brain": (40.0, 80.0),
    "head": (40.0, 80.0),
    "stroke": (40.0, 40.0),
    "temporal bone": (600.0, 2800.0),
    "bone": (400.0, 1800.0),
    "spine": (400.0, 1800.0),
    "tibia": (400.0, 1800.0),
    "liver": (60.0, 160.0),
    "mediastinum": (50.0, 350.0),
    "chest": (50.0, 350.0),
    "neck": (40.0, 350.0),
    "abdomen": (40.0, 400.0),
    "pancreas": (40.0, 400.0),
    "kidney": (40.0, 400.0),
}
DEFAULT_CT_WINDOW = (40.0, 400.0)


def ct_window(organ: str, spec_window: Any = None) -> tuple[float, float]:
    """(center, width) in HU: the registry's window when given, else by organ keyword."""
    if spec_window is not None and spec_window.center is not None and spec_window.width is not None:
        return float(spec_window.center), float(spec_window.width)
    organ_l = (organ or "").lower()
    for key, win in ORGAN_WINDOWS.items():
        if key in organ_l:
            return win
    return DEFAULT_CT_WINDOW


class Intensity:
    """Maps physical slices to uint8 (grey) or keeps colour."""

    def __init__(self, vol: Volume, spec: SourceSpec, view: np.ndarray, axis: int):
        self.vol, self.spec, self.view, self.axis = vol, spec, view, axis
        self.keep_colour = vol.colour and spec.keeps_colour
        slope = vol.slope if vol.slope is not None else np.ones(1)
        inter = vol.intercept if vol.intercept is not None else np.zeros(1)
        self.uniform = bool(np.all(slope == slope[0]) and np.all(inter == inter[0]))
        self.slope, self.inter = slope, inter
        if not self.uniform and axis != 0:
            n0 = vol.data.shape[0]
            phys = np.empty(vol.data.shape, np.float32)
            for k in range(n0):
                phys[k] = vol.data[k] * np.float32(slope[k]) + np.float32(inter[k])
            self.view = np.moveaxis(phys, axis, 0)
            self.slope, self.inter, self.uniform = np.ones(1), np.zeros(1), True
        self.lo = self.hi = 0.0
        self.window = ""

    def _sb(self, k: int) -> tuple[float, float]:
        if self.uniform:
            return float(self.slope[0]), float(self.inter[0])
        return float(self.slope[k]), float(self.inter[k])

    def _raw(self, k: int) -> np.ndarray:
        """Stored values of slice k; colour that a grey modality does not keep becomes luminance."""
        sl = self.view[k]
        if sl.ndim == 3 and not self.keep_colour:
            sl = (sl[..., 0] * 0.299 + sl[..., 1] * 0.587 + sl[..., 2] * 0.114).astype(np.float32)
        return sl

    def calibrate(self) -> None:
        """Global stats: NaN / constant checks, then the window or the percentiles.

        Works on stored values (min/max per slice, a strided sample for percentiles) and maps
        them through slope/intercept, so no float copy of the volume is made.
        """
        n = self.view.shape[0]
        total = int(np.prod(self.view.shape[:3], dtype=np.int64))
        step = max(1, int(math.ceil(math.sqrt(total / 250_000))))
        samples, vmin, vmax, any_finite = [], math.inf, -math.inf, False
        for k in range(n):
            raw = self._raw(k)
            s, b = self._sb(k)
            vals = raw
            if raw.dtype.kind == "f":
                finite = np.isfinite(raw)
                if not finite.all():
                    if not finite.any():
                        continue
                    vals = raw[finite]
            any_finite = True
            lo_k, hi_k = sorted((float(vals.min()) * s + b, float(vals.max()) * s + b))
            vmin, vmax = min(vmin, lo_k), max(vmax, hi_k)
            sub = raw[::step, ::step]
            if sub.dtype.kind == "f":
                sub = sub[np.isfinite(sub)]
            sub = sub.astype(np.float32).ravel()
            samples.append(sub * np.float32(s) + np.float32(b) if (s, b) != (1.0, 0.0) else sub)
        if not any_finite:
            raise InputRejected("nan_volume", "no finite voxel")
        if vmax <= vmin:
            raise InputRejected("constant_volume", "every voxel has the same value")
        if self.keep_colour:
            self.window = "colour"
            self.lo, self.hi = 0.0, 255.0 if vmax <= 255 else vmax
            return
        win = self.spec.window
        if self.vol.modality == "ct" or (
            win is not None and win.center is not None and win.width is not None
        ):
            c, w = ct_window(self.spec.organ, win)
            self.lo, self.hi = c - w / 2.0, c + w / 2.0
            self.window = f"{'ct' if self.vol.modality == 'ct' else 'window'}:{c:g}/{w:g}"
            return
        lp = win.low_percentile if win is not None else 0.5
        hp = win.high_percentile if win is not None else 99.5
        sample = np.concatenate(samples) if samples else np.array([vmin, vmax])
        lo, hi = (float(v) for v in np.percentile(sample, [lp, hp]))
        if hi <= lo:
            lo, hi = vmin, vmax
        self.lo, self.hi = lo, hi
        self.window = f"percentile:{lp:g}-{hp:g}"

    def normalised(self, k: int, step: int = 1) -> np.ndarray:
        """Slice k on a 0-1 scale (grey) or 0-1 per channel (colour); NaN -> 0. With ``step`` > 1,
        every ``step``-th pixel of every ``step``-th row only (the same values: the mapping is per pixel)."""
        raw = self._raw(k)
        if step > 1:
            raw = raw[::step, ::step]
        s, b = self._sb(k)
        span = self.hi - self.lo
        out = raw.astype(np.float32)
        out *= np.float32(s / span)
        out += np.float32((b - self.lo) / span)
        np.clip(out, 0.0, 1.0, out=out)
        if raw.dtype.kind == "f":
            np.nan_to_num(out, copy=False, nan=0.0)
        if self.vol.meta.get("invert"):
            np.subtract(np.float32(1.0), out, out=out)
        return out

    def to_u8(self, k: int, norm: np.ndarray) -> np.ndarray:
        if self.keep_colour and self.view.dtype == np.uint8:
            return np.ascontiguousarray(self.view[k])  # already 8-bit colour: untouched
        return (norm * 255.0 + 0.5).astype(np.uint8)
