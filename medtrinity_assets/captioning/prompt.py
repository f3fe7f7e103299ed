"""The versioned captioning prompt, the ROI overlay sent with it, reply parsing and the cache key.

The prompt follows the MedTrinity recipe: the image with its ROI marked, the coarse caption,
the ROI coordinates, the measured attributes and the retrieved passages, asking for one
paragraph covering five facets, followed by the same facets as a JSON object.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from typing import Any

from PIL import Image, ImageDraw

from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.rois.config import default_config

PROMPT_VERSION = "mtri-v1"
FACETS: tuple[str, ...] = ("modality", "organ", "roi_location", "roi_texture", "relationship")
FACET_TITLES = {
    "modality": "Modality",
    "organ": "Organ and tissue detection",
    "roi_location": "ROI location and description",
    "roi_texture": "Lesion texture",
    "relationship": "Local-global relationship",
}

SYSTEM_PROMPT = (
    "You are a radiologist and pathologist writing precise, factual descriptions of medical images "
    "for a research dataset. The region of interest (ROI) is outlined in red on the image. "
    "Describe only what the image, the measurements and the metadata support. Use patient left/right "
    "only when the patient side is given; otherwise describe positions relative to the image "
    "(e.g. 'the left third of the image'). Never invent sizes, names, dates or identifiers. "
    "When you use a reference passage, cite its chunk id in square brackets."
)

_INSTRUCTIONS = (
    "Write one paragraph describing the image and its ROI, covering these five facets in order:\n"
    "1. Modality: the imaging modality (e.g. 'A chest X-ray', 'An axial T2-weighted MRI').\n"
    "2. Organ and tissue detection: which anatomy or tissue is shown and where the ROI sits in it.\n"
    "3. ROI location and description: position in the image (horizontal and vertical thirds), "
    "size and shape.\n"
    "4. Lesion texture: colour, intensity or density, and texture of the ROI against its surroundings.\n"
    "5. Local-global relationship: how the ROI relates to surrounding structures and to the disease "
    "pattern, grounded in the reference passages (cite chunk ids in square brackets).\n"
    "After the paragraph, output a JSON object on its own with exactly these string keys: "
    '{"modality": ..., "organ": ..., "roi_location": ..., "roi_texture": ..., "relationship": ...}.'
)

REPAIR_PROMPT = (
    "Your previous reply did not contain a valid JSON object with the keys "
    '"modality", "organ", "roi_location", "roi_texture" and "relationship". '
    "Return ONLY that JSON object, with a non-empty string value for each key, and nothing else."
)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def build_user_text(item: CaptionInput) -> str:
    """The user message's text part (deterministic: it is part of the cache key's meaning)."""
    return build_reference_text(item) + "\n\n" + _INSTRUCTIONS


def build_reference_text(item: CaptionInput) -> str:
    """Everything known about the ROI, as text: metadata, measurements and retrieved passages."""
    lines = ["Coarse caption: " + (item.coarse_caption or "(none)")]
    lines.append(f"Modality (metadata): {item.modality or 'unknown'}")
    lines.append(f"Organ / body part (metadata): {item.organ or 'unknown'}")
    lines.append("")
    lines.append("Region of interest:")
    lines.append(f"- label: {item.label or 'unlabelled'} (origin: {item.origin or 'unknown'})")
    if item.bbox_norm:
        lines.append("- box, normalised [x0, y0, x1, y1]: [" + ", ".join(f"{v:.3f}" for v in item.bbox_norm) + "]")
    if item.bbox_xyxy:
        lines.append("- box, pixels [x0, y0, x1, y1]: [" + ", ".join(f"{v:.0f}" for v in item.bbox_xyxy) + "]")
    lines.append(f"- position in the image: horizontal {_third_line(item, 0)}, vertical {_third_line(item, 1)}")
    lines.append(
        "- patient side: "
        + (item.patient_lr or "unknown (image orientation not known; do not state patient left/right)")
    )
    if item.patient_ap or item.patient_si:
        lines.append(f"- patient anterior/posterior: {item.patient_ap or 'unknown'}; "
                     f"superior/inferior: {item.patient_si or 'unknown'}")
    lines.append(f"- area fraction of the image: {_fmt(item.area_fraction)}")
    lines.append(
        "- longest diameter: "
        + (f"{item.longest_diameter_mm:.1f} mm" if item.longest_diameter_mm is not None
           else "not measured (pixel spacing unknown; do not state sizes in mm)")
    )
    lines.append(
        f"- intensity: {item.intensity_word or 'not measured'} (ROI mean {_fmt(item.roi_mean)}, "
        f"surrounding ring mean {_fmt(item.ring_mean)}, contrast {_fmt(item.intensity_contrast)})"
    )
    lines.append(f"- texture: {item.texture_homogeneity_word or 'not measured'}, "
                 f"{item.texture_smoothness_word or 'not measured'}")
    lines.append(f"- shape: {item.shape_word or 'not measured'} (circularity {_fmt(item.circularity)})")
    lines.append(f"- ROIs in this image: {item.roi_count if item.roi_count is not None else 'unknown'}")
    if (item.label_count or 0) > 1:
        lines.append(f"- this ROI is one of {'two' if item.label_count == 2 else 'several'} regions labelled "
                     f"{item.label} in this image (say so; do not call it the {item.label})")
    if item.inside_label:
        lines.append(f"- lies inside: {item.inside_label}")
    for rel in item.relations:
        dist = rel.get("distance_norm")
        extra = f" (normalised distance {dist:.3f})" if isinstance(dist, int | float) else ""
        lines.append(f"- relation: {rel['relation']} {rel['other']}{extra}")
    lines.append("")
    if item.passages:
        lines.append("Reference passages (retrieved from the knowledge base):")
        for i, p in enumerate(item.passages, 1):
            title = f"{p.title}: " if p.title else ""
            lines.append(f"[{i}] (chunk {p.chunk_id}) {title}{p.text.strip()}")
    else:
        lines.append("Reference passages: none retrieved.")
    return "\n".join(lines)


def _third_line(item: CaptionInput, axis: int) -> str:
    """``left third`` (``axis`` 0) or ``upper third`` (1); for a region in no third because its box spans
    most of the image along the axis, that it does; else ``unknown``."""
    word = item.horizontal if axis == 0 else item.vertical
    if word:
        return f"{word} third"
    box = item.bbox_norm or []
    if len(box) == 4 and box[axis + 2] - box[axis] > default_config().position_max_span:
        return f"none: the region spans most of the image {'width' if axis == 0 else 'height'} (name no third)"
    return "unknown"


def render_overlay(item: CaptionInput, colour: tuple[int, int, int] = (255, 0, 0)) -> Image.Image | None:
    """An RGB copy of the image with the ROI box outlined; the file on disk is never modified."""
    path = item.image_file()
    if path is None:
        return None
    with Image.open(path, formats=["PNG"]) as im:  # preprocessed images are PNG, nothing else is opened
        im.load()
        img = im.convert("RGB")  # always a new image
    box = item.bbox_xyxy
    if box is None and item.bbox_norm is not None:
        w, h = img.size
        box = [item.bbox_norm[0] * w, item.bbox_norm[1] * h, item.bbox_norm[2] * w, item.bbox_norm[3] * h]
    if box is not None:
        w, h = img.size
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, x1 = max(0.0, min(x0, x1)), min(w - 1.0, max(x0, x1))
        y0, y1 = max(0.0, min(y0, y1)), min(h - 1.0, max(y0, y1))
        width = max(1, round(max(w, h) / 256))
        ImageDraw.Draw(img).rectangle([x0, y0, x1, y1], outline=colour, width=width)
    return img


def overlay_png(item: CaptionInput) -> bytes | None:
    img = render_overlay(item)
    if img is None:
        return None
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_data_url(item: CaptionInput) -> str | None:
    data = overlay_png(item)
    if data is None:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def build_messages(item: CaptionInput, data_url: str | None = None) -> list[dict[str, Any]]:
    """OpenAI chat-completions messages (image as a data URL when there is one)."""
    text = build_user_text(item)
    content: list[dict[str, Any]] = []
    if data_url:
        content.append({"type": "image_url", "image_url": {"url": data_url}})
    content.append({"type": "text", "text": text})
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def repair_messages(messages: list[dict[str, Any]], reply: str) -> list[dict[str, Any]]:
    return [*messages, {"role": "assistant", "content": reply}, {"role": "user", "content": REPAIR_PROMPT}]


class FacetParseError(ValueError):
    """The reply holds no JSON object with the five facets."""


def _json_objects(text: str):
    """Every top-level JSON object embedded in ``text`` (code fences and prose around it allowed)."""
    decoder = json.JSONDecoder()
    i = text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            yield obj, i, end
        i = text.find("{", end)


def parse_reply(text: str) -> tuple[str, dict[str, str]]:
    """(paragraph, facets) from a model reply; raises :class:`FacetParseError`.

    The paragraph is the text before the JSON object (code fences stripped); when the reply is
    JSON only, the paragraph is the facets joined in order.
    """
    for obj, start, _end in _json_objects(text or ""):
        facets = {k: obj.get(k) for k in FACETS}
        if all(isinstance(v, str) and v.strip() for v in facets.values()):
            facets = {k: v.strip() for k, v in facets.items()}
            para = re.sub(r"```(?:json)?", "", text[:start]).strip()
            if len(para) < 20:
                para = " ".join(facets[k] for k in FACETS)
            return para, facets
    raise FacetParseError("no JSON object with the five facet keys in the reply")


def inputs_hash(
    item: CaptionInput, backend: str, model: str, params: dict[str, Any], prompt_version: str = PROMPT_VERSION
) -> str:
    """sha256 over every input of a caption: the ROI input, the backend, model, params and prompt."""
    payload = {
        "input": item.hash_payload(),
        "backend": backend,
        "model": model,
        "params": params,
        "prompt_version": prompt_version,
    }
    blob = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
