"""Running the plan's named jobs in process, into an instance (what ``medtrinity build`` does).

Each phase runs as its job: per-source phases once per source (``partition_key``), the shared
phase once. Runs are recorded under the job names, so the UI's job pages and timeline show them.
A failing source is skipped in later phases; its reason is the innermost cause of the failure
(the full traceback stays in the run's log in the instance).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from medtrinity_assets.core.parts import shard_key
from medtrinity_assets.defs.partitions import SHARDS, shard_partition
from medtrinity_assets.defs.plan import Phase, RunPlan
from medtrinity_assets.defs.sensors import FINGERPRINT_TAG, SOURCE_TAG
from medtrinity_assets.defs.stamps import Made, asset_stamp, settings_fingerprint, stamp_tags

#: Dagster's console logger stays quiet: every event still goes to the instance (the UI shows
#: it); the CLI prints one line per failure and the warnings of each run itself.
QUIET_RUN_CONFIG: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
GLOBAL = "<shared>"


@dataclass
class StepReport:
    phase: str
    source: str | None
    run_id: str
    success: bool
    reason: str = ""
    skipped: bool = False  # up to date: made by ``run_id`` with the same stamp, not run again
    kept: int = 0  # assets of the phase up to date, left out of a run that made the others
    warnings: list[str] = field(default_factory=list)
    result: dg.ExecuteInProcessResult | None = field(default=None, repr=False)


def _one_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0][:300] if lines else "unknown error"


def innermost_reason(result: dg.ExecuteInProcessResult) -> str:
    """The first step failure's own description (``dg.Failure``) or its innermost cause, as
    ``ErrorType: message``."""
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return _one_line(data.user_failure_data.description)
        err = data.error
        while err is not None and (err.cause is not None or err.context is not None):
            err = err.cause or err.context
        if err is not None:
            message = _one_line(err.message)
            return message if message.startswith(err.cls_name or "\0") else f"{err.cls_name}: {message}"
    return "run failed (see its log in the instance)"


def run_warnings(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The warnings the assets of a run logged (not Dagster's own events)."""
    import logging

    out = []
    for entry in instance.all_logs(run_id):
        if entry.is_dagster_event or entry.level < logging.WARNING:
            continue
        out.append(_one_line(entry.user_message))
    return out


def _config_for(job: dg.JobDefinition, run_config: dict[str, Any]) -> dict[str, Any]:
    """``run_config`` with only the op settings of ops this job has (one config serves all phases)."""
    ops = run_config.get("ops")
    if not ops:
        return run_config
    names = {node.name for node in job.graph.nodes}
    return {**run_config, "ops": {k: v for k, v in ops.items() if k in names}}


def _execute(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    phase: Phase,
    partition: str | dg.MultiPartitionKey | None,
    run_config: dict[str, Any],
    tags: dict[str, str],
    keep_result: bool = True,
    selection: Iterable[dg.AssetKey] | None = None,
) -> StepReport:
    result = job.execute_in_process(
        run_config=_config_for(job, run_config),
        instance=instance,
        partition_key=partition,
        raise_on_error=False,
        asset_selection=sorted(selection if selection is not None else phase.keys),
        tags=tags or None,
    )
    report = StepReport(phase.name, None, result.run_id, result.success, result=result if keep_result else None)
    if not result.success:
        report.reason = innermost_reason(result)
    report.warnings = run_warnings(instance, result.run_id)
    del result
    _return_freed_memory()
    return report


def _return_freed_memory() -> None:
    """Give the heap a run freed back to the system (glibc keeps it otherwise, so each run of a
    long in-process build would start from the last one's peak); a no-op where there is no glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up once (``find_library`` runs ``ldconfig``), or None."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def run_plan(
    definitions: dg.Definitions,
    plan: RunPlan,
    sources: Sequence[str] | dict[str, str],
    instance: dg.DagsterInstance,
    *,
    run_config: dict[str, Any] | None = None,
    on_start: Callable[[Phase, str | None], None] | None = None,
    on_done: Callable[[StepReport], None] | None = None,
    vqa_sets: Sequence[str] = (),
    shard_count: Callable[[str], int] | None = None,
    keep_results: bool = True,
    stamp_base: str | None = None,
    skip_up_to_date: bool = False,
) -> list[StepReport]:
    """Every phase of ``plan`` in order; returns one report per run (skipped sources have none).

    ``sources`` may map each name to its declaration's fingerprint, recorded on its runs (the
    registry sensor then knows the declaration was attempted); the ``vqa`` phase runs once per
    name of ``vqa_sets``; a per-shard phase runs shards ``0 .. shard_count(source) - 1`` of each
    source (by default as ingestion recorded it under the output root, read after shard 0 is ingested).
    Each report keeps its run's in-process result (events, outputs) unless ``keep_results`` is
    False: a long build drops them (the instance has the events) so its memory does not grow run
    after run.

    With ``stamp_base`` (the code: see :mod:`~medtrinity_assets.defs.stamps`), each run is tagged with
    its assets' stamps; with ``skip_up_to_date`` too, a run materializes only its assets that are not
    up to date for their stamps (and what follows them in its phase); with none, it does not run:
    its report has ``skipped`` set and the id of a run that made them."""
    fingerprints = dict(sources) if isinstance(sources, dict) else {}
    config = {**QUIET_RUN_CONFIG, **(run_config or {})}
    shard_count = shard_count or _recorded_shard_count(definitions)
    stamps = _Stamps(stamp_base, plan, definitions, config, fingerprints, instance) if stamp_base else None
    failed: set[str] = set()
    reports: list[StepReport] = []
    for phase in plan.phases:
        job = definitions.resolve_job_def(phase.job_name)
        targets: list[str | None] = [None]
        if phase.per_source:
            targets = [s for s in sources if s not in failed]
        elif phase.per_vqa_set:
            targets = list(vqa_sets)
        for source in targets:
            tags = {SOURCE_TAG: source, **({FINGERPRINT_TAG: fingerprints[source]} if source in fingerprints else {})}
            for key in _partition_keys(phase, source, shard_count, instance):
                if on_start:
                    on_start(phase, source)
                report = _run_partition(job, instance, phase, key, source, config, tags, stamps, skip_up_to_date, keep_results)
                reports.append(report)
                if on_done:
                    on_done(report)
                if not report.success:
                    failed.add(source or GLOBAL)
                    break
        if GLOBAL in failed:
            break
    return reports


def _run_partition(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    phase: Phase,
    partition: str | dg.MultiPartitionKey | None,
    source: str | None,
    config: dict[str, Any],
    tags: dict[str, str],
    stamps: _Stamps | None,
    skip_up_to_date: bool,
    keep_results: bool,
) -> StepReport:
    """One partition of a phase: its assets that are not up to date (all of them without
    ``stamps`` or ``skip_up_to_date``) run, with what follows them in the phase; none: skipped."""
    tags = tags if phase.per_source else {}
    if stamps is None:
        report = _execute(job, instance, phase, partition, config, tags, keep_results)
        report.source = source
        return report
    made = Made(instance, partition)
    own = stamps.of(phase, source, partition)
    makers = {k: made.up_to_date(k, s) if skip_up_to_date else None for k, s in own.items()}
    todo = stamps.plan.to_run(phase, {k for k, run in makers.items() if run is None})
    if not todo:
        first = makers[phase.keys[0]]
        report = StepReport(phase.name, source, first.run_id if first else "", True, skipped=True)
    else:
        run_tags = {**tags, **stamp_tags({k: own[k] for k in todo})}
        report = _execute(job, instance, phase, partition, config, run_tags, keep_results, selection=todo)
        report.source, report.kept = source, len(phase.keys) - len(todo)
    if report.success:
        contents = made.record_contents(report.run_id, todo) if todo else {}
        for k in phase.keys:
            content = contents[k] if k in todo else made.content(k, makers[k])
            stamps.made(k, source if phase.per_source else None, partition, content or own[k])
    return report


class _Stamps:
    """The stamps of a build's assets (see :mod:`~medtrinity_assets.defs.stamps`): each from its
    settings, its source (per-source assets), the stamps of the assets of its run it reads and the
    content of those of earlier runs it reads (its source's, every shard, and the shared ones). A
    shared asset that reads per-source assets reads every registered source: their declarations,
    the content this build made and, for the partitions it did not make (``--only``, a failed
    source), their latest materializations."""

    def __init__(
        self,
        base: str,
        plan: RunPlan,
        definitions: dg.Definitions,
        config: dict[str, Any],
        fingerprints: dict[str, str],
        instance: dg.DagsterInstance,
    ) -> None:
        self.base, self.plan, self.instance, self.fingerprints = base, plan, instance, fingerprints
        self.settings = _asset_settings(definitions, config)
        self.declarations = _declarations(definitions)
        self.own_partition = _own_partition_reads(definitions)
        self._made: dict[dg.AssetKey, dict[tuple[str, str], str]] = {}  # key -> (source, partition) -> content

    def of(self, phase: Phase, source: str | None, partition: object) -> dict[dg.AssetKey, str]:
        """The stamp of each asset of ``phase`` for ``partition``."""
        own = source if phase.per_source else None
        stamps: dict[dg.AssetKey, str] = {}
        for key in self.plan.in_order(phase):
            parents = self.plan.parents(key)
            read = [f"{p.to_user_string()}={stamps[p]}" for p in parents if p in stamps]
            read += [f"{p.to_user_string()}@{part}={c}" for p in parents - set(stamps) for part, c in self._read(p, own)
                     if (key, p) not in self.own_partition or part == str(partition)]
            base = f"{self.base}:{self.settings.get(key, '')}"
            stamps[key] = asset_stamp(base, key, partition, self._inputs(key, own, parents), read)
        return stamps

    def _inputs(self, key: dg.AssetKey, own: str | None, parents: set[dg.AssetKey]) -> list | None:
        """What an asset reads of the sources themselves: a per-source asset, its source's declaration
        (and files, when it reads no other asset); a shared asset that reads per-source assets, every
        registered source's declaration (the expert models group their data by organ, the dataset
        card names each source's license)."""
        if own is not None:
            return [self.declarations.get(own), None if parents else self.fingerprints.get(own)]
        return sorted(self.declarations.items()) if any(map(self.plan.per_source, parents)) else None

    def _read(self, key: dg.AssetKey, own: str | None) -> list[tuple[str, str]]:
        """``(partition, content)`` of each partition of ``key`` that ``own``'s assets read: its
        source's (every shard) and the shared ones this build made; a shared asset reads every
        partition, those this build did not make (``--only``, a failed source) as they are."""
        made = self._made.get(key, {})
        found = {part: c for (s, part), c in made.items() if own is None or s in ("", own)}
        if own is None and self.plan.per_source(key):
            found.update(self._not_made(key, set(found)))
        return sorted(found.items())

    def _not_made(self, key: dg.AssetKey, made: set[str]) -> dict[str, str]:
        """The content of each partition of ``key`` not in ``made``, by its latest materialization
        (the event's id when it cannot tell)."""
        latest = self.instance.event_log_storage.get_latest_storage_id_by_partition(key, dg.DagsterEventType.ASSET_MATERIALIZATION)
        found: dict[str, str] = {}
        for part in sorted(set(latest) - made):
            there = Made(self.instance, part)
            record = there.record(key)
            found[part] = (there.content(key, there.run(record)) if record is not None else None) or f"#{latest[part]}"
        return found

    def made(self, key: dg.AssetKey, source: str | None, partition: object, read_as: str) -> None:
        self._made.setdefault(key, {})[(source or "", str(partition))] = read_as


def _own_partition_reads(definitions: dg.Definitions) -> set[tuple[dg.AssetKey, dg.AssetKey]]:
    """``(asset, parent)`` pairs where the asset reads only its own partition of the parent: both
    partitioned alike, with no partition mapping of their own (Dagster's identity), as a shard's
    ROIs read that shard's images. The stamp of such an asset reads that partition only, so one
    changed shard does not make the other shards' descriptions again."""
    specs = [spec for a in definitions.assets or [] if isinstance(a, dg.AssetsDefinition) for spec in a.specs]
    partitions = {spec.key: spec.partitions_def for spec in specs}
    return {
        (spec.key, dep.asset_key)
        for spec in specs
        for dep in spec.deps
        if spec.partitions_def is not None and partitions.get(dep.asset_key) == spec.partitions_def
        and (dep.partition_mapping is None or isinstance(dep.partition_mapping, dg.IdentityPartitionMapping))
    }


def _asset_settings(definitions: dg.Definitions, config: dict[str, Any]) -> dict[dg.AssetKey, str]:
    """The fingerprint of the settings each asset reads: the resources it requires and the run
    configuration of its op (a captioner setting does not make ingestion run again)."""
    resources = definitions.resources or {}
    rest = {k: v for k, v in config.items() if k != "ops"}
    out: dict[dg.AssetKey, str] = {}
    for a in definitions.assets or []:
        if not isinstance(a, dg.AssetsDefinition):
            continue
        needed = {k: resources[k] for k in sorted(a.required_resource_keys) if k in resources}
        op = a.node_def.name
        ops = {op: config["ops"][op]} if op in (config.get("ops") or {}) else {}
        settings = settings_fingerprint(needed, {**rest, **({"ops": ops} if ops else {})})
        out.update(dict.fromkeys(a.keys, settings))
    return out


def _declarations(definitions: dg.Definitions) -> dict[str, str]:
    """The fingerprint of each registered source's declaration, read from the definitions' registry."""
    registry = (definitions.resources or {}).get("registry")
    return {spec.name: spec.fingerprint() for spec in registry.sources()} if registry is not None else {}


def _recorded_shard_count(definitions: dg.Definitions) -> Callable[[str], int] | None:
    """Shard counts as ingestion recorded them under the definitions' output root."""
    from medtrinity_assets.core.parts import shard_count

    storage = (definitions.resources or {}).get("storage")
    return (lambda source: shard_count(storage.out(), source)) if storage is not None else None


def _partition_keys(
    phase: Phase, target: str | None, shard_count: Callable[[str], int] | None, instance: dg.DagsterInstance
) -> Iterator[str | dg.MultiPartitionKey | None]:
    """The partitions one target of a phase runs: each shard of a source for a per-shard phase
    (shard 0 first: its ingestion records how many shards the source has), else the target."""
    if not phase.per_shard or target is None:
        yield target
        return
    shard = 0
    while shard == 0 or (shard_count is not None and shard < shard_count(target)):
        key = shard_key(shard)
        if not instance.has_dynamic_partition(SHARDS.name, key):
            instance.add_dynamic_partitions(SHARDS.name, [key])
        yield shard_partition(target, shard)
        shard += 1
