"""Shared vocabulary: modality families, body regions, laterality and intensity words.

Used by the embedded captioner to phrase facets and by the quality checks to read claims
back out of any caption's text.
"""

from __future__ import annotations

import re

# modality family -> (long name for captions, regex of words that name it in text)
MODALITY_FAMILIES: dict[str, tuple[str, str]] = {
    "ct": ("computed tomography (CT)", r"\bCT\b|computed tomograph\w*|\bCAT scan"),
    "mri": ("magnetic resonance (MR) image", r"\bMRI?\b|magnetic resonance|\bT[12]-weighted|\bFLAIR\b"),
    "xray": ("radiograph (X-ray)", r"x-?ray\w*|radiograph\w*|\bCXR\b"),
    "ultrasound": ("ultrasound image", r"ultrasound|ultrason\w*|sonograph\w*|echograph\w*"),
    "nuclear": ("nuclear medicine scintigram", r"nuclear medicine|scintigra\w*|bone scan|\bSPECT\b|\bPET\b|positron emission"),
    "histopathology": ("histopathology slide", r"histopatholog\w*|histolog\w*|\bH&E\b|haematoxylin|hematoxylin|immunohistochem\w*|\bIHC\b"),
    "microscopy": ("microscopy image", r"microscop\w*|micrograph\w*|phase-contrast"),
    "fundus": ("fundus photograph", r"fundus|fundoscop\w*|retinal photograph\w*"),
    "dermoscopy": ("dermoscopy image", r"dermoscop\w*|dermatoscop\w*"),
    "endoscopy": ("endoscopy image", r"endoscop\w*|colonoscop\w*|gastroscop\w*"),
}
# families that may be named together (a histology slide is seen through a microscope, ...)
MODALITY_COMPATIBLE = {
    "histopathology": {"microscopy"},
    "microscopy": {"histopathology"},
    "fundus": set(),
    "nuclear": set(),
}
_MODALITY_RE = {fam: re.compile(rx, re.IGNORECASE if fam not in ("ct", "mri") else 0)
                for fam, (_, rx) in MODALITY_FAMILIES.items()}
# case-insensitive variants for the long forms of CT/MRI
_MODALITY_RE_CI = {
    "ct": re.compile(r"computed tomograph\w*|\bCAT scan", re.IGNORECASE),
    "mri": re.compile(r"magnetic resonance|\bT[12]-weighted", re.IGNORECASE),
}

_MODALITY_ALIASES = [
    ("ct", r"^(ct|computed tomography|cat)\b|\bct\b"),
    ("mri", r"^(mr|mri)\b|magnetic resonance|\bmri?\b"),
    ("xray", r"x-?ray|radiograph|^(cr|dx|rf|xa|mg)$|mammogra"),
    ("ultrasound", r"ultrasound|^us$|sonograph|echo"),
    ("nuclear", r"nuclear|^nm$|^pt$|\bpet\b|spect|scintigra"),
    ("histopathology", r"histo|patholog|^sm$|h&e|ihc|immunohisto"),
    ("microscopy", r"microscop|micrograph|cell"),
    ("fundus", r"fundus|retina|ophthalm|^op$"),
    ("dermoscopy", r"dermo|dermato"),
    ("endoscopy", r"endoscop|colonoscop|^es$"),
]


def modality_family(value: str | None) -> str | None:
    """Normalise a metadata modality (``CT``, ``MR``, ``X-ray``, ``Histopathology``...) to a family."""
    if not value:
        return None
    v = value.strip().lower()
    for fam, rx in _MODALITY_ALIASES:
        if re.search(rx, v):
            return fam
    return None


def modality_mentions(text: str) -> set[str]:
    """Modality families named in ``text``."""
    found = set()
    for fam, rx in _MODALITY_RE.items():
        if rx.search(text) or (fam in _MODALITY_RE_CI and _MODALITY_RE_CI[fam].search(text)):
            found.add(fam)
    return found


# body regions: words that place a description in one part of the body
REGION_WORDS: dict[str, tuple[str, ...]] = {
    "head": ("brain", "cerebral", "cerebrum", "cerebellum", "cerebellar", "skull", "cranial", "intracranial",
             "hemisphere", "grey matter", "gray matter", "white matter"),
    "chest": ("chest", "thorax", "thoracic", "lung", "lungs", "pulmonary", "heart", "cardiac", "mediastinum",
              "mediastinal", "pleura", "pleural"),
    "abdomen": ("abdomen", "abdominal", "liver", "hepatic", "kidney", "kidneys", "renal", "spleen", "splenic",
                "pancreas", "pancreatic", "stomach", "bowel", "colon", "colonic", "gallbladder"),
    "pelvis": ("pelvis", "pelvic", "prostate", "bladder", "uterus", "uterine", "ovary"),
    "limb": ("knee", "tibia", "tibial", "fibula", "femur", "femoral", "shoulder", "humerus", "humeral",
             "ankle", "wrist", "elbow", "foot", "forearm"),
    "eye": ("retina", "retinal", "fundus", "optic disc", "macula", "macular", "eye", "ocular"),
    "skin": ("skin", "cutaneous", "dermal", "epidermis"),
}
COMPATIBLE_REGIONS = {
    "head": {"eye"},
    "eye": {"head"},
    "chest": {"abdomen"},  # upper abdomen shows on chest images and vice versa
    "abdomen": {"chest", "pelvis"},
    "pelvis": {"abdomen", "limb"},
    "limb": {"pelvis"},
}
WHOLE_BODY = ("whole body", "whole-body", "body", "total body")
_REGION_RE = {
    region: re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    for region, words in REGION_WORDS.items()
}


def regions_in(text: str) -> set[str]:
    return {region for region, rx in _REGION_RE.items() if rx.search(text or "")}


def organ_region(organ: str | None) -> set[str] | None:
    """Regions an organ belongs to; None when any region is plausible (unknown, whole body)."""
    if not organ:
        return None
    o = organ.lower().strip()
    if o in ("head", "head and neck", "skull"):
        return {"head"}
    if any(w in o for w in WHOLE_BODY) or o in ("unspecified", "unknown", "phantom"):
        return None
    regions = regions_in(o)
    return regions or None


ORGAN_SYNONYMS: dict[str, tuple[str, ...]] = {
    "chest": ("chest", "thorax", "thoracic", "lung", "lungs", "pulmonary"),
    "head": ("head", "brain", "skull", "cranial", "intracranial", "cerebral"),
    "brain": ("brain", "cerebral", "cerebrum", "intracranial", "hemisphere", "grey matter", "white matter"),
    "liver": ("liver", "hepatic"),
    "kidney": ("kidney", "renal"),
    "pancreas": ("pancreas", "pancreatic"),
    "retina": ("retina", "retinal", "fundus", "optic disc", "macula"),
    "colon": ("colon", "colonic", "large bowel"),
    "tibia": ("tibia", "tibial", "lower leg"),
    "shoulder": ("shoulder", "glenohumeral", "humeral head"),
    "abdomen": ("abdomen", "abdominal"),
    "whole body": ("whole body", "whole-body", "skeleton", "skeletal"),
    "cell culture": ("cell", "cells", "culture"),
}


def organ_terms(organ: str) -> tuple[str, ...]:
    o = organ.strip().lower()
    if o in ORGAN_SYNONYMS:
        return ORGAN_SYNONYMS[o]
    words = tuple(w for w in re.findall(r"[a-z][a-z\-]+", o) if len(w) >= 4)
    return (o, *words)


# intensity polarity of a word: +1 brighter than surroundings, -1 darker, 0 similar
_BRIGHT = re.compile(r"\bhyper[- ]?(?:dense|intense|echoic|attenuating|reflective|attenuation|density|intensity)\b|"
                     r"\bbrighter\b|\bhyperdensity\b|\bhyperintensity\b|\bradio-?opaque\b|\bincreased (?:uptake|density|signal|intensity)\b",
                     re.IGNORECASE)
_DARK = re.compile(r"\bhypo[- ]?(?:dense|intense|echoic|attenuating|reflective|attenuation|density|intensity)\b|"
                   r"\bdarker\b|\bhypodensity\b|\bhypointensity\b|\bradiolucent\b|\ban-?echoic\b|\bdecreased (?:uptake|density|signal|intensity)\b",
                   re.IGNORECASE)
_SIMILAR = re.compile(r"\biso[- ]?(?:dense|intense|echoic|attenuating)\b|\bsimilar (?:intensity|brightness|density)\b",
                      re.IGNORECASE)


def intensity_polarities(text: str) -> set[int]:
    found = set()
    if _BRIGHT.search(text or ""):
        found.add(1)
    if _DARK.search(text or ""):
        found.add(-1)
    if _SIMILAR.search(text or ""):
        found.add(0)
    return found


def intensity_polarity(word: str | None) -> int | None:
    if not word:
        return None
    pols = intensity_polarities(word)
    if len(pols) == 1:
        return next(iter(pols))
    w = word.lower()
    if w.startswith("hyper") or "bright" in w:
        return 1
    if w.startswith("hypo") or "dark" in w:
        return -1
    if w.startswith("iso") or "similar" in w:
        return 0
    return None


_HOMO = re.compile(r"(?<![-\w])homogeneous\b|\buniform(?:ly)?\b", re.IGNORECASE)
_HETERO = re.compile(r"\bheterogeneous\b|\binhomogeneous\b|\bnon-?homogeneous\b|\bmottled\b", re.IGNORECASE)


def homogeneity_mentions(text: str) -> set[str]:
    found = set()
    if _HETERO.search(text or ""):
        found.add("heterogeneous")
    cleaned = _HETERO.sub(" ", text or "")
    if _HOMO.search(cleaned):
        found.add("homogeneous")
    return found


def side_words(text: str) -> set[str]:
    """Patient-side words (``left``/``right``) in a label or phrase, including ``_L``/``_R`` suffixes."""
    t = text or ""
    sides = {m.lower() for m in re.findall(r"\b(left|right)\b", t, re.IGNORECASE)}
    if re.search(r"(?:_|\b)L\b", t):
        sides.add("left")
    if re.search(r"(?:_|\b)R\b", t):
        sides.add("right")
    return sides


def label_text(label: str | None) -> str:
    """A label as captions write it (``Precentral_L`` -> ``Precentral L``)."""
    return re.sub(r"\s+", " ", str(label or "").replace("_", " ")).strip()
