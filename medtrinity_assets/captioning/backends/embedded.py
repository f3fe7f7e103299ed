"""The embedded grounded captioner: five facets written from measurements, metadata and passages.

It needs no model weights and is deterministic. It is honest about what it is: a default
that states what was measured, not a substitute for a multimodal LLM. Every sentence is
built from a measured value or from metadata; a value that was not measured is not
mentioned (no patient side without a known orientation, no millimetres without a spacing).
Wording varies between templates chosen by a stable hash of the record and ROI id.
"""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from medtrinity_assets.captioning import phrasing
from medtrinity_assets.captioning.backends.base import Captioner, CaptionResult
from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.prompt import FACETS
from medtrinity_assets.captioning.wording import label_text
from medtrinity_assets.core.vocabulary import modality_of, organ_terms
from medtrinity_assets.knowledge.queries import roi_concepts
from medtrinity_assets.knowledge.quotes import Quote, choose_quote, measured_words

PHRASES_VERSION = "13"  # bump whenever phrases.yaml or the sentence logic changes: it keys the cache
# (test_captioning.py::test_the_phrases_version_follows_the_code_that_writes_sentences holds it to that code)

_H_WORD = {"left": "left", "centre": "central", "center": "central", "middle": "central", "right": "right"}
_V_WORD = {"upper": "upper", "top": "upper", "middle": "middle", "centre": "middle", "lower": "lower",
           "bottom": "lower"}


@lru_cache(maxsize=1)
def load_phrases() -> dict[str, Any]:
    text = resources.files("medtrinity_assets.captioning.backends").joinpath("phrases.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def _pick(options: list[str], seed: int, salt: int) -> str:
    return options[(seed >> (salt * 5)) % len(options)]


def _sentence(parts: list[str]) -> str:
    """Clauses joined into one sentence, its first letter capitalised."""
    text = "; ".join(p for p in parts if p)
    return text[0].upper() + text[1:] + "." if text else ""


class EmbeddedCaptioner(Captioner):
    """Deterministic grounded captioner (the offline default)."""

    name = "embedded"
    model = "grounded-templates"
    runs_in_workers = True

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> EmbeddedCaptioner:
        return cls(**{k: v for k, v in settings.items() if k == "max_relations"})

    def __init__(self, max_relations: int = 2) -> None:
        self.max_relations = max_relations
        self.phrases = load_phrases()

    @property
    def params(self) -> dict[str, Any]:
        return {"phrases_version": PHRASES_VERSION, "max_relations": self.max_relations}

    def caption(self, items: list[CaptionInput]) -> list[CaptionResult]:
        out = []
        for item in items:
            try:
                facets = self.facets(item)
            except Exception as exc:  # a malformed input fails alone
                out.append(CaptionResult.failed(f"{type(exc).__name__}: {exc}"))
                continue
            out.append(CaptionResult(text=" ".join(facets[k] for k in FACETS), facets=facets, status="ok"))
        return out

    # -- facets ------------------------------------------------------------------------------
    def facets(self, item: CaptionInput) -> dict[str, str]:
        seed = int.from_bytes(
            hashlib.blake2b(f"{item.record_id}\x1f{item.roi_id}".encode(), digest_size=8).digest(), "big"
        )
        ph = self.phrases
        return {
            "modality": self._modality(item, ph["modality"], seed),
            "organ": self._organ(item, ph["organ"], seed),
            "roi_location": self._location(item, ph["location"], seed),
            "roi_texture": self._texture(item, ph["texture"], seed),
            "relationship": self._relationship(item, ph["relationship"], seed),
        }

    def _modality(self, item: CaptionInput, ph: dict, seed: int) -> str:
        described = phrasing.modality_description(item)
        if described is not None:
            key = "synthetic" if item.synthetic else "known"
            text = _pick(ph[key], seed, 0).format(a_modality=described, A_modality=described[0].upper() + described[1:])
            return text + phrasing.window_clause(item) + phrasing.size_clause(item)
        if item.modality:
            return _pick(ph["unknown_family"], seed, 0).format(modality_raw=item.modality)
        return _pick(ph["missing"], seed, 0)

    def _organ(self, item: CaptionInput, ph: dict, seed: int) -> str:
        organ = (item.organ or "").strip()
        if item.synthetic:
            key = "synthetic"
        elif organ and organ.lower() not in ("unspecified", "unknown", "phantom"):
            key = "known"
        else:
            key = "missing"
        if item.origin == "whole_image":  # no region phrase: the location facet says none was localised
            return _pick(ph[f"{key}_whole"], seed, 1).format(organ=organ)
        return _pick(ph[key], seed, 1).format(organ=organ, roi_phrase=phrasing.roi_phrase(item))

    def _location(self, item: CaptionInput, ph: dict, seed: int) -> str:
        if item.origin == "whole_image":
            return _pick(ph["whole"], seed, 2)
        parts = [self._position(item, ph, seed)]
        span = phrasing.span_text(item)
        if span:
            parts.append(span)
        size = phrasing.size_texts(item)
        if size:
            parts.append(", ".join(size[:-1]) + (" and " if len(size) > 1 else "") + size[-1])
        text = "; ".join(p for p in parts if p)
        return text[:1].upper() + text[1:] + "."

    def _position(self, item: CaptionInput, ph: dict, seed: int) -> str | None:
        """The thirds the region lies in; one axis when it spans most of the other (None for both
        when its box span, which follows, says where it is)."""
        h = _H_WORD.get((item.horizontal or "").lower())
        v = _V_WORD.get((item.vertical or "").lower())
        if h and v:
            return _pick(ph["positioned"], seed, 2).format(h=h, v=v, side=self._side(item))
        if h or v:
            return _pick(ph["horizontal_only" if h else "vertical_only"], seed, 2).format(h=h, v=v, side=self._side(item))
        return None if phrasing.span_text(item) else _pick(ph["unknown"], seed, 2)

    @staticmethod
    def _side(item: CaptionInput) -> str:
        """``, on the patient's left side, toward the anterior aspect`` where the header says so."""
        side = ""
        lr = (item.patient_lr or "").lower()
        if lr in ("left", "right"):
            side = f", on the patient's {lr} side"
        ap, si = (item.patient_ap or "").lower(), (item.patient_si or "").lower()
        extra = [w for w in (ap, si) if w in ("anterior", "posterior", "superior", "inferior")]
        if extra:
            side += (", toward the " if side else ", toward the patient's ") + " and ".join(extra) + " aspect"
        return side

    def _texture(self, item: CaptionInput, ph: dict, seed: int) -> str:
        tex = _texture_words(item.texture_homogeneity_word, item.texture_smoothness_word)
        if item.origin == "whole_image":
            # a whole frame mixes air, bone and organs: its texture says nothing about a region
            return _pick(ph["texture_whole"], seed, 4)
        pieces = []
        if item.intensity_word:
            form = "noun" if " " in item.intensity_word.strip() else "adjective"
            pieces.append(
                _pick(ph[form], seed, 3).format(intensity=item.intensity_word, surround=phrasing.surround_phrase(item))
            )
        if tex:
            pieces.append(_pick(ph["texture" if pieces else "texture_alone"], seed, 4).format(texture=tex))
        if not pieces:
            return _pick(ph["none"], seed, 3)
        return ", ".join(pieces) + "."

    def _relationship(self, item: CaptionInput, ph: dict, seed: int) -> str:
        first: list[str] = []
        if item.origin != "whole_image" and item.roi_count is not None:
            key = "only" if item.roi_count <= 1 else "many"
            first.append(_pick(ph[key], seed, 5).format(n=item.roi_count))
        first += phrasing.relation_phrases(item, self.max_relations)
        sentences = [_sentence(first)] if first else []
        if item.synthetic:
            sentences.append(_pick(ph["synthetic"], seed, 7))
        else:
            terms = self._finding_terms(item)
            if terms:
                sentences.append(_pick(ph["findings"], seed, 7).format(terms=_listed(terms)))
        quote = self._quote(item)
        if quote is not None:
            sentences.append(_pick(ph["grounding"], seed, 6).format(sentence=quote.sentence, chunk_id=quote.chunk_id))
        else:
            sentences.append(_pick(ph["no_passage"], seed, 6))
        return " ".join(sentences)

    @staticmethod
    def _quote(item: CaptionInput) -> Quote | None:
        """The passage sentence that shares the region's concepts and contradicts none of its
        measured words (see :mod:`medtrinity_assets.knowledge.quotes`)."""
        if not item.passages:
            return None
        concepts = roi_concepts(item.modality, item.organ, item.terms, item.label, item.origin)
        measured = measured_words(item.intensity_word, item.texture_homogeneity_word,
                                  greyscale=phrasing.greyscale_photograph(item))
        return choose_quote(item.passages, concepts, measured)

    @staticmethod
    def _finding_terms(item: CaptionInput) -> list[str]:
        """Metadata terms beyond modality, organ (and its synonyms: "thorax" for a chest image) and the
        region's own label (terms are only those the coarse caption matched to the vocabulary or an
        ontology)."""
        organ = (item.organ or "").lower()
        skip = {(item.modality or "").lower(), organ, label_text(item.label).lower(), *organ_terms(organ)}
        out = []
        for t in item.terms:
            t = str(t).strip()
            if t and t.lower() not in skip and label_text(t).lower() not in skip and modality_of(t) is None and t not in out:
                out.append(t)
        return out[:4]


def _texture_words(homogeneity: str | None, smoothness: str | None) -> str:
    """``homogeneous and smooth``; ``heterogeneous but smooth`` where the two words pull apart (a
    wide spread of intensities that change gradually, from neighbour to neighbour), which "and"
    made read as a contradiction."""
    words = [w for w in (homogeneity, smoothness) if w]
    mixed = {w.lower() for w in words} in ({"heterogeneous", "smooth"}, {"homogeneous", "coarse"})
    return (" but " if mixed else " and ").join(words)


def _listed(terms: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return terms[0] if len(terms) == 1 else ", ".join(terms[:-1]) + " and " + terms[-1]


class SlowEmbeddedCaptioner(EmbeddedCaptioner):
    """The embedded captioner with a per-item delay: for crash/resume tests and demos of progress."""

    def __init__(self, delay_s: float = 0.01, **kw: Any) -> None:
        super().__init__(**kw)
        self.delay_s = delay_s
        self.computed = 0

    def caption(self, items: list[CaptionInput]) -> list[CaptionResult]:
        time.sleep(self.delay_s * len(items))
        self.computed += len(items)
        return super().caption(items)
