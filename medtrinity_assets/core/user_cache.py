"""Files shared by every output root of this user, made once per machine (the language model's
conversion, the ontology's phrase index): where they live, and JSON records checked against the
hash of their bytes before they are read."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def user_cache_dir() -> Path:
    """``$MEDTRINITY_CACHE``, else ``$XDG_CACHE_HOME/medtrinity`` or ``~/.cache/medtrinity``."""
    explicit = os.environ.get("MEDTRINITY_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medtrinity"


def record_path(folder: str, stem: str, key: str) -> Path:
    """Where the record ``stem`` made from inputs hashed as ``key`` lives."""
    return user_cache_dir() / folder / f"{stem}-{key[:32]}.json"


def write_record(folder: str, stem: str, key: str, payload: Any) -> None:
    """Store ``payload`` (with ``key``) as JSON beside the hash of its bytes, removing the records of
    ``stem`` made from other inputs; a cache that cannot be written only means a slower start."""
    from medtrinity_assets.core.storage import atomic_write_bytes, sha256_bytes

    data = json.dumps({"key": key, "payload": payload}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    try:
        path = record_path(folder, stem, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f"{stem}-*"):
            if not old.name.startswith(path.name):
                old.unlink(missing_ok=True)
        atomic_write_bytes(path, data)
        atomic_write_bytes(path.with_name(path.name + ".sha256"), sha256_bytes(data).encode())
    except (OSError, RuntimeError):  # RuntimeError: no home directory to put it in
        pass


def read_record(folder: str, stem: str, key: str) -> Any | None:
    """The payload stored for ``key``, or None when there is none, or its bytes no longer match
    their stored hash (it is then to be made again)."""
    from medtrinity_assets.core.storage import sha256_bytes

    try:
        path = record_path(folder, stem, key)
        data, recorded = path.read_bytes(), path.with_name(path.name + ".sha256").read_text().strip()
    except (OSError, RuntimeError):
        return None
    if sha256_bytes(data) != recorded:
        return None
    try:
        raw = json.loads(data)
    except ValueError:
        return None
    return raw.get("payload") if isinstance(raw, dict) and raw.get("key") == key else None
