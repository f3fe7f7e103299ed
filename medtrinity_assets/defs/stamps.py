"""Build stamps: what each asset of a run of the plan was made from, so that a rebuild skips what
is up to date.

Each asset a run materializes gets a *stamp*, a hash of everything its output depends on:

- the code: every file of this package and the name and version of every installed distribution
  (the embedded corpus, ontologies and language model come from those);
- the settings: the configuration of the resources the asset requires (without the worker count,
  which changes no output), the run configuration of its op and the ``MEDTRINITY_*`` environment;
  a setting naming a local file or folder counts with its files' paths, sizes and modification
  times (a user's corpus, weights, VQA set or pseudonym key);
- the inputs: for a per-source asset, the source's declaration, and its files (as the registry
  sensor fingerprints them) when it reads no other asset; and the assets it reads: one of the same
  run by its stamp, one of an earlier phase by its content (its data version, else the hash of the
  table file it names; recorded on its run once made) where it tells it, else by its stamp. A
  per-source asset reads its own source's (every shard of it, or its own shard where its partition
  mapping is the identity) and the shared ones. A shared asset
  that reads per-source assets reads every registered source: their declarations (the expert
  models group their data by organ) and every partition, those the build did not make (``--only``,
  a failed source) by their latest materialization.

A run records the stamps of its assets as a tag. A later build leaves an asset out of its phase's
run when its latest materialization, for the partition, came from a run that recorded the same
stamp for it, every file it names still exists, the table file has the size and time that run
recorded (a run that failed after rewriting it leaves no materialization) and it reports no rows to
try again (``retry_on_rebuild``: descriptions a model server failed to write, images the OCR engine
failed to check, judge scores that failed): the same inputs, settings and code made what is on
disk, and nothing materialized it differently since (from the UI, a sensor or another build). The
run materializes the rest, with what follows them in the phase; with nothing left, it is skipped.
So ``--until roi_set`` and then a full build runs only what the first build did not make.

What a stamp cannot see: a remote source's files and a source declared with ``watch_files:
false`` count by their declaration only (as for the registry sensor), a remote captioner or judge
may answer differently to the same request, and files an asset reads without declaring the asset
that wrote them (the dataset card's backend lines, the fidelity report) do not count.
``medtrinity build --force`` runs everything. A source's files count as a whole: a changed file
runs the ingestion of every shard of its source; a shard whose tables come out the same stops
there (a shard's ROIs, descriptions and checks read that shard only, as their partition mapping
says).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from medtrinity_assets.core.storage import sha256_file

STAMP_TAG = "medtrinity/build_stamp"
CONTENT_TAG = "medtrinity/content_stamp"  # what a run made, per asset (see :meth:`Made.record_contents`)
FILES_TAG = "medtrinity/file_stamp"  # the size and time of the table file each asset of a run wrote
_USER_VERSION, _DATA_VERSION = "dagster/data_version_is_user_provided", "dagster/data_version"
_PACKAGE = Path(__file__).resolve().parent.parent
_NOT_OUTPUT = {"compute": ("workers",)}  # settings that change how fast, not what is made
_AS_TEXT = {"storage", "registry"}  # resources whose paths are not inputs


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


@functools.cache
def code_fingerprint() -> str:
    """Hash of this package's files and of the installed distributions' names and versions (those
    of the environment's package folders: the working directory, also on ``sys.path``, would make
    a build started elsewhere look like another version)."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(f"{path.relative_to(_PACKAGE)}\0".encode() + path.read_bytes() + b"\0")
    for folder in sys.path:
        if Path(folder).name not in ("site-packages", "dist-packages"):  # '' (the working directory) is ''
            continue
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith((".dist-info", ".egg-info")))
        except OSError:
            continue
        digest.update("\n".join(names).encode())
    return digest.hexdigest()[:24]


def _local_files(value: str) -> str | None:
    """Fingerprint of the files at a local path a setting names (None when it names none: a path
    has a slash or starts with ``~``, so a word such as ``demo`` never reads a folder of that name)."""
    from medtrinity_assets.ingest.watch import tree_fingerprint

    if not ("/" in value or value.startswith("~")) or len(value) > 4096 or "\0" in value or "://" in value:
        return None
    path = Path(value).expanduser()
    try:
        return tree_fingerprint(path) if path.exists() else None
    except OSError:
        return None


def _settings(value: Any) -> Any:
    """``value`` with every string naming a local file or folder paired with its files' fingerprint."""
    if isinstance(value, Mapping):
        return {str(k): _settings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_settings(v) for v in value]
    if isinstance(value, str):
        files = _local_files(value)
        return value if files is None else [value, files]
    return value


def _resource_settings(name: str, resource: Any) -> Any:
    """A resource's settings; the output root and the registry folder count as text (the stamps'
    inputs cover the sources; the output root is what is made)."""
    dump = getattr(resource, "model_dump", None)
    values = dump() if callable(dump) else repr(resource)
    if isinstance(values, dict):
        values = {k: v for k, v in values.items() if k not in _NOT_OUTPUT.get(name, ())}
    return [type(resource).__name__, values if name in _AS_TEXT else _settings(values)]


#: ``MEDTRINITY_*`` variables that change nothing a step makes: the GPU pool (when a step runs) and
#: the URL the asset pages show pictures from (set to serve the reports, it must not rebuild them)
NOT_OUTPUT_ENV = frozenset({"MEDTRINITY_GPU_POOL", "MEDTRINITY_REPORTS_URL"})


def settings_fingerprint(resources: Mapping[str, Any], run_config: Mapping[str, Any]) -> str:
    """Hash of the resources' settings, the run configuration and the ``MEDTRINITY_*`` environment
    (API keys left out: a key changes who pays, not what is made; so are the variables that change
    only where a step waits or how its pictures are shown, :data:`NOT_OUTPUT_ENV`)."""
    env = {k: v for k, v in os.environ.items()
           if k.startswith("MEDTRINITY_") and not k.endswith("API_KEY") and k not in NOT_OUTPUT_ENV}
    return _digest(
        {name: _resource_settings(name, r) for name, r in sorted(resources.items())},
        _settings(dict(run_config)),
        _settings(env),
    )


def asset_stamp(base: str, key: dg.AssetKey, partition: object, source: object, read: Iterable[object]) -> str:
    """The stamp of one asset in one run: ``base`` (code and the asset's settings), the asset, the
    partition, what it reads of its source (per-source assets) and what it reads of other assets."""
    name = key.to_user_string()
    return _digest(base, name, str(partition) if partition is not None else None, source, sorted(map(str, read)))


def stamp_tags(stamps: Mapping[dg.AssetKey, str]) -> dict[str, str]:
    """The run tag recording the stamps of the assets a run materializes."""
    return {STAMP_TAG: json.dumps({k.to_user_string(): v for k, v in stamps.items()}, sort_keys=True)}


def _tag_map(run: dg.DagsterRun | None, tag: str) -> dict[str, str]:
    """A run's JSON tag as a map (empty when absent or written by an older version)."""
    try:
        found = json.loads(run.tags.get(tag, "{}")) if run is not None else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey, partition: object) -> Any:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[str(partition)] if partition is not None else None),
        limit=1,
    ).records
    return records[0] if records else None


class Made:
    """The latest materializations of assets for a partition and the runs that made them (each run
    read once)."""

    def __init__(self, instance: dg.DagsterInstance, partition: object) -> None:
        self.instance, self.partition = instance, partition
        self._runs: dict[str, dg.DagsterRun | None] = {}
        self._records: dict[dg.AssetKey, Any] = {}

    def record(self, key: dg.AssetKey, fresh: bool = False) -> Any:
        """The latest materialization of ``key`` (read again with ``fresh``: a run just made it)."""
        if fresh or key not in self._records:
            self._records[key] = _latest(self.instance, key, self.partition)
        return self._records[key]

    def run(self, record: Any) -> dg.DagsterRun | None:
        run_id = record.event_log_entry.run_id
        if run_id not in self._runs:
            self._runs[run_id] = self.instance.get_run_by_id(run_id)
        return self._runs[run_id]

    def up_to_date(self, key: dg.AssetKey, stamp: str) -> dg.DagsterRun | None:
        """The run that made ``key`` with ``stamp``, when the files its materialization names are
        still there and it left no rows to try again; else None."""
        from medtrinity_assets.defs.reporting import RETRY_ON_REBUILD

        record = self.record(key)
        if record is None:
            return None
        metadata = record.asset_materialization.metadata if record.asset_materialization else {}
        if any(isinstance(v, dg.PathMetadataValue) and not Path(v.path).exists() for v in metadata.values()):
            return None
        retry = metadata.get(RETRY_ON_REBUILD)
        if isinstance(retry, dg.IntMetadataValue) and (retry.value or 0) > 0:
            return None
        run = self.run(record)
        name = key.to_user_string()
        if _tag_map(run, STAMP_TAG).get(name) != stamp:
            return None
        written = _tag_map(run, FILES_TAG).get(name)
        return run if written is None or written == _file_stat(record) else None  # else written since

    def content(self, key: dg.AssetKey, run: dg.DagsterRun | None = None) -> str | None:
        """What ``key`` holds: the content its maker ``run`` recorded, else :func:`_content`."""
        return _tag_map(run, CONTENT_TAG).get(key.to_user_string()) or _content(self.record(key))

    def record_contents(self, run_id: str, keys: Iterable[dg.AssetKey]) -> dict[dg.AssetKey, str | None]:
        """The content of each of ``keys`` a run just made, recorded on the run as a tag: a rebuild
        with nothing to do reads it instead of hashing every table again (gigabytes for a source of
        millions of images)."""
        records = {key: self.record(key, fresh=True) for key in keys}
        found = {key: _content(r) for key, r in records.items()}
        told = {k.to_user_string(): v for k, v in found.items() if v is not None}
        stats = {k.to_user_string(): stat for k, r in records.items() if (stat := _file_stat(r)) is not None}
        tags = {CONTENT_TAG: json.dumps(told, sort_keys=True)} if told else {}
        if stats:  # a run that fails after rewriting a file changes it: the asset is made again
            tags[FILES_TAG] = json.dumps(stats, sort_keys=True)
        if tags:
            self.instance.add_run_tags(run_id, tags)
        return found


def up_to_date(instance: dg.DagsterInstance, key: dg.AssetKey, partition: object, stamp: str) -> dg.DagsterRun | None:
    """The run that made ``key`` for ``partition`` with ``stamp`` (see :meth:`Made.up_to_date`)."""
    return Made(instance, partition).up_to_date(key, stamp)


def _table_path(record: Any) -> str | None:
    """The file (or folder) a materialization's ``path`` names, if it names one."""
    materialization = record.asset_materialization if record is not None else None
    path = materialization.metadata.get("path") if materialization is not None else None
    return path.path if isinstance(path, dg.PathMetadataValue) else None


def _file_stat(record: Any) -> str | None:
    """The size and modification time of the file (or folder) an asset's ``path`` names."""
    path = _table_path(record)
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}" if st is not None else None


def _content(record: Any) -> str | None:
    """What an asset holds: its own data version (a content hash the asset reported), or a hash of
    the table file its ``path`` names; None when it has neither."""
    materialization = record.asset_materialization if record is not None else None
    if materialization is None:
        return None
    if materialization.tags.get(_USER_VERSION) == "true":
        return materialization.tags.get(_DATA_VERSION)
    path = _table_path(record)
    return sha256_file(path) if path is not None and Path(path).is_file() else None
