"""Asset checks: the blocking gates on the descriptions (declared here, evaluated by the asset
that writes the quality table, from that table)."""

from __future__ import annotations

import dagster as dg
import polars as pl

CAPTION_QUALITY_ASSET = "caption_quality"

CAPTION_QUALITY_CHECKS = [
    dg.AssetCheckSpec(
        "claims_consistent",
        asset=CAPTION_QUALITY_ASSET,
        blocking=True,
        description="Every checkable claim agrees with independent evidence: position, area, extent "
        "and containment with the ROI's own mask (recomputed from its RLE), laterality with the header, "
        "modality and organ with the metadata, anatomy and findings with the metadata, ontologies and "
        "passages, numbers with the inputs, quotes with the retrieved passages above the relevance floor.",
    ),
    dg.AssetCheckSpec(
        "no_phi",
        asset=CAPTION_QUALITY_ASSET,
        blocking=True,
        description="No name, identifier or date pattern, nor any identifying DICOM value of the source.",
    ),
    dg.AssetCheckSpec(
        "facets_complete",
        asset=CAPTION_QUALITY_ASSET,
        description="Each of the five facets is present in every ok description.",
    ),
]


def caption_quality_results(quality: pl.DataFrame) -> list[dg.AssetCheckResult]:
    """The results of :data:`CAPTION_QUALITY_CHECKS` for one quality table."""
    n = quality.height
    inconsistent = int((~quality["consistent"]).sum()) if n else 0
    phi = int(quality["phi_found"].sum()) if n else 0
    facet_cols = [c for c in quality.columns if c.startswith("facet_") and c.endswith("_present")]
    missing_facets = int(sum((~quality[c]).sum() for c in facet_cols)) if n else 0
    return [
        dg.AssetCheckResult(
            check_name="claims_consistent",
            passed=inconsistent == 0,
            metadata={"inconsistent": inconsistent, "checked": n},
        ),
        dg.AssetCheckResult(check_name="no_phi", passed=phi == 0, metadata={"phi_findings": phi, "checked": n}),
        dg.AssetCheckResult(
            check_name="facets_complete",
            passed=missing_facets == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"missing_facets": missing_facets},
        ),
    ]
