"""Readers, one per layout, registered by the name users write in a registry file.

``layout: dicom`` selects :class:`~.dicom.DicomReader`, and so on. A reader implements
:class:`~.base.Reader`; :func:`register` adds it. Installed packages can add layouts through
the ``medtrinity_assets.readers`` entry-point group (``name = "package.module:ReaderClass"``).
Preprocessing finds a reader with :func:`reader_for` and never names a layout itself.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from medtrinity_assets.ingest.readers.base import (
    REASONS,
    InputRejected,
    Reader,
    Rejected,
    ScanResult,
    SourceLayoutMissing,
    SourceRootMissing,
    Task,
    Volume,
    direction_letter,
)

__all__ = [
    "REASONS",
    "InputRejected",
    "Reader",
    "Rejected",
    "ScanResult",
    "SourceLayoutMissing",
    "SourceRootMissing",
    "Task",
    "Volume",
    "direction_letter",
    "layouts",
    "reader_for",
    "register",
]

#: the built-in layouts: name -> module that registers it
BUILTIN = {
    "dicom": "medtrinity_assets.ingest.readers.dicom",
    "nifti_msd": "medtrinity_assets.ingest.readers.nifti",
    "image_folder": "medtrinity_assets.ingest.readers.image_folder",
    "table": "medtrinity_assets.ingest.readers.table",
}
ENTRY_POINT_GROUP = "medtrinity_assets.readers"

_READERS: dict[str, type[Reader]] = {}
_loaded = False


def register(cls: type[Reader]) -> type[Reader]:
    """Class decorator: make ``cls`` the reader of ``cls.layout``."""
    if not cls.layout:
        raise ValueError(f"{cls.__name__} has no layout name")
    _READERS[cls.layout] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for module in BUILTIN.values():
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        _READERS.setdefault(ep.name, cls)
    _loaded = True


def layouts() -> list[str]:
    """Every layout name a registry file may use."""
    _load_all()
    return sorted(_READERS)


def reader_for(layout: str) -> Reader:
    """A reader instance for ``layout``; a KeyError names the known layouts."""
    _load_all()
    try:
        return _READERS[layout]()
    except KeyError:
        raise KeyError(f"unknown layout {layout!r}; known: {', '.join(sorted(_READERS))}") from None
