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

    def lines(self) -> list[str]:
        q = sum(self.quarantined.values())
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.quarantined.items(), key=lambda kv: (-kv[1], kv[0])))
        return [
            f"sources: {self.sources}; manifest rows: {self.files} ({self.images} images kept, "
            f"{self.duplicates} duplicates, {q} quarantined{': ' + by if by else ''})",
            f"ROIs: {self.rois}; descriptions: {self.descriptions} ({self.passed} passed the quality checks)",
        ]


def _read(contract: TableContract, out: Path, source: str, columns: Sequence[str]) -> pl.DataFrame | None:
    path = contract.path(out, source)
    return contract.read_path(path, columns) if path.exists() else None


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
        images = _read(PREPROCESSED_IMAGES, out, name, ["record_id"])
        s.images += images.height if images is not None else 0
        rois = _read(ROI_SET, out, name, ["status"])
        s.rois += int((rois["status"] == "ok").sum()) if rois is not None else 0
        captions = _read(CAPTION_BATCH, out, name, ["status"])
        s.descriptions += int((captions["status"] == "ok").sum()) if captions is not None else 0
        quality = _read(CAPTION_QUALITY, out, name, ["passed"])
        s.passed += int(quality["passed"].sum()) if quality is not None else 0
    return s
