"""Stage 2 assets: expert grounding models (all sources) and the ROI set of each source."""


import time

import dagster as dg
from pydantic import Field

from medtrinity_assets.core.tables import PREPROCESSED_IMAGES, ROI_SET
from medtrinity_assets.defs.accelerators import gpu_step
from medtrinity_assets.defs.partitions import SOURCE_SHARDS, part_of, source_and_shard
from medtrinity_assets.defs.reporting import (
    GROUP_ROIS,
    counts_metadata,
    file_metadata,
    progress_logger,
    sheet_metadata,
    stage_metrics,
)
from medtrinity_assets.defs.resources import ComputeResource, OutputStorage, SourceRegistry

EXPERT_MODELS = "expert_models"


class ExpertModelsConfig(dg.Config):
    """Training settings for the per-modality expert segmenters (launchpad-editable)."""

    epochs: int = Field(30, ge=1)
    image_size: int = Field(128, ge=32)
    min_samples: int = Field(8, ge=2, description="a modality needs this many masked images to train")
    max_samples: int = Field(400, ge=2, description="cap per modality (sampled deterministically)")
    seed: int = 0


@dg.asset(
    name=EXPERT_MODELS,
    group_name=GROUP_ROIS,
    kinds={"pytorch", "safetensors"},
    deps=[PREPROCESSED_IMAGES.name],
    **gpu_step(ComputeResource),
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="A MONAI segmentation network per modality, trained on the sources of that modality "
    "that have masks (held-out Dice recorded against the classical fallback); safetensors + JSON card.",
)
def expert_models(
    context: dg.AssetExecutionContext,
    config: ExpertModelsConfig,
    storage: OutputStorage,
    registry: SourceRegistry,
    compute: ComputeResource,
):
    from medtrinity_assets.segmentation import ExpertConfig, train_experts
    from medtrinity_assets.segmentation.store import experts_version

    started = time.perf_counter()
    out = storage.out()
    report = train_experts(
        registry.sources(),
        out,
        ExpertConfig(epochs=config.epochs, image_size=config.image_size),
        device=compute.resolved_device(),
        min_samples=config.min_samples,
        max_samples=config.max_samples,
        seed=config.seed,
        log=context.log.info,
    )
    return dg.MaterializeResult(
        # the models' content: ROIs follow retrained experts only when the weights or gates changed
        data_version=dg.DataVersion(experts_version(report.directory)),
        metadata={
            **stage_metrics(started, rows_in=len(report.summary) + len(report.skipped), rows_out=len(report.summary),
                            quarantined=len(report.skipped)),
            "models": dg.MetadataValue.json(report.summary),
            "skipped": dg.MetadataValue.json(report.skipped),
            "path": dg.MetadataValue.path(str(report.directory)),
            "dice_table": dg.MetadataValue.md(report.markdown()),
        }
    )


OVERLAYS = 8


def _overlay_sample(images, rois):
    """Up to :data:`OVERLAYS` images spread over the source, those with localised ROIs first."""
    import polars as pl

    localised = rois.filter((pl.col("status") == "ok") & (pl.col("origin") != "whole_image"))["record_id"].unique()
    ranked = images.select("record_id", "image_path").with_columns(
        pl.col("record_id").is_in(localised.implode()).alias("_has")
    ).sort("_has", "record_id", descending=[True, False])
    n = ranked.height
    step = max(1, min(n, int(ranked["_has"].sum()) or n) // OVERLAYS)
    return ranked.gather_every(step).head(OVERLAYS).select("record_id", "image_path")


def _roi_metadata(out, name: str, images, result) -> dict:
    """Row counts, preview, counts and an overlay sheet of one shard's ROI set (read back from its
    file: the stage holds one slice of it at a time)."""
    import polars as pl

    from medtrinity_assets.core.render import load_png
    from medtrinity_assets.rois import draw_roi_overlay

    path = ROI_SET.path(out, name)
    sample = _overlay_sample(images, ROI_SET.read_path(path, ["record_id", "status", "origin"]))
    shown = ROI_SET.read_path(path, where=pl.col("record_id").is_in(sample["record_id"].to_list()) & (pl.col("status") == "ok"))
    pictures, captions = [], []
    for rec, img_path in sample.iter_rows():
        rows = shown.filter(pl.col("record_id") == rec).to_dicts()
        pictures.append(draw_roi_overlay(load_png(out / img_path), rows))
        labels = sorted({str(r["label"]).replace("_", " ") for r in rows})
        captions.append(f"{len(rows)} ROI: {', '.join(labels)}")
    preview = ["roi_id", "label", "origin", "bbox_xyxy", "horizontal", "vertical", "intensity_word", "shape_word"]
    return {
        **sheet_metadata(out, ROI_SET.name, name, "overlays", pictures, captions, "ROI overlays"),
        **file_metadata(path, preview),
        **counts_metadata("rois_by_origin", result.counts_by_origin),
        **counts_metadata("rois_by_label", result.counts_by_label),
        **counts_metadata("flagged_by_reason", result.flagged_counts),
    }


@dg.asset(
    name=ROI_SET.name,
    group_name=GROUP_ROIS,
    kinds={"parquet", "polars"},
    partitions_def=SOURCE_SHARDS,
    deps=[PREPROCESSED_IMAGES.name, EXPERT_MODELS],
    **gpu_step(ComputeResource, per_shard=True),
    description="ROI geometry (box, COCO RLE mask) and measured attributes (position, size, intensity, "
    "texture, shape, relations) per image, from masks, boxes, expert models or the whole image.",
)
def roi_set(
    context: dg.AssetExecutionContext, storage: OutputStorage, registry: SourceRegistry, compute: ComputeResource
):
    out = storage.out()
    for key in context.partition_keys:
        _locate_shard(context, out, key, registry, compute)
    return dg.MaterializeResult()


def _locate_shard(context: dg.AssetExecutionContext, out, key: str, registry: SourceRegistry,
                  compute: ComputeResource) -> None:
    """One shard's ROI set, written slice by slice (row groups), and its metadata."""
    from dataclasses import replace

    from medtrinity_assets.rois.parallel import merge_results, roi_set_slices

    started = time.perf_counter()
    name = part_of(key)
    spec = registry.source(source_and_shard(key)[0])
    images = PREPROCESSED_IMAGES.read(out, name)
    experts, results = roi_set_slices(images, spec, out, experts_dir=out / EXPERT_MODELS,
                                      workers=compute.workers, device=compute.resolved_device())
    if experts:
        context.log.info(f"{name}: expert grounding with {', '.join(experts)}")
    counts, rows = [], 0
    progress = progress_logger(context.log, name, "images located")

    def frames():
        nonlocal rows
        for part in results:
            counts.append(replace(part, rois=ROI_SET.empty()))  # the counts; the rows go to the file
            rows += part.rois.height
            progress(sum(c.n_images for c in counts), images.height)
            yield part.rois

    ROI_SET.write_batches(frames(), out, name)
    result = merge_results(counts, images.height)
    flagged = sum(result.flagged_counts.values())
    metadata = {**_roi_metadata(out, name, images, result), "experts": ", ".join(experts) or "none",
                **stage_metrics(started, rows_in=images.height, rows_out=rows, quarantined=flagged),
                **counts_metadata("dropped_by_reason", result.dropped_counts)}
    context.add_asset_metadata(metadata, partition_key=key)
