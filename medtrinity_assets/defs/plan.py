"""The run plan: the order in which the asset graph is built, and the named jobs it defines.

Six phases, derived from the asset graph (a new asset lands in its phase by its deps):

1. ``ingest`` (per shard of a source) — the per-shard assets that need nothing shared (ingestion,
   coarse captions); job ``ingest_job``;
2. ``shared_models`` (global) — the unpartitioned assets every source uses (expert models, the
   knowledge corpus and index); job ``shared_models_job``;
3. ``enrichment`` (per shard) — the per-shard assets that need a shared one (ROIs, retrieval,
   descriptions, their quality); job ``enrichment_job``;
4. ``summary`` (per source) — the assets that read all shards of a source (its triplets, with the
   duplicates across shards removed); job ``summary_job``;
5. ``export`` (global) — the unpartitioned assets that read the enriched sources (the dataset and
   everything written with it, the LLaVA-Tri checkpoint); job ``export_job``;
6. ``vqa`` (per VQA set) — the VQA questions, fine-tuned checkpoints and evaluations; job ``vqa_job``.

The CLI, the registry sensor and the tests all run this plan, so late per-source assets never
run before the shared models they read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import dagster as dg

from medtrinity_assets.defs.partitions import SOURCE_SHARDS, SOURCES, VQA_SETS

SHARDED = "source_shards"


@dataclass(frozen=True)
class Phase:
    name: str
    partitions: str | None  # "source_shards", "sources", "vqa_sets" or None (one run)
    keys: tuple[dg.AssetKey, ...]
    description: str

    @property
    def per_shard(self) -> bool:
        return self.partitions == SHARDED

    @property
    def per_source(self) -> bool:
        """Runs once per source, or once per shard of each source."""
        return self.partitions in (SHARDED, SOURCES.name)

    @property
    def partitions_def(self) -> dg.PartitionsDefinition | None:
        return {SHARDED: SOURCE_SHARDS, SOURCES.name: SOURCES, VQA_SETS.name: VQA_SETS}.get(self.partitions or "")

    @property
    def per_vqa_set(self) -> bool:
        return self.partitions == VQA_SETS.name

    @property
    def job_name(self) -> str:
        return f"{self.name}_job"

    def key_names(self) -> list[str]:
        return [k.to_user_string() for k in self.keys]


PHASE_TEXT = {
    "ingest": "Per-source assets that need nothing shared: ingestion and coarse captions.",
    "shared_models": "Global assets every source uses: expert grounding models, the knowledge corpus and index.",
    "enrichment": "Per-shard assets that read a shared model: ROIs, retrieval, descriptions and their quality.",
    "summary": "Per-source assets over all its shards: the verified triplets, duplicates across shards removed.",
    "export": "Global assets over every enriched source: the dataset, its formats, card, catalog and viewer, "
    "and the LLaVA-Tri checkpoint pretrained on it.",
    "vqa": "Per VQA set: its questions, the fine-tuned checkpoints (with and without triplet pretraining) "
    "and their evaluation.",
}


@dataclass
class _Graph:
    """The dependency structure the plan is derived from."""

    parents: dict[dg.AssetKey, set[dg.AssetKey]] = field(default_factory=dict)
    partitioned: set[dg.AssetKey] = field(default_factory=set)  # per shard or per source
    per_source: set[dg.AssetKey] = field(default_factory=set)  # per source (over its shards)
    per_vqa_set: set[dg.AssetKey] = field(default_factory=set)
    together: dict[dg.AssetKey, frozenset[dg.AssetKey]] = field(default_factory=dict)

    @classmethod
    def of(cls, assets: Iterable[object]) -> _Graph:
        g = cls()
        for a in assets:
            if not isinstance(a, dg.AssetsDefinition):
                continue
            for spec in a.specs:
                g.parents[spec.key] = {d.asset_key for d in spec.deps}
                if spec.partitions_def == SOURCE_SHARDS:
                    g.partitioned.add(spec.key)
                elif spec.partitions_def == SOURCES:
                    g.partitioned.add(spec.key)
                    g.per_source.add(spec.key)
                elif spec.partitions_def == VQA_SETS:
                    g.per_vqa_set.add(spec.key)
            if len(a.keys) > 1 and not a.can_subset:  # a multi-asset that runs whole
                for key in a.keys:
                    g.together[key] = frozenset(a.keys)
        return g

    def ancestors(self, key: dg.AssetKey) -> set[dg.AssetKey]:
        seen: set[dg.AssetKey] = set()
        stack = list(self.parents.get(key, ()))
        while stack:
            k = stack.pop()
            if k not in seen:
                seen.add(k)
                stack.extend(self.parents.get(k, ()))
        return seen

    def closure(self, selected: set[dg.AssetKey]) -> set[dg.AssetKey]:
        """``selected`` plus the siblings of their multi-assets and everything upstream."""
        out: set[dg.AssetKey] = set()
        stack = list(selected)
        while stack:
            k = stack.pop()
            if k in out or k not in self.parents:
                continue
            out.add(k)
            stack.extend(self.together.get(k, ()))
            stack.extend(self.ancestors(k))
        return out

    def late_keys(self, keys: set[dg.AssetKey]) -> set[dg.AssetKey]:
        """Per-source keys that need a global asset, directly or through another late key (a
        multi-asset runs in one phase, so one late key makes all its keys late)."""
        global_keys = keys - self.partitioned
        late: set[dg.AssetKey] = set()
        changed = True
        while changed:
            changed = False
            for k in keys & self.partitioned - late:
                if any(self.ancestors(m) & (global_keys | late) for m in self.together.get(k, {k})):
                    late |= {k} | (set(self.together.get(k, ())) & keys)
                    changed = True
        return late


class RunPlan:
    """The phases of the asset graph, in order (see the module docstring)."""

    def __init__(self, phases: Sequence[Phase], graph: _Graph) -> None:
        self.phases = list(phases)
        self._graph = graph

    @classmethod
    def from_assets(cls, assets: Iterable[object], until: str | None = None) -> RunPlan:
        """The plan of ``assets``; with ``until``, only that asset and what it needs."""
        graph = _Graph.of(assets)
        keys = set(graph.parents)
        if until:
            target = dg.AssetKey(until)
            if target not in keys:
                known = ", ".join(sorted(k.to_user_string() for k in keys))
                raise ValueError(f"unknown asset '{until}'; known: {known}")
            keys = graph.closure({target})
        late = graph.late_keys(keys)
        summary = keys & graph.per_source
        late -= summary
        early = sorted(keys & graph.partitioned - late - summary)
        vqa = keys & graph.per_vqa_set
        global_keys = keys - graph.partitioned - vqa
        final = {k for k in global_keys if graph.ancestors(k) & (late | summary)}  # reads the enriched sources
        phases = [
            Phase(name, partitions, tuple(ks), PHASE_TEXT[name])
            for name, partitions, ks in (
                ("ingest", SHARDED, early),
                ("shared_models", None, sorted(global_keys - final)),
                ("enrichment", SHARDED, sorted(keys & graph.partitioned & late)),
                ("summary", SOURCES.name, sorted(summary)),
                ("export", None, sorted(final)),
                ("vqa", VQA_SETS.name, sorted(vqa)),
            )
            if ks
        ]
        return cls(phases, graph)

    def phase(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(f"no phase '{name}' in this plan ({', '.join(p.name for p in self.phases)})")

    def has(self, name: str) -> bool:
        return any(p.name == name for p in self.phases)

    def parents(self, key: dg.AssetKey) -> set[dg.AssetKey]:
        """The assets ``key`` reads."""
        return set(self._graph.parents.get(key, ()))

    def in_order(self, phase: Phase) -> list[dg.AssetKey]:
        """The keys of ``phase``, each after those of the phase it reads."""
        keys, done, out = set(phase.keys), set(), []

        def visit(key: dg.AssetKey) -> None:
            if key in done:
                return
            done.add(key)
            for parent in sorted(self.parents(key) & keys):
                visit(parent)
            out.append(key)

        for key in phase.keys:
            visit(key)
        return out

    def to_run(self, phase: Phase, stale: set[dg.AssetKey]) -> set[dg.AssetKey]:
        """The keys of ``phase`` its run materializes when ``stale`` are not up to date: those, what
        reads them in the phase, and the other keys of a multi-asset that runs whole."""
        keys, out, stack = set(phase.keys), set(), list(stale)
        while stack:
            key = stack.pop()
            if key in out or key not in keys:
                continue
            out.add(key)
            stack.extend(self._graph.together.get(key, ()))
            stack.extend(k for k in keys if key in self._graph.parents.get(k, ()))
        return out

    def per_source(self, key: dg.AssetKey) -> bool:
        """Whether ``key`` is partitioned per source (or per shard of one)."""
        return key in self._graph.partitioned

    def per_source_upstream(self, key: dg.AssetKey) -> set[dg.AssetKey]:
        """The per-source assets a shared asset reads (its staleness follows theirs)."""
        return self._graph.ancestors(key) & self._graph.partitioned

    def jobs(self) -> list[dg.UnresolvedAssetJobDefinition]:
        """One asset job per phase, named ``<phase>_job``."""
        return [
            dg.define_asset_job(
                p.job_name,
                selection=dg.AssetSelection.assets(*p.keys),
                partitions_def=p.partitions_def,
                description=p.description,
                tags={"medtrinity/phase": p.name},
            )
            for p in self.phases
        ]
