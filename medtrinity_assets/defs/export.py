"""Stage 6 assets: each source's verified triplets, and the dataset of all sources with its
formats, verification, card, catalog and viewer."""

import time
from pathlib import Path

import dagster as dg

from medtrinity_assets.core.tables import (
    CAPTION_BATCH,
    CAPTION_QUALITY,
    COARSE_CAPTIONS,
    MEDTRINITY_DATASET,
    PREPROCESSED_IMAGES,
    ROI_SET,
    SOURCE_MANIFEST,
    TRIPLETS,
)
from medtrinity_assets.defs.partitions import BY_SOURCE, SOURCES
from medtrinity_assets.defs.reporting import (
    GROUP_EXPORT,
    counts_metadata,
    file_metadata,
    stage_metrics,
    table_metadata,
)
from medtrinity_assets.defs.resources import ExportSettings, OutputStorage, SourceRegistry


@dg.asset(
    name=TRIPLETS.name,
    group_name=GROUP_EXPORT,
    kinds={"parquet"},
    partitions_def=SOURCES,
    deps=[dg.AssetDep(key, partition_mapping=BY_SOURCE) for key in (
        CAPTION_QUALITY.name, CAPTION_BATCH.name, ROI_SET.name, PREPROCESSED_IMAGES.name, SOURCE_MANIFEST.name,
        COARSE_CAPTIONS.name)],
    description="The source's triplets over all its shards: ROIs whose description passed every blocking "
    "check, with the original image, geometry, facets, split (by patient, study or file), licence and "
    "provenance; images that duplicate one of an earlier shard are left out.",
)
def triplets(context: dg.AssetExecutionContext, storage: OutputStorage, registry: SourceRegistry,
             export: ExportSettings) -> dg.MaterializeResult:
    from medtrinity_assets.core.parts import source_parts
    from medtrinity_assets.export.source_triplets import ShardsMissing, source_triplets

    started = time.perf_counter()
    name, out = context.partition_key, storage.out()
    spec = registry.source(name)
    parts = source_parts(out, name)
    try:
        result = source_triplets(out, name, parts, license=spec.license, synthetic=spec.synthetic,
                                 fractions=export.fractions())
    except ShardsMissing as exc:
        raise dg.Failure(description=str(exc)) from None
    left_out = result.described - result.rows
    if left_out:
        context.log.warning(f"{name}: {left_out} description(s) left out (failed a blocking check or not ok)")
    if result.duplicates:
        context.log.info(f"{name}: {len(result.duplicates)} image(s) duplicating one of an earlier shard left out")
    return dg.MaterializeResult(
        metadata={  # the preview is read off the table's first rows, not the whole source's descriptions
            **file_metadata(result.path, ["triplet_id", "origin", "label", "split", "description"]),
            **stage_metrics(started, rows_in=result.described, rows_out=result.rows, quarantined=left_out),
            **counts_metadata("split_counts", result.splits),
            "left_out": left_out,
            "shards": len(parts),
            "cross_shard_duplicates": len(result.duplicates),
        }
    )


@dg.asset(
    name=MEDTRINITY_DATASET.name,
    group_name=GROUP_EXPORT,
    kinds={"parquet", "duckdb", "html"},
    deps=[dg.AssetDep(TRIPLETS.name, partition_mapping=dg.AllPartitionMapping())],
    description="Every source's triplets, deduplicated across sources, split without leakage (refused "
    "with the records named otherwise), as Parquet with the original images, LLaVA JSON, WebDataset shards "
    "and a datasets folder, verified after writing; a dataset card, a DuckDB catalog and an HTML viewer.",
)
def medtrinity_dataset(context: dg.AssetExecutionContext, storage: OutputStorage, registry: SourceRegistry,
                       export: ExportSettings) -> dg.MaterializeResult:
    from medtrinity_assets.export.leakage import LeakageError
    from medtrinity_assets.export.publish import publish

    started = time.perf_counter()
    out = storage.out()
    specs = registry.sources()
    try:
        result = publish(out, specs, eval_sets=export.eval_sets, shard_size=export.shard_size,
                         viewer_per_modality=export.viewer_per_modality, seed=export.seed, log=context.log.info)
    except LeakageError as exc:
        raise dg.Failure(description=str(exc), metadata={"leaks": dg.MetadataValue.json(exc.leaks[:200])}) from None
    if result.problems:
        raise dg.Failure(description=f"export verification failed: {len(result.problems)} problem(s): "
                         + "; ".join(result.problems[:20]),
                         metadata={"problems": dg.MetadataValue.json(result.problems[:200])})
    if result.missing_sources:
        context.log.warning(f"no triplets yet for: {', '.join(result.missing_sources)}")
    t = result.build.table
    metrics = stage_metrics(started, rows_in=t.height + result.build.dropped.height, rows_out=t.height,
                            quarantined=result.build.dropped.height)
    return dg.MaterializeResult(metadata={**metrics, **_dataset_metadata(result, Path(out))})


def _dataset_metadata(result, out: Path) -> dict:
    """Counts, the formats' verification, where the files are, the card."""
    t = result.build.table
    by = (lambda col: dict(t.group_by(col).len().iter_rows())) if t.height else (lambda col: {})
    return {
        **table_metadata(t, MEDTRINITY_DATASET.path(out), ["source", "split", "origin", "label", "description"]),
        **counts_metadata("by_split", by("split")),
        **counts_metadata("by_modality", by("modality")),
        **counts_metadata("by_origin", by("origin")),
        "dropped_duplicates": result.build.dropped.height,
        "verification": dg.MetadataValue.json(result.counts),
        "files": dg.MetadataValue.json(result.files),
        "export_root": dg.MetadataValue.path(str(result.build.root)),
        "dataset_card": dg.MetadataValue.md(result.card),
    }
