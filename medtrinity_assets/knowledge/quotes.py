"""Which sentence of the retrieved passages a description may quote, if any.

:func:`choose_quote` walks the passages in the order given (``retrieved_knowledge`` lists them by
decreasing dense similarity) and returns the first passage's best sentence that passes every
rule below; ``None`` when no sentence does, and the description then quotes nothing, which is
better than a wrong quote.

1. **Not a vocabulary passage** (:func:`is_vocabulary_passage`): a passage that explains
   description words (what "homogeneous", "hyperintense", "hypodense", "spiculated" or "upper
   third" mean) is never quoted as a finding. Known by its corpus ``topic`` (``texture``,
   ``shape``, ``location``, ``relationship``) when the passage carries one, else by its title
   (``vocabulary``/``terms``/``terminology``, or a title mostly made of measurement words) or by
   a text in which most sentences define measurement words.
2. **Stands alone** (:func:`starts_mid_thought`): no sentence opening with a pronoun or a
   connective ("It", "This", "These", "They", "Such", "However", "Also", "In contrast", ...) or
   with a lower-case letter, and between 30 and 320 characters.
3. **Contradicts no measured word** (:func:`contradicts`): a sentence asserting "homogeneous" or
   "uniform" when the ROI was measured heterogeneous is out, and the converse; a sentence naming
   an intensity polarity (hyper-/hypo-/iso-intense, -dense, -echoic, brighter, darker, bright,
   dark, hot/cold spots, lucent, increased/decreased uptake) other than the measured one is out.
   The word lists are those of :mod:`medtrinity_assets.captioning.wording`, plus a few.
4. **About the concepts**: the sentence shares at least one normalised word with the concepts
   (lower-cased, accents folded, British and American spellings merged -- haem/hem, oe/e,
   -our/-or, -ise/-ize, grey/gray --, plurals stripped, and words sharing a prefix of at least
   seven letters, or one a prefix of the other of at least five, taken as the same: retina /
   retinal, echocardiogram / echocardiography). Among a passage's sentences the one with the
   largest overlap wins (concept words other than the modality count 1, a modality named in the
   sentence 0.5), the earlier one on a tie.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from medtrinity_assets.core.vocabulary import modality_by_key, modality_mentions, vocabulary

__all__ = [
    "VOCABULARY_TOPICS",
    "Quote",
    "choose_quote",
    "concept_words",
    "contradicts",
    "is_vocabulary_passage",
    "measured_words",
    "normalise_word",
    "sentences",
    "starts_mid_thought",
]

VOCABULARY_TOPICS = frozenset({"texture", "shape", "location", "relationship"})
MIN_CHARS, MAX_CHARS = 30, 320


@dataclass(frozen=True)
class Quote:
    """A sentence to quote: the chunk it comes from, the sentence (trimmed of its final stop),
    the passage's retrieval score (the dense cosine similarity recorded in
    ``retrieved_knowledge.scores``; None when unknown), the concept overlap and the passage title."""

    chunk_id: str
    sentence: str
    score: float | None
    overlap: float = 0.0
    title: str = ""


# -- words --------------------------------------------------------------------------------------
_TOKEN = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    """a an and are as at be been being but by can could did do does for from had has have how if in
    into is it its of on or such than that the their them then there these they this those to was
    were what when where which while who whom why will with within would not no also may often
    usually more most less very""".split()
)
# Words that say what kind of picture it is, never what it is about.
_GENERIC = frozenset(
    """image images imaging photograph photo slide scan scans scintigram view views study studies
    examination picture region regions area areas part parts whole body marked annotated""".split()
)
_SPELLING = (
    (re.compile(r"(?<=[a-z])ae(?=[a-z])"), "e"),  # haematoxylin, anaemia, paediatric
    (re.compile(r"^oe(?=[a-z])"), "e"),  # oedema, oesophagus
    (re.compile(r"(?<=[a-z])oe(?=[a-z])"), "e"),  # transoesophageal, foetus
    (re.compile(r"(?<=[a-z]{3})our$"), "or"),  # tumour, colour
    (re.compile(r"(?<=[a-z]{3})is(e|ed|ing|ation)$"), r"iz\1"),  # normalise
    (re.compile(r"^gray$"), "grey"),
)


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in text if not unicodedata.combining(ch))


def normalise_word(word: str) -> str:
    """One word in the form quotes are matched on (spelling merged, plural stripped)."""
    w = _fold(word)
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 4 and w.endswith(("sses", "xes", "ches", "shes")):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is", "os")):
        w = w[:-1]
    for rx, rep in _SPELLING:
        w = rx.sub(rep, w)
    return w


def _words(text: str) -> list[str]:
    return [normalise_word(t) for t in _TOKEN.findall(_fold(text)) if t not in _STOP and len(t) > 1]


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    if len(short) >= 5 and long_.startswith(short):
        return True
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n >= 7


@lru_cache(maxsize=1)
def _modality_phrases() -> dict[str, str]:
    """Lower-cased modality names a concept list may hold -> modality key."""
    out: dict[str, str] = {}
    for m in vocabulary().modalities:
        caption = re.sub(r"^(?:a|an|the)\s+", "", m.caption, flags=re.IGNORECASE)
        for name in (m.key, m.term, caption, *m.aliases):
            out[name.lower()] = m.key
    return out


def _modality_key(concept: str) -> str | None:
    c = concept.strip().lower()
    entry = modality_by_key(c)
    return entry.key if entry is not None else _modality_phrases().get(c)


def concept_words(concepts: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(normalised content words, modality keys) of a concept list; generic words dropped."""
    words: set[str] = set()
    keys: set[str] = set()
    for c in concepts:
        c = str(c or "")
        key = _modality_key(c)
        if key is not None:
            keys.add(key)
            continue
        words.update(w for w in _words(c) if w not in _GENERIC)
    return frozenset(words), frozenset(keys)


def _overlap(sentence: str, words: frozenset[str], keys: frozenset[str]) -> float:
    mine = set(_words(sentence))
    score = float(sum(1 for w in words if any(_same(w, v) for v in mine)))
    if keys:
        score += 0.5 * len(keys & modality_mentions(sentence))
    return score


# -- sentences ----------------------------------------------------------------------------------
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_MID_THOUGHT = re.compile(
    r"^(?:it|its|it's|this|these|that|those|they|their|them|there|here|such|however|also|but|and|or|"
    r"nor|so|thus|hence|therefore|then|otherwise|instead|both|either|neither|he|she|his|her|"
    r"moreover|furthermore|additionally|likewise|similarly|conversely|nevertheless|nonetheless|"
    r"meanwhile|consequently|accordingly|still|yet|again|further|finally|next|later|whereas|"
    r"unlike|others|which|where|when)\b"
    r"|^(?:in|by) contrast\b|^on the other hand\b|^in addition\b|^for (?:example|instance)\b|"
    r"^as a result\b|^because of (?:this|that)\b|^of (?:these|those|them)\b|^in (?:this|that|such)\b|"
    r"^the (?:same|latter|former|other|rest|remaining)\b|^at (?:this|that)\b",
    re.IGNORECASE,
)


def sentences(text: str) -> list[str]:
    """The sentences of a passage (whitespace collapsed)."""
    return [s.strip() for s in _SENT_SPLIT.split(" ".join(str(text or "").split())) if s.strip()]


def starts_mid_thought(sentence: str) -> bool:
    """Whether a sentence leans on the one before it (pronoun/connective or lower-case start)."""
    s = sentence.lstrip(" \"'(")
    if not s or not s[0].isalpha() or s[0].islower():
        return True
    return bool(_MID_THOUGHT.match(s))


# -- measured words -----------------------------------------------------------------------------
_BRIGHT_EXTRA = re.compile(
    r"\bbright(?:er|ly|ness)?\b|\bhotter\b|\bhot ?spots?\b|\bincreased (?:uptake|activity|tracer)\b|"
    r"\bhigh (?:signal|density|attenuation|uptake)\b",
    re.IGNORECASE,
)
_DARK_EXTRA = re.compile(
    r"\bdark(?:er|ly)?\b|\bcold (?:spots?|areas?|defects?)\b|\bphotopenic\b|\blucen(?:t|cy|cies)\b|"
    r"\blow (?:signal|density|attenuation|uptake)\b|\bsignal voids?\b",
    re.IGNORECASE,
)


@lru_cache(maxsize=1)
def _wording() -> Any:
    """The captioning word lists, imported on first use: the captioning package (whose
    ``__init__`` runs on any import of its modules) is expected to import this module."""
    import medtrinity_assets.captioning.wording as wording

    return wording


def _polarities(sentence: str) -> set[int]:
    pols = set(_wording().intensity_polarities(sentence))
    if _BRIGHT_EXTRA.search(sentence):
        pols.add(1)
    if _DARK_EXTRA.search(sentence):
        pols.add(-1)
    return pols


def _homogeneity(word: str | None) -> str | None:
    w = (word or "").lower()
    if not w:
        return None
    if "hetero" in w or "inhomo" in w or "non-homo" in w or "nonhomo" in w or "mottled" in w:
        return "heterogeneous"
    if "homo" in w or "uniform" in w:
        return "homogeneous"
    return None


def measured_words(
    intensity_word: str | None = None, homogeneity_word: str | None = None, *, greyscale: bool = False
) -> dict[str, str]:
    """The ``measured`` mapping :func:`choose_quote` takes, from an ROI's measured words;
    ``greyscale``: the description calls the photograph greyscale (a colour one would be "colour")."""
    out: dict[str, str] = {"colour": "greyscale"} if greyscale else {}
    if intensity_word:
        out["intensity"] = str(intensity_word)
    if homogeneity_word:
        out["homogeneity"] = str(homogeneity_word)
    return out


def _measured(measured: Mapping[str, Any] | None) -> tuple[str | None, int | None]:
    m = {str(k).lower(): v for k, v in (measured or {}).items() if v}
    homo = _homogeneity(m.get("homogeneity") or m.get("texture_homogeneity_word") or m.get("texture"))
    word = m.get("intensity") or m.get("intensity_word")
    return homo, _wording().intensity_polarity(str(word)) if word else None


def contradicts(sentence: str, measured: Mapping[str, Any] | None) -> str | None:
    """Why ``sentence`` contradicts the measured words (``"homogeneity"``/``"intensity"``/``"colour"``),
    or None."""
    homo, polarity = _measured(measured)
    if homo is not None:
        said = _wording().homogeneity_mentions(sentence)
        if said and homo not in said or len(said) > 1:
            return "homogeneity"
    if polarity is not None and _polarities(sentence) - {polarity}:
        return "intensity"
    if (measured or {}).get("colour") == "greyscale" and _COLOUR_IMAGE.search(sentence):
        return "colour"
    return None


#: a sentence that says the image is in colour ("captures a colour image of the back of the eye")
_COLOUR_IMAGE = re.compile(r"\bcolou?r\s+(?:images?|photographs?|pictures?)\b|\bin (?:full )?colou?r\b", re.IGNORECASE)


# -- vocabulary passages ------------------------------------------------------------------------
_VOCAB_TITLE = re.compile(
    r"\b(?:vocabulary|terms|terminology|glossary|nomenclature|descriptors?)\b", re.IGNORECASE
)
_DESCRIPTION_WORD = re.compile(
    r"^(?:hyper|hypo|iso|an)[a-z-]*(?:dense|intense|echoic|density|intensity|attenuating|attenuation|"
    r"echogenic|echogenicity|enhancing)$|"
    r"^(?:homogeneous|heterogeneous|homogeneity|heterogeneity|uniform|texture|textural|echotexture|"
    r"quantitative|feature|shape|margin|outline|contour|round|oval|lobulated|irregular|spiculated|"
    r"circumscribed|defined|size|measurement|relative|intensity|density|signal|brightnes|echogenicity|"
    r"radiolucent|radiopaque|lucent|opaque|mottled|reticular|nodular|crescent|wedge|linear|tubular|"
    r"branching|serpiginous|composition|cystic|solid|mixed|pattern|appearance|location|localization|"
    r"position|third|zone|quadrant|clock|face|laterality|symmetry|bilateral|direction|adjacency|contact|"
    r"invasion|displacement|relationship|multiplicity|distribution|crossing|boundary|versus|describing|"
    r"description|descriptor|term|word|roi|surrounding|against|well|ill)$",
    re.IGNORECASE,
)
_DESCRIBE = re.compile(
    r"\b(?:is|are) (?:called|termed|described as|known as)\b|\bdescribes?\b|\bmeans?\b|\brefers? to\b",
    re.IGNORECASE,
)
_MEASURE_MENTION = re.compile(
    r"\b(?:hyper|hypo|iso)[- ]?(?:dense|intense|echoic)\b|\b(?:homogeneous|heterogeneous|uniform)\b|"
    r"\b(?:well[- ]defined|ill[- ]defined|circumscribed|lobulated|spiculated)\b|\bradio-?(?:lucent|opaque)\b",
    re.IGNORECASE,
)


def is_vocabulary_passage(title: str | None, text: str | None = None, topic: str | None = None) -> bool:
    """Whether a passage explains description words rather than a disease, organ or technique."""
    if topic and str(topic).strip().lower() in VOCABULARY_TOPICS:
        return True
    t = str(title or "")
    if _VOCAB_TITLE.search(t):
        return True
    words = [w for w in _TOKEN.findall(_fold(t)) if w not in _STOP]
    if words:
        descriptive = sum(
            1 for w in words if _DESCRIPTION_WORD.match(w) or _DESCRIPTION_WORD.match(normalise_word(w))
        )
        if descriptive * 2 > len(words):
            return True
    sents = sentences(text or "")
    if len(sents) >= 3:
        defining = sum(
            1
            for s in sents
            if _MEASURE_MENTION.search(s) and (_DESCRIBE.search(s) or len(_MEASURE_MENTION.findall(s)) >= 2)
        )
        if defining * 2 > len(sents):
            return True
    return False


# -- the choice ---------------------------------------------------------------------------------
def _field(p: Any, name: str, default: Any = None) -> Any:
    if isinstance(p, Mapping):
        return p.get(name, default)
    return getattr(p, name, default)


def _score(p: Any) -> float | None:
    for name in ("similarity", "score"):
        v = _field(p, name)
        if v is not None:
            return float(v)
    return None


def _clean_sentence(s: str) -> str:
    return s.rstrip(" .").replace('"', "'")


def choose_quote(
    passages: Iterable[Any],
    concepts: list[str],
    measured: Mapping[str, str] | None = None,
    *,
    min_overlap: float = 0.5,
) -> Quote | None:
    """The sentence to quote from ``passages`` (in their order), or None (see the module doc).

    ``passages``: objects or mappings with ``chunk_id``, ``text`` and optionally ``title``,
    ``topic``, ``similarity``/``score`` (captioning ``Passage``, retrieval ``Hit``, docstore
    rows). ``concepts``: what the ROI is about (see
    :func:`medtrinity_assets.knowledge.queries.roi_concepts`). ``measured``: e.g.
    ``{"homogeneity": "heterogeneous", "intensity": "hyperintense"}``. A sentence needs an
    overlap of at least ``min_overlap`` (0.5: the modality named, or one concept word)."""
    words, keys = concept_words(concepts)
    if not words and not keys:
        return None
    for p in passages:
        text = str(_field(p, "text", "") or "")
        title = str(_field(p, "title", "") or "")
        if not text or is_vocabulary_passage(title, text, _field(p, "topic")):
            continue
        best: tuple[float, str] | None = None
        for s in sentences(text):
            if not MIN_CHARS <= len(s) <= MAX_CHARS or starts_mid_thought(s) or contradicts(s, measured):
                continue
            ov = _overlap(s, words, keys)
            if ov >= min_overlap and (best is None or ov > best[0]):
                best = (ov, s)
        if best is not None:
            return Quote(
                chunk_id=str(_field(p, "chunk_id", "")),
                sentence=_clean_sentence(best[1]),
                score=_score(p),
                overlap=best[0],
                title=title,
            )
    return None
