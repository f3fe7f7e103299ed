"""Stage 5 assets: multigranular descriptions per ROI and their claim-level quality checks."""


import time
from pathlib import Path

import dagster as dg
import polars as pl

from medtrinity_assets.core.render import triplet_cards
from medtrinity_assets.core.tables import (
    CAPTION_BATCH,
    CAPTION_QUALITY,
    COARSE_CAPTIONS,
    PREPROCESSED_IMAGES,
    RETRIEVED_KNOWLEDGE,
    ROI_SET,
    SOURCE_MANIFEST,
)
from medtrinity_assets.defs.accelerators import gpu_step
from medtrinity_assets.defs.checks import CAPTION_QUALITY_CHECKS, caption_quality_results
from medtrinity_assets.defs.knowledge import KNOWLEDGE_INDEX
from medtrinity_assets.defs.partitions import SOURCE_SHARDS, part_of
from medtrinity_assets.defs.reporting import (
    GROUP_CAPTIONS,
    counts_metadata,
    file_metadata,
    picture_file,
    progress_logger,
    retry_metadata,
    stage_metrics,
)
from medtrinity_assets.defs.resources import (
    CaptionerResource,
    ComputeResource,
    EmbeddedCaptionerResource,
    JudgeResource,
    OutputStorage,
)
from medtrinity_assets.privacy import identifier_store

SAMPLE_TRIPLETS = 4


def sample_records(records: list[str], n: int = SAMPLE_TRIPLETS, candidates: int = 8) -> list[str]:
    """Up to ``n * candidates`` distinct images of ``records`` (a shard's, in their order) spread
    evenly over it, the first ``n`` at its quantiles (0, 1/n, 2/n...), then the others: sample cards
    from the start of a shard all show its first slices (the cerebellum of a brain volume)."""
    unique = list(dict.fromkeys(records))
    m = min(n * candidates, len(unique))
    spread = [unique[k * len(unique) // m] for k in range(m)]
    stride = max(1, m // n)
    return [spread[j] for start in range(stride) for j in range(start, m, stride)]


def _sample_triplets(inputs: list, captions, n: int = SAMPLE_TRIPLETS, phi_values=()) -> list[tuple]:
    """A few image–ROI–description triplets: (overlay, ROI id, description), from ``inputs`` (images
    in the order to try them: :func:`sample_records`) and their rows of ``captions``, one ROI per
    image before a second. A description in which the PHI scan finds anything (the patterns, or the
    source's identifying values ``phi_values``) is not shown: these pictures are made before
    ``caption_quality`` checks the descriptions, and are shown to whoever opens the asset page."""
    import numpy as np

    from medtrinity_assets.captioning import render_overlay
    from medtrinity_assets.captioning.quality import scan_phi

    by_key = {(i.record_id, str(i.roi_id)): i for i in inputs}
    order = {rid: k for k, rid in enumerate(dict.fromkeys(i.record_id for i in inputs))}
    rows = sorted((r for r in captions.filter(captions["status"] == "ok").iter_rows(named=True)
                   if r["record_id"] in order), key=lambda r: order[r["record_id"]])
    firsts, others, seen = [], [], set()
    for r in rows:
        (others if r["record_id"] in seen else firsts).append(r)
        seen.add(r["record_id"])
    out = []
    for row in firsts + others:
        item = by_key.get((row["record_id"], str(row["roi_id"])))
        if item is not None and scan_phi(row["text"] or "", phi_values, row.get("retrieved_chunk_ids") or ()):
            continue
        overlay = render_overlay(item) if item is not None else None
        if overlay is not None:
            out.append((np.asarray(overlay), str(row["roi_id"]), row["text"]))
        if len(out) == n:
            break
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
    **gpu_step(EmbeddedCaptionerResource, per_shard=True),
    description="One multigranular description per ROI (modality, organ, ROI location, texture, "
    "local–global relationship) with every input behind it; cached by inputs hash, durable in chunks.",
)
def caption_batch(context: dg.AssetExecutionContext, storage: OutputStorage, captioner: CaptionerResource,
                  compute: ComputeResource):
    out = storage.out()
    backend = captioner.get()
    try:
        for key in context.partition_keys:
            _describe_shard(context, out, key, backend, captioner, compute.workers)
    finally:
        backend.close()
    return dg.MaterializeResult()


def _describe_shard(context: dg.AssetExecutionContext, out: Path, key: str, backend, captioner: CaptionerResource,
                    workers: int) -> None:
    """Describe one shard's ROIs slice by slice (one slice's inputs in memory; a CPU-bound backend's
    slices on ``workers`` processes) and report it."""
    from medtrinity_assets.captioning.inputs import describable_rois, read_caption_inputs
    from medtrinity_assets.captioning.parallel_batch import runs_in_workers

    started = time.perf_counter()
    name = part_of(key)
    rois = describable_rois(out, name)
    path = CAPTION_BATCH.path(out, name)
    progress = progress_logger(context.log, name, "captions")
    if runs_in_workers(backend, len(rois), workers):
        from medtrinity_assets.captioning.parallel_batch import describe_shard_in_workers

        result = describe_shard_in_workers(out, name, rois, backend, path, workers=workers,
                                           chunk_size=captioner.chunk_size, progress=progress)
    else:
        result = _describe_here(context, out, name, rois, backend, captioner.chunk_size, progress)
    picks = sample_records(rois)
    rank = {rid: k for k, rid in enumerate(picks)}
    shown = sorted(read_caption_inputs(out, name, picks), key=lambda i: rank[i.record_id])
    head = CAPTION_BATCH.read_path(path, where=pl.col("record_id").is_in(picks))
    samples = _sample_triplets(shown, head, phi_values=identifier_store(out).matcher(name))
    metadata = {
        **stage_metrics(started, rows_in=result.total + result.duplicates_dropped, rows_out=result.total,
                        quarantined=result.failed),
        **picture_file(out, CAPTION_BATCH.name, name, "sample_triplets", triplet_cards(samples)),
        **file_metadata(path, ["roi_id", "backend", "status"]),  # the text: in the screened samples
        **counts_metadata("batch", result.as_metadata()),
        **retry_metadata(result.failed),
        "backend": captioner.backend,
        "prompt_version": head["prompt_version"][0] if head.height else "",
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


def _describe_here(context: dg.AssetExecutionContext, out: Path, name: str, rois: list[str], backend,
                   chunk_size: int, progress):
    """The shard described in this process, slice by slice; its result."""
    from medtrinity_assets.captioning import run_caption_slices
    from medtrinity_assets.captioning.inputs import read_caption_inputs
    from medtrinity_assets.core.workers import image_slices

    slices = (read_caption_inputs(out, name, ids) for ids in image_slices(rois))
    return run_caption_slices(slices, backend, CAPTION_BATCH.path(out, name), total=len(rois),
                              chunk_size=chunk_size, progress=progress, log=context.log)


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
    from medtrinity_assets.captioning.parallel_checks import check_shard

    started = time.perf_counter()
    name = part_of(context.partition_key)
    out = storage.out()
    identifiers = identifier_store(out).matcher(name)
    batches = check_shard(out, name, phi_values=identifiers, judge=judge.get(), workers=compute.workers)
    path = CAPTION_QUALITY.write_batches(batches, out, name)
    quality = CAPTION_QUALITY.read_path(path, columns=[c for c in CAPTION_QUALITY.columns if _is_summary(c)])
    n = quality.height
    issues = (
        dict(quality["issues"].explode().drop_nulls().str.split(":").list.first().value_counts().iter_rows())
        if n
        else {}
    )
    inconsistent = int((~quality["consistent"]).sum()) if n else 0
    captions = CAPTION_BATCH.read(out, name, columns=["status"])
    yield dg.MaterializeResult(
        metadata={
            **file_metadata(path, ["roi_id", "consistent", "phi_found", "passed", "issues"]),
            **stage_metrics(started, rows_in=captions.height, rows_out=n,
                            quarantined=int((~quality["passed"]).sum()) if n else 0),
            **counts_metadata("issues_by_kind", issues),
            "consistency_rate": float(1 - inconsistent / n) if n else 1.0,
            "phi_findings": int(quality["phi_found"].sum()) if n else 0,
            "captions_ok": captions.filter(pl.col("status") == "ok").height,
            "identifying_values_checked": identifiers.size,
            **retry_metadata(issues.get("judge failed", 0)),
        }
    )
    yield from caption_quality_results(quality)


def _is_summary(column: str) -> bool:
    """The quality columns the metadata and the checks read back (flags and issues, no text)."""
    return column in ("consistent", "phi_found", "passed", "issues") or (
        column.startswith("facet_") and column.endswith("_present"))
