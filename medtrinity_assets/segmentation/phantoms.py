"""Synthetic phantoms with masks (tests and the expert-model training set)."""

from __future__ import annotations

import numpy as np


def generate_phantoms(
    n: int,
    size: int = 64,
    seed: int = 0,
    *,
    object_contrast: float = 0.35,
    bias: float = 0.9,
    noise: float = 0.12,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """MONAI circle phantoms with a strong linear bias field and Gaussian noise.

    Returns ``(image uint8 (size, size), mask uint8 {0, 1})`` pairs. Objects are only
    ``object_contrast`` brighter than their local background while the bias field spans
    ``bias`` across the image, so a global (Otsu) threshold cuts along the gradient instead
    of around the objects; a network that sees local context can still find them.
    """
    from monai.data.synthetic import create_test_image_2d

    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(n):
        img, seg = create_test_image_2d(
            size,
            size,
            num_objs=int(rs.randint(2, 7)),
            rad_max=max(size // 7, 4),
            rad_min=max(size // 20, 2),
            noise_max=0.0,
            num_seg_classes=1,
            random_state=rs,
        )
        mask = (np.asarray(seg) > 0).astype(np.uint8)
        angle = rs.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-9)
        obj = np.asarray(img, np.float64)
        obj = obj / obj.max() if obj.max() > 0 else obj
        field = bias * ramp + object_contrast * obj + rs.normal(0.0, noise, (size, size))
        field = (field - field.min()) / max(float(np.ptp(field)), 1e-9)
        out.append(((field * 255).round().astype(np.uint8), mask))
    return out
