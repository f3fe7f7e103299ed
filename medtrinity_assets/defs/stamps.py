"""Build stamps: what a run of the plan was made from, so that a rebuild skips what is up to date.

A run of one phase for one partition gets a *stamp*, a hash of everything its output depends on:

- the code: every file of this package and the name and version of every installed distribution
  (the embedded corpus, ontologies and language model come from those);
- the settings: the configuration of the resources the phase's assets require (without the worker
  count, which changes no output), the run configuration of their ops and the ``MEDTRINITY_*``
  environment; a setting naming a local file or folder counts with its files' paths, sizes and
  modification times (a user's corpus, weights, VQA set or pseudonym key);
- the inputs: for a per-source run, the source's declaration, and its files (as the registry sensor
  fingerprints them) when it is the source's first phase; and the earlier runs it reads (the same
  source's earlier phases and every shared run; a shared run reads every earlier run), each by the
  content of its assets where they tell it (:func:`content_stamp`, recorded on the run as a tag
  once it is made), else by its stamp.

The run is recorded with its stamp as a tag. A later build skips a run when the latest
materialization of each of its assets, for its partition, came from a run with the same stamp,
every file those materializations name still exists and none reports rows to try again
(``retry_on_rebuild``: descriptions a model server failed to write, images the OCR engine failed
to check, judge scores that failed): the same inputs, settings and code made what
is on disk, and nothing materialized it differently since (from the UI, a sensor or another
build). Anything else runs again, and so does everything downstream of it, whose stamps follow.

What a stamp cannot see: a remote source's files and a source declared with ``watch_files:
false`` count by their declaration only (as for the registry sensor), and a remote captioner or
judge may answer differently to the same request. ``medtrinity build --force`` runs everything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from medtrinity_assets.core.storage import sha256_file

STAMP_TAG = "medtrinity/build_stamp"
CONTENT_TAG = "medtrinity/content_stamp"  # what a stamped run made (see :func:`content_stamp`), recorded after it
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


def settings_fingerprint(resources: Mapping[str, Any], run_config: Mapping[str, Any]) -> str:
    """Hash of the resources' settings, the run configuration and the ``MEDTRINITY_*`` environment
    (API keys left out: a key changes who pays, not what is made)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("MEDTRINITY_") and not k.endswith("API_KEY")}
    return _digest(
        {name: _resource_settings(name, r) for name, r in sorted(resources.items())},
        _settings(dict(run_config)),
        _settings(env),
    )


def run_stamp(base: str, phase: str, keys: Iterable[str], partition: object, source: object, read: Iterable[str]) -> str:
    """The stamp of one run: ``base`` (code and settings), the phase and its assets, the partition,
    what it reads of its source (per-source runs) and the stamps of the runs it reads."""
    return _digest(base, phase, sorted(keys), str(partition) if partition is not None else None, source, sorted(read))


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey, partition: object) -> Any:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[str(partition)] if partition is not None else None),
        limit=1,
    ).records
    return records[0] if records else None


def up_to_date(
    instance: dg.DagsterInstance, keys: Iterable[dg.AssetKey], partition: object, stamp: str
) -> list[dg.DagsterRun] | None:
    """The runs (by id) that made every one of ``keys`` for ``partition`` with ``stamp``, when each
    file its materializations name is still there and none left rows to try again; else None."""
    from medtrinity_assets.defs.reporting import RETRY_ON_REBUILD

    run_ids = set()
    for key in keys:
        record = _latest(instance, key, partition)
        if record is None:
            return None
        run_ids.add(record.event_log_entry.run_id)
        metadata = record.asset_materialization.metadata if record.asset_materialization else {}
        if any(isinstance(v, dg.PathMetadataValue) and not Path(v.path).exists() for v in metadata.values()):
            return None
        retry = metadata.get(RETRY_ON_REBUILD)
        if isinstance(retry, dg.IntMetadataValue) and (retry.value or 0) > 0:
            return None
    runs = [instance.get_run_by_id(run_id) for run_id in sorted(run_ids)]
    if any(run is None or run.tags.get(STAMP_TAG) != stamp for run in runs):
        return None
    return runs  # type: ignore[return-value]


def _content(record: Any) -> str | None:
    """What an asset holds: its own data version (a content hash the asset reported), or a hash of
    the table file its ``path`` names; None when it has neither."""
    materialization = record.asset_materialization if record is not None else None
    if materialization is None:
        return None
    if materialization.tags.get(_USER_VERSION) == "true":
        return materialization.tags.get(_DATA_VERSION)
    path = materialization.metadata.get("path")
    if not isinstance(path, dg.PathMetadataValue) or not Path(path.path).is_file():
        return None
    return sha256_file(path.path)


def content_stamp(instance: dg.DagsterInstance, keys: Iterable[dg.AssetKey], partition: object) -> str | None:
    """A hash of what the latest materializations of ``keys`` for ``partition`` hold, when each
    can tell (see :func:`_content`); else None.

    The runs that read a run's assets take this for its stamp when there is one, so a run that made
    the same content again (the expert models retrained on unchanged masks, a source whose files were
    touched but not changed) does not make them run again: the rebuild stops there."""
    found = [_content(_latest(instance, key, partition)) for key in sorted(keys)]
    return _digest("content", found) if all(found) else None



def record_content(instance: dg.DagsterInstance, run_id: str, keys: Iterable[dg.AssetKey], partition: object) -> str | None:
    """The :func:`content_stamp` of what a run just made, recorded on the run as a tag."""
    content = content_stamp(instance, keys, partition)
    if content is not None:
        instance.add_run_tags(run_id, {CONTENT_TAG: content})
    return content


def recorded_content(
    instance: dg.DagsterInstance, made: Sequence[dg.DagsterRun], keys: Iterable[dg.AssetKey], partition: object
) -> str | None:
    """The content stamp of assets that are up to date (``made``: the runs :func:`up_to_date` found):
    the one recorded on the run when it alone made them, else :func:`content_stamp` again.

    Reading the tag spares a rebuild with nothing to do hashing every table again (gigabytes for a
    source of millions of images)."""
    if len(made) == 1 and made[0].tags.get(CONTENT_TAG):
        return made[0].tags[CONTENT_TAG]
    return content_stamp(instance, keys, partition)
