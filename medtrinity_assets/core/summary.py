"""What a build made, read back from its tables: the summary the CLI prints at the end of a run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from medtrinity_assets.core.tables import (
    CAPTION_BATCH,
    CAPTION_QUALITY,
    PREPROCESSED_IMAGES,
    ROI_SET,
    SOURCE_MANIFEST,
    TableContract,
)

SMALL_ROI_PX = 100  # the speckle size the review of issue 12 counted


@dataclass
class BuildSummary:
    sources: int = 0
    files: int = 0
    images: int = 0
    duplicates: int = 0
    rois: int = 0
    descriptions: int = 0
    passed: int = 0
    quarantined: Counter = field(default_factory=Counter)
    origins: Counter = field(default_factory=Counter)  # ok ROIs by origin (expert:* as "expert")
    small_rois: int = 0  # localised ok ROIs under SMALL_ROI_PX pixels (speckle-sized)
    text_scanned: int = 0  # images scanned for burned-in text
    text_redacted: int = 0  # ... with text blacked out
    export: str = ""  # one line on the verified export, when there is one

    def lines(self) -> list[str]:
        q = sum(self.quarantined.values())
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.quarantined.items(), key=lambda kv: (-kv[1], kv[0])))
        origins = ", ".join(f"{k} {v}" for k, v in sorted(self.origins.items(), key=lambda kv: (-kv[1], kv[0])))
        localised = sum(v for k, v in self.origins.items() if k != "whole_image")
        return [
            f"sources: {self.sources}; manifest rows: {self.files} ({self.images} images kept, "
            f"{self.duplicates} duplicates, {q} quarantined{': ' + by if by else ''})",
            f"ROIs: {self.rois}{' (' + origins + ')' if origins else ''}"
            + (f"; {self.small_rois} of the {localised} localised are under {SMALL_ROI_PX} px" if localised else ""),
            f"burned-in text: {self.text_scanned} image(s) scanned, {self.text_redacted} with text blacked out",
            f"descriptions: {self.descriptions} ({self.passed} passed the quality checks)",
            *([self.export] if self.export else []),
        ]


def _read(contract: TableContract, out: Path, source: str, columns: Sequence[str]) -> pl.DataFrame | None:
    """The table of every shard of ``source`` (per-shard tables), or None when none exists."""
    from medtrinity_assets.core.parts import part_paths

    frames = [contract.read_path(p, columns) for p in part_paths(contract, out, source)]
    return pl.concat(frames) if frames else None


def export_line(out: Path) -> str:
    """``export: 363 triplets (train 342, ...), verified -> <out>/export (viewer: ...)``, or ""."""
    import json

    from medtrinity_assets.core.tables import MEDTRINITY_DATASET

    path = MEDTRINITY_DATASET.path(out)
    if not path.exists():
        return ""
    splits = pl.read_parquet(path, columns=["split"])["split"].value_counts(sort=True)
    by = ", ".join(f"{s} {n}" for s, n in splits.iter_rows())
    report = path.parent / "verification.json"
    ok = report.exists() and not json.loads(report.read_text(encoding="utf-8")).get("problems")
    verified = "verified" if ok else "NOT verified (see verification.json)"
    return (f"export: {splits['count'].sum()} triplets ({by}), {verified} -> {path.parent} "
            f"(viewer: {path.parent / 'viewer' / 'index.html'}; query: medtrinity sql \"select ...\")")


def summarize(out: str | Path, sources: Sequence[str]) -> BuildSummary:
    """Counts over the tables of ``sources`` under ``out`` (tables not built yet count nothing)."""
    out = Path(out)
    s = BuildSummary(sources=len(sources))
    for name in sources:
        manifest = _read(SOURCE_MANIFEST, out, name, ["status", "reason"])
        if manifest is not None:
            s.files += manifest.height
            s.duplicates += int((manifest["status"] == "duplicate").sum())
            quarantined = manifest.filter(pl.col("status") == "quarantined")["reason"].to_list()
            s.quarantined.update(str(r).split(":", 1)[0] for r in quarantined)
        images = _read(PREPROCESSED_IMAGES, out, name, ["record_id", "text_boxes_redacted"])
        if images is not None:
            s.images += images.height
            if "text_boxes_redacted" in images.columns:
                scanned = images["text_boxes_redacted"].drop_nulls()
                s.text_scanned += scanned.len()
                s.text_redacted += int((scanned > 0).sum())
        rois = _read(ROI_SET, out, name, ["status", "origin", "area_px"])
        if rois is not None:
            ok = rois.filter(pl.col("status") == "ok")
            s.rois += ok.height
            s.origins.update("expert" if str(o).startswith("expert:") else str(o) for o in ok["origin"])
            localised = ok.filter(pl.col("origin") != "whole_image")
            s.small_rois += int((localised["area_px"].fill_null(0) < SMALL_ROI_PX).sum())
        captions = _read(CAPTION_BATCH, out, name, ["status"])
        s.descriptions += int((captions["status"] == "ok").sum()) if captions is not None else 0
        quality = _read(CAPTION_QUALITY, out, name, ["passed"])
        s.passed += int(quality["passed"].sum()) if quality is not None else 0
    s.export = export_line(out)
    return s
