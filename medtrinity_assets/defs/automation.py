"""Declarative automation: what follows by itself once a source is ingested or a shared model changes.

The registry sensor (``sensors.py``) starts ingestion of a new or changed source (declaration or
files). From there, conditions on the assets carry the graph (the ``medtrinity_automation`` sensor
evaluates them every 30 s; it is on by default):

- **shared models**: the expert models retrain when a per-source input updates, once no source is
  mid-ingestion (a batch of new sources retrains once, not once per source; a source whose
  ingestion failed does not hold them back); the knowledge index follows the knowledge corpus.
- **per-shard assets after ingestion** (coarse captions, ROIs, retrieval, descriptions, quality):
  built when a per-shard input updates or the partition is new, and when a shared model
  they read changes *content* (its data version: the weights' and index's hashes), but never while a
  shared model they read is being rebuilt or about to be: they wait for it, then run once.
- **per-source summaries** (triplets): follow the source's shards once none is in progress.
- **export and model training**: not automated (hours of GPU time are started deliberately).

Nothing here fires on a sensor's first evaluation (``since_last_handled`` starts from it), so
opening the UI over a built instance, or one built only part of the way, starts no work; the export
and VQA phases are launched by hand or by ``medtrinity build``.
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

from medtrinity_assets.defs.plan import RunPlan

AUTOMATION_SENSOR = "medtrinity_automation"
AC = dg.AutomationCondition


def shared_model_condition() -> dg.AutomationCondition:
    """Rebuild after any per-source input updated, once none is in progress (missing ones allowed)."""
    return (
        (AC.newly_missing() | AC.any_deps_updated()).since_last_handled()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label("rebuild when sources change")


def per_source_condition(shared: dg.AssetSelection) -> dg.AutomationCondition:
    """Follow per-source inputs, and shared inputs only when their content changed; wait for a
    shared input that is in progress or requested on this tick."""
    source_updated = AC.any_deps_match(
        (AC.newly_updated() & ~AC.executed_with_root_target()) | AC.will_be_requested()
    ).ignore(shared)
    shared_changed = AC.any_deps_match(AC.data_version_changed()).allow(shared)
    # A shared model is pending while it builds, while any source it reads is being ingested, and on
    # the tick its inputs changed (when it is requested). Stateless on purpose: ``will_be_requested``
    # only sees parents that can share a run (an unpartitioned model and a source's partition
    # cannot), and a ``since`` nested under ``any_deps_match`` restarts on every evaluation.
    shared_pending = AC.any_deps_match(
        AC.in_progress() | AC.any_deps_in_progress() | AC.any_deps_updated()
    ).allow(shared)
    return (
        (AC.newly_missing() | source_updated | shared_changed).since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~shared_pending
        & ~AC.in_progress()
    ).with_label("follow the source and its shared models")


def summary_condition(last: dg.AssetSelection) -> dg.AutomationCondition:
    """A source's summary follows its shards' last per-shard stage (``last``), once no parent is in
    progress. Not "no parent missing": its parents are every shard key of the source, including
    keys past its last shard (the shard dimension is shared by all sources); the asset itself
    fails, naming it, when a current shard is not built yet, and runs again when it is."""
    return (
        AC.any_deps_match(AC.newly_updated()).allow(last).since_last_handled()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label("follow the source's shards")


def with_automation(assets: Iterable[object], plan: RunPlan) -> list[object]:
    """``assets`` with the conditions above set on the plan's shared and late per-source assets."""
    shared_keys = set(plan.phase("shared_models").keys) if plan.has("shared_models") else set()
    ingest = set(plan.phase("ingest").keys) if plan.has("ingest") else set()
    enrichment = set(plan.phase("enrichment").keys) if plan.has("enrichment") else set()
    summary = set(plan.phase("summary").keys) if plan.has("summary") else set()
    last = dg.AssetSelection.assets(*enrichment).sinks()  # the enrichment no other enrichment reads
    shared = dg.AssetSelection.assets(*shared_keys)
    per_source = per_source_condition(shared)
    sources_input = shared_model_condition()
    # the ingestion multi-asset is started by the registry sensor; what ingest runs besides it follows
    ingest_roots = {k for a in assets if isinstance(a, dg.AssetsDefinition) and len(a.keys) > 1
                    for k in a.keys if k in ingest}

    def condition(key: dg.AssetKey) -> dg.AutomationCondition | None:
        if key in shared_keys and key != dg.AssetKey("knowledge_corpus"):
            return sources_input if plan.per_source_upstream(key) else AC.eager()
        if key in enrichment or (key in ingest and key not in ingest_roots):
            return per_source
        if key in summary:
            return summary_condition(last)
        return None

    out: list[object] = []
    for a in assets:
        if isinstance(a, dg.AssetsDefinition) and any(condition(k) is not None for k in a.keys):
            a = a.map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=condition(spec.key)))
        out.append(a)
    return out


def build_automation_sensor() -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Evaluates the assets' automation conditions: shared models rebuild after sources "
        "change; each source's ROIs, retrieval, descriptions and triplets follow its ingestion and the "
        "shared models' new content. Nothing fires on its first evaluation.",
    )
