"""Benchmark of the ROI stage.

1. ROIs with attributes per second of ``build_roi_set`` (scipy/numpy, per-ROI crops), side by side
   in the same run with two baselines on the same images:

   - ``regionprops`` (the fair one: what a competent user writes with scikit-image): per label value,
     8-connected components (``measure.label``), the small ones dropped, ``regionprops`` with the
     intensity image (box, area, centroid, ROI mean, Feret diameter; solidity, axis ratio and Crofton
     perimeter of the region with its small holes filled), the ring's mean (the crop dilated by a disk, less the
     region), masked GLCM contrast and homogeneity of the region's interior (eroded by a pixel;
     ``graycomatrix`` with the pixels outside at an extra level that is dropped, ``graycoprops``),
     entropy, a run-length mask, and the table written as Parquet. It
     does less than the stage (no splitting of touching regions, no foreground-limited ring, no
     relations, no words), so its ratio flatters it;
   - ``per-pixel``: a pure-Python per-pixel loop computing a subset of the attributes (flood-fill
     labelling, box, area, centroid, ROI mean, ring mean by one-pixel dilations), on
     ``--baseline-images`` images only (it is slow), kept as the old reference.

   Two configurations are measured, each with its own ratios, because the per-ROI cost scales
   differently with ROI size:

   - ``realistic``: 24 images at 512x512 with lesion-sized ROIs;
   - ``small``: 40 images at 256x256 with small ROIs (where fixed per-ROI overhead dominates).

2. Expert-model inference (the default U-Net config) in images per second on ``--device``.

    python benchmarks/rois.py                      # CPU, both configurations
    python benchmarks/rois.py --device cuda        # the same on a GPU
    python benchmarks/rois.py --configs small --skip-expert
    python benchmarks/rois.py --images 10 --size 384   # one custom configuration

Prints one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.rois.build import build_roi_set
from medtrinity_assets.rois.config import default_config
from medtrinity_assets.segmentation import ExpertConfig, ExpertPredictor, build_network, generate_phantoms


def make_source(out: Path, n: int, size: int, seed: int, args_blobs: int = 8) -> pl.DataFrame:
    """Phantom images with label maps: two label values, many components per image."""
    rows = []
    phantoms = generate_phantoms(n, size, seed, bias=0.3)
    rng = np.random.default_rng(seed)
    for i, (img, mask) in enumerate(phantoms):
        lm = mask.astype(np.uint8)
        yy, xx = np.mgrid[0:size, 0:size]
        for _ in range(args_blobs):  # extra lesion-sized discs of label 2 (radius size/48 .. size/16 px)
            y, x = rng.integers(16, size - 16, 2)
            r = int(rng.integers(size // 48, size // 16))
            lm[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = 2
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(out / "images" / f"{i}.png")
        Image.fromarray(lm).save(out / "masks" / f"{i}.png")
        rows.append(
            {
                "record_id": f"b{i}",
                "source": "bench",
                "image_path": f"images/{i}.png",
                "width": size,
                "height": size,
                "original_spacing": [0.8, 0.8],
                "display_right": "L",
                "display_down": "P",
                "mask_path": f"masks/{i}.png",
                "boxes": None,
                "box_labels": None,
                "box_clipped": None,
            }
        )
    return pl.DataFrame(rows)


def baseline_rois(image: list[list[int]], label_map: list[list[int]], ring_width: int) -> list[dict]:
    """Pure-Python per-pixel ROI measurement (the baseline)."""
    h, w = len(label_map), len(label_map[0])
    seen = [[False] * w for _ in range(h)]
    out = []
    for y in range(h):
        for x in range(w):
            v = label_map[y][x]
            if v == 0 or seen[y][x]:
                continue
            stack, pixels = [(y, x)], []
            seen[y][x] = True
            while stack:
                cy, cx = stack.pop()
                pixels.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and not seen[ny][nx] and label_map[ny][nx] == v:
                            seen[ny][nx] = True
                            stack.append((ny, nx))
            ys = [p[0] for p in pixels]
            xs = [p[1] for p in pixels]
            x0, x1, y0, y1 = min(xs), max(xs) + 1, min(ys), max(ys) + 1
            inside = set(pixels)
            total = 0
            for py, px in pixels:
                total += image[py][px]
            region, ring = set(inside), set()
            for _ in range(ring_width):
                grown = set()
                for py, px in region:
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            q = (py + dy, px + dx)
                            if 0 <= q[0] < h and 0 <= q[1] < w and q not in region:
                                grown.add(q)
                region |= grown
                ring |= grown
            ring_total = sum(image[py][px] for py, px in ring)
            out.append(
                {
                    "label": v,
                    "bbox": [x0, y0, x1, y1],
                    "area": len(pixels),
                    "centroid": [sum(xs) / len(xs) / w, sum(ys) / len(ys) / h],
                    "roi_mean": total / len(pixels),
                    "ring_mean": ring_total / len(ring) if ring else None,
                }
            )
    return out


_ANGLES = [0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]


def _runs(mask: np.ndarray) -> list[int]:
    """Column-major run lengths of a boolean mask, starting with a (possibly empty) run of zeros."""
    flat = mask.T.ravel()
    cuts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], cuts, [flat.size])))
    return ([0] if flat[0] else []) + counts.tolist()


def _masked_glcm(q: np.ndarray, distance: int, levels: int) -> tuple[float | None, float | None]:
    """GLCM contrast and homogeneity over the pixel pairs inside a region: ``q`` holds the region's
    levels as 1..levels and 0 outside; the 0 row and column are dropped before normalising."""
    from skimage.feature import graycomatrix, graycoprops

    glcm = graycomatrix(q, [distance], _ANGLES, levels=levels + 1, symmetric=True)[1:, 1:].astype(np.float64)
    pairs = glcm.sum(axis=(0, 1))[0]
    used = pairs > 0
    if not used.any():
        return None, None
    normed = glcm[:, :, :, used] / pairs[used]
    return float(graycoprops(normed, "contrast").mean()), float(graycoprops(normed, "homogeneity").mean())


def regionprops_rois(grey: np.ndarray, label_map: np.ndarray, cfg) -> list[dict]:
    """The fair baseline (see the module docstring): scikit-image's labelling, ``regionprops``,
    disk dilation and ``graycomatrix`` on one image."""
    from scipy.ndimage import binary_dilation, binary_erosion
    from skimage.measure import label, regionprops, shannon_entropy
    from skimage.morphology import disk

    h, w = grey.shape
    lo, hi = float(grey.min()), float(grey.max())
    levels = cfg.texture_levels
    q_all = (np.clip(np.floor((grey - lo) * (levels / (hi - lo) if hi > lo else 0.0)), 0, levels - 1) + 1).astype(np.uint8)
    footprint, pad = disk(cfg.ring_width_px), cfg.ring_width_px
    out = []
    for value in np.unique(label_map)[1:]:
        labelled = label(label_map == value, connectivity=2)
        for region in regionprops(labelled, intensity_image=grey):
            if region.area < cfg.min_area_px:
                continue
            r0, c0, r1, c1 = region.bbox
            R0, C0, R1, C1 = max(0, r0 - pad), max(0, c0 - pad), min(h, r1 + pad), min(w, c1 + pad)
            inside = labelled[R0:R1, C0:C1] == region.label
            ring = binary_dilation(inside, structure=footprint) & ~inside
            roi_mean = float(region.intensity_mean)
            ring_mean = float(grey[R0:R1, C0:C1][ring].mean()) if ring.any() else None
            interior = binary_erosion(region.image, border_value=0)  # texture: without the edge pixels
            textured = interior if interior.sum() >= cfg.texture_min_area_px else region.image
            q = np.where(textured, q_all[r0:r1, c0:c1], 0).astype(np.uint8)
            contrast, homogeneity = _masked_glcm(q, cfg.glcm_distance, levels)
            holes = region.area_filled - region.area  # the shape is the outline's: small holes filled
            outline = regionprops(region.image_filled.astype(np.uint8))[0] \
                if 0 < holes <= cfg.fill_hole_max_share * region.area else region
            perimeter = outline.perimeter_crofton
            out.append({
                "label_value": int(value), "bbox": [c0, r0, c1, r1], "area": int(region.area),
                "centroid": [region.centroid[1] / w, region.centroid[0] / h],
                "roi_mean": roi_mean, "ring_mean": ring_mean,
                "contrast": None if ring_mean is None else (roi_mean - ring_mean) / max(roi_mean + ring_mean, 1e-9),
                "glcm_contrast": contrast, "glcm_homogeneity": homogeneity,
                "entropy": float(shannon_entropy(q_all[r0:r1, c0:c1][textured])),
                "feret_px": float(region.feret_diameter_max), "solidity": float(outline.solidity),
                "axis_ratio": float(outline.axis_minor_length / outline.axis_major_length) if outline.axis_major_length else None,
                "circularity": min(1.0, 4 * np.pi * outline.area / perimeter**2) if perimeter > 0 else None,
                "rle": _runs(labelled == region.label),
            })
    return out


def regionprops_stage(pairs: list[tuple[Path, Path]], table: Path, cfg) -> int:
    """The fair baseline over images on disk: read each image and label map, measure, write the table."""
    rows = []
    for image_path, mask_path in pairs:
        with Image.open(image_path, formats=["PNG"]) as im:
            grey = np.asarray(im.convert("L"), np.float64)
        with Image.open(mask_path, formats=["PNG"]) as im:
            label_map = np.asarray(im)
        rows += [{"image": str(image_path), **r} for r in regionprops_rois(grey, label_map, cfg)]
    pl.DataFrame(rows).write_parquet(table)
    return len(rows)


CONFIGS: dict[str, tuple[int, int]] = {"realistic": (24, 512), "small": (40, 256)}


def bench_roi_stage(
    spec: SourceSpec, n_images: int, size: int, seed: int, baseline_images: int, repeats: int
) -> dict:
    """ROIs/s of ``build_roi_set`` (best of ``repeats``) and of the baseline on one configuration."""
    cfg = default_config()
    res_out: dict = {"images": n_images, "size": size}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        df = make_source(out, n_images, size, seed)
        build_roi_set(df.head(2), spec, out)  # warm-up (imports, caches)
        dt = float("inf")
        for _ in range(max(repeats, 1)):
            t0 = time.perf_counter()
            res = build_roi_set(df, spec, out)
            dt = min(dt, time.perf_counter() - t0)
        n_rois = res.rois.height
        res_out.update(
            rois=n_rois,
            vectorised_s=round(dt, 3),
            vectorised_ms_per_roi=round(1000 * dt / n_rois, 3),
            vectorised_rois_per_s=round(n_rois / dt, 1),
        )

        pairs = [(out / a, out / b) for a, b in df.select("image_path", "mask_path").iter_rows()]
        regionprops_stage(pairs[:2], out / "warm.parquet", cfg)  # warm-up (imports)
        t_fair = float("inf")
        for _ in range(max(repeats, 1)):
            t0 = time.perf_counter()
            fair_rois = regionprops_stage(pairs, out / "regionprops.parquet", cfg)
            t_fair = min(t_fair, time.perf_counter() - t0)
        res_out.update(
            vectorised_ms_per_image=round(1000 * dt / n_images, 3),
            regionprops_rois=fair_rois,
            regionprops_s=round(t_fair, 3),
            regionprops_ms_per_image=round(1000 * t_fair / n_images, 3),
            regionprops_rois_per_s=round(fair_rois / t_fair, 1),
            speedup_vs_regionprops_per_image=round(t_fair / dt, 2),
            speedup_vs_regionprops_per_roi=round((n_rois / dt) / (fair_rois / t_fair), 2),
        )

        base_rois, t_base = 0, 0.0
        for rel_img, rel_mask in df.head(baseline_images).select("image_path", "mask_path").iter_rows():
            img = np.asarray(Image.open(out / rel_img, formats=["PNG"])).tolist()
            lm = np.asarray(Image.open(out / rel_mask, formats=["PNG"])).tolist()
            t0 = time.perf_counter()
            base_rois += len(baseline_rois(img, lm, cfg.ring_width_px))
            t_base += time.perf_counter() - t0
        res_out.update(
            baseline_images=baseline_images,
            baseline_rois=base_rois,
            baseline_s=round(t_base, 3),
            baseline_ms_per_roi=round(1000 * t_base / base_rois, 3),
            baseline_rois_per_s=round(base_rois / t_base, 1),
        )
        res_out["speedup"] = round(res_out["vectorised_rois_per_s"] / res_out["baseline_rois_per_s"], 1)
    return res_out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma-separated ROI-stage configurations out of {sorted(CONFIGS)}",
    )
    ap.add_argument("--images", type=int, default=None, help="custom configuration: number of images")
    ap.add_argument("--size", type=int, default=None, help="custom configuration: image size (px)")
    ap.add_argument("--baseline-images", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of build_roi_set (best is kept)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--expert-images", type=int, default=128)
    ap.add_argument("--expert-size", type=int, default=512)
    ap.add_argument("--skip-expert", action="store_true")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.images is not None or args.size is not None:
        configs = {"custom": (args.images or 24, args.size or 512)}
    else:
        names = [c.strip() for c in args.configs.split(",") if c.strip()]
        unknown = sorted(set(names) - set(CONFIGS))
        if unknown:
            ap.error(f"unknown configurations {unknown}; choose from {sorted(CONFIGS)}")
        configs = {name: CONFIGS[name] for name in names}

    spec = SourceSpec(
        name="bench",
        layout="image_folder",
        root=".",
        modality="CT",
        organ="phantom",
        labels={1: "lesion", 2: "speck"},
        license="synthetic",
    )
    result: dict = {"device": args.device, "roi_stage": {}}
    for name, (n_images, size) in configs.items():
        result["roi_stage"][name] = bench_roi_stage(
            spec, n_images, size, args.seed, args.baseline_images, args.repeats
        )

    if not args.skip_expert:
        import torch

        econf = ExpertConfig()
        torch.manual_seed(args.seed)
        pred = ExpertPredictor(
            build_network(econf), name="bench", modality="ct", image_size=econf.image_size, device=args.device
        )
        imgs = [im for im, _ in generate_phantoms(args.expert_images, args.expert_size, args.seed + 1)]
        pred.predict(imgs[: args.batch_size], batch_size=args.batch_size)  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        pred.predict(imgs, batch_size=args.batch_size)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        result.update(
            expert_images=len(imgs),
            expert_input=f"{args.expert_size}x{args.expert_size} -> {econf.image_size}x{econf.image_size}",
            expert_images_per_s=round(len(imgs) / dt, 1),
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
