"""Everything the export writes, in order, and what it reports: the dataset table and images
(:mod:`.dataset`), the formats (:mod:`.formats`), their verification (:mod:`.verify`), the card
(:mod:`.card`), the DuckDB catalog (:mod:`.catalog`) and the viewer (:mod:`.viewer`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtrinity_assets.export.dataset import DatasetBuild, build_dataset

FIDELITY_REPORT = "_reports/fidelity.json"  # benchmarks/fidelity.py --json <out>/_reports/fidelity.json


@dataclass
class PublishResult:
    build: DatasetBuild
    problems: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    card: str = ""
    files: dict[str, str] = field(default_factory=dict)

    @property
    def missing_sources(self) -> list[str]:
        return self.build.missing_sources


def _fidelity(out: Path) -> dict | None:
    path = out / FIDELITY_REPORT
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, json.JSONDecodeError):
        return None


def _captions(out: Path, specs: list[Any]) -> Any:
    """The caption rows of the exported sources (which backend wrote what, the fallbacks)."""
    import polars as pl

    from medtrinity_assets.core.parts import part_paths
    from medtrinity_assets.core.tables import CAPTION_BATCH

    frames = [CAPTION_BATCH.read_path(path) for s in specs for path in part_paths(CAPTION_BATCH, out, s.name)]
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


def publish(
    out: str | Path,
    specs: list[Any],
    *,
    eval_sets: list[str] | None = None,
    shard_size: int = 10_000,
    viewer_per_modality: int = 6,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> PublishResult:
    """Build, write, verify and describe the export of every source in ``specs``."""
    from medtrinity_assets.export import card, catalog, formats, verify, viewer

    out = Path(out)
    build = build_dataset(out, [s.name for s in specs], eval_sets=eval_sets)
    root, df = build.root, build.table
    log(f"export: {df.height} triplets of {df['source'].n_unique() if df.height else 0} source(s), "
        f"{build.dropped.height} duplicate record(s) dropped")
    files = {"table": "triplets.parquet"}
    files.update({f"llava_{k}": str(Path(v).relative_to(root)) for k, v in formats.write_llava(df, root, seed=seed).items()})
    shards = formats.write_webdataset(df, root, shard_size=shard_size)
    files["webdataset"] = "webdataset/shards.json"
    files["hf"] = str(Path(formats.write_hf_folder(df, root)).relative_to(root))
    report = verify.verify_export(root)
    verify.write_report(report, root)
    result = PublishResult(build, list(report.problems), {**report.counts, "shards": len(shards)}, files=files)
    if report.problems:
        return result
    sources = [{"name": s.name, "license": s.license, "origin": s.origin or s.root, "synthetic": s.synthetic,
                "modality": s.modality, "organ": s.organ} for s in specs]
    result.card = card.dataset_card(df, root, sources=sources, fidelity=_fidelity(out), backends=_captions(out, specs))
    files["card"] = "DATASET_CARD.md"
    files["catalog"] = str(Path(catalog.build_catalog(out)).relative_to(out))
    files["viewer"] = str(Path(viewer.write_viewer(df, root, per_modality=viewer_per_modality, seed=seed)).relative_to(root))
    log(f"export: verified ({report.counts}); card, catalog and viewer written under {root}")
    return result
