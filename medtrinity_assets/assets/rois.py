"""Stage 2 assets: expert grounding models and the ROI set of each source."""

import json
from pathlib import Path

import dagster as dg
from pydantic import Field

from medtrinity_assets.assets.common import (
    GROUP_ROIS,
    SOURCES,
    counts_metadata,
    table_metadata,
)
from medtrinity_assets.resources import ComputeResource, PipelineStorage


class ExpertModelsConfig(dg.Config):
    """Training settings for the per-modality expert segmenters (launchpad-editable)."""

    epochs: int = Field(30, ge=1)
    image_size: int = Field(128, ge=32)
    min_samples: int = Field(8, ge=2, description="a modality needs this many masked images to train")
    max_samples: int = Field(400, ge=2, description="cap per modality (sampled deterministically)")
    seed: int = 0


@dg.asset(
    group_name=GROUP_ROIS,
    kinds={"pytorch", "safetensors"},
    deps=["preprocessed_images"],
    pool="gpu",
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="A MONAI segmentation network per modality, trained on the sources of that modality "
    "that have masks (held-out Dice recorded against the classical fallback); safetensors + JSON card.",
)
def expert_models(
    context: dg.AssetExecutionContext,
    config: ExpertModelsConfig,
    storage: PipelineStorage,
    compute: ComputeResource,
):
    from medtrinity_assets.expert_models import (
        ExpertConfig,
        collect_training_samples,
        modality_slug,
        save_expert,
        train_expert,
    )
    from medtrinity_assets.registry import canonical_modality

    out = storage.out()
    by_modality = collect_training_samples(
        storage.sources(), out, max_samples=config.max_samples, seed=config.seed
    )
    cards: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for modality, (samples, provenance) in sorted(by_modality.items()):
        if len(samples) < config.min_samples:
            skipped[modality] = f"only {len(samples)} masked images (< {config.min_samples})"
            continue
        context.log.info(f"training expert for {modality} on {len(samples)} images from {sorted(provenance)}")
        result = train_expert(
            samples,
            modality=canonical_modality(modality),
            device=compute.resolved_device(),
            config=ExpertConfig(epochs=config.epochs, image_size=config.image_size),
            seed=config.seed,
            training_sources=provenance,
        )
        card_path = save_expert(result, out / "expert_models" / modality_slug(canonical_modality(modality)))
        cards[modality] = json.loads(Path(card_path).read_text())
    summary = {
        m: {k: c["metrics"].get(k) for k in ("dice", "classical_dice", "n_train", "n_val")}
        for m, c in cards.items()
    }
    return dg.MaterializeResult(
        metadata={
            "models": dg.MetadataValue.json(summary),
            "skipped": dg.MetadataValue.json(skipped),
            "path": dg.MetadataValue.path(str(out / "expert_models")),
            "dice_table": dg.MetadataValue.md(
                "| modality | expert Dice | classical Dice | train | val |\n|---|---|---|---|---|\n"
                + "\n".join(
                    f"| {m} | {s['dice']:.3f} | {s['classical_dice']:.3f} | {s['n_train']} | {s['n_val']} |"
                    for m, s in summary.items()
                )
            ),
        }
    )


@dg.asset(
    group_name=GROUP_ROIS,
    kinds={"parquet", "polars"},
    partitions_def=SOURCES,
    deps=["preprocessed_images", expert_models],
    pool="gpu",
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="ROI geometry (box, COCO RLE mask) and measured attributes (position, size, intensity, "
    "texture, shape, relations) per image, from masks, boxes, expert models or the whole image.",
)
def roi_set(context: dg.AssetExecutionContext, storage: PipelineStorage, compute: ComputeResource):
    from medtrinity_assets.expert_models import load_expert_for
    from medtrinity_assets.render import contact_sheet_markdown, load_png
    from medtrinity_assets.rois import build_roi_set, draw_roi_overlay
    from medtrinity_assets.storage import read_table, table_path, write_table

    out = storage.out()
    metadata: dict = {}
    for name in context.partition_keys:
        spec = storage.source(name)
        images = read_table(table_path(out, "preprocessed_images", name))
        expert = load_expert_for(spec, out / "expert_models", device=compute.resolved_device())
        if expert is not None:
            context.log.info(f"{name}: expert grounding with {expert.name}")
        result = build_roi_set(images, spec, out, expert=expert)
        path = write_table(result.rois, table_path(out, "roi_set", name))
        # Contact sheet: original images with box and mask outlines drawn on a copy.
        sample = images.head(12)
        pictures, captions = [], []
        for rec, img_path in sample.select("record_id", "image_path").iter_rows():
            rows = result.rois.filter(result.rois["record_id"] == rec).to_dicts()
            pictures.append(draw_roi_overlay(load_png(out / img_path), rows))
            captions.append(f"{len(rows)} roi")
        metadata = {
            **table_metadata(
                result.rois,
                path,
                [
                    "roi_id",
                    "label",
                    "origin",
                    "bbox_xyxy",
                    "horizontal",
                    "vertical",
                    "intensity_word",
                    "shape_word",
                ],
            ),
            **counts_metadata("rois_by_origin", result.counts_by_origin),
            **counts_metadata("rois_by_label", result.counts_by_label),
            **counts_metadata("flagged_by_reason", result.flagged_counts),
            "overlays": dg.MetadataValue.md(contact_sheet_markdown(pictures, captions, "ROI overlays")),
            "expert": expert.name if expert is not None else "none",
        }
    return dg.MaterializeResult(metadata=metadata)
