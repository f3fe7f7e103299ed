"""Pictures of the model chain (drawn with Pillow): loss curves per stage, and each metric per
variant as mean with its spread over seeds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def loss_curves(curves: Mapping[str, Sequence[float]], width: int = 560, height: int = 260) -> np.ndarray:
    """One line per stage over its own steps (x scaled to each curve's length)."""
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    values = [v for c in curves.values() for v in c]
    if not values:
        d.text((10, 10), "no training steps", fill="black")
        return np.asarray(im)
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1
    left, top, right, bottom = 50, 20, width - 10, height - 30
    d.rectangle((left, top, right, bottom), outline=(180, 180, 180))
    d.text((4, top), f"{hi:.2f}", fill="black")
    d.text((4, bottom - 10), f"{lo:.2f}", fill="black")
    d.text((left, bottom + 8), "step (each stage scaled to its length) -> loss", fill="black")
    for i, (name, curve) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        n = max(len(curve) - 1, 1)
        pts = [(left + (right - left) * j / n, bottom - (bottom - top) * (v - lo) / (hi - lo))
               for j, v in enumerate(curve)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        d.text((right - 150, top + 4 + 14 * i), name, fill=colour)
    return np.asarray(im)


def metric_bars(summary: Mapping[str, Mapping[str, float | None]], metrics: Sequence[str],
                width: int = 560, height: int = 280) -> np.ndarray:
    """Grouped bars: per metric (0-1), one bar per variant at its mean with a whisker of +-1 SD."""
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    left, top, bottom = 40, 30, height - 40
    variants = list(summary)
    group_w = (width - left - 10) / max(len(metrics), 1)
    bar_w = group_w * 0.8 / max(len(variants), 1)
    d.line((left, bottom, width - 10, bottom), fill="black")
    d.text((4, top - 4), "1.0", fill="black")
    for vi, v in enumerate(variants):
        d.text((left + 120 * vi, 6), v, fill=COLOURS[vi % len(COLOURS)])
    for mi, metric in enumerate(metrics):
        x0 = left + group_w * mi + group_w * 0.1
        d.text((x0, bottom + 8), metric[:18], fill="black")
        for vi, v in enumerate(variants):
            mean, sd = summary[v].get(metric), summary[v].get(f"{metric}_std")
            if mean is None:
                continue
            xa = x0 + bar_w * vi
            y = bottom - (bottom - top) * mean
            d.rectangle((xa, y, xa + bar_w - 3, bottom), fill=COLOURS[vi % len(COLOURS)])
            if sd:
                cx = xa + bar_w / 2
                d.line((cx, bottom - (bottom - top) * min(1, mean + sd), cx, bottom - (bottom - top) * max(0, mean - sd)),
                       fill="black", width=2)
            d.text((xa, y - 12), f"{mean:.2f}", fill="black")
    return np.asarray(im)
