"""Names of the mask values of one image record."""

from __future__ import annotations

from typing import Any

from medtrinity_assets.ingest.registry import SourceSpec


def label_names_of(row: dict[str, Any], spec: SourceSpec) -> dict[int, str]:
    """Mask value -> name for one image: the names stage 1 resolved for it (``mask_label_names``:
    the registry's, else ``dataset.json``'s or the SEG's segment label), then ``spec.labels``
    for tables written before that column existed."""
    names = dict(spec.labels)
    values = row.get("mask_labels") or []
    carried = row.get("mask_label_names") or []
    for value, name in zip(values, carried, strict=False):
        if value is not None and name:
            names[int(value)] = str(name)
    return names
