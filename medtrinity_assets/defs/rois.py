"""Stage 2 assets: expert grounding models (all sources) and the ROI set of each source."""


import dagster as dg
from pydantic import Field

from medtrinity_assets.core.tables import PREPROCESSED_IMAGES, ROI_SET
from medtrinity_assets.defs.partitions import SOURCES
from medtrinity_assets.defs.reporting import GROUP_ROIS, counts_metadata, table_metadata
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
    pool="gpu",
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
        metadata={
            "models": dg.MetadataValue.json(report.summary),
            "skipped": dg.MetadataValue.json(report.skipped),
            "path": dg.MetadataValue.path(str(report.directory)),
            "dice_table": dg.MetadataValue.md(report.markdown()),
        }
    )


def _roi_metadata(out, name: str, images, result) -> dict:
    """Row counts, preview, counts and an overlay sheet of one source's ROI set."""
    from medtrinity_assets.core.render import contact_sheet_markdown, load_png
    from medtrinity_assets.rois import draw_roi_overlay

    pictures, captions = [], []
    for rec, img_path in images.head(12).select("record_id", "image_path").iter_rows():
        rows = result.rois.filter(result.rois["record_id"] == rec).to_dicts()
        pictures.append(draw_roi_overlay(load_png(out / img_path), rows))
        captions.append(f"{len(rows)} roi")
    preview = ["roi_id", "label", "origin", "bbox_xyxy", "horizontal", "vertical", "intensity_word", "shape_word"]
    return {
        **table_metadata(result.rois, ROI_SET.path(out, name), preview),
        **counts_metadata("rois_by_origin", result.counts_by_origin),
        **counts_metadata("rois_by_label", result.counts_by_label),
        **counts_metadata("flagged_by_reason", result.flagged_counts),
        "overlays": dg.MetadataValue.md(contact_sheet_markdown(pictures, captions, "ROI overlays")),
    }


@dg.asset(
    name=ROI_SET.name,
    group_name=GROUP_ROIS,
    kinds={"parquet", "polars"},
    partitions_def=SOURCES,
    deps=[PREPROCESSED_IMAGES.name, EXPERT_MODELS],
    pool="gpu",
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="ROI geometry (box, COCO RLE mask) and measured attributes (position, size, intensity, "
    "texture, shape, relations) per image, from masks, boxes, expert models or the whole image.",
)
def roi_set(
    context: dg.AssetExecutionContext, storage: OutputStorage, registry: SourceRegistry, compute: ComputeResource
):
    from medtrinity_assets.rois import build_roi_set
    from medtrinity_assets.segmentation import load_expert_for

    out = storage.out()
    for name in context.partition_keys:
        spec = registry.source(name)
        images = PREPROCESSED_IMAGES.read(out, name)
        expert = load_expert_for(spec, out / EXPERT_MODELS, device=compute.resolved_device())
        if expert is not None:
            context.log.info(f"{name}: expert grounding with {expert.name}")
        result = build_roi_set(images, spec, out, expert=expert)
        ROI_SET.write(result.rois, out, name)
        metadata = {**_roi_metadata(out, name, images, result), "expert": expert.name if expert else "none"}
        context.add_asset_metadata(metadata, partition_key=name)
    return dg.MaterializeResult()
