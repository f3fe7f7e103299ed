"""Stage 5 assets: multigranular descriptions per ROI and their claim-level quality checks."""

from pathlib import Path

import dagster as dg

from medtrinity_assets.assets.common import (
    GROUP_CAPTIONS,
    SOURCES,
    counts_metadata,
    progress_logger,
    table_metadata,
)
from medtrinity_assets.resources import CaptionerResource, JudgeResource, PipelineStorage

SAMPLE_TRIPLETS = 4


def _caption_inputs(out: Path, name: str):
    """Join the upstream tables of one source into one CaptionInput per ROI."""
    from medtrinity_assets.captioning import build_caption_inputs
    from medtrinity_assets.knowledge.index import DOCSTORE_FILE
    from medtrinity_assets.storage import read_table, table_path

    return build_caption_inputs(
        read_table(table_path(out, "roi_set", name)),
        read_table(table_path(out, "coarse_captions", name)),
        read_table(table_path(out, "retrieved_knowledge", name)),
        read_table(out / "knowledge_index" / DOCSTORE_FILE),
        read_table(table_path(out, "preprocessed_images", name)),
        out_root=out,
    )


def _triplet_markdown(inputs, captions, n: int = SAMPLE_TRIPLETS) -> str:
    """A few image–ROI–description triplets: the overlay copy and its paragraph."""
    import numpy as np

    from medtrinity_assets.captioning import render_overlay
    from medtrinity_assets.render import markdown_image

    by_key = {(i.record_id, str(i.roi_id)): i for i in inputs}
    parts = []
    for row in captions.filter(captions["status"] == "ok").head(n).iter_rows(named=True):
        item = by_key.get((row["record_id"], str(row["roi_id"])))
        overlay = render_overlay(item) if item is not None else None
        pic = markdown_image(np.asarray(overlay), "roi") if overlay is not None else ""
        parts.append(f"**{row['roi_id']}**\n\n{pic}\n\n> {row['text']}\n")
    return "\n".join(parts) or "*no caption yet*"


@dg.asset(
    group_name=GROUP_CAPTIONS,
    kinds={"parquet", "llm"},
    partitions_def=SOURCES,
    deps=["roi_set", "coarse_captions", "retrieved_knowledge", "preprocessed_images", "knowledge_index"],
    pool="gpu",
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="One multigranular description per ROI (modality, organ, ROI location, texture, "
    "local–global relationship) with every input behind it; cached by inputs hash, durable in chunks.",
)
def caption_batch(context: dg.AssetExecutionContext, storage: PipelineStorage, captioner: CaptionerResource):
    from medtrinity_assets.captioning import run_caption_batch
    from medtrinity_assets.storage import read_table, table_path

    out = storage.out()
    backend = captioner.get()
    metadata: dict = {}
    try:
        for name in context.partition_keys:
            inputs = _caption_inputs(out, name)
            path = table_path(out, "caption_batch", name)
            result = run_caption_batch(
                inputs,
                backend,
                path,
                chunk_size=captioner.chunk_size,
                progress=progress_logger(context.log, name, "captions"),
                log=context.log,
            )
            table = read_table(path)
            metadata = {
                **table_metadata(table, path, ["roi_id", "backend", "status", "text"]),
                **counts_metadata("batch", result.as_metadata()),
                "backend": captioner.backend,
                "prompt_version": table["prompt_version"][0] if table.height else "",
                "sample_triplets": dg.MetadataValue.md(_triplet_markdown(inputs, table)),
            }
            if result.failed:
                context.log.warning(f"{name}: {result.failed} caption(s) failed; rerun retries only those")
    finally:
        backend.close()
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    group_name=GROUP_CAPTIONS,
    kinds={"parquet"},
    partitions_def=SOURCES,
    deps=[caption_batch, "source_manifest"],
    check_specs=[
        dg.AssetCheckSpec(
            "claims_consistent",
            asset="caption_quality",
            blocking=True,
            description="Every checkable claim (laterality, position, modality, organ) agrees with the "
            "measured ROI and the metadata.",
        ),
        dg.AssetCheckSpec(
            "no_phi",
            asset="caption_quality",
            blocking=True,
            description="No name, identifier or date pattern, nor any identifying DICOM value of the source.",
        ),
        dg.AssetCheckSpec(
            "facets_complete",
            asset="caption_quality",
            description="Each of the five facets is present in every ok description.",
        ),
    ],
    description="Per-description checks: facets present, claims consistent with measurements and "
    "metadata, length bounds, PHI scan, optional judge scores (0–10 per facet).",
)
def caption_quality(context: dg.AssetExecutionContext, storage: PipelineStorage, judge: JudgeResource):
    import polars as pl

    from medtrinity_assets.captioning import check_captions
    from medtrinity_assets.phi import source_identifier_values
    from medtrinity_assets.storage import read_table, table_path, write_table

    name = context.partition_key
    out = storage.out()
    spec = storage.local_source(name)
    inputs = _caption_inputs(out, name)
    captions = read_table(table_path(out, "caption_batch", name))
    manifest = read_table(table_path(out, "source_manifest", name))
    phi_values = source_identifier_values(spec, manifest)
    quality = check_captions(
        captions, {(i.record_id, i.roi_id): i for i in inputs}, phi_values=phi_values, judge=judge.get()
    )
    path = write_table(quality, table_path(out, "caption_quality", name))
    n = quality.height
    inconsistent = int((~quality["consistent"]).sum()) if n else 0
    phi = int(quality["phi_found"].sum()) if n else 0
    ok_rows = captions.filter(pl.col("status") == "ok").height
    facet_cols = [c for c in quality.columns if c.startswith("facet_") and c.endswith("_present")]
    missing_facets = int(sum((~quality[c]).sum() for c in facet_cols)) if n else 0
    issues = (
        dict(quality["issues"].explode().drop_nulls().str.split(":").list.first().value_counts().iter_rows())
        if n
        else {}
    )
    yield dg.MaterializeResult(
        metadata={
            **table_metadata(quality, path, ["roi_id", "consistent", "phi_found", "passed", "issues"]),
            **counts_metadata("issues_by_kind", issues),
            "consistency_rate": float(1 - inconsistent / n) if n else 1.0,
            "phi_findings": phi,
            "captions_ok": ok_rows,
            "identifying_values_checked": len(phi_values),
        }
    )
    yield dg.AssetCheckResult(
        check_name="claims_consistent",
        passed=inconsistent == 0,
        metadata={"inconsistent": inconsistent, "checked": n},
    )
    yield dg.AssetCheckResult(
        check_name="no_phi", passed=phi == 0, metadata={"phi_findings": phi, "checked": n}
    )
    yield dg.AssetCheckResult(
        check_name="facets_complete",
        passed=missing_facets == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"missing_facets": missing_facets},
    )
