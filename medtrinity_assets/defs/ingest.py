"""Stage 1 assets: the source manifest and the preprocessed 2D images of one shard of a source."""


import time

import dagster as dg

from medtrinity_assets.core.render import load_png
from medtrinity_assets.core.tables import PREPROCESSED_IMAGES, SOURCE_MANIFEST
from medtrinity_assets.defs.partitions import SOURCE_SHARDS, source_and_shard
from medtrinity_assets.defs.reporting import (
    GROUP_INGEST,
    counts_metadata,
    progress_logger,
    retry_metadata,
    sheet_metadata,
    stage_metrics,
    table_metadata,
)
from medtrinity_assets.defs.resources import ComputeResource, OutputStorage, SourceRegistry

#: metadata of ``source_manifest``: the declaration and files ingested (the registry sensor reads it)
SOURCE_FINGERPRINT = "source_fingerprint"


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            SOURCE_MANIFEST.name,
            description="Every file (or kept volume slice) of a source, with status ok | quarantined | "
            "duplicate and a reason; no patient identifiers.",
            group_name=GROUP_INGEST,
            kinds={"parquet", "polars"},
            partitions_def=SOURCE_SHARDS,
        ),
        dg.AssetSpec(
            PREPROCESSED_IMAGES.name,
            description="2D images ready for models (sliced, windowed, resized), content-addressed PNGs, "
            "duplicates removed; masks aligned.",
            group_name=GROUP_INGEST,
            kinds={"parquet", "png"},
            partitions_def=SOURCE_SHARDS,
            deps=[SOURCE_MANIFEST.name],
        ),
    ],
    partitions_def=SOURCE_SHARDS,
    can_subset=False,
)
def ingest_source_assets(
    context: dg.AssetExecutionContext, storage: OutputStorage, registry: SourceRegistry, compute: ComputeResource
):
    from medtrinity_assets.core.parts import part_name
    from medtrinity_assets.ingest import SourceRootMissing, ingest_source
    from medtrinity_assets.ingest.remote import CACHE_DIR, RootRefused, discard_mirror
    from medtrinity_assets.ingest.watch import files_fingerprint, source_fingerprint

    started = time.perf_counter()
    name, shard = source_and_shard(context.partition_key)
    part = part_name(name, shard)
    out = storage.out()
    declared = registry.source(name)
    # before reading: a file changed meanwhile re-runs the source. Only shard 0's is read back (the
    # sensor's comparison), and it costs a stat per file of the source, so the other shards skip it.
    files = files_fingerprint(declared) if shard == 0 else None
    try:
        spec = registry.local_source(name, out)
        result = ingest_source(
            spec, out, shard=shard, workers=compute.workers, progress=progress_logger(context.log, part, "files read")
        )
    except (SourceRootMissing, RootRefused) as exc:
        discard_mirror(out / CACHE_DIR, name)
        raise dg.Failure(description=str(exc)) from None
    except BaseException:
        discard_mirror(out / CACHE_DIR, name)  # a failed source leaves no copy of its files
        raise
    stale = _warn_about_shards(context.log, out, name, shard, result)
    quarantined = int(result.status_counts.get("quarantined", 0))
    metrics = stage_metrics(started, rows_in=result.manifest.height, rows_out=result.images.height, quarantined=quarantined)
    yield dg.MaterializeResult(
        asset_key=SOURCE_MANIFEST.name,
        metadata={
            **metrics,
            **table_metadata(
                result.manifest,
                SOURCE_MANIFEST.path(out, part),
                ["relpath", "status", "reason", "modality", "organ", "slice_index", "width", "height"],
            ),
            **counts_metadata("status_counts", result.status_counts),
            **counts_metadata("quarantined_by_reason", result.quarantine_counts),
            **retry_metadata(result.quarantine_counts.get("burned_in_text_unchecked", 0)),  # OCR failed
            **counts_metadata("slices_skipped_by_reason", result.skipped_counts),
            "warnings": dg.MetadataValue.json(result.warnings),
            "shard": shard,
            "shards": result.shards,
            "stale_shard_files": len(stale),
            "registry_fingerprint": declared.fingerprint(),
            **({"files_fingerprint": files, SOURCE_FINGERPRINT: source_fingerprint(declared, files)}
               if files is not None else {}),
            "synthetic": declared.synthetic,
            "license": declared.license,
            "origin": declared.origin or declared.root,
        },
    )
    images = result.images
    sample = images.gather_every(max(1, images.height // 8)).head(8)
    sheet = sheet_metadata(out, PREPROCESSED_IMAGES.name, part, "contact_sheet",
                           [load_png(out / p) for p in sample["image_path"].to_list()],
                           [r[:8] for r in sample["record_id"].to_list()], "samples")
    yield dg.MaterializeResult(
        asset_key=PREPROCESSED_IMAGES.name,
        metadata={
            **metrics,
            **sheet,
            **table_metadata(
                images,
                PREPROCESSED_IMAGES.path(out, part),
                ["record_id", "image_path", "width", "height", "window", "mask_path"],
            ),
            "with_masks": int(images["mask_path"].is_not_null().sum()) if images.height else 0,
            **counts_metadata("burned_in_text", result.burned_in_text),
        },
    )


def _warn_about_shards(log, out, name: str, shard: int, result) -> list:
    """Warn about an empty shard, former shards' files left on disk (returned) and non-fatal findings."""
    from medtrinity_assets.core.parts import stale_parts

    if shard >= result.shards:
        log.warning(f"source '{name}' has {result.shards} shard(s) now: shard {shard} is empty")
    stale = stale_parts(out, name) if shard == 0 else []
    if stale:
        log.warning(
            f"source '{name}' has {result.shards} shard(s) now; {len(stale)} table file(s) of its former shards "
            f"are no longer read and can be removed: {', '.join(str(p.relative_to(out)) for p in stale[:5])}"
            + (" ..." if len(stale) > 5 else "")
        )
    if result.warnings:
        log.warning(
            f"source '{name}': non-fatal findings {result.warnings} (series_gap: a DICOM series with "
            "missing positions, kept as a volume with its median spacing)"
        )
    return stale
