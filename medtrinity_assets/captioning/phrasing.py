"""Phrases the embedded captioner builds from one :class:`CaptionInput`, each only from what was
measured or recorded, and only where it is true of this kind of region.

- A whole-image region has no position, size, shape or intensity contrast: nothing was localised.
- A box has a position and an extent but no outline: no shape, no diameter.
- A span that collapses at the printed precision is not printed; an area below 0.1% reads "less
  than 0.1%", never "0.0%".
- "Colour" only for a colour image; a synthetic source says it is one.
- Other regions are named by their labels only: an unnamed region ("region #8") is never related to.
"""

from __future__ import annotations

from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.wording import label_text
from medtrinity_assets.core.vocabulary import Modality, modality_of

#: regions that carry a contour of their own (not a box, not the whole image)
OUTLINED = ("mask", "classical")
PLACEHOLDER_LABELS = {"", "region", "whole image", "whole_image", "box", "unknown", "background"}
CROSS_SECTIONAL = {"ct", "mri", "pet"}
PHOTOGRAPHIC = {"fundus", "dermoscopy"}
MIN_SPAN = 0.02  # a box narrower than 2% of the image on an axis has no span worth printing


def is_outlined(item: CaptionInput) -> bool:
    """Whether the region has its own contour (a mask, an expert's or a threshold's output)."""
    origin = item.origin or ""
    return origin in OUTLINED or origin.startswith("expert:")


def is_named(label: str | None) -> bool:
    """Whether a label names something (not a placeholder such as ``region`` or ``unknown_3``)."""
    text = label_text(label).lower()
    return bool(text) and text not in PLACEHOLDER_LABELS and not text.startswith(("unknown", "label "))


def article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def modality_description(item: CaptionInput) -> str | None:
    """``an axial T1-weighted magnetic resonance (MR) image``, ``a colour fundus photograph``; None
    for a modality the vocabulary does not know."""
    entry = modality_of(item.modality)
    if entry is None:
        return None
    body = entry.caption.split(" ", 1)[1]  # without its article
    words: list[str] = []
    if entry.key in CROSS_SECTIONAL and item.plane:
        words.append(item.plane)
    if entry.key == "mri" and item.sequence:
        words.append(item.sequence)
    words += [t for t in techniques(item, entry) if t.lower() not in " ".join(words).lower()]
    colour = _colour_word(entry.key, item.channels)
    if colour:
        words.append(colour)
    phrase = " ".join([*words, body])
    return f"{article(phrase)} {phrase}"


#: techniques a description names at most (the first the metadata name, in the vocabulary's order)
MAX_TECHNIQUES = 2


def techniques(item: CaptionInput, entry: Modality) -> list[str]:
    """How the image was made ("phase-contrast", "contrast-enhanced"), as its metadata (coarse
    caption, terms) name it in the modality's vocabulary; the quality checks hold a description to
    the same words."""
    return entry.techniques_in(" . ".join([item.coarse_caption or "", *item.terms]))[:MAX_TECHNIQUES]


def _colour_word(modality_key: str, channels: int | None) -> str | None:
    """``colour``/``greyscale`` for a photograph, ``stained`` for a colour slide."""
    if modality_key in PHOTOGRAPHIC and channels in (1, 3):
        return "colour" if channels == 3 else "greyscale"
    return "stained" if channels == 3 and modality_key == "histopathology" else None


def greyscale_photograph(item: CaptionInput) -> bool:
    """Whether the description calls the image a greyscale photograph (see :func:`modality_description`)."""
    entry = modality_of(item.modality)
    return entry is not None and _colour_word(entry.key, item.channels) == "greyscale"


#: an image whose longest side is below this many pixels is said to be small: a reader of its
#: description (or a model trained on it) should not take it for a full-resolution scan
SMALL_IMAGE_PX = 128


def size_clause(item: CaptionInput) -> str:
    """`` It is a small image of 33 by 41 pixels.`` for an image under :data:`SMALL_IMAGE_PX` on its
    longest side (width by height), else nothing."""
    w, h = item.image_width, item.image_height
    if not w or not h or max(w, h) >= SMALL_IMAGE_PX:
        return ""
    return f" It is a small image of {w} by {h} pixels."


def window_clause(item: CaptionInput) -> str:
    """`` It is displayed in a brain window (L40/W80).`` for a CT image with a named window."""
    return f" It is displayed in {article(item.window)} {item.window}." if item.window else ""


def origin_phrase(item: CaptionInput) -> str:
    origin = item.origin or ""
    if origin == "mask":
        return "outlined by a segmentation mask"
    if origin == "box":
        return "given as an annotated bounding box"
    if origin.startswith("expert:"):
        return "outlined by an expert segmentation model trained on such regions"
    if origin == "classical":
        return "found by intensity thresholding"
    return f"of origin {origin}" if origin else "of unrecorded origin"


def one_of(count: int) -> str:
    """``one of two regions labelled`` / ``one of several regions labelled``: a region that is not the
    whole of what its label names in the image (white matter in pieces, one of three lesions)."""
    return f"one of {'two' if count == 2 else 'several'} regions labelled"


def roi_phrase(item: CaptionInput) -> str:
    """What the region of interest is: ``the region of interest is the grey matter, outlined by a
    segmentation mask``; for a whole image, that no region was localised."""
    if item.origin == "whole_image":
        return "the whole image is the region of interest"
    if is_named(item.label) and item.origin == "classical":
        return f"the region of interest is an area of {label_text(item.label)} {origin_phrase(item)}"
    if is_named(item.label) and (item.label_count or 0) > 1 and not item.synthetic:
        return f"the region of interest is {one_of(item.label_count or 0)} {label_text(item.label)}, {origin_phrase(item)}"
    if is_named(item.label):
        prefix = "a simulated " if item.synthetic else "the "
        return f"the region of interest is {prefix}{label_text(item.label)}, {origin_phrase(item)}"
    return f"the region of interest is an unlabelled region {origin_phrase(item)}"


def span_text(item: CaptionInput) -> str | None:
    """``its bounding box spans 12-48% of the image width and 30-55% of its height``; None when
    either span collapses at whole-percent precision."""
    if not item.bbox_norm or len(item.bbox_norm) != 4:
        return None
    x0, y0, x1, y1 = (round(v * 100) for v in item.bbox_norm)
    if (item.bbox_norm[2] - item.bbox_norm[0]) < MIN_SPAN or (item.bbox_norm[3] - item.bbox_norm[1]) < MIN_SPAN:
        return None
    if x1 <= x0 or y1 <= y0:
        return None
    return f"its bounding box spans {x0}-{x1}% of the image width and {y0}-{y1}% of its height"


def area_text(item: CaptionInput) -> str | None:
    """``it covers 3.2% of the image area`` (``less than 0.1%`` for a smaller region)."""
    if item.area_fraction is None or item.area_fraction <= 0:
        return None
    pct = item.area_fraction * 100
    amount = "less than 0.1%" if pct < 0.1 else f"{pct:.1f}%" if pct < 10 else f"{pct:.0f}%"
    subject = "the box covers" if item.origin == "box" else "it covers"
    return f"{subject} {amount} of the image area"


def size_texts(item: CaptionInput) -> list[str]:
    """Area for any localised region; diameter and outline only for a region with its own contour."""
    out = [t for t in (area_text(item),) if t]
    if is_outlined(item):
        if item.longest_diameter_mm is not None and item.longest_diameter_mm > 0:
            out.append(f"its longest diameter measures {item.longest_diameter_mm:.1f} mm")
        if item.shape_word:
            out.append(f"it has {article(item.shape_word)} {item.shape_word} outline")
    return out


def holder_label(item: CaptionInput) -> str | None:
    """The named region this one lies within: the label map's, else a containing ROI's; never its own
    label ("grey matter ... lies within the grey matter", of deep nuclei inside the cortex's outline,
    reads as a tautology)."""
    own = label_text(item.label).lower()
    names = [item.inside_label, *(r.get("other_label") for r in item.relations if r.get("relation") == "lies within")]
    texts = (label_text(n) for n in names if is_named(n))
    return next((text for text in texts if text.lower() != own), None)


def surround_phrase(item: CaptionInput) -> str:
    """What the intensity was compared with (the ring is restricted to the same tissue)."""
    holder = holder_label(item)
    return f"the surrounding {holder}" if holder else "its immediate surroundings"


def relation_phrases(item: CaptionInput, limit: int) -> list[str]:
    """Relations to named regions: containment first, then bordering, then image-frame directions to
    regions of another label; a name is given one kind of relation ("within the grey matter" and
    "bordered by the grey matter" or "above the grey matter" would name two regions alike).
    ``it lies within the liver``, ``it is bordered by the grey matter``, ``it lies above the white
    matter in the image``."""
    own = label_text(item.label).lower()
    out: list[str] = []
    holder = holder_label(item)
    if holder:
        out.append(f"it lies within the {holder}")
    held = {holder.lower()} if holder else set()
    held |= {_other(r) for r in item.relations if r.get("relation") in ("lies within", "encloses")}
    touched = held | {_other(r) for r in item.relations if r.get("relation") in ("bordered by", "borders")}
    within = {holder.lower()} if holder else set()
    within |= {_other(r) for r in item.relations if r.get("relation") == "lies within"}
    for rel in sorted(item.relations, key=lambda r: r.get("relation") != "lies within"):  # within, then the rest
        other, relation = label_text(rel.get("other_label")), str(rel.get("relation", "")).strip()
        if not is_named(other) or len(out) >= limit:
            continue
        if relation == "encloses":  # of a name it also lies within, or its own: another region of it
            alike = other.lower() == own or other.lower() in within
            phrase = f"it encloses another {other} region" if alike else f"it encloses the {other}"
        elif relation == "lies within" and other.lower() != own:
            phrase = f"it lies within the {other}"
        elif other.lower() in held or other.lower() == own:
            continue
        elif relation in ("bordered by", "borders"):
            phrase = f"it is bordered by the {other}" if relation == "bordered by" else f"it borders the {other}"
        elif other.lower() in touched:
            continue
        elif relation == "overlapping":
            phrase = f"it overlaps the {other} in the image"
        elif relation:
            phrase = f"it lies {relation} the {other} in the image"
        else:
            continue
        if phrase not in out:
            out.append(phrase)
    return out[:limit]


def _other(relation: dict) -> str:
    return label_text(relation.get("other_label")).lower()
