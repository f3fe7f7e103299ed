"""The one vocabulary of modalities, organs and body regions (data in ``vocabulary.yaml``).

Every stage that names a modality or an organ goes through here: the registry and the readers
map what a user or a header wrote onto a canonical key (:func:`canonical_modality`,
:func:`modality_of`), coarse captions and captioners take their phrases from the
:class:`Modality` entry, and the quality checks read modality and region words back out of a
description (:func:`modality_mentions`, :func:`regions_in`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from medtrinity_assets.core.regex_gate import Gated, GateGroup, gated


@dataclass(frozen=True)
class Modality:
    """One imaging modality (see the field notes in ``vocabulary.yaml``)."""

    key: str
    aliases: tuple[str, ...]
    dicom: tuple[str, ...]
    phrase: str
    term: str
    caption: str
    mentions: Gated  # most texts name no modality's words: the scan is skipped
    fuzzy: re.Pattern
    compatible: frozenset[str] = frozenset()
    colour: bool = False
    header: bool = False
    intensity: tuple[str, str, str] | None = None
    classical: str | None = None
    classical_label: str = "region"
    techniques: tuple[tuple[str, Gated], ...] = ()  # (name, the expression that finds it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_technique_group", GateGroup(rx for _, rx in self.techniques))

    def names_in(self, text: str) -> bool:
        """Whether ``text`` names this modality."""
        return bool(self.mentions.search(text or ""))

    def techniques_in(self, text: str) -> list[str]:
        """The techniques of this modality that ``text`` names, in the vocabulary's order, a
        technique inside a longer one named ("Doppler" in "colour Doppler") left out."""
        if not self.techniques:
            return []
        live = [self.techniques[i] for i in self._technique_group.live(text or "")]  # type: ignore[attr-defined]
        found = [(name, m.span()) for name, rx in live if (m := rx.search(text or ""))]
        return [name for name, (a, b) in found if not any(x <= a and b <= y and (x, y) != (a, b) for _, (x, y) in found)]


@dataclass(frozen=True)
class Organ:
    """One organ: its key, the words that name it, DICOM body-part codes, its regions."""

    key: str
    synonyms: tuple[str, ...]
    dicom: tuple[str, ...] = ()
    regions: frozenset[str] | None = None


@dataclass(frozen=True)
class Vocabulary:
    modalities: tuple[Modality, ...]
    default_intensity: tuple[str, str, str]
    region_words: dict[str, tuple[str, ...]]
    region_compatible: dict[str, frozenset[str]]
    whole_body: tuple[str, ...]
    unspecified_organs: frozenset[str]
    organs: dict[str, Organ] = field(default_factory=dict)

    def __post_init__(self) -> None:
        by_name: dict[str, Modality] = {}
        for m in self.modalities:
            for name in (m.key, *m.aliases, *(c.lower() for c in m.dicom)):
                by_name.setdefault(name.lower(), m)
        object.__setattr__(self, "_by_name", by_name)
        regions = {
            r: gated(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
            for r, words in self.region_words.items()
        }
        object.__setattr__(self, "_region_re", regions)
        object.__setattr__(self, "_region_group", GateGroup(regions.values()))
        object.__setattr__(self, "_region_keys", tuple(regions))
        object.__setattr__(self, "_mention_group", GateGroup(m.mentions for m in self.modalities))
        body_parts = {code.upper(): o for o in self.organs.values() for code in o.dicom}
        object.__setattr__(self, "_body_parts", body_parts)


def _modality(raw: dict[str, Any]) -> Modality:
    mentions = raw.get("mentions") or ""
    cs = raw.get("mentions_cs")
    parts = [f"(?i:{mentions})"] if mentions else []
    if cs:
        parts.append(cs)
    return Modality(
        key=raw["key"],
        aliases=tuple(a.lower() for a in raw.get("aliases", ())),
        dicom=tuple(c.upper() for c in raw.get("dicom", ())),
        phrase=raw["phrase"],
        term=raw["term"],
        caption=raw["caption"],
        mentions=gated("|".join(parts) or r"(?!)"),
        fuzzy=re.compile(raw.get("fuzzy") or r"(?!)"),
        compatible=frozenset(raw.get("compatible") or ()),
        colour=bool(raw.get("colour", False)),
        header=bool(raw.get("header", False)),
        intensity=tuple(raw["intensity"]) if raw.get("intensity") else None,
        classical=raw.get("classical"),
        classical_label=raw.get("classical_label") or "region",
        techniques=tuple((t, _technique_re(t)) for t in raw.get("techniques") or ()),
    )


def _technique_re(name: str) -> Gated:
    """A technique's words, whole, case-insensitive, a hyphen or a space between them (gated: most
    descriptions name no technique, and the checks read every one)."""
    words = re.split(r"[- ]+", name.strip())
    return gated(r"(?<![\w-])" + r"[- ]".join(re.escape(w) for w in words) + r"(?![\w-])", re.IGNORECASE)


def _organ(raw: dict[str, Any]) -> Organ:
    key = raw["key"].lower()
    synonyms = tuple(raw.get("synonyms") or ()) or _own_words(key)
    regions = frozenset(raw["regions"]) if raw.get("regions") else None
    return Organ(key, synonyms, tuple(c.upper() for c in raw.get("dicom", ())), regions)


def _own_words(organ: str) -> tuple[str, ...]:
    return (organ, *(w for w in re.findall(r"[a-z][a-z\-]+", organ) if len(w) >= 4))


@lru_cache(maxsize=1)
def vocabulary() -> Vocabulary:
    """The packaged vocabulary (read once)."""
    text = resources.files("medtrinity_assets.core").joinpath("vocabulary.yaml").read_text("utf-8")
    raw = yaml.safe_load(text)
    regions = raw["regions"]
    return Vocabulary(
        modalities=tuple(_modality(m) for m in raw["modalities"]),
        default_intensity=tuple(raw["default_intensity"]),
        region_words={r: tuple(v["words"]) for r, v in regions.items()},
        region_compatible={r: frozenset(v.get("compatible") or ()) for r, v in regions.items()},
        whole_body=tuple(raw["whole_body"]),
        unspecified_organs=frozenset(raw["unspecified_organs"]),
        organs={o.key: o for o in (_organ(r) for r in raw["organs"])},
    )


# --------------------------------------------------------------------------------------
# modalities


def modality_by_key(key: str) -> Modality | None:
    """The entry whose canonical key, alias or DICOM code is ``key`` (exact, case-insensitive)."""
    return vocabulary()._by_name.get((key or "").strip().lower())  # type: ignore[attr-defined]


def canonical_modality(modality: str) -> str:
    """Canonical key of a registry or DICOM modality string; an unknown one stays as written
    (lower-cased), so a user's own modality still groups its sources."""
    entry = modality_by_key(modality)
    return entry.key if entry else (modality or "").strip().lower()


def modality_of(value: str | None) -> Modality | None:
    """The modality a free-form string names: exact alias or code first, else the first entry
    (in vocabulary order) whose ``fuzzy`` expression matches."""
    if not value:
        return None
    exact = modality_by_key(value)
    if exact is not None:
        return exact
    v = value.strip().lower()
    return next((m for m in vocabulary().modalities if m.fuzzy.search(v)), None)


def header_modality(code: str, fallback: str) -> str:
    """The modality a DICOM/NIfTI header states, when it is one a header may assert (CT, MR,
    X-ray, US, NM, PET); else the registry's."""
    entry = modality_by_key(code) if code else None
    return entry.key if entry is not None and entry.header else canonical_modality(fallback)


def modality_mentions(text: str) -> set[str]:
    """Canonical keys of the modalities that ``text`` names."""
    return set(_modality_mentions(text))


@lru_cache(maxsize=4096)  # descriptions repeat their facets' sentences
def _modality_mentions(text: str) -> frozenset[str]:
    voc = vocabulary()
    return frozenset(voc.modalities[i].key for i in voc._mention_group.matching(text or ""))  # type: ignore[attr-defined]


def allowed_modalities(key: str) -> set[str]:
    """A modality and those a text may name with it."""
    entry = modality_by_key(key)
    return {entry.key, *entry.compatible} if entry else {key}


def keeps_colour(modality: str) -> bool:
    entry = modality_by_key(modality)
    return bool(entry and entry.colour)


def intensity_words(modality: str | None) -> tuple[str, str, str]:
    """[brighter, darker, similar] words for a modality."""
    entry = modality_by_key(modality or "")
    return entry.intensity if entry and entry.intensity else vocabulary().default_intensity


def modality_phrase(modality: str) -> str:
    """How a coarse caption opens for ``modality`` ("CT image")."""
    entry = modality_by_key(modality)
    return entry.phrase if entry else f"{modality.strip() or 'Medical'} image"


def modality_term(modality: str) -> str:
    """The retrieval query term of a canonical modality ("CT", "X-ray")."""
    entry = modality_by_key(modality)
    return entry.term if entry else modality


def modality_slug(modality: str) -> str:
    """A file-system name for a modality (``nuclear_medicine``)."""
    return canonical_modality(modality).replace(" ", "_").replace("/", "_")


# --------------------------------------------------------------------------------------
# organs and regions


def regions_in(text: str) -> set[str]:
    """Body regions that ``text`` names."""
    return set(_regions_in(text))


@lru_cache(maxsize=4096)  # labels and organ names repeat
def _regions_in(text: str) -> frozenset[str]:
    voc = vocabulary()
    return frozenset(voc._region_keys[i] for i in voc._region_group.matching(text or ""))  # type: ignore[attr-defined]


def compatible_regions(region: str) -> frozenset[str]:
    return vocabulary().region_compatible.get(region, frozenset())


def is_unspecified_organ(organ: str | None) -> bool:
    return not organ or organ.strip().lower() in vocabulary().unspecified_organs - {"phantom"}


def organ_region(organ: str | None) -> set[str] | None:
    """Regions an organ belongs to; None when any region is plausible (unknown, whole body)."""
    if not organ:
        return None
    voc = vocabulary()
    o = organ.lower().strip()
    entry = voc.organs.get(o)
    if entry is not None and entry.regions is not None:
        return set(entry.regions)
    if any(w in o for w in voc.whole_body) or o in voc.unspecified_organs:
        return None
    return regions_in(o) or None


def organ_terms(organ: str) -> tuple[str, ...]:
    """The words that name an organ in a description."""
    o = organ.strip().lower()
    entry = vocabulary().organs.get(o)
    return entry.synonyms if entry is not None else _own_words(o)


def organ_for_body_part(code: str | None) -> str | None:
    """The organ a DICOM BodyPartExamined code names, if the vocabulary knows it."""
    entry = vocabulary()._body_parts.get((code or "").strip().upper())  # type: ignore[attr-defined]
    return entry.key if entry else None


# --------------------------------------------------------------------------------------
# how an image was acquired: plane, MR sequence, CT window

_SEQUENCES = (  # first match wins: the most specific first
    (r"\bt1\w*\s*(?:\+\s*c|gd|ce|post|contrast)|\bt1gd\b|\bt1c\b", "contrast-enhanced T1-weighted"),
    (r"\bflair\b", "FLAIR"),
    (r"\bdwi\b|diffusion", "diffusion-weighted"),
    (r"\badc\b", "apparent diffusion coefficient"),
    (r"\bpd\b|proton[ -]density", "proton-density"),
    (r"\bt2\*|\bswi\b|susceptib", "susceptibility-weighted"),
    (r"\bt2\w*\b|t2-weighted", "T2-weighted"),
    (r"\bt1\w*\b|t1-weighted|mprage", "T1-weighted"),
)
_PLANES = {("L", "P"): "axial", ("R", "A"): "axial", ("L", "I"): "coronal", ("R", "S"): "coronal",
           ("P", "I"): "sagittal", ("A", "S"): "sagittal"}
#: named CT windows (level, width) in Hounsfield units, as radiologists call them
CT_WINDOWS = {(40, 80): "brain", (40, 40): "stroke", (60, 160): "liver", (40, 400): "soft-tissue",
              (50, 350): "mediastinal", (40, 350): "soft-tissue", (-600, 1500): "lung",
              (400, 1800): "bone", (600, 2800): "temporal-bone"}


def mr_sequence(text: str | None) -> str | None:
    """The MR sequence a description or channel name states ("T2-weighted", "FLAIR"), if any."""
    low = (text or "").lower()
    return next((name for rx, name in _SEQUENCES if re.search(rx, low)), None)


def plane_of(slice_axis: str | None, right: str | None, down: str | None) -> str | None:
    """The anatomical plane of a slice: its volume's slice axis, else its display directions."""
    if slice_axis in ("axial", "coronal", "sagittal"):
        return slice_axis
    return _PLANES.get((right or "", down or ""))


def window_name(window: str | None) -> str | None:
    """A CT window as radiologists name it ("brain window (L40/W80)"), from ``ct:<c>/<w>``."""
    m = re.fullmatch(r"ct:(-?[\d.]+)/([\d.]+)", window or "")
    if not m:
        return None
    level, width = float(m.group(1)), float(m.group(2))
    name = CT_WINDOWS.get((round(level), round(width)))
    figures = f"L{level:g}/W{width:g}"
    return f"{name} window ({figures})" if name else f"window {figures}"
