"""Stage 3 asset: one coarse caption per image, from the source's metadata only."""


import time

import dagster as dg

from medtrinity_assets.core.tables import COARSE_CAPTIONS, PREPROCESSED_IMAGES, SOURCE_MANIFEST
from medtrinity_assets.defs.partitions import SOURCE_SHARDS, part_of
from medtrinity_assets.defs.reporting import GROUP_METADATA, stage_metrics, table_metadata
from medtrinity_assets.defs.resources import OutputStorage, SourceRegistry


@dg.asset(
    name=COARSE_CAPTIONS.name,
    group_name=GROUP_METADATA,
    kinds={"parquet", "polars"},
    partitions_def=SOURCE_SHARDS,
    deps=[SOURCE_MANIFEST.name, PREPROCESSED_IMAGES.name],
    description="One coarse caption per image from the source's metadata (modality, organ, labels, "
    "descriptions, reports, QA).",
)
def coarse_captions(context: dg.AssetExecutionContext, storage: OutputStorage, registry: SourceRegistry):
    from medtrinity_assets.core.parts import split_part
    from medtrinity_assets.metadata.coarse_captions import build_coarse_captions

    started = time.perf_counter()
    part = part_of(context.partition_key)
    out = storage.out()
    manifest = SOURCE_MANIFEST.read(out, part)
    images = PREPROCESSED_IMAGES.read(out, part)
    captions = build_coarse_captions(manifest, images, registry.source(split_part(part)[0]))
    path = COARSE_CAPTIONS.write(captions, out, part)
    return dg.MaterializeResult(metadata={
        **table_metadata(captions, path, ["record_id", "caption", "terms"]),
        **stage_metrics(started, rows_in=images.height, rows_out=captions.height),
    })
