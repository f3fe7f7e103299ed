"""Fidelity benchmark: how truthful the pipeline's ROIs and descriptions are against planted truth.

Images with planted lesions of known mask, position, area, polarity and shape
(:mod:`medtrinity_assets.demo.planted`) go through the real stages (ingestion, expert training,
ROI set, coarse captions, caption inputs without retrieval, the embedded captioner) as three
sources of one scope, each with its own images: ``masked`` (masks in the source), ``expert`` (MRI
without masks: the expert trained on ``masked`` must find the lesions; it is trained because this
source has unannotated images, and used only if its card passes the gate), ``classical`` (no
masks, declared nuclear medicine: the classical fallback, focal hot spots, runs).

Matching: an ok ROI with a mask matches the lesion of largest IoU when that IoU >= 0.3, else the
lesion that holds its centroid if the ROI overlaps it and is at most 4x its area (a body outline
or rim whose centre falls on a lesion found nothing). Recall = matched lesions / lesions;
precision = matching ROIs / localised ROIs; noise share = 1 - precision.

Claims are read from the description's facets and compared with the planted truth, never with the
roi_set: thirds (contradicted when the lesion's centroid lies outside the claimed third by more
than 2% of the image), box (an edge more than 3% of the image from the lesion's), area (the
claim's interval with its print rounding must meet [truth / 1.5, truth * 1.5]), polarity (the
opposite sign or "iso"), shape (a disc called irregular, lobulated or elongated; an ellipse round,
irregular or lobulated; an irregular blob round or elongated), "whole image" wording on a localised
ROI. A noise ROI's description describes a lesion that is not there: it counts as a description
with a false claim (reported apart, and in the overall share).

    python benchmarks/fidelity.py [--n 200] [--seed 0] [--json out.json] [--demo-out OUT_ROOT]
                                  [--variants masked,expert,classical] [--look /tmp/fidelity_look]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image
from scipy import ndimage

from medtrinity_assets.captioning import build_caption_inputs, run_caption_batch
from medtrinity_assets.captioning.backends.embedded import EmbeddedCaptioner
from medtrinity_assets.captioning.wording import intensity_polarities
from medtrinity_assets.core.images import read_png
from medtrinity_assets.core.tables import (
    CAPTION_BATCH,
    COARSE_CAPTIONS,
    PREPROCESSED_IMAGES,
    ROI_SET,
    SOURCE_MANIFEST,
)
from medtrinity_assets.demo.planted import (
    CENTROID_MAX_AREA_RATIO,
    IOU_MIN,
    PlantedImage,
    PlantedLesion,
    generate_planted,
    match_roi,
    write_planted,
)
from medtrinity_assets.ingest import ingest_source
from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.metadata.coarse_captions import build_coarse_captions
from medtrinity_assets.rois.build import build_roi_set
from medtrinity_assets.rois.overlay import draw_roi_overlay
from medtrinity_assets.rois.rle import rle_decode
from medtrinity_assets.segmentation import ExpertConfig, load_experts_for, train_experts

THIRD_SLACK = 0.02
AREA_FACTOR = 1.5
TARGETS = {"recall": (">=", 0.95), "noise_share": ("<=", 0.05), "contradicted_share": ("<=", 0.02)}
VARIANTS = {"masked": ("MRI", True), "expert": ("MRI", False), "classical": ("nuclear medicine", False)}
FACET_CHECKS = ("position", "box", "area", "polarity", "shape", "whole_image")
BOX_SLACK = 0.03  # a claimed box edge may be this far (share of the image side) from the lesion's
SIZE_BINS = ((0.0, 0.002, "<0.2%"), (0.002, 0.01, "0.2-1%"), (0.01, 1.0, ">=1%"))
DEMO_DATA = Path(__file__).resolve().parent.parent / "data" / "demo"

# -- claim readers (old and new wording of the embedded captioner, and tolerant of others) ------
_H = {"left": "left", "right": "right"} | dict.fromkeys(("central", "centre", "center", "middle"), "central")
_V = {"upper": "upper", "top": "upper", "lower": "lower", "bottom": "lower"} | dict.fromkeys(
    ("middle", "central", "centre"), "middle")
_H_RX = re.compile(r"horizontally\s+(?:in|at|within)\s+the\s+(left|central|centre|center|middle|right)\s+third", re.I)
_V_RX = re.compile(r"vertically\s+(?:in|at|within)\s+the\s+(upper|top|middle|central|centre|lower|bottom)\s+third", re.I)
_AREA_RX = re.compile(r"covers\s+(less than\s+|under\s+|about\s+)?(\d+(?:\.(\d+))?)\s*%\s+of\s+the\s+image", re.I)
_SHAPE_RX = re.compile(r"\b(round|oval|irregular|lobulated|elongated)\s+(?:outline|shape|contour|margins?)", re.I)
_BOX_RX = re.compile(r"box spans\s+([\d.]+)\s*-\s*([\d.]+)(%?)\s+of the image width and\s+([\d.]+)\s*-\s*([\d.]+)(%?)"
                     r"\s+of its height", re.I)
_WHOLE_RX = re.compile(r"no region (?:was|is|has been) locali[sz]ed|\b(?:whole|entire) image\b", re.I)
_WRONG_SHAPE = {"disc": {"irregular", "lobulated", "elongated"}, "ellipse": {"round", "irregular", "lobulated"},
                "irregular": {"round", "elongated"}}


def read_position(text: str) -> tuple[str | None, str | None]:
    """The claimed horizontal and vertical thirds (``left|central|right``, ``upper|middle|lower``)."""
    h, v = _H_RX.search(text or ""), _V_RX.search(text or "")
    return (_H[h.group(1).lower()] if h else None, _V[v.group(1).lower()] if v else None)


def read_area(text: str) -> tuple[float, float] | None:
    """The claimed area as an interval of image fractions (print rounding included), or None."""
    m = _AREA_RX.search(text or "")
    if not m:
        return None
    value, decimals = float(m.group(2)) / 100, len(m.group(3) or "")
    if m.group(1) and m.group(1).strip().lower() in ("less than", "under"):
        return 0.0, value
    half = 0.5 * 10.0 ** (-decimals) / 100
    return max(0.0, value - half), value + half


def read_box(text: str) -> tuple[float, float, float, float] | None:
    """The claimed box ``(x0, y0, x1, y1)`` as shares of the image ("37-68%" or "0.37-0.68")."""
    m = _BOX_RX.search(text or "")
    return tuple(float(m.group(i)) / (100 if m.group(3 if i < 3 else 6) else 1) for i in (1, 4, 2, 5)) if m else None


def read_shape(text: str) -> str | None:
    m = _SHAPE_RX.search(text or "")
    return m.group(1).lower() if m else None


# -- judges: None = no claim, True = contradicted, False = consistent ---------------------------
_RANGES = {"left": (0.0, 1 / 3), "central": (1 / 3, 2 / 3), "right": (2 / 3, 1.0), "upper": (0.0, 1 / 3),
           "middle": (1 / 3, 2 / 3), "lower": (2 / 3, 1.0)}


def judge_position(text: str, lesion: PlantedLesion) -> bool | None:
    claims = [(word, value) for word, value in zip(read_position(text), lesion.centroid, strict=True) if word]
    lo_hi = [(_RANGES[word], value) for word, value in claims]
    return bool(any(v < lo - THIRD_SLACK or v > hi + THIRD_SLACK for (lo, hi), v in lo_hi)) if claims else None


def judge_box(text: str, lesion: PlantedLesion) -> bool | None:
    claim = read_box(text)
    if claim is None:
        return None
    rr, cc = np.nonzero(lesion.mask)
    (h, w), (r0, r1), (c0, c1) = lesion.mask.shape, (rr.min(), rr.max() + 1), (cc.min(), cc.max() + 1)
    return bool(np.abs(np.subtract(claim, (c0 / w, r0 / h, c1 / w, r1 / h))).max() > BOX_SLACK)


def judge_area(text: str, lesion: PlantedLesion) -> bool | None:
    claim, t = read_area(text), lesion.area_fraction
    return None if claim is None else claim[1] < t / AREA_FACTOR or claim[0] > t * AREA_FACTOR


def judge_polarity(text: str, lesion: PlantedLesion) -> bool | None:
    said = intensity_polarities(text or "")
    return bool(said & {-lesion.polarity, 0}) if said else None


def judge_shape(text: str, lesion: PlantedLesion) -> bool | None:
    word = read_shape(text)
    return None if word is None else word in _WRONG_SHAPE[lesion.shape]


def judge_description(facets: dict[str, str], lesion: PlantedLesion) -> dict[str, bool | None]:
    """Each checkable claim of a matched ROI's description against its planted lesion."""
    loc = facets.get("roi_location") or facets.get("text") or ""
    tex = facets.get("roi_texture") or facets.get("text") or ""
    return {
        "position": judge_position(loc, lesion),
        "box": judge_box(loc, lesion),
        "area": judge_area(loc, lesion),
        "polarity": judge_polarity(tex, lesion),
        "shape": judge_shape(loc, lesion),
        "whole_image": True if _WHOLE_RX.search(loc) else None,
    }


@dataclass
class Tally:
    """Counts of one variant: ``n`` holds lesions, matched_lesions, localised, matched_rois, images,
    whole_image_images, missing_images, described, noise_described, contradicted (descriptions)."""

    n: Counter = field(default_factory=Counter)
    claims: Counter = field(default_factory=Counter)
    facet_contradicted: Counter = field(default_factory=Counter)
    bin_all: Counter = field(default_factory=Counter)  # lesions per bin (area, shape, polarity)
    bin_hit: Counter = field(default_factory=Counter)
    examples: list[dict] = field(default_factory=list)
    misses: list[dict] = field(default_factory=list)
    noise: list[dict] = field(default_factory=list)


def _lesion_bins(lesion: PlantedLesion) -> list[str]:
    size = next(name for lo, hi, name in SIZE_BINS if lo <= lesion.area_fraction < hi)
    return [f"area {size}", f"shape {lesion.shape}", f"polarity {'+' if lesion.polarity > 0 else '-'}"]


def score_image(t: Tally, item: PlantedImage, rois: list[dict], captions: dict[str, dict]) -> None:
    """Add one image's ROIs and descriptions to the tally."""
    localised = [r for r in rois if r["status"] == "ok" and r["origin"] != "whole_image" and r["mask_rle"]]
    t.n.update(images=1, whole_image_images=not localised, localised=len(localised))
    truths, hits = [lesion.mask for lesion in item.lesions], Counter()
    for roi in localised:
        mask, cap = rle_decode(roi["mask_rle"]), captions.get(roi["roi_id"])
        k = match_roi(mask, roi.get("centroid_norm"), truths) if mask.shape == item.image.shape else None
        if k is None:
            t.n["noise_described"] += cap is not None
            t.noise.append({"image": item.name, "roi_id": roi["roi_id"], "origin": roi["origin"],
                            "area_fraction": roi["area_fraction"], "centroid": roi.get("centroid_norm")})
            continue
        hits[k] += 1
        if cap is not None:
            _score_caption(t, item, k, cap)
    t.n["matched_rois"] += sum(hits.values())
    largest = max(x.area_px for x in item.lesions)
    for k, lesion in enumerate(item.lesions):
        t.n.update(lesions=1, matched_lesions=k in hits)
        t.bin_all.update(_lesion_bins(lesion))
        t.bin_hit.update(_lesion_bins(lesion) if k in hits else [])
        t.misses += [] if k in hits else [{"image": item.name, "of_largest": lesion.area_px / largest, **lesion.summary()}]


def _score_caption(t: Tally, item: PlantedImage, k: int, cap: dict) -> None:
    verdict = judge_description(cap, item.lesions[k])
    t.n["described"] += 1
    bad = [name for name, v in verdict.items() if v]
    for name, v in verdict.items():
        t.claims[name] += v is not None
        t.facet_contradicted[name] += bool(v)
    t.n["contradicted"] += bool(bad)
    if bad and len(t.examples) < 12:
        t.examples.append({"image": item.name, "lesion": item.lesions[k].summary(), "contradicted": bad,
                           "roi_location": cap.get("roi_location"), "roi_texture": cap.get("roi_texture")})


def share(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def summarise(t: Tally) -> dict[str, Any]:
    """The figures of one variant (shares rounded to 4 places)."""
    n = t.n
    return {
        "images": n["images"], "images_lost_in_ingestion": n["missing_images"], "lesions": n["lesions"],
        "recall": share(n["matched_lesions"], n["lesions"]), "localised_rois": n["localised"],
        "precision": share(n["matched_rois"], n["localised"]),
        "noise_share": share(n["localised"] - n["matched_rois"], n["localised"]),
        "images_whole_image_only": n["whole_image_images"], "descriptions_of_matched_rois": n["described"],
        "descriptions_of_noise_rois": n["noise_described"],
        "matched_contradicted_share": share(n["contradicted"], n["described"]),
        "contradicted_share": share(n["contradicted"] + n["noise_described"], n["described"] + n["noise_described"]),
        "claims_made": dict(t.claims),
        "facet_contradicted_share": {f: share(t.facet_contradicted[f], n["described"]) for f in FACET_CHECKS},
        "recall_by": {k: {"recall": share(t.bin_hit[k], v), "lesions": v} for k, v in sorted(t.bin_all.items())},
    }


# -- the pipeline, through its domain functions (wired as the assets of defs/ wire them) --------
def planted_spec(name: str, root: Path, modality: str) -> SourceSpec:
    return SourceSpec(name=name, layout="image_folder", root=str(root), modality=modality, organ="phantom",
                      labels={1: "lesion"}, license="synthetic (benchmarks/fidelity.py)", synthetic=True,
                      origin="medtrinity_assets.demo.planted")


def enrich(spec: SourceSpec, out: Path) -> dict[str, Any]:
    """roi_set, coarse_captions and caption_batch of one ingested source (no retrieval)."""
    manifest, images = SOURCE_MANIFEST.read(out, spec.name), PREPROCESSED_IMAGES.read(out, spec.name)
    experts = load_experts_for(spec, out / "expert_models")
    result = build_roi_set(images, spec, out, experts=experts)
    ROI_SET.write(result.rois, out, spec.name)
    COARSE_CAPTIONS.write(build_coarse_captions(manifest, images, spec), out, spec.name)
    inputs = build_caption_inputs(ROI_SET.read(out, spec.name), COARSE_CAPTIONS.read(out, spec.name), None, None,
                                  images, out_root=out)
    path = CAPTION_BATCH.path(out, spec.name)
    run_caption_batch(inputs, EmbeddedCaptioner(), path)
    return {"manifest": manifest, "images": images, "rois": result.rois, "captions": CAPTION_BATCH.read_path(path),
            "experts": [e.name for e in experts], "dropped": result.dropped_counts,
            "flagged": result.flagged_counts, "origins": result.counts_by_origin}


def run_pipeline(work: Path, n: int, seed: int, variants: list[str], size_range: tuple[int, int],
                 epochs: int = 30) -> dict[str, Any]:
    """Generate, write, ingest, train experts and enrich every variant; frames and timings."""
    out, planted, specs, timings, t0 = work / "out", {}, {}, {}, time.perf_counter()

    def lap(name: str) -> None:
        timings[name] = time.perf_counter() - t0 - sum(timings.values())

    for j, v in enumerate(variants):
        modality, with_masks = VARIANTS[v]
        items = generate_planted(n, seed * 1000 + j, size_range=size_range, prefix=v)
        write_planted(items, work / "sources" / f"planted_{v}", with_masks=with_masks)
        specs[v] = planted_spec(f"planted_{v}", work / "sources" / f"planted_{v}", modality)
        planted[v] = {it.name: it for it in items}
    lap("generate_s")
    for v in variants:
        ingest_source(specs[v], out, workers=2)
    lap("ingest_s")
    # the expert_models asset's defaults (defs/rois.py ExpertModelsConfig)
    report = train_experts(list(specs.values()), out, ExpertConfig(epochs=epochs, image_size=128),
                           min_samples=8, max_samples=400, seed=0)
    lap("train_s")
    frames = {v: enrich(specs[v], out) for v in variants}
    lap("enrich_s")
    cards = [json.loads(p.read_text()) for p in sorted((out / "expert_models").glob("*/card.json"))]
    trained = {c["name"]: {k: c["metrics"].get(k) for k in ("dice", "classical_dice", "n_train", "epochs_run",
                                                             "train_seconds")} for c in cards}
    return {"out": out, "planted": planted, "frames": frames, "timings": timings,
            "experts": {"trained": trained, "skipped": report.skipped}}


def _stem_by_record(manifest: pl.DataFrame) -> dict[str, str]:
    ok = manifest.filter(pl.col("status") == "ok")
    return {rid: Path(rel).stem for rid, rel in ok.select("record_id", "relpath").iter_rows()}


def captions_by_roi(captions: pl.DataFrame) -> dict[str, dict]:
    """roi_id -> {text, <facet>: ...} of the ok descriptions."""
    rows = captions.filter(pl.col("status") == "ok").iter_rows(named=True)
    return {str(r["roi_id"]): {"text": r["text"], **json.loads(r["facets"] or "{}")} for r in rows}


def score_variant(items: dict[str, PlantedImage], frames: dict[str, Any]) -> Tally:
    """Score one variant's ROIs and descriptions against its planted truth."""
    t = Tally()
    by_stem = {stem: rid for rid, stem in _stem_by_record(frames["manifest"]).items()}
    kept = set(frames["images"]["record_id"].to_list())
    rois = {k[0]: df.to_dicts() for k, df in frames["rois"].partition_by("record_id", as_dict=True).items()}
    caps = captions_by_roi(frames["captions"])
    for name, item in items.items():
        if by_stem.get(name) not in kept:
            t.n["missing_images"] += 1
            continue
        score_image(t, item, rois.get(by_stem[name], []), caps)
    return t


# -- demo sources with known truth ---------------------------------------------------------------
def truth_components(path: Path, shape: tuple[int, int]) -> list[np.ndarray]:
    """The connected components of a truth mask file, at the image's ``shape``."""
    img = Image.open(path).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    labelled, n = ndimage.label(np.asarray(img) > 0, structure=np.ones((3, 3), bool))
    return [labelled == k for k in range(1, n + 1)]


def phantoms_report(out_root: Path, demo_dir: Path, source: str = "synthetic_phantoms") -> dict[str, Any]:
    """ROI recall/precision on the demo phantoms whose masks were held out of the source: mask-origin
    ROIs are counted apart (trivially true), expert/classical ones scored against the truth masks."""
    truth_dir = demo_dir / f"{source}_truth" / "masks"
    if not truth_dir.is_dir() or not ROI_SET.exists(out_root, source):
        return {"skipped": f"no {truth_dir} or no roi_set for {source} under {out_root}"}
    images = {r["record_id"]: r for r in PREPROCESSED_IMAGES.read(out_root, source).iter_rows(named=True)}
    rois = ROI_SET.read(out_root, source).filter(pl.col("status") == "ok")
    res = Counter()
    for rid, stem in _stem_by_record(SOURCE_MANIFEST.read(out_root, source)).items():
        if not (truth_dir / f"{stem}.png").exists() or rid not in images:
            continue
        img = images[rid]
        truths = truth_components(truth_dir / f"{stem}.png", (img["height"], img["width"]))
        annotated = img.get("mask_path") is not None
        res.update(images_with_truth=1, truth_lesions=len(truths), images_whose_mask_was_in_the_source=annotated,
                   truth_lesions_without_mask_in_source=0 if annotated else len(truths))
        hit = set()
        for roi in rois.filter(pl.col("record_id") == rid).iter_rows(named=True):
            kind = "whole_image" if not roi["mask_rle"] else "mask" if roi["origin"] == "mask" else "predicted"
            k = match_roi(rle_decode(roi["mask_rle"]), roi.get("centroid_norm"), truths) if roi["mask_rle"] else None
            res.update({f"{kind}_rois": 1, f"{kind}_rois_matched": k is not None})
            hit |= {k} if kind == "predicted" and k is not None else set()
        res["truth_lesions_found_by_predicted"] += len(hit)
    out: dict[str, Any] = {**res, "predicted_recall": share(res["truth_lesions_found_by_predicted"],
                                                             res["truth_lesions_without_mask_in_source"]),
                           "predicted_precision": share(res["predicted_rois_matched"], res["predicted_rois"])}
    if res["images_whose_mask_was_in_the_source"]:
        out["note"] = ("this output root was built while the held-out masks were still in the source: "
                       "their ROIs are mask-origin (trivially true); rebuild it to score the expert path")
    return out


def mni_report(out_root: Path, demo_dir: Path, source: str = "mni152_brain") -> dict[str, Any]:
    """The MNI152 test image(s) have truth only where a label volume exists: else a note (and the
    ROIs made on them, by origin, that no truth can score)."""
    ds = demo_dir / source / "dataset.json"
    tests = json.loads(ds.read_text())["test"] if ds.exists() else []
    labelled = [t for t in tests if (demo_dir / source / "labelsTs" / Path(t).name).exists()]
    out: dict[str, Any] = {"test_images": tests, "skipped": f"label volumes exist for {labelled}, slice-level "
                           "scoring is not implemented" if labelled else "no label mask exists for the test image"}
    if ROI_SET.exists(out_root, source):
        test_ids = SOURCE_MANIFEST.read(out_root, source).filter(pl.col("split") == "test")["record_id"]
        rois = ROI_SET.read(out_root, source).filter(pl.col("record_id").is_in(test_ids.implode()))
        out["unscored_test_rois_by_origin"] = dict(Counter(rois.filter(pl.col("status") == "ok")["origin"]))
    return out


# -- output --------------------------------------------------------------------------------------
def _verdict(name: str, value: float | None) -> str:
    op, target = TARGETS[name]
    ok = value is not None and (value >= target if op == ">=" else value <= target)
    return f"{'-' if value is None else f'{value:.3f}'} {'PASS' if ok else 'MISS'}"


def _fmt(x: Any) -> str:
    return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """A compact table: one column per variant, targets with PASS/MISS."""
    rs = list(results.values())

    def row(label: str, key: str) -> tuple[str, list[str], str]:
        if key in TARGETS:
            return label, [_verdict(key, r[key]) for r in rs], " ".join(map(str, TARGETS[key]))
        return label, [_fmt(r[key]) for r in rs], ""

    rows = [("images (lost in ingestion)", [f"{r['images']} ({r['images_lost_in_ingestion']})" for r in rs], ""),
            row("planted lesions", "lesions"), row("ROI recall", "recall")]
    rows += [(f"  recall, {b}", [_fmt(r["recall_by"].get(b, {}).get("recall")) for r in rs], "")
             for b in sorted({k for r in rs for k in r["recall_by"]})]
    rows += [row("localised ROIs", "localised_rois"), row("ROI precision", "precision"),
             row("noise ROI share", "noise_share"), row("images with whole_image only", "images_whole_image_only"),
             ("descriptions: matched / noise",
              [f"{r['descriptions_of_matched_rois']} / {r['descriptions_of_noise_rois']}" for r in rs], "")]
    rows += [(f"  contradicted: {f} (claims)",
              [f"{_fmt(r['facet_contradicted_share'][f])} ({r['claims_made'].get(f, 0)})" for r in rs], "")
             for f in FACET_CHECKS]
    rows += [row("matched descr. contradicted", "matched_contradicted_share"),
             row("all descr. with a false claim", "contradicted_share")]
    w0, wc = max(len(r[0]) for r in rows) + 2, max(14, *(len(c) + 2 for r in rows for c in r[1]))
    print("".ljust(w0) + "".join(v.ljust(wc) for v in results) + "target")
    for label, cells, target in rows:
        print(label.ljust(w0) + "".join(c.ljust(wc) for c in cells) + target)


def look(run: dict[str, Any], folder: Path, per_kind: int = 4) -> list[str]:
    """Overlays of images with missed lesions or noise ROIs: truth outlines (white) | pipeline ROIs."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for v, t in run["tallies"].items():
        frames, items = run["frames"][v], run["planted"][v]
        rid_of = {stem: rid for rid, stem in _stem_by_record(frames["manifest"]).items()}
        paths = dict(frames["images"].select("record_id", "image_path").iter_rows())
        names = [m["image"] for m in t.misses][:per_kind] + [m["image"] for m in t.noise][:per_kind]
        for name in [n for n in dict.fromkeys(names) if rid_of.get(n) in paths]:
            rid = rid_of[name]
            image = read_png(run["out"] / paths[rid])
            rows = frames["rois"].filter((pl.col("record_id") == rid) & (pl.col("status") == "ok")).to_dicts()
            left = draw_roi_overlay(image, []).copy()
            truth = items[name].label_map() > 0
            edge = Image.fromarray((truth & ~ndimage.binary_erosion(truth)).astype(np.uint8) * 255)
            left[np.asarray(edge.resize(left.shape[1::-1], Image.Resampling.NEAREST)) > 0] = 255
            path = folder / f"{v}_{name}.png"
            Image.fromarray(np.concatenate([left, draw_roi_overlay(image, rows)], 1)).save(path)
            written.append(str(path))
    return written


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="planted images per variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="192,256", help="image side range 'lo,hi' (px)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--epochs", type=int, default=30, help="expert training epochs (the asset's default)")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--demo-out", default=None, help="output root of a demo run (scores its sources with truth)")
    ap.add_argument("--look", default=None, help="write overlays of misses and noise ROIs to this folder")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    lo, hi = (int(x) for x in args.size.split(","))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fidelity_") as tmp:
        run = run_pipeline(Path(tmp), args.n, args.seed, variants, (lo, hi), args.epochs)
        run["tallies"] = {v: score_variant(run["planted"][v], run["frames"][v]) for v in variants}
        looked = look(run, Path(args.look)) if args.look else []
    results = {v: summarise(t) for v, t in run["tallies"].items()}
    report: dict[str, Any] = {
        "n_per_variant": args.n, "seed": args.seed, "size": [lo, hi], "rules": {
            "match": f"IoU >= {IOU_MIN}, or ROI centroid inside a lesion it overlaps and ROI area <= "
                     f"{CENTROID_MAX_AREA_RATIO}x the lesion's", "third_slack": THIRD_SLACK,
            "area_factor": AREA_FACTOR, "targets": TARGETS},
        "variants": results, "experts": run["experts"],
        "pipeline": {v: {k: f[k] for k in ("experts", "origins", "dropped", "flagged")} for v, f in run["frames"].items()},
        "examples": {v: {"contradicted": t.examples[:6], "missed": t.misses[:6], "noise": t.noise[:6]}
                     for v, t in run["tallies"].items()},
        "timings_s": {k: round(x, 1) for k, x in run["timings"].items()} | {"total": round(time.perf_counter() - t0, 1)},
        "overlays": looked,
    }
    if args.demo_out:
        out_root, demo = Path(args.demo_out), DEMO_DATA
        report["demo"] = {"synthetic_phantoms": phantoms_report(out_root, demo), "mni152_brain": mni_report(out_root, demo)}
    print(f"fidelity: {args.n} planted images per variant, seed {args.seed}; experts trained: "
          f"{json.dumps(run['experts']['trained'])}; used: { {v: f['experts'] for v, f in run['frames'].items()} }")
    print_table(results)
    if "demo" in report:
        print("demo:", json.dumps(report["demo"], indent=1))
    print("timings (s):", report["timings_s"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
