"""A static HTML viewer of an export: sample triplets per modality, each image with its ROI outlined.

``write_viewer(df, export_root)`` writes ``<export>/viewer/index.html`` and one overlay PNG per
sample under ``<export>/viewer/img/``. The page needs no server and no network (inline CSS, no
script, relative links only), so the export folder can be moved or archived with it. Each card
shows the overlay (the mask outline, or the box, in colour with the label; whole-image rows are
not outlined and say that no region was localised), the label, the description, the five
facets and the provenance (source, record_id, roi_id, origin, split, backend). The original
images stay untouched under ``<export>/images/``; the overlays are copies.
"""

from __future__ import annotations

import html
import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import polars as pl
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from medtrinity_assets.core.images import read_png
from medtrinity_assets.core.render import to_rgb
from medtrinity_assets.core.tables import FACETS
from medtrinity_assets.rois.rle import rle_decode

VIEWER_DIR = "viewer"
MIN_SIDE = 256  # overlays are upscaled to at least this on their shorter side
MAX_SIDE = 768  # and downscaled to at most this on their longer side
OUTLINE = (255, 212, 0)
FACET_TITLES = {
    "modality": "Modality",
    "organ": "Organ and tissue",
    "roi_location": "ROI location",
    "roi_texture": "Lesion texture",
    "relationship": "Local–global relationship",
}
NO_REGION = "No region was localised in this image: the description covers the whole image."

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;color:#1d232b}
header{background:#1f3b57;color:#fff;padding:16px 24px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0;font-size:14px;opacity:.9}nav{padding:8px 24px;background:#e3e8ee;font-size:14px}
nav a{margin-right:14px;color:#1f3b57}section{padding:8px 24px 24px}
h2{font-size:19px;border-bottom:2px solid #c9d3de;padding-bottom:4px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:16px}
.card{background:#fff;border:1px solid #d5dbe2;border-radius:6px;padding:12px;font-size:14px;line-height:1.4}
figure{margin:0}figure img{display:block;width:100%;height:360px;object-fit:contain;background:#111;border-radius:4px}
figcaption{margin-top:6px;font-size:13px;color:#38434f}.none{color:#8a4b00}
.label{font-weight:600}.desc{margin:8px 0}dl{margin:6px 0;display:grid;grid-template-columns:150px 1fr;gap:2px 8px}
dt{font-weight:600;color:#38434f}dd{margin:0}table{border-collapse:collapse;font-size:12px;margin-top:6px;width:100%}
th{text-align:left;color:#5b6672;font-weight:500;padding:1px 8px 1px 0;white-space:nowrap;vertical-align:top}
td{padding:1px 0;word-break:break-all;font-family:ui-monospace,monospace}.skipped{color:#8a0000}
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _href(rel: str) -> str:
    """A relative URL (each path segment percent-encoded), safe inside an attribute."""
    return _esc("/".join(quote(part) for part in rel.split("/")))


def sample_triplets(df: pl.DataFrame, per_modality: int = 6, seed: int = 0) -> pl.DataFrame:
    """Up to ``per_modality`` rows of each modality, drawn with ``seed`` and spread over sources
    and ROI origins (round robin), ordered by modality."""
    if df.height == 0:
        return df
    mod = pl.col("modality").fill_null("unknown")
    return (
        df.with_columns(mod.alias("_modality"))
        .sample(fraction=1.0, shuffle=True, seed=seed)
        .with_columns(pl.int_range(pl.len()).over("_modality", "source", "origin").alias("_rank"))
        .sort(["_modality", "_rank"], maintain_order=True)
        .group_by("_modality", maintain_order=True)
        .head(per_modality)
        .drop("_rank")
    )


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def _display_scale(h: int, w: int) -> float:
    """Shorter side at least ``MIN_SIDE``; longer side at most ``MAX_SIDE`` unless that would
    break the first rule."""
    up = MIN_SIDE / max(1, min(h, w))
    down = MAX_SIDE / max(1, max(h, w))
    return max(up, min(1.0, down))


def _mask_at(row: dict[str, Any], shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray | None:
    """The ROI mask (decoded from ``mask_rle``) resized to ``size`` (w, h); None without one."""
    if not row.get("mask_rle"):
        return None
    try:
        m = rle_decode(row["mask_rle"])
    except (ValueError, KeyError, TypeError):
        return None
    if m.shape != shape or not m.any():
        return None
    return np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0


def overlay_array(row: dict[str, Any], image: np.ndarray) -> np.ndarray:
    """The viewer's picture of one triplet row: RGB, resized for display (see ``MIN_SIDE``,
    ``MAX_SIDE``), the ROI's mask outline (or its box when it has no mask) in yellow on a dark
    halo with the label above it; a whole-image row is not outlined."""
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    scale = _display_scale(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    canvas = Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR if scale > 1 else Image.Resampling.LANCZOS)
    box = row.get("bbox_xyxy")
    if row.get("origin") == "whole_image" or box is None or len(box) != 4:
        return np.asarray(canvas)
    line = max(2, round(max(size) / 220))
    x0, y0, x1, y1 = (float(v) * scale for v in box)
    mask = _mask_at(row, (h, w), size)
    if mask is not None:
        edge = mask & ~ndimage.binary_erosion(mask, iterations=line, border_value=0)
        halo = ndimage.binary_dilation(edge, iterations=1) & ~edge
        arr = np.array(canvas)
        arr[halo], arr[edge] = (0, 0, 0), OUTLINE
        canvas = Image.fromarray(arr)
    draw = ImageDraw.Draw(canvas)
    if mask is None:
        draw.rectangle([x0 - 1, y0 - 1, x1, y1], outline=(0, 0, 0), width=line + 2)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=OUTLINE, width=line)
    if row.get("label"):
        font = _font(max(14, min(28, max(size) // 22)))
        text = str(row["label"]).replace("_", " ")[:40]
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tx = min(max(0.0, x0), max(0.0, size[0] - (right - left) - 6))
        ty = y0 - (bottom - top) - 8 if y0 - (bottom - top) - 8 >= 0 else min(y1 + 4, size[1] - (bottom - top) - 6)
        draw.rectangle([tx, ty, tx + (right - left) + 6, ty + (bottom - top) + 6], fill=(0, 0, 0))
        draw.text((tx + 3 - left, ty + 3 - top), text, fill=OUTLINE, font=font)
    return np.asarray(canvas)


def _overlay(row: dict[str, Any], export_root: Path, dest: Path) -> tuple[int, int] | None:
    """Write the overlay PNG of one triplet; its (width, height), or None when the image is unreadable."""
    try:
        image = read_png(export_root / str(row["image_file"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    drawn = Image.fromarray(overlay_array(row, image))
    drawn.save(dest, format="PNG", optimize=True)
    return drawn.size


def _outline_note(row: dict[str, Any]) -> str:
    origin = str(row.get("origin") or "")
    if origin == "whole_image" or row.get("bbox_xyxy") is None:
        return f'<span class="none">{_esc(NO_REGION)}</span>'
    how = "mask outline" if row.get("mask_rle") else "box"
    return f'Region <span class="label">{_esc(row.get("label"))}</span> ({how}, origin {_esc(origin)})'


def _card(row: dict[str, Any], img_rel: str, size: tuple[int, int]) -> str:
    alt = f"{row.get('modality') or ''} image, {row.get('label') or 'whole image'} ({row.get('origin') or ''})"
    facets = "".join(
        f"<dt>{_esc(FACET_TITLES[k])}</dt><dd>{_esc(row.get(f'facet_{k}') or '—')}</dd>" for k in FACETS
    )
    backend = row.get("backend") or ""
    if row.get("model"):
        backend = f"{backend} ({row['model']})"
    prov = [("source", row.get("source")), ("record_id", row.get("record_id")), ("roi_id", row.get("roi_id")),
            ("origin", row.get("origin")), ("split", row.get("split")), ("backend", backend),
            ("triplet_id", row.get("triplet_id"))]
    cells = "".join(f"<tr><th>{k}</th><td>{_esc(v)}</td></tr>" for k, v in prov)
    original = f'../{row["image_file"]}'
    return (
        f'<article class="card" data-triplet="{_esc(row.get("triplet_id"))}">'
        f'<figure><img src="{_href(img_rel)}" alt="{_esc(alt)}" width="{size[0]}" height="{size[1]}">'
        f'<figcaption>{_outline_note(row)} · <a href="{_href(original)}">original image</a></figcaption></figure>'
        f'<p class="desc">{_esc(row.get("description"))}</p><dl>{facets}</dl><table>{cells}</table></article>'
    )


def _page(sections: list[tuple[str, int, list[str]]], total: int, skipped: int) -> str:
    shown = sum(len(cards) for _, _, cards in sections)
    nav = "".join(
        f'<a href="#m-{i}">{_esc(name)} ({len(cards)} of {n})</a>' for i, (name, n, cards) in enumerate(sections)
    )
    body = "".join(
        f'<section id="m-{i}"><h2>{_esc(name)} — {len(cards)} of {n} triplets</h2><div class="grid">{"".join(cards)}</div></section>'
        for i, (name, n, cards) in enumerate(sections)
    )
    note = f'<p class="skipped">{skipped} sampled triplet(s) left out: image file missing or unreadable.</p>' if skipped else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>MedTrinity export viewer</title><style>{CSS}</style></head><body>"
        f"<header><h1>MedTrinity export: sample triplets</h1><p>{shown} sample(s) of {total} triplet(s) in "
        f"{len(sections)} modalit{'y' if len(sections) == 1 else 'ies'}. Images are overlay copies (ROI outlined "
        "in colour, label beside it); the originals under images/ carry no drawing.</p>"
        f"{note}</header><nav>{nav}</nav>{body}</body></html>\n"
    )


def _safe_name(i: int, triplet_id: Any) -> str:
    return f"{i:04d}_{re.sub(r'[^A-Za-z0-9_-]', '_', str(triplet_id or 'row'))[:40]}.png"


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace folder ``final`` by ``tmp`` (the old one is renamed away first, then removed)."""
    old = final.with_name(f".{final.name}.old.{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_viewer(df: pl.DataFrame, export_root: str | Path, *, per_modality: int = 6, seed: int = 0) -> Path:
    """Write ``<export_root>/viewer/index.html`` (and ``viewer/img/``) for ``df``, the export's
    triplets table (the ``medtrinity_dataset`` contract); returns the index path."""
    root = Path(export_root)
    final = root / VIEWER_DIR
    tmp = root / f".{VIEWER_DIR}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "img").mkdir(parents=True)
    totals = dict(df.group_by(pl.col("modality").fill_null("unknown")).len().iter_rows()) if df.height else {}
    sections: dict[str, list[str]] = {}
    skipped = 0
    for i, row in enumerate(sample_triplets(df, per_modality, seed).iter_rows(named=True)):
        name = _safe_name(i, row.get("triplet_id"))
        size = _overlay(row, root, tmp / "img" / name)
        if size is None:
            skipped += 1
            continue
        sections.setdefault(row["_modality"], []).append(_card(row, f"img/{name}", size))
    ordered = [(m, int(totals.get(m, 0)), cards) for m, cards in sorted(sections.items())]
    (tmp / "index.html").write_text(_page(ordered, df.height, skipped), encoding="utf-8")
    try:
        _swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "index.html"
