"""Default locations, and the settings an instance remembers (its output root and registry).

A Dagster instance (``$DAGSTER_HOME``) records the runs and materializations of one output
root: the tables they describe live there. So the output root and the registry folder are
remembered next to the instance, in ``$DAGSTER_HOME/medtrinity.json``, by the first
``medtrinity build`` or ``demo``; ``dagster dev`` on the same instance reads them, and a build
into another root is refused (see :func:`check_instance_settings`). This file is the one
channel through which the output root reaches the assets.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DATA_DIR = REPO_ROOT / "data"
DEFAULT_OUT_DIR = DATA_DIR / "out"
DEFAULT_REGISTRY_DIR = DATA_DIR / "sources"
DEFAULT_DEMO_DIR = DATA_DIR / "demo"
DEFAULT_DAGSTER_HOME = DATA_DIR / "dagster_home"
WORKSPACE_FILE = REPO_ROOT / "workspace.yaml"
SETTINGS_FILE = "medtrinity.json"


@dataclass(frozen=True)
class InstanceSettings:
    """What an instance was built with: the output root and the registry folder (absolute)."""

    out_dir: str
    registry_dir: str

    @classmethod
    def defaults(cls) -> InstanceSettings:
        return cls(str(DEFAULT_OUT_DIR), str(DEFAULT_REGISTRY_DIR))


class InstanceMismatch(ValueError):
    """A build asked for another output root than the one its instance was built with."""


def dagster_home() -> Path | None:
    """``$DAGSTER_HOME`` as an absolute path, or None when it is not set."""
    home = os.environ.get("DAGSTER_HOME")
    return Path(home).expanduser().resolve() if home else None


def read_instance_settings(home: Path | None = None) -> InstanceSettings | None:
    """The settings recorded in an instance home (default ``$DAGSTER_HOME``), if any."""
    home = home if home is not None else dagster_home()
    if home is None:
        return None
    path = Path(home) / SETTINGS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return InstanceSettings(str(data["out_dir"]), str(data["registry_dir"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def current_settings() -> InstanceSettings:
    """The settings of the instance at ``$DAGSTER_HOME``, else the repository defaults."""
    return read_instance_settings() or InstanceSettings.defaults()


def check_instance_settings(home: Path, wanted: InstanceSettings) -> InstanceSettings:
    """Record ``wanted`` in a new instance, or check it against what the instance remembers.

    Raises :class:`InstanceMismatch` with a message that says what to do when the instance
    was built with another output root: mixing two roots in one instance would show one
    root's materializations over the other's files.
    """
    recorded = read_instance_settings(home)
    if recorded is None:
        path = Path(home) / SETTINGS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(wanted), indent=2) + "\n", encoding="utf-8")
        return wanted
    if Path(recorded.out_dir) != Path(wanted.out_dir):
        raise InstanceMismatch(
            f"the instance at {home} holds the runs of --out {recorded.out_dir}; build into that "
            f"root, or give {wanted.out_dir} its own instance: DAGSTER_HOME={Path(wanted.out_dir) / '.dagster_home'}"
        )
    if Path(recorded.registry_dir) != Path(wanted.registry_dir):
        updated = InstanceSettings(recorded.out_dir, wanted.registry_dir)
        (Path(home) / SETTINGS_FILE).write_text(json.dumps(asdict(updated), indent=2) + "\n", encoding="utf-8")
        return updated
    return recorded
