"""A stratified sample of triplets for review by eye: per source up to ``--per-source`` (more for
large sources), spread over the ROI origins; each image rendered at >= 512 px with its region
outlined in red (a contour for a mask, a rectangle for a box, nothing for a whole image), and a
JSON of the descriptions and the metadata a reviewer needs.

    python benchmarks/review_sample.py OUT_ROOT DEST [--seed 7] [--per-source 3] [--large 6]

Reviewers score each facet 0 (wrong), 1 (vague), 2 (right and useful) and mark false claims;
the scores stay outside the pipeline (they are the independent truth).
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageDraw
from scipy import ndimage

from medtrinity_assets.rois.rle import rle_decode


def _rows(out: Path, name: str) -> list[dict]:
    cap = pl.read_parquet(out / "caption_batch" / f"{name}.parquet").filter(pl.col("status") == "ok")
    roi = pl.read_parquet(out / "roi_set" / f"{name}.parquet")
    img = pl.read_parquet(out / "preprocessed_images" / f"{name}.parquet")
    coarse = pl.read_parquet(out / "coarse_captions" / f"{name}.parquet")
    return (
        cap.join(roi.select("record_id", "roi_id", "origin", "label", "mask_rle", "bbox_xyxy"), on=["record_id", "roi_id"])
        .join(img.select("record_id", "image_path"), on="record_id")
        .join(coarse.select("record_id", "caption"), on="record_id")
        .to_dicts()
    )


def _stratified(rows: list[dict], k: int, rng: random.Random) -> list[dict]:
    """``k`` rows taken in turn from each origin (expert:* counted as one)."""
    rng.shuffle(rows)
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["origin"].split(":")[0], []).append(r)
    picked: list[dict] = []
    while len(picked) < min(k, len(rows)):
        for origin in sorted(by):
            if by[origin] and len(picked) < k:
                picked.append(by[origin].pop())
    return picked


def _render(out: Path, row: dict, path: Path) -> None:
    image = np.array(Image.open(out / row["image_path"]).convert("RGB"))
    if row["mask_rle"] and row["origin"] != "whole_image":
        mask = rle_decode(row["mask_rle"])
        image[mask & ~ndimage.binary_erosion(mask, iterations=max(1, image.shape[0] // 200))] = (255, 0, 0)
    pic = Image.fromarray(image)
    if row["origin"] == "box":
        ImageDraw.Draw(pic).rectangle(row["bbox_xyxy"], outline=(255, 0, 0), width=2)
    scale = max(1, 512 // max(pic.size))
    pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--per-source", type=int, default=3)
    ap.add_argument("--large", type=int, default=6, help="sample size for sources with over 50 ROIs")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    args.dest.mkdir(parents=True, exist_ok=True)
    sample = []
    for f in sorted((args.out / "caption_batch").glob("*.parquet")):
        rows = _rows(args.out, f.stem)
        k = args.large if len(rows) > 50 else args.per_source
        sample += [(f.stem, r) for r in _stratified(rows, k, rng)]
    meta = []
    for i, (name, row) in enumerate(sample):
        path = args.dest / f"t{i:02d}_{name}.png"
        _render(args.out, row, path)
        meta.append({"id": i, "source": name, "image": str(path), "origin": row["origin"], "roi_label": row["label"],
                     "coarse_caption": row["caption"], "description": row["text"]})
    (args.dest / "triplets.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    print(f"{len(meta)} triplets -> {args.dest}; by origin {dict(Counter(m['origin'].split(':')[0] for m in meta))}")


if __name__ == "__main__":
    main()
