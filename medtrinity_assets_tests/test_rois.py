"""ROI stage: geometry, RLE, flagged input, and measured attributes with known answers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from scipy import ndimage
from skimage.draw import disk, ellipse, polygon

from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.rois.build import ROI_SCHEMA, build_roi_set
from medtrinity_assets.rois.config import RoiConfig
from medtrinity_assets.rois.measure import measure_roi
from medtrinity_assets.rois.overlay import draw_roi_overlay
from medtrinity_assets.rois.rle import rle_decode, rle_encode, rle_json, rle_parse

H, W = 90, 120


def _spec(modality: str = "CT", labels: dict[int, str] | None = None, rois: dict | None = None) -> SourceSpec:
    return SourceSpec(
        name="t",
        layout="image_folder",
        root=".",
        modality=modality,
        organ="abdomen",
        labels=labels if labels is not None else {1: "lesion"},
        license="test",
        rois=rois,
    )


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def _table(out: Path, items: list[dict]) -> pl.DataFrame:
    """items: dicts with image (array) and optional mask, boxes, box_labels, spacing, orientation."""
    rows = []
    for i, it in enumerate(items):
        img_rel = f"images/img{i}.png"
        _write_png(out / img_rel, it["image"])
        mask_rel = None
        if it.get("mask") is not None:
            mask_rel = f"masks/m{i}.png"
            _write_png(out / mask_rel, it["mask"])
        rows.append(
            {
                "record_id": f"rec{i}",
                "source": "t",
                "image_path": img_rel,
                "sha256": "0" * 64,
                "width": it["image"].shape[1],
                "height": it["image"].shape[0],
                "channels": 1 if it["image"].ndim == 2 else 3,
                "original_spacing": it.get("spacing"),
                "display_right": it.get("display_right"),
                "display_down": it.get("display_down"),
                "mask_path": mask_rel,
                "mask_labels": it.get("mask_labels"),
                "mask_label_names": it.get("mask_label_names"),
                "boxes": it.get("boxes"),
                "box_labels": it.get("box_labels"),
                "box_clipped": it.get("box_clipped"),
            }
        )
    schema = {
        "record_id": pl.Utf8,
        "source": pl.Utf8,
        "image_path": pl.Utf8,
        "sha256": pl.Utf8,
        "width": pl.Int64,
        "height": pl.Int64,
        "channels": pl.Int64,
        "original_spacing": pl.List(pl.Float64),
        "display_right": pl.Utf8,
        "display_down": pl.Utf8,
        "mask_path": pl.Utf8,
        "mask_labels": pl.List(pl.Int64),
        "mask_label_names": pl.List(pl.Utf8),
        "boxes": pl.List(pl.List(pl.Float64)),
        "box_labels": pl.List(pl.Utf8),
        "box_clipped": pl.List(pl.Boolean),
    }
    return pl.DataFrame(rows, schema=schema)


def _disc(r0: int = 20, c0: int = 100, radius: int = 10, bright: int = 200, bg: int = 50):
    img = np.full((H, W), bg, np.uint8)
    mask = np.zeros((H, W), np.uint8)
    rr, cc = disk((r0, c0), radius, shape=(H, W))
    img[rr, cc] = bright
    mask[rr, cc] = 1
    return img, mask


def test_disc_known_answers(tmp_path):
    img, mask = _disc()
    df = _table(tmp_path, [{"image": img, "mask": mask, "spacing": [0.5, 0.5]}])
    res = build_roi_set(df, _spec(), tmp_path)
    assert list(res.rois.columns) == list(ROI_SCHEMA)
    assert res.rois.height == 1
    r = res.rois.row(0, named=True)
    assert r["origin"] == "mask" and r["label"] == "lesion" and r["status"] == "ok"
    assert r["roi_id"] == "rec0:0"
    assert r["bbox_xyxy"] == [91.0, 11.0, 110.0, 30.0]
    assert r["bbox_norm"] == pytest.approx([91 / W, 11 / H, 110 / W, 30 / H])
    assert r["area_px"] == int(mask.sum())
    assert r["area_fraction"] == pytest.approx(mask.sum() / (H * W))
    assert r["centroid_norm"] == pytest.approx([100.5 / W, 20.5 / H])
    assert (r["horizontal"], r["vertical"]) == ("right", "upper")
    assert r["circularity"] == pytest.approx(1.0, abs=0.05)
    assert r["shape_word"] == "round"
    assert r["longest_diameter_px"] == pytest.approx(20.0, abs=1.0)
    assert r["longest_diameter_mm"] == pytest.approx(r["longest_diameter_px"] * 0.5)
    assert r["roi_mean"] == pytest.approx(200.0) and r["ring_mean"] == pytest.approx(50.0)
    assert r["intensity_contrast"] == pytest.approx(150 / 250)
    assert r["intensity_word"] == "hyperdense"
    assert r["texture_homogeneity_word"] == "homogeneous" and r["texture_smoothness_word"] == "smooth"
    assert r["patient_lr"] is None  # orientation unknown
    assert np.array_equal(rle_decode(r["mask_rle"]), mask.astype(bool))


def test_laterality_follows_display_orientation():
    img, mask = _disc(r0=20, c0=100)
    m = mask.astype(bool)
    left = measure_roi(img, m, display_right="L", display_down="P", modality="CT", spacing=None)
    right = measure_roi(img, m, display_right="R", display_down="P", modality="CT", spacing=None)
    assert left["horizontal"] == right["horizontal"] == "right"
    assert left["patient_lr"] == "left" and right["patient_lr"] == "right"
    assert left["patient_side"] == "left"
    # +y points posterior and the disc is in the upper third -> anterior
    assert left["patient_ap"] == "anterior" and left["patient_si"] is None
    img2, mask2 = _disc(r0=45, c0=60)
    mid = measure_roi(img2, mask2.astype(bool), display_right="L", display_down="I")
    assert mid["patient_lr"] == "midline" and mid["patient_si"] == "central"
    unknown = measure_roi(img, m)
    assert unknown["patient_lr"] is None and unknown["patient_ap"] is None


def _naive_rle(mask: np.ndarray) -> list[int]:
    flat = mask.T.ravel().astype(int).tolist()
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return counts


def test_rle_round_trip_and_coco_layout():
    assert rle_encode(np.array([[0, 1], [1, 1]], bool)) == {"size": [2, 2], "counts": [1, 3]}
    assert rle_encode(np.array([[1, 0], [0, 0]], bool))["counts"] == [0, 1, 3]
    rng = np.random.default_rng(0)
    cases = [
        np.zeros((7, 5), bool),
        np.ones((4, 9), bool),
        rng.random((33, 17)) > 0.5,
        rng.random((1, 40)) > 0.3,
    ]
    edge = np.zeros((6, 6), bool)
    edge[0, 0] = edge[-1, -1] = True
    cases.append(edge)
    for m in cases:
        rle = rle_encode(m)
        assert sum(rle["counts"]) == m.size
        assert rle["counts"] == _naive_rle(m)
        assert np.array_equal(rle_decode(json.dumps(rle)), m)


def test_rle_text_that_does_not_fit_is_a_value_error():
    """Compact and spaced JSON give the same counts, and what does not fit the declared size (a count
    past 64 bits, counts whose sum wraps past 64 bits) or is not JSON is a ValueError."""
    rng = np.random.default_rng(3)
    for m in [rng.random((int(h), int(w))) > p for h, w, p in rng.integers(1, 60, (40, 3)) * (1, 1, 0.015)]:
        text = rle_json(rle_encode(m))
        spaced = json.dumps(json.loads(text))  # json's own spacing: not compact
        for t in (text, spaced):
            h, w, counts = rle_parse(t)
            assert (h, w) == m.shape and counts.tolist() == json.loads(text)["counts"]
            assert np.array_equal(rle_decode(t), m)
    assert rle_parse('{"size":[2,2],"counts":[]}')[2].tolist() == []
    for bad in ('{"size":[2,2],"counts":[99999999999999999999]}', '{"size":[2,2],"counts":[-1,5]}',
                '{"size":[2,2],"counts":[1,,3]}', '{"size":[2,2],"counts":[1,3,]}', '{"size":[2,2],"counts":[5]}',
                '{"size":[2,2],"counts":[1e3]}', '{"size":[2,2],"counts":"ab"}', '{"size":[1,1],"counts":[01]}',
                '{"size":[1,1],"counts":[' + ",".join(["999999999999999999"] * 10) + "]}"):  # a sum past 64 bits
        with pytest.raises(ValueError):
            rle_parse(bad)


def test_many_structures_no_cap_and_specks_dropped(tmp_path):
    img = np.full((H, W), 40, np.uint8)
    mask = np.zeros((H, W), np.uint8)
    n = 0
    for y in range(1, H - 6, 7):
        for x in range(1, W - 6, 7):
            mask[y : y + 5, x : x + 5] = 1
            n += 1
    mask[H - 1, W - 1] = 1  # a 1-pixel speck below the floor
    img[mask > 0] = 180
    df = _table(tmp_path, [{"image": img, "mask": mask}])
    res = build_roi_set(df, _spec(rois={"min_area_px": 20}), tmp_path)
    assert n > 100
    assert res.rois.height == n
    assert set(res.rois["origin"]) == {"mask"} and set(res.rois["status"]) == {"ok"}
    assert res.rois["roi_count"].to_list() == [n] * n
    assert res.dropped_counts == {"below_floor:lesion": 1}
    assert res.rois["roi_id"].n_unique() == n
    rel = json.loads(res.rois["relations"][0])
    assert 0 < len(rel) <= 5 and {"other", "relation", "distance_norm"} <= set(rel[0])


def test_empty_mask_and_unknown_label_are_flagged(tmp_path):
    img, mask = _disc()
    unknown = mask * 7
    df = _table(tmp_path, [{"image": img, "mask": np.zeros_like(mask)}, {"image": img, "mask": unknown}])
    res = build_roi_set(df, _spec(), tmp_path)
    a = res.rois.filter(pl.col("record_id") == "rec0").to_dicts()
    assert [(r["status"], r["origin"]) for r in a] == [("flagged", "mask"), ("ok", "whole_image")]
    assert a[0]["reason"].startswith("empty_mask")
    b = res.rois.filter(pl.col("record_id") == "rec1").to_dicts()
    assert b[0]["status"] == "flagged" and b[0]["reason"].startswith("unknown_label_value")
    assert b[0]["label"] == "unknown_7" and b[0]["bbox_xyxy"] == [91.0, 11.0, 110.0, 30.0]
    assert b[-1]["origin"] == "whole_image" and b[-1]["status"] == "ok"
    assert res.flagged_counts == {"empty_mask": 1, "unknown_label_value": 1}


def test_label_names_carried_by_the_source_name_mask_rois(tmp_path):
    """dataset.json / SEG names travel with the image: a value the registry does not name is
    not 'unknown' when the source itself named it, and the source's name wins."""
    img, mask = _disc()
    two = mask.copy()
    two[60:80, 10:30] = 7
    df = _table(
        tmp_path,
        [{"image": img, "mask": two, "mask_labels": [1, 7], "mask_label_names": [None, "metastasis"]}],
    )
    res = build_roi_set(df, _spec(labels={1: "lesion"}), tmp_path)
    rows = res.rois.sort("label").to_dicts()
    assert [(r["label"], r["status"]) for r in rows] == [("lesion", "ok"), ("metastasis", "ok")]
    assert res.flagged_counts == {}
    df = _table(tmp_path, [{"image": img, "mask": mask, "mask_labels": [1], "mask_label_names": ["liver"]}])
    assert build_roi_set(df, _spec(labels={1: "lesion"}), tmp_path).rois["label"].to_list() == ["liver"]


def test_boxes_clipped_degenerate_and_outside(tmp_path):
    img, _ = _disc()
    boxes = [
        [-10.0, 5.0, 30.0, 40.0],
        [50.0, 50.0, 50.0, 70.0],
        [500.0, 500.0, 600.0, 600.0],
        [60.0, 10.0, 80.0, 20.0],
    ]
    df = _table(
        tmp_path,
        [
            {
                "image": img,
                "boxes": boxes,
                "box_labels": ["a", "b", "c", "d"],
                "box_clipped": [False, False, False, True],
            }
        ],
    )
    res = build_roi_set(df, _spec(), tmp_path)
    rows = res.rois.to_dicts()
    assert [r["label"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[0]["status"] == "ok" and rows[0]["bbox_xyxy"] == [0.0, 5.0, 30.0, 40.0]
    assert rows[0]["reason"].startswith("box_clipped") and rows[0]["mask_rle"] is None
    assert rows[0]["area_px"] == 30 * 35
    assert rows[1]["status"] == "flagged" and rows[1]["reason"].startswith("degenerate_box")
    assert rows[2]["status"] == "flagged" and rows[2]["reason"].startswith("box_outside_image")
    assert rows[3]["status"] == "ok" and "box_clipped_upstream" in rows[3]["reason"]
    assert rows[0]["roi_count"] == 2


def test_fallbacks_whole_image_classical_expert_and_unreadable(tmp_path):
    img, _ = _disc()
    df = _table(tmp_path, [{"image": img}])
    ct = build_roi_set(df, _spec("CT"), tmp_path)
    assert ct.rois["origin"].to_list() == ["whole_image"]
    w = ct.rois.row(0, named=True)
    assert w["bbox_xyxy"] == [0.0, 0.0, float(W), float(H)] and w["area_fraction"] == 1.0
    assert w["intensity_word"] is None and w["shape_word"] is None
    micro = build_roi_set(df, _spec("Microscopy"), tmp_path)
    assert micro.rois["origin"].to_list() == ["classical"]
    assert micro.rois["bbox_xyxy"][0].to_list() == [91.0, 11.0, 110.0, 30.0]
    # a threshold's edge is no drawn outline: no shape words unless the source asks for them
    assert micro.rois["shape_word"][0] is None and micro.rois["circularity"][0] is None
    named = build_roi_set(df, _spec("Microscopy", rois={"shape_named_for_classical": True}), tmp_path)
    assert named.rois["shape_word"].to_list() == ["round"]

    class Fake:
        name = "fake"

        def predict(self, images):
            out = []
            for im in images:
                m = np.zeros(im.shape[:2], bool)
                m[60:80, 10:40] = True
                out.append(m)
            return out

    ex = build_roi_set(df, _spec("CT"), tmp_path, expert=Fake())
    assert ex.rois["origin"].to_list() == ["expert:fake"]
    assert ex.rois["bbox_xyxy"][0].to_list() == [10.0, 60.0, 40.0, 80.0]
    (tmp_path / "images" / "img0.png").write_bytes(b"not a png")
    bad = build_roi_set(df, _spec("CT"), tmp_path)
    assert bad.rois.height == 1 and bad.rois["status"][0] == "flagged"
    assert bad.rois["reason"][0].startswith("image_unreadable")


def test_relations_and_inside_label(tmp_path):
    img = np.full((H, W), 60, np.uint8)
    lm = np.zeros((H, W), np.uint8)
    rr, cc = disk((45, 30), 20, shape=(H, W))
    lm[rr, cc] = 1
    rr, cc = disk((45, 30), 5, shape=(H, W))
    lm[rr, cc] = 2
    rr, cc = disk((45, 100), 8, shape=(H, W))
    lm[rr, cc] = 2
    img[lm == 1] = 120
    img[lm == 2] = 30
    spec = _spec("MRI", {1: "liver", 2: "tumour"})
    res = build_roi_set(_table(tmp_path, [{"image": img, "mask": lm}]), spec, tmp_path)
    rows = {(r["label"], r["bbox_xyxy"][0]): r for r in res.rois.to_dicts()}
    inner = rows[("tumour", 26.0)]
    outer = rows[("tumour", 93.0)]
    assert inner["inside_label"] == "liver" and outer["inside_label"] is None
    assert rows[("liver", 11.0)]["inside_label"] is None
    assert inner["intensity_word"] == "hypointense"
    rel = {x["other"]: x for x in json.loads(inner["relations"])}
    assert rel[outer["roi_id"]]["relation"] == "left of"
    assert rel[outer["roi_id"]]["distance_norm"] == pytest.approx(70 / W, abs=0.01)


def test_shape_and_intensity_words():
    img = np.full((H, W), 100, np.uint8)
    m = np.zeros((H, W), bool)
    rr, cc = ellipse(45, 60, 10, 30, shape=(H, W))
    m[rr, cc] = True
    img[m] = 40
    r = measure_roi(img, m, modality="US")
    assert r["shape_word"] == "oval" and r["intensity_word"] == "hypoechoic"
    cross = np.zeros((H, W), bool)
    cross[40:44, 20:100] = True
    cross[10:80, 58:62] = True
    assert measure_roi(img, cross)["shape_word"] == "irregular"
    assert measure_roi(np.full((H, W), 100, np.uint8), m, modality="x-ray")["intensity_word"] == "similar opacity"
    noisy = np.random.default_rng(0).integers(0, 256, (H, W)).astype(np.uint8)
    t = measure_roi(noisy, m, modality="MRI")
    assert t["texture_homogeneity_word"] == "heterogeneous" and t["texture_smoothness_word"] == "coarse"
    rgb = np.stack([img, img, img], -1)
    assert measure_roi(rgb, m)["intensity_word"] == "darker"


def test_config_is_documented_and_overridable(tmp_path):
    from medtrinity_assets.core.vocabulary import intensity_words

    assert intensity_words("CT") == ("hyperdense", "hypodense", "isodense")
    assert RoiConfig.load(intensity_words={"ct": ["a", "b", "c"]}).intensity_words["ct"] == ["a", "b", "c"]
    img, mask = _disc()
    relaxed = RoiConfig.load(iso_contrast_max=0.9)
    assert measure_roi(img, mask.astype(bool), modality="CT", config=relaxed)["intensity_word"] == "isodense"
    with pytest.raises(ValueError):
        RoiConfig.load(no_such_field=1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("intensity:\n  ring: 3\n")
    with pytest.raises(ValueError, match="intensity.ring"):
        RoiConfig.load(bad)


def test_overlay_draws_on_a_copy(tmp_path):
    img, mask = _disc()
    df = _table(
        tmp_path, [{"image": img, "mask": mask, "boxes": [[5.0, 5.0, 40.0, 30.0]], "box_labels": ["b"]}]
    )
    rows = build_roi_set(df, _spec(), tmp_path).rois.to_dicts()
    before = img.copy()
    over = draw_roi_overlay(img, rows, min_side=0)
    assert over.dtype == np.uint8 and over.shape == (H, W, 3)
    assert np.array_equal(img, before)
    coloured = (over[..., 0] != over[..., 1]) | (over[..., 1] != over[..., 2])
    assert coloured[11:30, 91:110].any() and coloured[5, 5:40].any()
    assert not coloured[50:60, 50:60].any()
    big = draw_roi_overlay(img, rows)  # a reader's size: the shorter side at least 256 px
    assert min(big.shape[:2]) >= 256 and big.shape[1] / big.shape[0] == pytest.approx(W / H, rel=0.02)


# --------------------------------------------------------------------------------------
# The per-ROI measurements were rewritten for speed (shape without regionprops, GLCM from
# pixel pairs, ring/boundary by slicing, one hull for Feret and solidity). These pin the
# values to those of the previous implementation and to scikit-image's own measurements.


def _regression_scene():
    rng = np.random.default_rng(7)
    h, w = 96, 128
    _, xx = np.mgrid[0:h, 0:w]
    img = (60 + 0.5 * xx + rng.normal(0, 12, (h, w))).clip(0, 255)
    masks = []
    m = np.zeros((h, w), bool)
    m[disk((30, 35), 11, shape=(h, w))] = True
    masks.append(m)
    m = np.zeros((h, w), bool)
    m[ellipse(62, 90, 9, 22, rotation=0.6, shape=(h, w))] = True
    masks.append(m)
    m = np.zeros((h, w), bool)
    m[polygon([70, 92, 92, 80, 95], [10, 8, 40, 25, 45], shape=(h, w))] = True
    masks.append(m)
    m = np.zeros((h, w), bool)
    m[5:9, 60:120] = True
    m[0:40, 100:104] = True
    masks.append(m)
    for k, mk in enumerate(masks):
        img[mk] += 40 * (k % 2 * 2 - 1)
    return img.clip(0, 255).astype(np.uint8), masks


# Values measured with the regionprops / graycomatrix implementation (spacing 0.7 x 1.1 mm); the
# texture (GLCM contrast, homogeneity, entropy) of the region's interior, without its edge pixels;
# the ring a pixel away from the region.
_REGRESSION = [
    (373, "round", [22.633307652783937, 23.755434418183878, 77.1921052631579, 8.807308134521413,
                    0.3253124280322359, 3.0926900431915194, 1.0, 0.979002624671916, 1.0]),
    (621, "oval", [44.266615305567875, 44.01049001995311, 104.06274509803922, 8.607225843093143,
                   0.34208868314359214, 3.143804626891972, 0.7694379425984668, 0.971830985915493,
                   0.40865740971176656]),
    (388, "lobulated", [44.01162633521314, 43.273898801865364, 70.02392344497608, 9.096358284622362,
                        0.3130073271569667, 3.12848382414539, 0.5136195140708567,
                        0.8202959830866807, 0.5277600039255772]),
    (384, "irregular", [60.07622195096772, 66.0331221644429, 105.58013544018058, 8.002743211421356,
                        0.3391610835696537, 3.315134785502989, 0.13906245754261506,
                        0.2809070958302853, 0.6038211414690454]),
]  # fmt: skip
_REGRESSION_KEYS = [
    "longest_diameter_px",
    "longest_diameter_mm",
    "ring_mean",
    "glcm_contrast",
    "glcm_homogeneity",
    "entropy",
    "circularity",
    "solidity",
    "axis_ratio",
]


def test_attribute_values_unchanged_by_the_fast_path():
    img, masks = _regression_scene()
    for m, (area, word, expected) in zip(masks, _REGRESSION, strict=True):
        r = measure_roi(img, m, spacing=(0.7, 1.1), modality="CT")
        assert r["area_px"] == area and r["shape_word"] == word
        assert [r[k] for k in _REGRESSION_KEYS] == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_shape_and_texture_match_skimage_on_random_masks():
    from skimage.feature import graycomatrix, graycoprops
    from skimage.measure import regionprops

    from medtrinity_assets.rois.texture import quantise, texture_stats

    cfg = RoiConfig.load()
    rng = np.random.default_rng(11)
    checked = 0
    for trial in range(60):
        h, w = (int(x) for x in rng.integers(6, 60, 2))
        m = np.zeros((h, w), bool)
        if trial % 3 == 0:
            m = rng.random((h, w)) > rng.uniform(0.3, 0.8)
        elif trial % 3 == 1:
            m[
                ellipse(
                    h / 2,
                    w / 2,
                    rng.uniform(2, h),
                    rng.uniform(2, w),
                    rotation=rng.uniform(0, 3),
                    shape=(h, w),
                )
            ] = True
        else:
            k = int(rng.integers(3, 7))
            m[polygon(rng.integers(0, h, k), rng.integers(0, w, k), shape=(h, w))] = True
        area = int(m.sum())
        if area < cfg.shape_min_area_px:
            continue
        img = rng.integers(0, 256, (h, w)).astype(np.uint8)
        r = measure_roi(img, m, config=cfg)
        filled = ndimage.binary_fill_holes(m)  # the shape is the outline's: small holes filled
        outline = filled if (filled & ~m).sum() <= cfg.fill_hole_max_share * area else m
        p = regionprops(outline.astype(np.uint8))[0]
        perim = float(p.perimeter_crofton)
        assert r["solidity"] == pytest.approx(float(p.solidity), rel=1e-12)
        assert r["circularity"] == pytest.approx(min(1.0, 4 * np.pi * p.area / perim**2), rel=1e-12)
        assert r["axis_ratio"] == pytest.approx(
            p.axis_minor_length / p.axis_major_length, rel=1e-9, abs=1e-12
        )
        q = quantise(img.astype(np.float64), 0.0, 255.0, cfg.texture_levels)
        shifted = np.where(m, q + 1, 0).astype(np.uint8)
        angles = [0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
        glcm = graycomatrix(shifted, [1], angles, levels=cfg.texture_levels + 1, symmetric=True)
        glcm = glcm[1:, 1:].astype(np.float64)
        glcm = glcm[:, :, :, glcm.sum(axis=(0, 1))[0] > 0]
        con, hom, _ = texture_stats(q, m, cfg)
        assert con == pytest.approx(float(graycoprops(glcm, "contrast").mean()), rel=1e-12)
        assert hom == pytest.approx(float(graycoprops(glcm, "homogeneity").mean()), rel=1e-12)
        checked += 1
    assert checked > 30


# -- regions that are structures --------------------------------------------------------


def test_separate_findings_are_kept_and_fragments_of_a_structure_dropped(tmp_path):
    """A label with few components is a set of findings: each above the floor is kept, however
    small beside the largest. A label with many is a fragmented structure: its largest component
    and those above a share of it are kept."""
    from skimage.draw import disk

    img = np.full((H, W), 40, np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[disk((45, 40), 25, shape=mask.shape)] = 1  # a large lesion (~1960 px)
    mask[disk((20, 100), 10, shape=mask.shape)] = 1  # a second one (~310 px)
    mask[disk((75, 105), 3, shape=mask.shape)] = 1  # a small third one (~29 px): above the floor
    mask[5, 5] = mask[80, 10] = 1  # stray pixels
    img[mask > 0] = 180
    res = build_roi_set(_table(tmp_path, [{"image": img, "mask": mask}]), _spec(), tmp_path)
    ok = res.rois.filter(pl.col("status") == "ok")
    assert ok.height == 3 and set(ok["label"]) == {"lesion"}
    assert res.dropped_counts == {"below_floor:lesion": 2}

    fragmented = np.zeros((H, W), np.uint8)
    fragmented[disk((45, 40), 25, shape=mask.shape)] = 1  # the structure
    for c in (70, 85, 100, 115):
        fragmented[disk((80, c), 3, shape=mask.shape)] = 1  # four islands of ~29 px: under 10% of it
    res = build_roi_set(_table(tmp_path / "f", [{"image": img, "mask": fragmented}]), _spec(), tmp_path / "f")
    ok = res.rois.filter(pl.col("status") == "ok")
    assert ok.height == 1 and res.dropped_counts == {"minor_component:lesion": 4}


def test_touching_blobs_are_split_and_one_blob_is_not(tmp_path):
    from skimage.draw import disk, ellipse

    img = np.full((H, W), 40, np.uint8)
    two = np.zeros((H, W), np.uint8)
    two[disk((45, 42), 16, shape=two.shape)] = 1
    two[disk((45, 70), 14, shape=two.shape)] = 1  # overlapping by a few pixels: a neck
    one = np.zeros((H, W), np.uint8)
    one[ellipse(45, 60, 14, 40, shape=one.shape)] = 1  # elongated, but one blob
    res = build_roi_set(
        _table(tmp_path, [{"image": img, "mask": two}, {"image": img, "mask": one}]), _spec(), tmp_path
    )
    per_image = res.rois.filter(pl.col("status") == "ok").group_by("record_id").len().sort("record_id")
    assert per_image["len"].to_list() == [2, 1]
    first = res.rois.filter((pl.col("record_id") == "rec0") & (pl.col("status") == "ok"))
    areas = sorted(first["area_px"].to_list())
    assert abs(areas[0] - np.pi * 14**2) < 0.25 * np.pi * 14**2 and abs(areas[1] - np.pi * 16**2) < 0.25 * np.pi * 16**2


def test_floors_scale_with_the_image_and_a_source_can_override_them(tmp_path):
    from medtrinity_assets.rois import default_config

    cfg = default_config()
    assert cfg.floor(512 * 512, predicted=False) == max(cfg.min_area_px, round(cfg.min_area_fraction * 512 * 512))
    assert cfg.floor(512 * 512, predicted=True) > cfg.floor(512 * 512, predicted=False)
    img = np.full((H, W), 40, np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[10:14, 10:14] = 1  # 16 px: under the default floor, a structure for a source of microaneurysms
    df = _table(tmp_path, [{"image": img, "mask": mask}])
    assert build_roi_set(df, _spec(), tmp_path).rois["origin"].to_list()[-1] == "whole_image"
    small = build_roi_set(df, _spec(rois={"min_area_px": 8}), tmp_path).rois
    assert small.filter(pl.col("status") == "ok")["origin"].to_list() == ["mask"]


def test_classical_specks_leave_the_whole_image_with_a_reason(tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((H, W)) * 60).astype(np.uint8)
    for y, x in ((10, 10), (40, 80), (70, 30)):
        img[y : y + 3, x : x + 3] = 255  # bright specks: nuclear-medicine "uptake" of 9 px each
    res = build_roi_set(_table(tmp_path, [{"image": img}]), _spec(modality="NM"), tmp_path)
    (row,) = res.rois.to_dicts()
    assert row["origin"] == "whole_image" and row["reason"].startswith("nothing_segmented:")


def test_tissue_classes_are_compared_with_the_other_tissue_not_the_background(tmp_path):
    """On a T1-like slice grey matter (a cortex ring) is darker than the white matter it
    surrounds, though brighter than the CSF and air around it: against the other labelled
    tissue it is hypointense, the white matter hyperintense."""
    img = np.full((H, W), 10, np.uint8)  # air
    lm = np.zeros((H, W), np.uint8)
    img[disk((45, 64), 40, shape=(H, W))] = 40  # CSF
    lm[disk((45, 64), 36, shape=(H, W))] = 1  # grey matter
    lm[disk((45, 64), 26, shape=(H, W))] = 2  # white matter
    img[lm == 1], img[lm == 2] = 110, 170
    spec = _spec("MRI", {1: "grey matter", 2: "white matter"})
    res = build_roi_set(_table(tmp_path, [{"image": img, "mask": lm}]), spec, tmp_path)
    words = {r["label"]: r["intensity_word"] for r in res.rois.to_dicts()}
    assert words == {"grey matter": "hypointense", "white matter": "hyperintense"}


def test_two_brightness_levels_are_not_homogeneous():
    """Two overlapping discs of different brightness are smooth inside each disc, but as one region
    they are not homogeneous; one uniform disc is."""
    from medtrinity_assets.rois.measure import two_levels

    rng = np.random.default_rng(0)
    uniform = 170 + rng.normal(0, 3, 400)
    assert not two_levels(uniform, (0.0, 255.0))
    assert two_levels(np.concatenate([165 + rng.normal(0, 3, 200), 195 + rng.normal(0, 3, 200)]), (0.0, 255.0))
    img = np.full((H, W), 40, np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[disk((45, 50), 16, shape=mask.shape)] = 1
    img[mask > 0] = 165
    second = np.zeros((H, W), bool)
    second[disk((45, 70), 14, shape=mask.shape)] = True
    mask[second] = 1
    img[second] = 195
    r = measure_roi(img, mask > 0)
    assert r["texture_homogeneity_word"] == "heterogeneous"


def test_convex_pixel_count_is_skimage_convex_hull_image_count():
    """The split test's solidity counts the convex hull's pixels without drawing it: the same count
    as scikit-image's convex_hull_image on blobs of every size and on lines and single pixels."""
    import warnings

    import numpy as np
    from scipy import ndimage
    from skimage.morphology import convex_hull_image

    from medtrinity_assets.rois.geometry import convex_pixel_count

    rng = np.random.default_rng(7)
    masks = [np.ones((1, 1), bool), np.ones((1, 9), bool), np.eye(6, dtype=bool)]
    for _ in range(300):
        h, w = rng.integers(2, 70, 2)
        img = ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(0.5, 6))
        lab, n = ndimage.label(img > np.quantile(img, rng.uniform(0.2, 0.9)))
        if n:
            masks.append(lab == 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-image warns on degenerate (flat) hulls
        for m in masks:
            assert convex_pixel_count(m) == int(convex_hull_image(m).sum())


def test_a_region_wrapped_by_an_open_ribbon_is_bordered_by_it_not_left_of_it(tmp_path):
    """White matter inside a cortex ribbon that is open on one side (as in many brain slices): the
    ribbon's filled outline does not hold it, and its centroid sits a few pixels off the white
    matter's, so a direction ("left of") would be a false claim. The ribbon borders it instead; a
    region that only touches a little keeps its direction."""
    img = np.full((H, W), 20, np.uint8)
    lm = np.zeros((H, W), np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    d = np.hypot(yy - 45, xx - 50)
    lm[(d <= 30) & (d > 22) & ~((xx > 70) & (np.abs(yy - 45) < 6))] = 1  # the ribbon, with a gap on the right
    lm[d <= 22] = 2  # the white matter it wraps
    rr, cc = disk((45, 108), 8, shape=(H, W))
    lm[rr, cc] = 3  # a separate region, well away
    img[lm == 1], img[lm == 2], img[lm == 3] = 110, 170, 60
    spec = _spec("MRI", {1: "grey matter", 2: "white matter", 3: "cerebrospinal fluid"})
    res = build_roi_set(_table(tmp_path, [{"image": img, "mask": lm}]), spec, tmp_path)
    rows = {r["label"]: r for r in res.rois.to_dicts()}
    wm, gm, csf = rows["white matter"], rows["grey matter"], rows["cerebrospinal fluid"]
    assert wm["inside_label"] is None  # the open ribbon does not hold it
    wm_rel = {x["other_label"]: x["relation"] for x in json.loads(wm["relations"])}
    gm_rel = {x["other_label"]: x["relation"] for x in json.loads(gm["relations"])}
    assert wm_rel["grey matter"] == "bordered by" and gm_rel["white matter"] == "borders"
    assert wm_rel["cerebrospinal fluid"] == "left of"  # no shared edge: a direction
    assert {x["relation"] for x in json.loads(csf["relations"])} == {"right of"}
    first = json.loads(wm["relations"])[0]
    assert first["other_label"] == "grey matter"  # touching relations come before directions
    from medtrinity_assets.rois.relations import bordering

    crops = [(lm == 2, (0, H, 0, W)), (lm == 3, (0, H, 0, W))]
    assert bordering(crops) == {}
    assert bordering(crops, skip=[(0, 1)]) == {}


# -- words a reviewer found misleading (stop 34) ----------------------------------------


def test_a_region_lies_in_the_third_that_holds_most_of_it_and_the_checks_agree():
    """A region with most of it in the right third but its centroid just inside the cut is "right"; a
    region with no third holding more than half of it keeps its centroid's. Along an axis its box spans
    most of (a band along the top and left edges, whose centroid falls in the gap it wraps), it lies in
    no third. The checks' evidence, read off the RLE, gives the same words."""
    from medtrinity_assets.captioning.evidence import region_facts
    from medtrinity_assets.captioning.samples import realistic_inputs

    h, w = 90, 120
    img = np.full((h, w), 50, np.uint8)
    right = np.zeros((h, w), bool)
    right[40:50, 60:70] = True  # 10 columns in the middle third (up to column 79) ...
    right[30:60, 80:88] = True  # ... and 8 x 30 in the right one: the centroid stays in the middle third
    spread = np.zeros((h, w), bool)
    spread[40:50, 20:100] = True  # 20 + 40 + 20 columns: no third holds more than half
    band = np.zeros((h, w), bool)
    band[0:34, 0:110] = True
    band[0:90, 0:40] = True
    tall = np.zeros((h, w), bool)
    tall[5:85, 10:20] = True
    expected = [("right", "middle"), ("centre", "middle"), (None, None), ("left", None)]
    base = next(i for i in realistic_inputs(20) if i.origin == "mask")
    for m, (horizontal, vertical) in zip((right, spread, band, tall), expected, strict=True):
        r = measure_roi(img, m)
        assert (r["horizontal"], r["vertical"]) == (horizontal, vertical)
        item = dataclasses.replace(base, mask_rle=rle_json(rle_encode(m)), image_width=w, image_height=h)
        facts = region_facts(item)
        assert (facts.horizontal, facts.vertical) == (horizontal, vertical)
    assert measure_roi(img, right)["centroid_norm"][0] < 2 / 3
    oriented = measure_roi(img, tall, display_right="L", display_down="P")
    assert (oriented["patient_lr"], oriented["patient_ap"]) == ("right", None)  # no third, no patient term


def test_texture_is_read_inside_the_edge_and_shape_on_the_outline():
    """A uniform disc whose mask takes in a ring of dark background pixels is homogeneous and smooth
    (the edge pixels mix region and background); a disc with a small hole in its mask is round (a
    speck's edge is no part of its outline), a ribbon round a large hole is not."""
    h, w = 90, 120
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(yy - 45, xx - 60)
    img = np.where(d <= 15, 180, 30).astype(np.uint8)
    wide = d <= 16
    r = measure_roi(img, wide)
    assert (r["texture_homogeneity_word"], r["texture_smoothness_word"]) == ("homogeneous", "smooth")
    holed = (d <= 15) & ~(np.hypot(yy - 42, xx - 58) <= 3)
    r = measure_roi(img, holed)
    assert r["shape_word"] == "round" and r["circularity"] > 0.9
    assert r["area_px"] == int(holed.sum())  # the area is still the mask's
    ribbon = (d <= 30) & (d > 22)  # a ring's hole is most of it: part of the shape, not filled
    assert measure_roi(img, ribbon)["shape_word"] == "irregular"
    riddled = (d <= 30) & ((yy % 6 > 1) | (xx % 6 > 1))  # small holes, a ninth of it in all: filled
    assert measure_roi(img, riddled)["shape_word"] == "round"
    islands = (d <= 30) & ((yy % 4 > 1) | (xx % 4 > 1))  # small holes, a third of it in all: its shape
    assert measure_roi(img, islands)["solidity"] < 0.8


def test_label_count_counts_the_localised_regions_sharing_a_label(tmp_path):
    img = np.full((H, W), 40, np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[disk((30, 30), 10, shape=mask.shape)] = 1
    mask[disk((30, 90), 10, shape=mask.shape)] = 1
    mask[disk((70, 60), 8, shape=mask.shape)] = 2
    img[mask > 0] = 180
    res = build_roi_set(_table(tmp_path, [{"image": img, "mask": mask}]), _spec(labels={1: "lesion", 2: "cyst"}), tmp_path)
    ok = res.rois.filter(pl.col("status") == "ok").sort("label")
    assert ok.select("label", "label_count").rows() == [("cyst", 1), ("lesion", 2), ("lesion", 2)]
