"""Metadata helpers shared by the asset modules: row counts, previews, charts, pictures, progress."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

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


#: the base URL at which ``<out>/reports`` is served to the UI's users (unset: pictures are not linked
#: by URL). Dagster shows a run's Markdown metadata inline only below 1,000 characters: a picture
#: embedded in it waits behind "[Show Markdown]", one referenced by URL is shown on the asset page.
REPORTS_URL_ENV = "MEDTRINITY_REPORTS_URL"
#: Markdown metadata Dagster's asset page shows inline (longer: behind a dialog)
INLINE_MARKDOWN_CHARS = 1000


def picture_file(out: Path, asset: str, partition: str | None, name: str, image) -> dict:
    """A picture written as a PNG under ``<out>/reports/<asset>/<partition>/`` (content-hashed name)
    and linked from the metadata as ``<name>_file`` (a file opens anywhere); with
    :data:`REPORTS_URL_ENV` set, also ``<name>_inline``, the picture by its URL under that base,
    which Dagster shows on the asset page itself."""
    from medtrinity_assets.core.storage import sha256_bytes, write_content_file

    data = render.png_bytes(image)
    rel = f"{asset}/{partition or 'all'}/{name}-{sha256_bytes(data)[:12]}.png"
    path = Path(out) / "reports" / rel
    write_content_file(path, data)
    meta: dict = {f"{name}_file": dg.MetadataValue.path(str(path))}
    inline = _picture_by_url(rel, name)
    if inline is not None:
        meta[f"{name}_inline"] = inline
    return meta


def _picture_by_url(rel: str, alt: str) -> dg.MetadataValue | None:
    """Markdown showing the report file ``rel`` from :data:`REPORTS_URL_ENV` (None when it is unset,
    or when the URL would be too long to be shown inline)."""
    base = os.environ.get(REPORTS_URL_ENV, "").strip().rstrip("/")
    if not base:
        return None
    text = f"![{alt}]({base}/{quote(rel)})"
    return dg.MetadataValue.md(text) if len(text) < INLINE_MARKDOWN_CHARS else None


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
