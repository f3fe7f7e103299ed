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


def file_metadata(path: Path, preview_columns: Sequence[str], n: int = 8) -> dict:
    """:func:`table_metadata` of a table written in row groups, read back without loading it: the
    row count from the file's footer, the preview from its first rows."""
    import pyarrow.parquet as pq

    head = pl.read_parquet(path, columns=list(preview_columns), n_rows=n)
    return {
        "dagster/row_count": dg.MetadataValue.int(pq.ParquetFile(path).metadata.num_rows),
        "path": dg.MetadataValue.path(str(path)),
        "preview": dg.MetadataValue.md(render.table_preview(head, preview_columns, n=n)),
    }


def picture(image, alt: str) -> dg.MetadataValue:
    """An image (numpy array) shown inline in the asset's metadata."""
    return dg.MetadataValue.md(render.markdown_image(image, alt))


def stage_metrics(started: float, *, rows_in: int, rows_out: int, quarantined: int = 0) -> dict:
    """The numbers every asset reports, so the UI plots them across runs: seconds since ``started``
    (``time.perf_counter()``), rows read and written, rows set aside (quarantined, flagged, failed)."""
    import time

    return {
        "duration_s": dg.MetadataValue.float(round(time.perf_counter() - started, 3)),
        "rows_in": dg.MetadataValue.int(int(rows_in)),
        "rows_out": dg.MetadataValue.int(int(rows_out)),
        "quarantined": dg.MetadataValue.int(int(quarantined)),
    }


#: metadata of an asset: how many of its rows failed for a reason a new attempt may not meet (a model
#: server down, the OCR engine timing out); a rebuild runs such a partition again (see ``stamps``)
RETRY_ON_REBUILD = "retry_on_rebuild"


def retry_metadata(count: int) -> dict:
    """The :data:`RETRY_ON_REBUILD` entry for ``count`` rows to try again."""
    return {RETRY_ON_REBUILD: dg.MetadataValue.int(int(count))}


def picture_file(out: Path, asset: str, partition: str | None, name: str, image) -> dict:
    """A picture written as a PNG under ``<out>/reports/<asset>/<partition>/`` (content-hashed name)
    and linked from the metadata: Dagster shows run-time pictures only behind a dialog, a file
    opens anywhere."""
    from medtrinity_assets.core.storage import sha256_bytes, write_content_file

    data = render.png_bytes(image)
    path = Path(out) / "reports" / asset / (partition or "all") / f"{name}-{sha256_bytes(data)[:12]}.png"
    write_content_file(path, data)
    return {f"{name}_file": dg.MetadataValue.path(str(path))}


def counts_metadata(label: str, counts: dict[str, int]) -> dict:
    """Counts as JSON plus a bar chart picture."""
    clean = {str(k): int(v) for k, v in counts.items()}
    meta = {label: dg.MetadataValue.json(clean)}
    if clean:
        meta[f"{label}_chart"] = picture(render.bar_chart(clean), label)
    return meta


def sheet_metadata(out: Path, asset: str, partition: str, name: str, images: Sequence,
                   captions: Sequence[str], title: str) -> dict:
    """A contact sheet of ``images`` under ``name``: inline Markdown, and a PNG file linked as
    ``<name>_file`` (:func:`picture_file`); a line saying there is nothing to show when empty."""
    if not images:
        return {name: dg.MetadataValue.md(f"*no {title} to show*")}
    sheet = render.contact_sheet(images, captions)
    return {name: picture(sheet, title), **picture_file(out, asset, partition, name, sheet)}


def progress_logger(log, label: str, unit: str) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that logs about every tenth of the work."""
    last = {"done": -1}

    def progress(done: int, total: int) -> None:
        if done == total or done - last["done"] >= max(1, total // 10):
            last["done"] = done
            log.info(f"{label}: {done}/{total} {unit}")

    return progress
