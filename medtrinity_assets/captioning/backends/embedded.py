"""The embedded grounded captioner: five facets written from measurements, metadata and passages.

It needs no model weights and is deterministic. It is honest about what it is: a default
that states what was measured, not a substitute for a multimodal LLM. Every sentence is
built from a measured value or from metadata; a value that was not measured is not
mentioned (no patient side without a known orientation, no millimetres without a spacing).
Wording varies between templates chosen by a stable hash of the record and ROI id.
"""

from __future__ import annotations

import hashlib
import re
import time
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from medtrinity_assets.captioning.backends.base import Captioner, CaptionResult
from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.prompt import FACETS
from medtrinity_assets.captioning.wording import label_text
from medtrinity_assets.core.vocabulary import modality_of

PHRASES_VERSION = "2"  # bump whenever phrases.yaml or the sentence logic changes: it keys the cache

_H_WORD = {"left": "left", "centre": "central", "center": "central", "middle": "central", "right": "right"}
_V_WORD = {"upper": "upper", "top": "upper", "middle": "middle", "centre": "middle", "lower": "lower",
           "bottom": "lower"}


@lru_cache(maxsize=1)
def load_phrases() -> dict[str, Any]:
    text = resources.files("medtrinity_assets.captioning.backends").joinpath("phrases.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def _pick(options: list[str], seed: int, salt: int) -> str:
    return options[(seed >> (salt * 5)) % len(options)]


def _origin_phrase(origin: str | None) -> str:
    if not origin:
        return "of unrecorded origin"
    if origin == "mask":
        return "outlined by a segmentation mask"
    if origin == "box":
        return "given as an annotated bounding box"
    if origin.startswith("expert:"):
        return f"located by the expert grounding model {origin.split(':', 1)[1]}"
    if origin == "classical":
        return "located by classical intensity thresholding"
    if origin == "whole_image":
        return "taken as the whole image because no localised region is available"
    return f"of origin {origin}"


_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


@lru_cache(maxsize=4096)
def _grounding_sentence(text: str, keywords: tuple[str, ...]) -> str:
    """The passage sentence that best matches the ROI's keywords (first sentence on a tie)."""
    sentences = [s.strip() for s in _SENT_SPLIT.split(" ".join(text.split())) if s.strip()]
    good = [s for s in sentences if 30 <= len(s) <= 320] or sentences or [text.strip()]
    best, best_score = good[0], -1
    for s in good:
        low = s.lower()
        score = sum(1 for k in keywords if k and k in low)
        if score > best_score:
            best, best_score = s, score
    if len(best) > 320:
        best = best[:317].rsplit(" ", 1)[0] + "..."
    return best.rstrip(" .").replace('"', "'")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _fmt_num(v: float) -> str:
    return f"{v:.3g}"


def _other_region(rel: dict) -> str:
    """How a caption names the other ROI of a relation: by its label and number, never by id."""
    other = str(rel.get("other", ""))
    number = other.rsplit(":", 1)[-1]
    tag = f" #{int(number) + 1}" if number.isdigit() else ""
    label = label_text(rel.get("other_label"))
    if label and label not in ("region", "whole image"):
        return f"another {label} region{tag}"
    if tag:
        return f"region{tag}"
    return f"ROI {label_text(other)}"


class EmbeddedCaptioner(Captioner):
    """Deterministic grounded captioner (the offline default)."""

    name = "embedded"
    model = "grounded-templates"

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
        entry = modality_of(item.modality)
        if entry is not None:
            a = entry.caption
            return _pick(ph["known"], seed, 0).format(a_modality=a, A_modality=a[0].upper() + a[1:])
        if item.modality:
            return _pick(ph["unknown_family"], seed, 0).format(modality_raw=item.modality)
        return _pick(ph["missing"], seed, 0)

    def _organ(self, item: CaptionInput, ph: dict, seed: int) -> str:
        label = label_text(item.label)
        label_phrase = f"the structure labelled '{label}'" if label else "an unlabelled region"
        origin = _origin_phrase(item.origin)
        organ = (item.organ or "").strip()
        if organ and organ.lower() not in ("unspecified", "unknown"):
            return _pick(ph["known"], seed, 1).format(organ=organ, label_phrase=label_phrase, origin_phrase=origin)
        return _pick(ph["missing"], seed, 1).format(label_phrase=label_phrase, origin_phrase=origin)

    def _location(self, item: CaptionInput, ph: dict, seed: int) -> str:
        parts: list[str] = []
        h = _H_WORD.get((item.horizontal or "").lower())
        v = _V_WORD.get((item.vertical or "").lower())
        if item.origin == "whole_image":
            parts.append(_pick(ph["whole"], seed, 2))
        elif h and v:
            side = ""
            lr = (item.patient_lr or "").lower()
            if lr in ("left", "right"):
                side = f", on the patient's {lr} side"
            ap = (item.patient_ap or "").lower()
            si = (item.patient_si or "").lower()
            extra = [w for w in (ap, si) if w in ("anterior", "posterior", "superior", "inferior")]
            if extra:
                side += (", toward the " if side else ", toward the patient's ") + " and ".join(extra) + " aspect"
            parts.append(_pick(ph["positioned"], seed, 2).format(h=h, v=v, side=side))
        else:
            parts.append(_pick(ph["unknown"], seed, 2))
        if item.bbox_norm and item.origin != "whole_image":
            x0, y0, x1, y1 = item.bbox_norm
            parts.append(f"its box spans {x0:.2f}-{x1:.2f} of the image width and {y0:.2f}-{y1:.2f} of its height")
        size = []
        if item.area_fraction is not None:
            size.append(f"it covers {item.area_fraction * 100:.1f}% of the image area")
        if item.longest_diameter_mm is not None:
            size.append(f"its longest diameter measures {item.longest_diameter_mm:.1f} mm")
        if item.shape_word:
            circ = f" (circularity {item.circularity:.2f})" if item.circularity is not None else ""
            size.append(f"it has {_article(item.shape_word)} {item.shape_word} outline{circ}")
        if size:
            parts.append(", ".join(size[:-1]) + (" and " if len(size) > 1 else "") + size[-1])
        return "; ".join(parts) + "."

    def _texture(self, item: CaptionInput, ph: dict, seed: int) -> str:
        pieces = []
        if item.intensity_word:
            s = _pick(ph["intensity"], seed, 3).format(intensity=item.intensity_word)
            nums = []
            if item.roi_mean is not None and item.ring_mean is not None:
                nums.append(f"mean {_fmt_num(item.roi_mean)} inside versus {_fmt_num(item.ring_mean)} around it")
            if item.intensity_contrast is not None:
                nums.append(f"contrast {_fmt_num(item.intensity_contrast)}")
            if nums:
                s += " (" + ", ".join(nums) + ")"
            pieces.append(s)
        tex = [w for w in (item.texture_homogeneity_word, item.texture_smoothness_word) if w]
        if tex:
            key = "texture" if pieces else "texture_alone"
            pieces.append(_pick(ph[key], seed, 4).format(texture=" and ".join(tex)))
        if not pieces:
            return _pick(ph["none"], seed, 3)
        return ", ".join(pieces) + "."

    def _relationship(self, item: CaptionInput, ph: dict, seed: int) -> str:
        first: list[str] = []
        if item.roi_count is not None and item.roi_count <= 1:
            first.append(_pick(ph["only"], seed, 5))
        elif item.roi_count is not None:
            first.append(_pick(ph["many"], seed, 5).format(n=item.roi_count))
        if item.inside_label:
            first.append(f"it lies within the {label_text(item.inside_label)}")
        rels = []
        for rel in item.relations[: self.max_relations]:
            other = _other_region(rel)
            dist = rel.get("distance_norm")
            d = f" (normalised distance {dist:.2f})" if isinstance(dist, int | float) else ""
            relation = rel["relation"].strip()
            verb = relation.split()[0].endswith("s") and relation.split()[0] not in ("across", "towards")
            rels.append(f"{'' if verb else 'lies '}{relation} {other}{d}")
        if rels:
            first.append("in the image it " + " and ".join(rels))
        sentences = []
        if first:
            s = "; ".join(first)
            sentences.append(s[0].upper() + s[1:] + ".")
        terms = self._finding_terms(item)
        if terms:
            sentences.append("The metadata associate the image with " + ", ".join(terms) + ".")
        if item.passages:
            top = item.passages[0]
            keywords = tuple(
                w for w in re.findall(r"[a-z]{4,}", " ".join([item.label or "", item.organ or "", *item.terms]).lower())
            )
            sentence = _grounding_sentence(top.text, keywords)
            sentences.append(_pick(ph["grounding"], seed, 6).format(sentence=sentence, chunk_id=top.chunk_id))
        else:
            sentences.append(_pick(ph["no_passage"], seed, 6))
        return " ".join(sentences)

    @staticmethod
    def _finding_terms(item: CaptionInput) -> list[str]:
        skip = {(item.modality or "").lower(), (item.organ or "").lower(), label_text(item.label).lower()}
        out = []
        for t in item.terms:
            t = str(t).strip()
            if t and t.lower() not in skip and label_text(t).lower() not in skip and modality_of(t) is None and t not in out:
                out.append(t)
        return out[:4]


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
