"""A small verified-export stand-in for the model tests: real PNG images (a bright disc left or
right, on MRI-like or CT-like backgrounds), the export's triplet table and its LLaVA JSON."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from medtrinity_assets.core.tables import MEDTRINITY_DATASET
from medtrinity_assets.export.formats import write_llava


def _image(kind: str, side: str, i: int) -> bytes:
    yy, xx = np.mgrid[0:48, 0:48]
    base = 40 if kind == "mri" else 110
    arr = np.full((48, 48), base, np.float32) + (i % 5) * 3
    cx = 14 if side == "left" else 34
    arr[(xx - cx) ** 2 + (yy - 24) ** 2 < 64] = 230
    arr[0, i % 48] = 255  # every image distinct
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_export(out: Path, n: int = 24) -> Path:
    """``n`` triplets (one per image) under ``out/export``; returns the export folder."""
    root = out / "export"
    rows = []
    for i in range(n):
        kind, side = ("mri", "ct")[i % 2], ("left", "right")[(i // 2) % 2]
        data = _image(kind, side, i)
        sha = hashlib.sha256(data).hexdigest()
        rel = f"images/{sha[:2]}/{sha}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        x0 = 0.15 if side == "left" else 0.57
        split = "test" if i % 6 == 5 else "validation" if i % 6 == 4 else "train"
        rows.append({
            "triplet_id": f"t{i:03d}", "source": f"{kind}_demo", "record_id": f"r{i}", "roi_id": f"roi{i}",
            "inputs_hash": f"h{i}", "image_file": rel, "image_sha256": sha, "image_width": 48, "image_height": 48,
            "bbox_xyxy": [x0 * 48, 16.0, (x0 + 0.3) * 48, 32.0], "bbox_norm": [x0, 0.33, x0 + 0.3, 0.67],
            "label": "lesion", "origin": "mask", "modality": kind, "organ": "brain" if kind == "mri" else "liver",
            "description": f"A {kind.upper()} image of the {'brain' if kind == 'mri' else 'liver'}; a bright round "
                           f"lesion lies in the {side} half.",
            "split": split, "group_id": f"image:{sha}", "license": "CC0", "synthetic": True,
            "backend": "embedded", "model": "embedded", "prompt_version": "test", "duplicate_group": None,
        })
    MEDTRINITY_DATASET.write(MEDTRINITY_DATASET.frame(rows), out)
    write_llava(MEDTRINITY_DATASET.read(out), root)
    return root
