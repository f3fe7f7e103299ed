"""Manifest and image rows of a source: built once, with every free-text field scrubbed and every
path redacted with the source's identifying values (:class:`RecordPrivacy`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medtrinity_assets.core import storage
from medtrinity_assets.core.tables import SOURCE_MANIFEST
from medtrinity_assets.core.vocabulary import canonical_modality
from medtrinity_assets.ingest.dedup import grey32, phash_bits, thumb16
from medtrinity_assets.ingest.readers.base import Volume
from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.ingest.slicing import Slice2D, SlicePlan
from medtrinity_assets.privacy import IdentifierMatcher, matcher_for, scrub_reason, scrub_text

#: manifest columns that hold free text (scrubbed once, here)
TEXT_COLUMNS = ("description", "body_part", "label", "report", "question", "answer")


class RecordPrivacy:
    """Scrubs text and redacts paths with the identifying values found while scanning a source."""

    def __init__(self, identifiers: Iterable[str] = ()) -> None:
        self.matcher: IdentifierMatcher = matcher_for(identifiers)
        self.redacted: set[str] = set()  # raw paths that carried a value (counted, never written)

    def text(self, value: str | None) -> str | None:
        return scrub_text(value, self.matcher) or None if value else None

    def texts(self, values: Iterable[str | None]) -> list[str | None]:
        return [self.text(v) for v in values]

    def path(self, relpath: str) -> str:
        out = self.matcher.redact_path(relpath)
        if out != relpath:
            self.redacted.add(relpath)
        return out

    def reason(self, reason: str) -> str:
        return scrub_reason(reason, self.matcher) or ""


@dataclass
class Candidate:
    """An encoded slice with its rows, waiting for the duplicate check."""

    manifest: dict[str, Any]
    image: dict[str, Any]
    png: bytes | None  # None once staged (see :func:`stage`)
    mask_png: bytes | None
    phash: int
    thumb: np.ndarray
    text_scanned: bool = False
    text_boxes: int = 0
    group_key: tuple[str, str] | None = None  # raw (kind, value); hashed by the collector
    mask_sha256: str | None = None  # hashed here, in the worker, as the image's is (image_row)
    staged: dict[str, str | None] | None = None  # content kind -> temporary file (None: in the store)

    def contents(self) -> list[tuple[str, str, bytes | None]]:
        """``(kind, sha256, bytes)`` of the image and its mask (if any)."""
        out: list[tuple[str, str, bytes | None]] = [("images", self.image["sha256"], self.png)]
        if self.mask_sha256 is not None:
            out.append(("masks", self.mask_sha256, self.mask_png))
        return out


def stage(cand: Candidate, out: str, owner: int | None = None) -> None:
    """Write the candidate's PNGs to temporary files in ``out``'s content store and drop the
    bytes, so that only file names travel from a worker to the process that keeps (commits) or
    discards them after the duplicate check: the encoded PNGs never go through a pipe, and the
    workers write them in parallel."""
    cand.staged = {
        kind: storage.stage_content(f"{out}/{storage.content_relpath(kind, sha)}", data, owner)
        for kind, sha, data in cand.contents()
    }
    cand.png = cand.mask_png = None


@dataclass
class TaskResult:
    candidates: list[Candidate] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # slices left out, by reason
    warnings: list[str] = field(default_factory=list)  # non-fatal findings, counted in metadata
    redacted: set[str] = field(default_factory=set)  # raw paths redacted (in memory only)


def base_row(spec: SourceSpec, relpath: str, privacy: RecordPrivacy) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(SOURCE_MANIFEST.columns)
    row.update(
        source=spec.name,
        relpath=privacy.path(relpath),
        modality=canonical_modality(spec.modality),
        organ=spec.organ,
        labels=[],
        split=spec.split,
        synthetic=spec.synthetic,
    )
    return row


def quarantine_row(spec: SourceSpec, relpath: str, reason: str, key: str, privacy: RecordPrivacy) -> dict[str, Any]:
    """One quarantined manifest row (the record id is of the raw path, the row holds the redacted one)."""
    row = base_row(spec, relpath, privacy)
    rid = storage.record_id(spec.name, relpath, None, key)
    row.update(record_id=rid, status="quarantined", reason=privacy.reason(reason))
    return row


def _label_names(vol: Volume, mask_names: list[str | None]) -> list[str]:
    """The record's labels: mask names (unnamed values left out), box labels, then a table row's
    own labels (``a; b`` when several rows named the image)."""
    names = [n for n in mask_names if n]
    for lab in [*vol.box_labels, *str(vol.meta.get("label") or "").split(";")]:
        lab = lab.strip()
        if lab and lab not in names:
            names.append(lab)
    return names


def manifest_row(
    spec: SourceSpec, vol: Volume, plan: SlicePlan, sl: Slice2D, rid: str, privacy: RecordPrivacy
) -> dict[str, Any]:
    mask_names = privacy.texts(vol.label_names.get(v) for v in sl.mask_labels)
    meta = vol.meta
    body_part = privacy.text(meta.get("body_part"))
    row = base_row(spec, sl.relpath, privacy)
    row.update(
        record_id=rid,
        status="ok",
        modality=vol.modality,
        labels=[n for n in dict.fromkeys(privacy.texts(_label_names(vol, mask_names))) if n],
        split=meta.get("split") or spec.split,
        width=sl.width,
        height=sl.height,
        depth=plan.view.shape[0],
        slice_axis=plan.slice_axis,
        slice_index=sl.index if vol.kind != "image" else None,
        body_part=body_part.lower() if body_part else None,
        sequence=meta.get("sequence") or None,
        **{c: privacy.text(meta.get(c)) for c in TEXT_COLUMNS if c != "body_part"},
    )
    return row


def image_row(
    spec: SourceSpec, vol: Volume, plan: SlicePlan, sl: Slice2D, rid: str, ph: int, privacy: RecordPrivacy
) -> dict[str, Any]:
    oh, ow = sl.image.shape[:2]
    return {
        "record_id": rid,
        "source": spec.name,
        "sha256": storage.sha256_bytes(sl.png),
        "phash": f"{ph:016x}",
        "width": ow,
        "height": oh,
        "channels": 3 if sl.image.ndim == 3 else 1,
        "window": plan.intensity.window,
        "original_spacing": [round(v, 6) for v in sl.spacing] if sl.spacing else None,
        "display_right": plan.orientation.right,
        "display_down": plan.orientation.down,
        "plane": plan.orientation.plane,
        "mask_labels": sl.mask_labels,
        "mask_label_names": privacy.texts(vol.label_names.get(v) for v in sl.mask_labels),
        "boxes": sl.boxes,
        "box_labels": [privacy.text(b) or "" for b in vol.box_labels],
        "box_clipped": sl.box_clipped,
        "text_boxes_redacted": sl.text_boxes if sl.text_scanned else None,
    }


def candidate(spec: SourceSpec, vol: Volume, plan: SlicePlan, sl: Slice2D, privacy: RecordPrivacy) -> Candidate:
    """The rows, PNGs and hashes of one kept slice."""
    sidx = sl.index if vol.kind != "image" else None
    rid = storage.record_id(spec.name, sl.relpath, sidx, vol.frame_key or (plan.slice_axis or ""))
    g32 = grey32(sl.image)
    ph = phash_bits(g32)
    return Candidate(
        manifest_row(spec, vol, plan, sl, rid, privacy),
        image_row(spec, vol, plan, sl, rid, ph, privacy),
        sl.png,
        sl.mask_png,
        ph,
        thumb16(g32),
        sl.text_scanned,
        sl.text_boxes,
        vol.meta.get("group_key"),
        storage.sha256_bytes(sl.mask_png) if sl.mask_png is not None else None,
    )
