"""Stage 5 assets: multigranular descriptions per ROI and their claim-level quality checks."""


import time
from pathlib import Path

import dagster as dg

from medtrinity_assets.core.render import triplet_cards
from medtrinity_assets.core.tables import (
    CAPTION_BATCH,
    CAPTION_QUALITY,
    COARSE_CAPTIONS,
    KNOWLEDGE_DOCSTORE,
    PREPROCESSED_IMAGES,
    RETRIEVED_KNOWLEDGE,
    ROI_SET,
    SOURCE_MANIFEST,
)
from medtrinity_assets.defs.accelerators import GPU_OP_TAGS, gpu_pool
from medtrinity_assets.defs.checks import CAPTION_QUALITY_CHECKS, caption_quality_results
from medtrinity_assets.defs.knowledge import KNOWLEDGE_INDEX
from medtrinity_assets.defs.partitions import SOURCE_SHARDS, part_of
from medtrinity_assets.defs.reporting import (
    GROUP_CAPTIONS,
    counts_metadata,
    picture_file,
    progress_logger,
    stage_metrics,
    table_metadata,
)
from medtrinity_assets.defs.resources import CaptionerResource, ComputeResource, JudgeResource, OutputStorage

SAMPLE_TRIPLETS = 4


def _caption_inputs(out: Path, name: str) -> list:
    """Join the upstream tables of one shard (its part name) into one CaptionInput per ROI."""
    from medtrinity_assets.captioning import build_caption_inputs

    return build_caption_inputs(
        ROI_SET.read(out, name),
        COARSE_CAPTIONS.read(out, name),
        RETRIEVED_KNOWLEDGE.read(out, name),
        KNOWLEDGE_DOCSTORE.read(out),
        PREPROCESSED_IMAGES.read(out, name),
        out_root=out,
    )


def _sample_triplets(inputs: list, captions, n: int = SAMPLE_TRIPLETS) -> list[tuple]:
    """A few image–ROI–description triplets: (overlay, ROI id, description)."""
    import numpy as np

    from medtrinity_assets.captioning import render_overlay

    by_key = {(i.record_id, str(i.roi_id)): i for i in inputs}
    out = []
    for row in captions.filter(captions["status"] == "ok").head(n).iter_rows(named=True):
        item = by_key.get((row["record_id"], str(row["roi_id"])))
        overlay = render_overlay(item) if item is not None else None
        if overlay is not None:
            out.append((np.asarray(overlay), str(row["roi_id"]), row["text"]))
    return out


def _triplet_markdown(samples: list[tuple]) -> str:
    from medtrinity_assets.core.render import markdown_image

    parts = [f"**{roi}**\n\n{markdown_image(img, 'roi')}\n\n> {text}\n" for img, roi, text in samples]
    return "\n".join(parts) or "*no caption yet*"


@dg.asset(
    name=CAPTION_BATCH.name,
    group_name=GROUP_CAPTIONS,
    kinds={"parquet", "llm"},
    partitions_def=SOURCE_SHARDS,
    deps=[ROI_SET.name, COARSE_CAPTIONS.name, RETRIEVED_KNOWLEDGE.name, PREPROCESSED_IMAGES.name, KNOWLEDGE_INDEX],
    pool=gpu_pool(), op_tags=GPU_OP_TAGS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="One multigranular description per ROI (modality, organ, ROI location, texture, "
    "local–global relationship) with every input behind it; cached by inputs hash, durable in chunks.",
)
def caption_batch(context: dg.AssetExecutionContext, storage: OutputStorage, captioner: CaptionerResource):
    from medtrinity_assets.captioning import run_caption_batch

    out = storage.out()
    backend = captioner.get()
    try:
        for key in context.partition_keys:
            started = time.perf_counter()
            name = part_of(key)
            inputs = _caption_inputs(out, name)
            path = CAPTION_BATCH.path(out, name)
            progress = progress_logger(context.log, name, "captions")
            result = run_caption_batch(
                inputs, backend, path, chunk_size=captioner.chunk_size, progress=progress, log=context.log
            )
            table = CAPTION_BATCH.read_path(path)
            samples = _sample_triplets(inputs, table)
            metadata = {
                **stage_metrics(started, rows_in=len(inputs), rows_out=table.height, quarantined=result.failed),
                **picture_file(out, CAPTION_BATCH.name, name, "sample_triplets", triplet_cards(samples)),
                **table_metadata(table, path, ["roi_id", "backend", "status", "text"]),
                **counts_metadata("batch", result.as_metadata()),
                "backend": captioner.backend,
                "prompt_version": table["prompt_version"][0] if table.height else "",
                "sample_triplets": dg.MetadataValue.md(_triplet_markdown(samples)),
            }
            if result.fallbacks:
                context.log.warning(
                    f"{name}: {result.fallbacks} description(s) of {captioner.backend} failed a blocking "
                    "check and were replaced by the embedded one (see fallback_reason)"
                )
            context.add_asset_metadata(metadata, partition_key=key)
            if result.failed:
                context.log.warning(f"{name}: {result.failed} caption(s) failed; rerun retries only those")
    finally:
        backend.close()
    return dg.MaterializeResult()


@dg.asset(
    name=CAPTION_QUALITY.name,
    group_name=GROUP_CAPTIONS,
    kinds={"parquet"},
    partitions_def=SOURCE_SHARDS,
    deps=[CAPTION_BATCH.name, SOURCE_MANIFEST.name],  # the source's identifiers, stored by ingestion
    check_specs=CAPTION_QUALITY_CHECKS,
    description="Per-description checks: facets present, claims consistent with measurements and "
    "metadata, length bounds, PHI scan, optional judge scores (0–10 per facet).",
)
def caption_quality(context: dg.AssetExecutionContext, storage: OutputStorage, judge: JudgeResource,
                    compute: ComputeResource):
    import polars as pl

    from medtrinity_assets.captioning.parallel_checks import check_captions_parallel
    from medtrinity_assets.privacy import identifier_store

    started = time.perf_counter()
    name = part_of(context.partition_key)
    out = storage.out()
    inputs = _caption_inputs(out, name)
    captions = CAPTION_BATCH.read(out, name)
    identifiers = identifier_store(out).matcher(name)
    quality = check_captions_parallel(
        captions, {(i.record_id, i.roi_id): i for i in inputs}, phi_values=identifiers, judge=judge.get(),
        workers=compute.workers,
    )
    path = CAPTION_QUALITY.write(quality, out, name)
    n = quality.height
    issues = (
        dict(quality["issues"].explode().drop_nulls().str.split(":").list.first().value_counts().iter_rows())
        if n
        else {}
    )
    inconsistent = int((~quality["consistent"]).sum()) if n else 0
    yield dg.MaterializeResult(
        metadata={
            **table_metadata(quality, path, ["roi_id", "consistent", "phi_found", "passed", "issues"]),
            **stage_metrics(started, rows_in=captions.height, rows_out=quality.height,
                            quarantined=int((~quality["passed"]).sum()) if n else 0),
            **counts_metadata("issues_by_kind", issues),
            "consistency_rate": float(1 - inconsistent / n) if n else 1.0,
            "phi_findings": int(quality["phi_found"].sum()) if n else 0,
            "captions_ok": captions.filter(pl.col("status") == "ok").height,
            "identifying_values_checked": identifiers.size,
        }
    )
    yield from caption_quality_results(quality)
