"""Words read back out of a description: intensity polarity, homogeneity, sides, label text.

Modality, organ and region words live in the project's vocabulary
(:mod:`medtrinity_assets.core.vocabulary`); this module holds the claim words that the quality
checks look for in any captioner's text and that the embedded captioner writes.
"""

from __future__ import annotations

import re
from functools import lru_cache

from medtrinity_assets.core.regex_gate import GateGroup, gated

# intensity polarity of a word: +1 brighter than surroundings, -1 darker, 0 similar. Histology's
# "denser staining" is darker on a bright-field slide, "paler staining" brighter.
_QUANTITY = r"(?:uptake|density|signal|intensity|opacity|attenuation|echogenicity|activity|brightness)"
_BRIGHT = gated(r"\bhyper[- ]?(?:dense|intense|echoic|attenuating|reflective|attenuation|density|intensity)\b|"
                r"\bbrighter\b|\bhyperdensity\b|\bhyperintensity\b|\bradio-?opaque\b|"
                r"\b(?:increased|higher|high) " + _QUANTITY + r"\b|\bpaler[- ]staining\b|\blightly stained\b",
                re.IGNORECASE)
_DARK = gated(r"\bhypo[- ]?(?:dense|intense|echoic|attenuating|reflective|attenuation|density|intensity)\b|"
              r"\bdarker\b|\bhypodensity\b|\bhypointensity\b|\bradiolucent\b|\ban-?echoic\b|"
              r"\b(?:decreased|lower|low|reduced) " + _QUANTITY + r"\b|\bdenser[- ]staining\b|\bintensely stained\b",
              re.IGNORECASE)
_SIMILAR = gated(r"\biso[- ]?(?:dense|intense|echoic|attenuating)\b|"
                 r"\bsimilar (?:staining|" + _QUANTITY[3:-1] + r")\b",
                 re.IGNORECASE)


_POLARITIES = GateGroup([_BRIGHT, _DARK, _SIMILAR])


def intensity_polarities(text: str) -> set[int]:
    return set(_intensity_polarities(text))


@lru_cache(maxsize=4096)  # measured words and quoted sentences repeat
def _intensity_polarities(text: str) -> frozenset[int]:
    return frozenset((1, -1, 0)[k] for k in _POLARITIES.matching(text or ""))


@lru_cache(maxsize=1024)
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


_HOMO = gated(r"(?<![-\w])homogeneous\b|\buniform(?:ly)?\b", re.IGNORECASE)
_HETERO = gated(r"\bheterogeneous\b|\binhomogeneous\b|\bnon-?homogeneous\b|\bmottled\b", re.IGNORECASE)


_HOMOGENEITY = GateGroup([_HOMO, _HETERO])


def homogeneity_mentions(text: str) -> set[str]:
    return set(_homogeneity_mentions(text))


@lru_cache(maxsize=4096)
def _homogeneity_mentions(text: str) -> frozenset[str]:
    found: set[str] = set()
    if not _HOMOGENEITY.live(text or ""):
        return frozenset()
    if _HETERO.search(text or ""):
        found.add("heterogeneous")
    cleaned = _HETERO.sub(" ", text or "")
    if _HOMO.search(cleaned):
        found.add("homogeneous")
    return frozenset(found)


def side_words(text: str) -> set[str]:
    """Patient-side words (``left``/``right``) in a label or phrase, including ``_L``/``_R`` suffixes."""
    t = text or ""
    sides = {m.lower() for m in re.findall(r"\b(left|right)\b", t, re.IGNORECASE)}
    if re.search(r"(?:_|\b)L\b", t):
        sides.add("left")
    if re.search(r"(?:_|\b)R\b", t):
        sides.add("right")
    return sides


_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=8192)  # labels repeat in every region of a source
def label_text(label: str | None) -> str:
    """A label as captions write it (``Precentral_L`` -> ``Precentral L``)."""
    return _SPACES.sub(" ", str(label or "").replace("_", " ")).strip()
