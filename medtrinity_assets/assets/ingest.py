"""Stage 1 assets: the source manifest and the preprocessed 2D images of one source."""

import dagster as dg

from medtrinity_assets.assets.common import (
    GROUP_INGEST,
    SOURCES,
    counts_metadata,
    image_sheet,
    progress_logger,
    table_metadata,
)
from medtrinity_assets.resources import ComputeResource, PipelineStorage


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "source_manifest",
            description="Every file (or kept volume slice) of a source, with status ok | quarantined | "
            "duplicate and a reason; no patient identifiers.",
            group_name=GROUP_INGEST,
            kinds={"parquet", "polars"},
            partitions_def=SOURCES,
        ),
        dg.AssetSpec(
            "preprocessed_images",
            description="2D images ready for models (sliced, windowed, resized), content-addressed PNGs, "
            "duplicates removed; masks aligned.",
            group_name=GROUP_INGEST,
            kinds={"parquet", "png"},
            partitions_def=SOURCES,
            deps=["source_manifest"],
        ),
    ],
    partitions_def=SOURCES,
    can_subset=False,
)
def ingest_source_assets(
    context: dg.AssetExecutionContext, storage: PipelineStorage, compute: ComputeResource
):
    from medtrinity_assets.imaging import SourceRootMissing
    from medtrinity_assets.preprocess import ingest_source
    from medtrinity_assets.storage import table_path

    name = context.partition_key
    declared = storage.source(name)
    out = storage.out()
    try:
        spec = storage.local_source(name)
        result = ingest_source(
            spec, out, workers=compute.workers, progress=progress_logger(context.log, name, "files read")
        )
    except SourceRootMissing as exc:
        raise dg.Failure(description=str(exc)) from None

    manifest, images = result.manifest, result.images
    warnings = {k.split(":", 1)[1]: v for k, v in result.counts.items() if k.startswith("warning:")}
    if warnings:
        context.log.warning(f"source '{name}': non-fatal findings {warnings} (series_gap: a DICOM "
                            "series with missing positions, kept as a volume with its median spacing)")
    status_counts = dict(manifest.group_by("status").len().iter_rows()) if manifest.height else {}
    sample = images.head(12)
    yield dg.MaterializeResult(
        asset_key="source_manifest",
        metadata={
            **table_metadata(
                manifest,
                table_path(out, "source_manifest", name),
                ["relpath", "status", "reason", "modality", "organ", "slice_index", "width", "height"],
            ),
            **counts_metadata("status_counts", status_counts),
            **counts_metadata("quarantined_by_reason", result.quarantine_counts),
            "warnings": dg.MetadataValue.json(warnings),
            "registry_fingerprint": declared.fingerprint(),
            "synthetic": declared.synthetic,
            "license": declared.license,
            "origin": declared.origin or declared.root,
        },
    )
    yield dg.MaterializeResult(
        asset_key="preprocessed_images",
        metadata={
            **table_metadata(
                images,
                table_path(out, "preprocessed_images", name),
                ["record_id", "image_path", "width", "height", "window", "mask_path"],
            ),
            "contact_sheet": image_sheet(
                out, sample["image_path"].to_list(), [r[:8] for r in sample["record_id"].to_list()]
            ),
            "with_masks": int(images["mask_path"].is_not_null().sum()) if images.height else 0,
        },
    )
