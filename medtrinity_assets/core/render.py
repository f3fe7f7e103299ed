"""Pictures and previews for asset metadata: contact sheets, bar charts and table previews.

Everything returns Markdown with images inlined as base64 PNG, which the Dagster UI renders.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageDraw


def load_png(path: str | Path) -> np.ndarray:
    """Read a PNG written by the pipeline (formats restricted to PNG)."""
    with Image.open(path, formats=["PNG"]) as im:
        im.load()
        return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Any grey/RGB/float array as RGB uint8."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = ((arr - lo) / (hi - lo if hi > lo else 1.0) * 255).clip(0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    return arr


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_rgb(image)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def png_base64(image: np.ndarray) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


def triplet_cards(items: Sequence[tuple[np.ndarray, str, str]], tile: int = 256, text_w: int = 520) -> np.ndarray:
    """Image–ROI–description triplets as one picture: each row the ROI overlay, its id and the
    description wrapped beside it."""
    import textwrap

    rows = []
    for overlay, title, text in items or [(np.zeros((8, 8), np.uint8), "", "no description yet")]:
        lines = [title, ""] + textwrap.wrap(text, width=text_w // 7)
        height = max(tile, 14 * len(lines) + 12)
        card = Image.new("RGB", (tile + text_w, height), (250, 250, 250))
        thumb = Image.fromarray(to_rgb(overlay))
        fit = (tile - 4) / max(thumb.width, thumb.height)
        thumb = thumb.resize((max(1, round(thumb.width * fit)), max(1, round(thumb.height * fit))), Image.Resampling.LANCZOS)
        card.paste(thumb, ((tile - thumb.width) // 2, (tile - thumb.height) // 2))
        draw = ImageDraw.Draw(card)
        for i, line in enumerate(lines):
            draw.text((tile + 8, 6 + 14 * i), line, fill=(20, 20, 20))
        rows.append(np.asarray(card))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=200) for r in rows])


def markdown_image(image: np.ndarray, alt: str = "image") -> str:
    return f"![{alt}](data:image/png;base64,{png_base64(image)})"


def contact_sheet(
    images: Sequence[np.ndarray], captions: Sequence[str] | None = None, tile: int = 256, columns: int = 4
) -> np.ndarray:
    """Tile images (each fitted into ``tile``×``tile``, aspect kept; small ones scaled up, so a
    reader can judge them) with short captions."""
    n = max(len(images), 1)
    columns = min(columns, n)
    rows = (n + columns - 1) // columns
    label_h = 16 if captions else 0
    sheet = Image.new("RGB", (columns * tile, rows * (tile + label_h)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, img in enumerate(images):
        thumb = Image.fromarray(to_rgb(img))
        fit = (tile - 4) / max(thumb.width, thumb.height)
        thumb = thumb.resize((max(1, round(thumb.width * fit)), max(1, round(thumb.height * fit))), Image.Resampling.LANCZOS)
        r, c = divmod(i, columns)
        x0 = c * tile + (tile - thumb.width) // 2
        y0 = r * (tile + label_h) + (tile - thumb.height) // 2
        sheet.paste(thumb, (x0, y0))
        if captions:
            draw.text((c * tile + 3, r * (tile + label_h) + tile), captions[i][:40], fill=(230, 230, 230))
    return np.asarray(sheet)


def bar_chart(counts: dict[str, int], width: int = 480, bar_h: int = 16) -> np.ndarray:
    """A horizontal bar chart of counts (distributions in metadata)."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:20] or [("none", 0)]
    height = bar_h * len(items) + 8
    img = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    top = max(v for _, v in items) or 1
    label_w = 170
    for i, (name, value) in enumerate(items):
        y = 4 + i * bar_h
        draw.text((4, y + 2), str(name)[:26], fill=(20, 20, 20))
        w = int((width - label_w - 50) * value / top)
        draw.rectangle([label_w, y + 2, label_w + w, y + bar_h - 3], fill=(60, 110, 190))
        draw.text((label_w + w + 4, y + 2), str(value), fill=(20, 20, 20))
    return np.asarray(img)


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, an ellipsis marking the cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def table_preview(df: pl.DataFrame, columns: Sequence[str] | None = None, n: int = 8, width: int = 48) -> str:
    """A Markdown table of the first rows (values cut to ``width`` characters)."""
    if columns:
        df = df.select([c for c in columns if c in df.columns])
    head = df.head(n)
    if head.width == 0:
        return "*empty table*"

    def cell(v: object) -> str:
        s = "" if v is None else str(v)
        s = s.replace("|", "\\|").replace("\n", " ")
        return shorten(s, width)

    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * head.width]
    for row in head.iter_rows():
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)
