"""Metadata helpers shared by the asset modules: row counts, previews, charts, pictures, progress."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg
import polars as pl

from medtrinity_assets.core import render

GROUP_INGEST = "ingest"
GROUP_ROIS = "rois"
GROUP_METADATA = "metadata"
GROUP_KNOWLEDGE = "knowledge"
GROUP_CAPTIONS = "captions"
GROUP_EXPORT = "export"
GROUP_MODEL = "model"


def table_metadata(df: pl.DataFrame, path: Path, preview_columns: Sequence[str] | None = None) -> dict:
    """Row count, location and a Markdown preview of a table."""
    return {
        "dagster/row_count": dg.MetadataValue.int(df.height),
        "path": dg.MetadataValue.path(str(path)),
        "preview": dg.MetadataValue.md(render.table_preview(df, preview_columns)),
    }


def picture(image, alt: str) -> dg.MetadataValue:
    """An image (numpy array) shown inline in the asset's metadata."""
    return dg.MetadataValue.md(render.markdown_image(image, alt))


def counts_metadata(label: str, counts: dict[str, int]) -> dict:
    """Counts as JSON plus a bar chart picture."""
    clean = {str(k): int(v) for k, v in counts.items()}
    meta = {label: dg.MetadataValue.json(clean)}
    if clean:
        meta[f"{label}_chart"] = picture(render.bar_chart(clean), label)
    return meta


def image_sheet(out: Path, paths: Sequence[str], captions: Sequence[str] | None = None) -> dg.MetadataValue:
    images = [render.load_png(out / p) for p in paths]
    return dg.MetadataValue.md(render.contact_sheet_markdown(images, captions))


def progress_logger(log, label: str, unit: str) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that logs about every tenth of the work."""
    last = {"done": -1}

    def progress(done: int, total: int) -> None:
        if done == total or done - last["done"] >= max(1, total // 10):
            last["done"] = done
            log.info(f"{label}: {done}/{total} {unit}")

    return progress
