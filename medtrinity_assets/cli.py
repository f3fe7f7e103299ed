"""``medtrinity`` command line: run the asset graph on a registry folder into a Dagster instance.

``medtrinity demo`` stages the embedded demo sources and runs everything on them;
``medtrinity build --sources DIR --out DIR [--until ASSET]`` does the same for a user's registry.
Runs are recorded in the Dagster instance at ``$DAGSTER_HOME`` (default ``data/dagster_home``),
so ``dagster dev`` shows them afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _prepare_dagster_home() -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT / "data" / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    cfg = home / "dagster.yaml"
    template = REPO_ROOT / "dagster.yaml"
    if not cfg.exists() and template.exists():
        shutil.copyfile(template, cfg)
    return home


def _one_line(text: str | None) -> str:
    text = (text or "unknown error").strip().splitlines()
    return text[0][:300] if text else "unknown error"


def _failure_reason(result) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            if data.user_failure_data is not None and data.user_failure_data.description:
                return _one_line(data.user_failure_data.description)
            if data.error is not None:
                return _one_line(data.error.message)
    return "run failed"


def plan_phases(assets: Sequence, until: str | None) -> list[tuple[str, list]]:
    """Split the selected assets into per-source and global phases in lineage order.

    Per-source assets whose ancestors are all per-source run first, then global assets
    (which may read every source), then the per-source assets that need a global one.
    ``until`` selects that asset and its ancestors. An asset produced by a multi-asset that
    cannot be subset (``source_manifest`` and ``preprocessed_images`` come from one op) brings
    its sibling keys, and their ancestors, into the selection and into the same phase:
    materializing only part of such a multi-asset fails.
    """
    import dagster as dg

    from medtrinity_assets.assets.common import SOURCES

    parents: dict = {}
    partitioned: set = set()
    together: dict = {}  # key -> every key of its non-subsettable multi-asset
    for a in assets:
        if not isinstance(a, dg.AssetsDefinition):
            continue
        for spec in a.specs:
            parents[spec.key] = {d.asset_key for d in spec.deps}
            if spec.partitions_def == SOURCES:
                partitioned.add(spec.key)
        if len(a.keys) > 1 and not a.can_subset:
            for key in a.keys:
                together[key] = frozenset(a.keys)

    def ancestors(key) -> set:
        seen, stack = set(), list(parents.get(key, ()))
        while stack:
            k = stack.pop()
            if k not in seen:
                seen.add(k)
                stack.extend(parents.get(k, ()))
        return seen

    def closure(selected: set) -> set:
        """``selected`` plus the siblings of their multi-assets and everything upstream."""
        out, stack = set(), list(selected)
        while stack:
            k = stack.pop()
            if k in out or k not in parents:
                continue
            out.add(k)
            stack.extend(together.get(k, ()))
            stack.extend(ancestors(k))
        return out

    keys = set(parents)
    if until:
        target = dg.AssetKey(until)
        if target not in keys:
            known = ", ".join(sorted(k.to_user_string() for k in keys))
            raise SystemExit(f"medtrinity: unknown asset '{until}'; known: {known}")
        keys = closure({target})
    global_keys = keys - partitioned

    # A per-source key runs late when it needs a global asset or a late key; a multi-asset runs
    # in one phase, so one late key makes all its keys late (and, in turn, their descendants).
    late_set: set = set()
    changed = True
    while changed:
        changed = False
        for k in keys & partitioned - late_set:
            if any(ancestors(m) & (global_keys | late_set) for m in together.get(k, {k})):
                late_set |= {k} | (set(together.get(k, ())) & keys)
                changed = True
    early = sorted(keys & partitioned - late_set)
    late = sorted(keys & partitioned & late_set)
    phases: list[tuple[str, list]] = []
    for kind, ks in (("per_source", early), ("global", sorted(global_keys)), ("per_source", late)):
        if ks:
            phases.append((kind, ks))
    return phases


def load_resource_overrides(path: str | None) -> dict[str, dict]:
    """Resource settings from a YAML file: ``{resource key: {field: value}}``.

    For example ``captioner: {backend: openai_compatible, base_urls: [...], model: ...}``
    switches the captioner without touching code; ``storage`` is set by ``--out``/``--sources``.
    """
    if not path:
        return {}
    import yaml

    from medtrinity_assets.resources import default_resources

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"medtrinity: {path}: expected a mapping of resource name -> settings")
    known = set(default_resources()) - {"storage"}
    unknown = set(data) - known
    if unknown:
        raise SystemExit(f"medtrinity: {path}: unknown resource(s) {sorted(unknown)}; known: {sorted(known)}")
    return {k: dict(v or {}) for k, v in data.items()}


def run_build(
    sources_dir: str,
    out_dir: str,
    until: str | None = None,
    only: Sequence[str] = (),
    workers: int = 2,
    quiet: bool = False,
    config: str | None = None,
) -> int:
    home = _prepare_dagster_home()
    os.environ["MEDTRINITY_OUT"] = str(Path(out_dir).resolve())
    os.environ["MEDTRINITY_SOURCES"] = str(Path(sources_dir).resolve())

    import dagster as dg
    from tqdm import tqdm

    from medtrinity_assets.assets.common import SOURCES
    from medtrinity_assets.definitions import build_definitions
    from medtrinity_assets.registry import RegistryError, load_registry
    from medtrinity_assets.resources import ComputeResource, PipelineStorage, default_resources

    try:
        specs, errors = load_registry(sources_dir, strict=False)
    except RegistryError as exc:
        print(f"medtrinity: {exc}", file=sys.stderr)
        return 2
    for err in errors:
        print(f"medtrinity: rejected registry file: {err}", file=sys.stderr)
    if only:
        unknown = set(only) - {s.name for s in specs}
        if unknown:
            print(f"medtrinity: unknown source(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        specs = [s for s in specs if s.name in only]
    names = [s.name for s in specs]
    if not names:
        print(f"medtrinity: no valid source in {sources_dir}", file=sys.stderr)
        return 2

    instance = dg.DagsterInstance.get()
    existing = set(instance.get_dynamic_partitions(SOURCES.name))
    new = [n for n in names if n not in existing]
    if new:
        instance.add_dynamic_partitions(SOURCES.name, new)

    defs = build_definitions()
    assets = list(defs.assets or [])
    checks = list(defs.asset_checks or [])
    resources = default_resources()
    resources["storage"] = PipelineStorage(
        out_dir=str(Path(out_dir).resolve()), registry_dir=str(Path(sources_dir).resolve())
    )
    resources["compute"] = ComputeResource(workers=workers)
    for key, settings in load_resource_overrides(config).items():
        try:
            resources[key] = type(resources[key])(**{**resources[key].model_dump(), **settings})
        except Exception as exc:  # pydantic validation: one line naming the resource
            print(f"medtrinity: {config}: resource '{key}': {_one_line(str(exc))}", file=sys.stderr)
            return 2
    phases = plan_phases(assets, until)
    total = sum(len(names) if kind == "per_source" else 1 for kind, _ in phases)
    # Dagster's console logger would drown the progress bar: warnings and errors only here;
    # every event is still recorded in the instance and shown by the UI.
    run_config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    failures: dict[str, str] = {}
    started = time.time()
    if not quiet:
        print(f"medtrinity: {len(names)} source(s) -> {Path(out_dir).resolve()} (instance: {home})")
    bar = tqdm(total=total, unit="step", disable=quiet, dynamic_ncols=True)
    for kind, keys in phases:
        selection = dg.AssetSelection.assets(*keys)
        if kind == "global":
            bar.set_description("global: " + ",".join(k.to_user_string() for k in keys))
            result = dg.materialize(
                [*assets, *checks],
                selection=selection,
                instance=instance,
                resources=resources,
                raise_on_error=False,
                run_config=run_config,
            )
            if not result.success:
                failures["<global>"] = _failure_reason(result)
            bar.update(1)
            continue
        for name in names:
            bar.set_description(f"{name}: " + ",".join(k.to_user_string() for k in keys))
            if name in failures:
                bar.update(1)
                continue
            result = dg.materialize(
                [*assets, *checks],
                selection=selection | dg.AssetSelection.checks_for_assets(*keys),
                partition_key=name,
                instance=instance,
                resources=resources,
                raise_on_error=False,
                run_config=run_config,
                tags={"medtrinity/source": name},
            )
            if not result.success:
                failures[name] = _failure_reason(result)
                bar.write(f"medtrinity: source '{name}' failed: {failures[name]}")
            bar.update(1)
    bar.close()
    elapsed = time.time() - started
    if failures:
        for name, reason in failures.items():
            print(f"medtrinity: FAILED {name}: {reason}", file=sys.stderr)
        print(f"medtrinity: {len(failures)} failure(s) in {elapsed:.0f}s", file=sys.stderr)
        return 1
    if errors:
        return 1
    if not quiet:
        print(
            f"medtrinity: done in {elapsed:.0f}s; browse with: DAGSTER_HOME={home} dagster dev -w workspace.yaml"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medtrinity", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="stage the embedded demo sources and run the whole graph on them")
    demo.add_argument("--out", default=str(REPO_ROOT / "data" / "out"))
    demo.add_argument("--until", default=None, help="stop after this asset (and its upstream)")
    demo.add_argument("--workers", type=int, default=2)
    demo.add_argument("--only", nargs="*", default=[], help="restrict to these source names")
    demo.add_argument("--config", default=None, help="YAML of resource settings (captioner, embedder, ...)")

    build = sub.add_parser("build", help="register the sources of DIR and materialize every partition")
    build.add_argument("--sources", required=True, help="registry folder of source YAML files")
    build.add_argument("--out", required=True, help="output root")
    build.add_argument("--until", default=None, help="stop after this asset (and its upstream)")
    build.add_argument("--workers", type=int, default=2)
    build.add_argument("--only", nargs="*", default=[], help="restrict to these source names")
    build.add_argument("--config", default=None, help="YAML of resource settings (captioner, embedder, ...)")

    check = sub.add_parser("sources", help="validate a registry folder and list its sources")
    check.add_argument("--sources", default=str(REPO_ROOT / "data" / "sources"))

    args = parser.parse_args(argv)
    if args.command == "demo":
        from medtrinity_assets.demo_data import DEFAULT_REGISTRY_DIR, stage_demo_data

        staged = stage_demo_data()
        print(f"medtrinity: staged {len(staged)} demo sources from installed packages")
        return run_build(
            str(DEFAULT_REGISTRY_DIR), args.out, args.until, args.only, args.workers, config=args.config
        )
    if args.command == "build":
        return run_build(args.sources, args.out, args.until, args.only, args.workers, config=args.config)
    if args.command == "sources":
        from medtrinity_assets.registry import RegistryError, load_registry

        try:
            specs, errors = load_registry(args.sources, strict=False)
        except RegistryError as exc:
            print(f"medtrinity: {exc}", file=sys.stderr)
            return 2
        for s in specs:
            print(f"{s.name:24s} {s.layout:12s} {s.modality:18s} {s.organ:14s} synthetic={s.synthetic}")
        for err in errors:
            print(f"REJECTED {err}", file=sys.stderr)
        return 1 if errors else 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
