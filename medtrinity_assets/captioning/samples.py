"""Realistic synthetic caption inputs (the shapes the upstream stages produce) for tests,
benchmarks and demos of the captioning stage without running the whole graph."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np

from medtrinity_assets.captioning.inputs import CaptionInput, Passage
from medtrinity_assets.rois.config import default_config
from medtrinity_assets.rois.rle import rle_encode, rle_json

_CASES = [
    # modality, organ, labels, intensity words, oriented?, has spacing?
    ("CT", "head", ["haemorrhage", "ventricle", "skull"], ["hyperdense", "hypodense"], True, True),
    ("CT", "pancreas", ["pancreas", "pancreatic lesion"], ["hypodense", "isodense"], True, True),
    ("MRI", "brain", ["grey matter", "white matter", "Precentral_L", "Hippocampus_R"], ["hyperintense", "hypointense"], True, True),
    ("MRI", "liver", ["liver lesion", "liver"], ["hypointense", "hyperintense"], True, True),
    ("MRI", "shoulder", ["humeral head", "joint effusion"], ["hyperintense"], False, True),
    ("X-ray", "chest", ["left lung", "right lung", "heart", "opacity"], ["increased opacity", "decreased opacity"], True,
     True),
    ("X-ray", "tibia", ["fracture", "tibia"], ["increased opacity"], False, False),
    ("Ultrasound", "unspecified", ["hypoechoic area"], ["hyperechoic", "hypoechoic"], False, False),
    ("Nuclear medicine", "whole body", ["uptake focus"], ["increased uptake"], False, False),
    ("Histopathology", "colon", ["gland", "nuclei cluster"], ["denser staining", "paler staining"], False, False),
    ("Microscopy", "cell culture", ["cell"], ["brighter"], False, False),
    ("Fundus", "retina", ["optic disc", "microaneurysm"], ["brighter", "darker"], False, False),
    (None, None, ["region"], [None], False, False),
]

_PASSAGES = [
    ("Intracranial haemorrhage", "Acute intracranial haemorrhage appears hyperdense on non-contrast CT. "
     "Blood products become isodense and then hypodense over one to two weeks."),
    ("Pneumonia", "Pneumonia is an infection of the lung parenchyma. On a chest radiograph it appears as an "
     "area of increased opacity, often in the right lower lobe in aspiration."),
    ("Liver lesions", "Focal liver lesions include cysts, haemangiomas and metastases. Most metastases are "
     "hypointense on T1-weighted MRI and moderately hyperintense on T2-weighted images."),
    ("Grey and white matter", "The cerebral cortex is grey matter; myelinated axons form the white matter. "
     "On T1-weighted MRI white matter is brighter than grey matter."),
    ("Diabetic retinopathy", "Microaneurysms are the earliest visible sign of diabetic retinopathy, seen on "
     "fundus photographs as small red dots near retinal vessels."),
    ("Colonic glands", "Normal colonic mucosa shows regular crypts lined by goblet cells. Dysplastic glands "
     "show crowded, hyperchromatic nuclei."),
    ("Fractures", "A fracture is a break in the continuity of bone. Radiographs show a lucent line and "
     "possibly displacement of the fragments."),
]


_CASE_PASSAGE = [0, 2, 3, 2, 6, 1, 6, 2, 6, 5, 5, 4, 0]

#: how some cases' images were made, as their metadata say (the descriptions name it, the checks read it)
_TECHNIQUE = {("CT", "head"): "non-contrast", ("MRI", "liver"): "contrast-enhanced",
              ("Ultrasound", "unspecified"): "colour Doppler", ("Microscopy", "cell culture"): "phase-contrast"}


def realistic_inputs(n: int, seed: int = 0, *, with_passages: bool = True) -> list[CaptionInput]:
    """``n`` varied inputs: every modality of the demo, oriented and unoriented images, measured
    and unmeasured sizes, one or several ROIs, relations, labels with laterality."""
    rng = random.Random(seed)
    return [_realistic_input(i, rng, with_passages) for i in range(n)]


# Every helper below draws from the shared ``rng``; the order of the draws fixes the samples.


def _realistic_input(i: int, rng: random.Random, with_passages: bool) -> CaptionInput:
    """The ``i``-th sample (case ``i`` modulo the cases); the draws happen in a fixed order."""
    modality, organ, labels, iwords, oriented, spacing = _CASES[i % len(_CASES)]
    label = rng.choice(labels)
    x0, y0, x1, y1 = _random_box(rng)
    patient_lr = _patient_side(_thirds(x0, y0, x1, y1)[0], label) if oriented else None
    roi_count = rng.choice([1, 1, 2, 3, 5])
    relations = _random_relations(rng, roi_count, labels)
    origin = rng.choice(["mask", "box", "expert:lung_unet", "classical"]) if i % 17 else "whole_image"
    whole = origin == "whole_image"
    if whole:
        x0, y0, x1, y1 = 0.0, 0.0, 1.0, 1.0
        roi_count, relations, patient_lr = 1, [], None
    mask = _mask(x0, y0, x1, y1, rectangle=origin in ("box", "whole_image"))
    passages = _random_passages(rng, i) if with_passages and i % 11 else []
    iw = rng.choice(iwords)
    measured = _random_measurements(rng, iw, oriented=oriented, spacing=spacing)
    if whole:
        measured.update(longest_diameter_mm=None, intensity_word=None, ring_mean=None, intensity_contrast=None,
                        shape_word=None, circularity=None)
    horizontal, vertical = ("centre", "middle") if whole else _mask_thirds(mask)
    return CaptionInput(
        record_id=f"rec{i:06d}",
        source=(modality or "unknown").lower().replace(" ", "_"),
        roi_id=f"r{i % 3}",
        image_path=None,
        coarse_caption=" ".join(filter(None, [_TECHNIQUE.get((modality, organ)), modality or "Image"]))
        + f" of the {organ or 'body'}, {label}.",
        modality=modality,
        organ=organ,
        terms=[t for t in (modality, organ, label) if t],
        label=label,
        origin=origin,
        bbox_xyxy=[x0 * _SIZE, y0 * _SIZE, x1 * _SIZE, y1 * _SIZE],
        bbox_norm=[x0, y0, x1, y1],
        mask_rle=rle_json(rle_encode(mask)),
        image_width=_SIZE,
        image_height=_SIZE,
        area_fraction=float(mask.mean()),
        horizontal=horizontal,
        vertical=vertical,
        patient_lr=patient_lr,
        **measured,
        roi_count=roi_count,
        relations=relations,
        inside_label=rng.choice([None, organ]) if organ and organ not in ("unspecified", "whole body") else None,
        roi_status="ok",
        query=" ".join(t for t in (label, organ, modality) if t),
        passages=passages,
    )


_SIZE = 256  # sample images are _SIZE x _SIZE pixels


def _mask(x0: float, y0: float, x1: float, y1: float, *, rectangle: bool) -> np.ndarray:
    """The region's mask: its box filled (a box, the whole image) or the ellipse inscribed in it."""
    r0, r1 = int(y0 * _SIZE), max(int(y0 * _SIZE) + 1, int(round(y1 * _SIZE)))
    c0, c1 = int(x0 * _SIZE), max(int(x0 * _SIZE) + 1, int(round(x1 * _SIZE)))
    mask = np.zeros((_SIZE, _SIZE), bool)
    if rectangle:
        mask[r0:r1, c0:c1] = True
        return mask
    yy, xx = np.mgrid[0:_SIZE, 0:_SIZE] + 0.5
    cy, cx, ry, rx = (r0 + r1) / 2, (c0 + c1) / 2, max((r1 - r0) / 2, 1.0), max((c1 - c0) / 2, 1.0)
    mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0] = True
    return mask


def _mask_thirds(mask: np.ndarray) -> tuple[str | None, str | None]:
    """The thirds the ROI stage gives the region (:func:`~medtrinity_assets.rois.measure.region_thirds`)."""
    from medtrinity_assets.rois.measure import region_thirds

    rows, cols = np.nonzero(mask)
    cx, cy = (cols.mean() + 0.5) / _SIZE, (rows.mean() + 0.5) / _SIZE
    h, v = region_thirds(rows, cols, (0, 0), mask.shape, (cx, cy), default_config())
    return (None if h is None else ("left", "centre", "right")[h]), (None if v is None else ("upper", "middle", "lower")[v])


def _third_of(value: float, words: tuple[str, str, str]) -> str:
    cfg = default_config()
    return words[0] if value < cfg.lower_third else words[2] if value > cfg.upper_third else words[1]


def _random_box(rng: random.Random) -> tuple[float, float, float, float]:
    """A normalised box (x0, y0, x1, y1) inside the image."""
    x0, y0 = rng.uniform(0, 0.7), rng.uniform(0, 0.7)
    x1, y1 = x0 + rng.uniform(0.05, 0.3), y0 + rng.uniform(0.05, 0.3)
    return x0, y0, x1, y1


def _thirds(x0: float, y0: float, x1: float, y1: float) -> tuple[str, str]:
    """The horizontal and vertical thirds of the box centre."""
    return _third_of((x0 + x1) / 2, ("left", "centre", "right")), _third_of((y0 + y1) / 2, ("upper", "middle", "lower"))


def _patient_side(horizontal: str, label: str) -> str | None:
    """The patient side of an oriented image: a sided label's side, else the radiological
    convention (image left is patient right)."""
    patient_lr = {"left": "right", "right": "left"}.get(horizontal)
    if "_L" in label or label.startswith("left"):
        patient_lr = "left"
    elif "_R" in label or label.startswith("right"):
        patient_lr = "right"
    return patient_lr


def _random_relations(rng: random.Random, roi_count: int, labels: list[str]) -> list[dict]:
    """Image-frame relations to up to two other ROIs when the image has several (named by a label
    of the case, or unnamed)."""
    relations = []
    if roi_count > 1:
        for j in range(min(roi_count - 1, 2)):
            relations.append({"other": f"r{j + 1}", "relation": rng.choice(["above", "left of", "below and right of",
                                                                           "right of"]),
                              "distance_norm": round(rng.uniform(0, 0.5), 3),
                              "other_label": rng.choice([*labels, "region"])})
    return relations


def _random_passages(rng: random.Random, i: int) -> list[Passage]:
    """Three passages, starting from the one that suits the case."""
    passages = []
    first = _CASE_PASSAGE[i % len(_CASES)]
    for k in range(3):
        title, text = _PASSAGES[(first + k) % len(_PASSAGES)]
        passages.append(Passage(chunk_id=f"{(i * 7 + k) % 997:04d}c{rng.getrandbits(40):010x}"[:24],
                                title=title, text=text, score=round(1 - 0.1 * k, 3)))
    return passages


def _random_measurements(rng: random.Random, iw: str | None, *, oriented: bool, spacing: bool) -> dict[str, Any]:
    """Orientation, size and the measured intensity, texture and shape (none without ``iw``)."""
    measured = iw is not None
    return {
        "patient_ap": rng.choice([None, "anterior", "posterior"]) if oriented else None,
        "patient_si": None,
        "longest_diameter_mm": round(rng.uniform(3, 80), 1) if spacing else None,
        "intensity_word": iw,
        "roi_mean": round(rng.uniform(0.3, 0.9), 3) if measured else None,
        "ring_mean": round(rng.uniform(0.1, 0.6), 3) if measured else None,
        "intensity_contrast": (round(rng.uniform(0.05, 0.5), 3) * (-1 if _darker(iw) else 1)
                               if measured else None),
        "texture_homogeneity_word": rng.choice(["homogeneous", "heterogeneous"]) if measured else None,
        "texture_smoothness_word": rng.choice(["smooth", "coarse"]) if measured else None,
        "shape_word": rng.choice(["round", "oval", "irregular", "lobulated"]) if measured else None,
        "circularity": round(rng.uniform(0.3, 1.0), 2) if measured else None,
    }


def _darker(word: str | None) -> bool:
    return bool(word) and (word.startswith(("hypo", "decreased", "denser")) or word == "darker")


def relations_json(item: CaptionInput) -> str:
    return json.dumps(item.relations)
