"""``medtrinity`` command line: run the asset graph on a registry folder into a Dagster instance.

``medtrinity demo`` stages the embedded demo sources and runs everything on them;
``medtrinity build --sources DIR --out DIR [--until ASSET]`` does the same for a user's registry;
``medtrinity backfill --sources DIR --out DIR`` queues the same work as one Dagster backfill for the
daemon of ``dagster dev``; ``medtrinity sources --sources DIR`` validates a registry folder; ``medtrinity compare OLD NEW``
compares the tables of two output roots row for row; ``medtrinity sql "SELECT ..."`` queries every
table of the output root through its DuckDB catalog; ``medtrinity prune [--apply]`` lists (removes)
the content files no table names any more.
Runs are recorded in the Dagster instance at ``$DAGSTER_HOME`` (default ``data/dagster_home``)
under the run plan's job names, so ``dagster dev`` shows them afterwards.

Exit codes: 0 everything built; 1 a source failed or a registry file was rejected (the others
were built); 2 nothing could start (a bad option, settings file or registry folder, or an
instance built with another output root).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtrinity_assets.core.paths import (
    DEFAULT_DAGSTER_HOME,
    DEFAULT_OUT_DIR,
    DEFAULT_REGISTRY_DIR,
    REPO_ROOT,
    WORKSPACE_FILE,
    InstanceMismatch,
    InstanceSettings,
    check_instance_settings,
    dagster_home,
    read_instance_settings,
)

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


def _say(message: str, err: bool = False) -> None:
    print(f"medtrinity: {message}", file=sys.stderr if err else sys.stdout)


def _prepare_dagster_home() -> Path:
    home = _home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    cfg, template = home / "dagster.yaml", REPO_ROOT / "dagster.yaml"
    if not cfg.exists() and template.exists():
        shutil.copyfile(template, cfg)
    return home


def load_overrides(path: str | None) -> dict[str, dict]:
    """Resource settings from a YAML file: ``{resource key: {field: value}}``; ``captioner:
    {backend: openai_compatible, ...}`` switches the captioner (see docs/examples/)."""
    if not path:
        return {}
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read settings: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict | None) for v in data.values()):
        raise ValueError(f"{path}: expected a mapping of resource name -> settings")
    return {k: dict(v or {}) for k, v in data.items()}


@dataclass
class BuildRequest:
    sources_dir: str
    out_dir: str
    until: str | None = None
    only: Sequence[str] = ()
    workers: int = 2
    quiet: bool = False
    config: str | None = None
    run_config: dict = field(default_factory=dict)
    force: bool = False  # run every phase again, even what is up to date


def _registry(req: BuildRequest) -> tuple[dict[str, str], list[str]]:
    """Sources to build (name -> fingerprint of declaration and files) and the rejected registry
    files' reasons; raises ValueError."""
    from medtrinity_assets.ingest.registry import RegistryError, load_registry

    try:
        specs, errors = load_registry(req.sources_dir, strict=False)
    except RegistryError as exc:
        raise ValueError(str(exc)) from None
    names = [s.name for s in specs]
    unknown = set(req.only) - set(names)
    if unknown:
        raise ValueError(f"unknown source(s): {', '.join(sorted(unknown))}")
    from medtrinity_assets.ingest.watch import source_fingerprint

    chosen = {s.name: source_fingerprint(s) for s in specs if not req.only or s.name in req.only}
    if not chosen:
        raise ValueError(f"no valid source in {req.sources_dir}")
    return chosen, errors


def _definitions(req: BuildRequest, settings: InstanceSettings):
    from medtrinity_assets.definitions import build_definitions
    from medtrinity_assets.defs.resources import ComputeResource, default_resources, resources_with_overrides

    resources = default_resources(settings)
    resources["compute"] = ComputeResource(workers=req.workers)
    overrides = load_overrides(req.config)
    try:
        resources = resources_with_overrides(resources, overrides)
    except ValueError as exc:
        raise ValueError(f"{req.config}: {exc}") from None
    return build_definitions(resources)


def _progress(req: BuildRequest, plan, names: Sequence[str], vqa_sets: Sequence[str] = ()):
    from tqdm import tqdm

    total = sum(len(names) if p.per_source else len(vqa_sets) if p.per_vqa_set else 1 for p in plan.phases)
    bar = tqdm(total=total, unit="run", disable=req.quiet, dynamic_ncols=True)
    per_shard = [p.name for p in plan.phases if p.per_shard]
    counted: set[str] = set()

    def count_shards(report) -> None:
        """Once a source's shard 0 is ingested its shard count is known: a source of ``k`` shards
        runs each per-shard phase ``k`` times, not once."""
        if report.success and report.phase in per_shard[:1] and report.source not in counted:
            from medtrinity_assets.core.parts import shard_count

            counted.add(report.source)
            bar.total += (shard_count(Path(req.out_dir), report.source) - 1) * len(per_shard)
            bar.refresh()

    def on_start(phase, source) -> None:
        bar.set_description(f"{phase.name}: {source or 'all sources'}")

    def on_done(report) -> None:
        who = report.source or "shared models"
        for w in report.warnings:
            bar.write(f"medtrinity: warning ({who}): {w}")
        if not report.success:
            bar.write(f"medtrinity: {report.phase} failed for {who}: {report.reason}")
        count_shards(report)
        bar.set_postfix_str("")  # the ended run's message (see _run_messages)
        bar.update(1)

    return bar, on_start, on_done


def _run_messages(bar):
    """The newest message of the run in progress beside the bar (a step can run for minutes)."""
    from medtrinity_assets.core.render import shorten
    from medtrinity_assets.defs.progress import RunMessages

    return RunMessages(lambda m: bar.set_postfix_str(shorten(m, 60))).start()


def _finish(req: BuildRequest, home: Path, names: Sequence[str], reports, rejected: list[str], elapsed: float) -> int:
    from medtrinity_assets.core.summary import summarize

    failed = [r for r in reports if not r.success]
    built = [n for n in names if all(r.source != n for r in failed)]
    out = Path(req.out_dir).resolve()
    if not req.quiet:
        skipped = sum(r.skipped for r in reports)
        if reports and skipped == len(reports):
            _say(f"done in {elapsed:.0f}s: nothing to run, all {len(names)} source(s) are up to date in {out}")
        else:
            _say(f"done in {elapsed:.0f}s: {len(built)} of {len(names)} source(s) built into {out}")
        if skipped:
            _say(f"{skipped} of {len(reports)} run(s) skipped: up to date (same sources, settings and code as "
                 "the runs that made them); --force runs them again")
        partial = [r for r in reports if r.kept and r.success and not r.skipped]
        if partial:
            _say(f"{len(partial)} run(s) made only what was not up to date: {sum(r.kept for r in partial)} "
                 "asset partition(s) kept as the last build made them")
        for line in summarize(out, built).lines():
            _say(line)
        from medtrinity_assets.llava.recipe import checkpoint_line
        from medtrinity_assets.vqa.metrics import summary_lines

        for line in [checkpoint_line(out), *summary_lines(out)]:
            if line:
                _say(line)
        _say(f"tables: {out}/<table>/<source>.parquet (shard k > 0 of a large source: <source>@k.parquet); "
             f"images: {out}/images/")
        if (out / "reports").is_dir():
            _say(f"pictures: {out}/reports/<asset>/<source>/ (contact sheets of the images, ROI overlays, "
                 "sample triplets)")
        _say(f"browse the runs and lineage: DAGSTER_HOME={home} dagster dev -w {WORKSPACE_FILE}")
    for r in failed:
        _say(f"FAILED {r.source or 'shared models'} ({r.phase}): {r.reason} [run {r.run_id}]", err=True)
    if not failed and not rejected:
        return EXIT_OK
    why = []
    if failed:
        why.append(f"{len(failed)} run(s) failed")
    if rejected:
        why.append(f"{len(rejected)} registry file(s) rejected")
    if not failed:
        rest = "everything else was built"
    elif any(r.source is None for r in failed):
        rest = "nothing that reads the shared models was built"
    else:
        rest = f"{len(built)} of {len(names)} source(s) built"
    _say(f"exit code 1: {' and '.join(why)}; {rest}", err=True)
    return EXIT_PARTIAL


@dataclass
class _Setup:
    home: Path
    settings: InstanceSettings
    names: dict[str, str]
    rejected: list[str]
    definitions: Any
    plan: Any


def _setup(req: BuildRequest) -> _Setup | int:
    """The instance home, its settings, the sources, the definitions and the plan; or an exit code."""
    home = _prepare_dagster_home()
    settings = InstanceSettings(str(Path(req.out_dir).resolve()), str(Path(req.sources_dir).resolve()))
    try:
        names, rejected = _registry(req)
        for err in rejected:
            _say(f"rejected registry file: {err}", err=True)
        settings = check_instance_settings(home, settings)
        definitions = _definitions(req, settings)
        from medtrinity_assets.defs.plan import RunPlan

        plan = RunPlan.from_assets(definitions.assets or [], req.until)
    except (ValueError, InstanceMismatch) as exc:
        _say(str(exc), err=True)
        return EXIT_USAGE
    return _Setup(home, settings, names, rejected, definitions, plan)


def _add_partitions(instance, partitions: str, keys) -> None:
    new = [n for n in keys if n not in set(instance.get_dynamic_partitions(partitions))]
    if new:
        instance.add_dynamic_partitions(partitions, new)


def run_backfill(req: BuildRequest) -> int:
    """Queue one asset backfill of every source for the instance's daemon; returns the exit code."""
    setup = _setup(req)
    if isinstance(setup, int):
        return setup
    import dagster as dg

    from medtrinity_assets.defs.backfill import backfill_keys, submit_backfill
    from medtrinity_assets.defs.partitions import SHARDS, SOURCES, shard_keys_needed
    from medtrinity_assets.ingest import count_shards

    instance = dg.DagsterInstance.get()
    registry = setup.definitions.resources["registry"]
    shards = {name: count_shards(registry.source(name)) for name in setup.names}
    _add_partitions(instance, SOURCES.name, setup.names)
    _add_partitions(instance, SHARDS.name, shard_keys_needed(shards, set()))
    backfill = submit_backfill(instance, setup.definitions, setup.plan, shards)
    _say(f"backfill {backfill.backfill_id} queued: {len(setup.names)} source(s) in {sum(shards.values())} "
         f"shard(s) x {len(backfill_keys(setup.plan))} asset(s) (instance: {setup.home}); the daemon of "
         f"`dagster dev` runs it in dependency order: http://127.0.0.1:3000/runs/b/{backfill.backfill_id}")
    return EXIT_PARTIAL if setup.rejected else EXIT_OK


def run_build(req: BuildRequest) -> int:
    """Build every phase of the plan for the registry's sources; returns the exit code."""
    setup = _setup(req)
    if isinstance(setup, int):
        return setup
    home, settings, names, rejected = setup.home, setup.settings, setup.names, setup.rejected
    definitions, plan = setup.definitions, setup.plan
    import dagster as dg

    from medtrinity_assets.core.storage import sweep_temp_files
    from medtrinity_assets.defs.partitions import SOURCES, VQA_SETS
    from medtrinity_assets.defs.runner import run_plan
    from medtrinity_assets.defs.stamps import code_fingerprint

    swept = sweep_temp_files(settings.out_dir, before=time.time()) if Path(settings.out_dir).exists() else 0
    if swept and not req.quiet:
        _say(f"removed {swept} temporary file(s) an interrupted build left under {settings.out_dir}")
    instance = dg.DagsterInstance.get()
    vqa_sets = definitions.resources["vqa_sets"].names() if plan.has("vqa") else []
    for partitions, keys in ((SOURCES.name, names), (VQA_SETS.name, vqa_sets)):
        _add_partitions(instance, partitions, keys)
    if not req.quiet:
        _say(f"{len(names)} source(s) -> {settings.out_dir} (instance: {home})")
    bar, on_start, on_done = _progress(req, plan, names, vqa_sets)
    started = time.time()
    messages = None if req.quiet else _run_messages(bar)
    try:
        reports = run_plan(definitions, plan, names, instance, run_config=req.run_config, on_start=on_start,
                           on_done=on_done, vqa_sets=vqa_sets, keep_results=False,
                           stamp_base=code_fingerprint(), skip_up_to_date=not req.force)
    finally:
        if messages is not None:
            messages.stop()
        bar.close()
    return _finish(req, home, names, reports, rejected, time.time() - started)


def _list_sources(sources_dir: str) -> int:
    from medtrinity_assets.ingest.registry import RegistryError, load_registry

    try:
        specs, errors = load_registry(sources_dir, strict=False)
    except RegistryError as exc:
        _say(str(exc), err=True)
        return EXIT_USAGE
    for s in specs:
        print(f"{s.name:24s} {s.layout:12s} {s.modality:18s} {s.organ:14s} synthetic={s.synthetic}")
    for err in errors:
        print(f"REJECTED {err}", file=sys.stderr)
    unreadable = [m for m in map(_root_problem, specs) if m]
    for message in unreadable:
        print(f"UNREADABLE {message}", file=sys.stderr)
    why = [f"{len(errors)} registry file(s) rejected"] if errors else []
    why += [f"{len(unreadable)} source root(s) missing what the layout reads"] if unreadable else []
    if unreadable and Path(sources_dir).resolve() == DEFAULT_REGISTRY_DIR.resolve():
        _say("the demo sources' files are staged by `medtrinity demo` (from installed packages)", err=True)
    if why:
        _say(f"exit code 1: {' and '.join(why)}", err=True)
    return EXIT_PARTIAL if why else EXIT_OK


def _root_problem(spec) -> str:
    """Why a local source root cannot be read by its layout (no root, or none of the entries the
    layout requires, such as ``images/``), or "" (remote roots are checked when they are mirrored)."""
    from medtrinity_assets.ingest.readers import reader_for
    from medtrinity_assets.ingest.readers.base import SourceRootMissing, missing_layout

    if spec.is_remote:
        return ""
    root = Path(spec.resolved_root())
    if not root.is_dir():
        return SourceRootMissing(spec.name, root).message
    error = missing_layout(spec, root, (p.name for p in root.iterdir()), reader_for(spec.layout).requires)
    return error.message if error is not None else ""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medtrinity", description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="stage the embedded demo sources and run the whole graph on them")
    demo.add_argument("--out", default=None, help=f"output root (default: the instance's, else {DEFAULT_OUT_DIR})")
    build = sub.add_parser("build", help="register the sources of DIR and materialize every partition")
    build.add_argument("--sources", required=True, help="registry folder of source YAML files")
    build.add_argument("--out", required=True, help="output root")
    backfill = sub.add_parser("backfill", help="queue one Dagster backfill of every source of DIR for the "
                              "daemon of `dagster dev` (ingestion, shared models, enrichment)")
    backfill.add_argument("--sources", required=True, help="registry folder of source YAML files")
    backfill.add_argument("--out", required=True, help="output root")
    for p in (demo, build, backfill):
        p.add_argument("--until", default=None, help="stop after this asset (and its upstream)")
        p.add_argument("--workers", type=int, default=2, help="processes per heavy stage (decoding, ROIs, "
                       "descriptions, their checks; default 2)")
        p.add_argument("--only", nargs="*", default=[], help="restrict to these source names")
        p.add_argument("--config", default=None, help="YAML of resource settings (captioner, embedder, ...)")
    for p in (demo, build):
        p.add_argument("--force", action="store_true", help="run every phase again, also those whose sources, "
                       "settings and code are unchanged since their last build (skipped by default)")
    check = sub.add_parser("sources", help="validate a registry folder and list its sources")
    check.add_argument("--sources", default=str(DEFAULT_REGISTRY_DIR),
                       help="registry folder of source YAML files (default: the demo's)")
    compare = sub.add_parser("compare", help="compare the tables of two output roots row for row")
    compare.add_argument("old")
    compare.add_argument("new")
    compare.add_argument("--ignore", nargs="*", default=[], help="columns to leave out of the comparison")
    sql = sub.add_parser("sql", help="run SQL on the DuckDB catalog of the output root (views over every table)")
    sql.add_argument("query", help='e.g. "SELECT source, count(*) FROM medtrinity_dataset GROUP BY ALL"')
    sql.add_argument("--out", default=None, help=f"output root (default: the instance's, else {DEFAULT_OUT_DIR})")
    sql.add_argument("--max-rows", type=int, default=100, help="rows to print at most")
    prune = sub.add_parser("prune", help="list the content files (PNGs) no table names any more, left by "
                           "rebuilds whose images changed; remove them with --apply")
    prune.add_argument("--out", default=None, help=f"output root (default: the instance's, else {DEFAULT_OUT_DIR})")
    prune.add_argument("--apply", action="store_true", help="remove them (default: only list what would go)")
    prune.add_argument("--min-age-hours", type=float, default=1.0,
                       help="keep files newer than this (a build may be writing them; default 1)")
    return parser


def _home() -> Path:
    return dagster_home() or DEFAULT_DAGSTER_HOME.resolve()


def _default_out(out: str | None) -> str:
    """``out``, else the output root the instance was built with, else the default one."""
    recorded = read_instance_settings(_home()) if out is None else None
    return out or (recorded.out_dir if recorded else str(DEFAULT_OUT_DIR))


def _sql(out: str | None, query: str, max_rows: int) -> int:
    """``medtrinity sql``: the catalog (built or refreshed when missing or older than the tables),
    the query's result as a table; exit 2 with one line when the query fails."""
    from medtrinity_assets.export.catalog import run_sql

    return run_sql(_default_out(out), query, max_rows=max_rows)


def _prune(out: str | None, apply: bool, min_age_hours: float) -> int:
    """``medtrinity prune``: the content files no table names (``core/prune.py``), removed with
    ``--apply`` when no run of the instance is in progress; exit 2 with one line when refused."""
    from medtrinity_assets.core.prune import PruneRefused, plan_prune, prune

    out = _default_out(out)
    try:
        plan = plan_prune(out, min_age_hours * 3600)
    except PruneRefused as exc:
        _say(f"prune refused: {exc}", err=True)
        return EXIT_USAGE
    busy = _runs_in_progress() if apply and plan.unreferenced else 0
    if busy:
        _say(f"prune refused: {busy} run(s) of the instance at {_home()} are queued or in progress; "
             "prune when no build writes to the output root", err=True)
        return EXIT_USAGE
    if apply:
        prune(plan)
    more = "; run again with --apply to remove them" if plan.unreferenced and not apply else ""
    _say(plan.summary(applied=apply) + more)
    return EXIT_OK


def _runs_in_progress() -> int:
    """Queued, starting, started or cancelling runs of the instance at ``$DAGSTER_HOME`` (0 without one)."""
    import dagster as dg

    if not (_home() / "dagster.yaml").is_file():
        return 0
    os.environ["DAGSTER_HOME"] = str(_home())
    busy = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
            dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
    with dg.DagsterInstance.get() as instance:
        return instance.get_runs_count(dg.RunsFilter(statuses=busy))


def _compare(old: str, new: str, ignore: Sequence[str]) -> int:
    from medtrinity_assets.core.compare import compare_roots

    diffs, files = compare_roots(old, new, ignore)
    for d in diffs:
        for line in d.lines():
            print(line)
    for line in files:
        print(line)
    differing = [d.name for d in diffs if not d.identical]
    _say(f"{len(diffs) - len(differing)} of {len(diffs)} tables identical" + (f"; differ: {', '.join(differing)}" if differing else ""))
    return EXIT_PARTIAL if differing else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sources":
        return _list_sources(args.sources)
    if args.command == "sql":
        return _sql(args.out, args.query, args.max_rows)
    if args.command == "compare":
        return _compare(args.old, args.new, args.ignore)
    if args.command == "prune":
        return _prune(args.out, args.apply, args.min_age_hours)
    if args.command == "demo":
        from medtrinity_assets.demo.staging import stage_demo_data

        staged = stage_demo_data()
        _say(f"staged {len(staged)} demo sources from installed packages")
        out, sources = _default_out(args.out), str(DEFAULT_REGISTRY_DIR)
    else:
        out, sources = args.out, args.sources
    req = BuildRequest(sources, out, args.until, args.only, args.workers, config=args.config,
                       force=getattr(args, "force", False))
    return run_backfill(req) if args.command == "backfill" else run_build(req)


if __name__ == "__main__":
    raise SystemExit(main())
