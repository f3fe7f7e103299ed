"""The fidelity benchmark (benchmarks/fidelity.py): its planted truth is right, its claim readers and
judges count a contradicted claim and only that, and a small run goes through the real stages."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtrinity_assets.demo.planted import (
    PlantedImage,
    PlantedLesion,
    generate_planted,
    ring,
    shape_stats,
    write_planted,
)
from medtrinity_assets.rois.rle import rle_encode, rle_json

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "fidelity.py"


@pytest.fixture(scope="module")
def fid():
    spec = importlib.util.spec_from_file_location("fidelity_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def planted() -> list[PlantedImage]:
    return generate_planted(8, seed=3, size_range=(128, 160))


def test_planted_truth_matches_the_rendered_image(planted):
    for item in planted:
        h, w = item.image.shape
        assert item.image.dtype == np.uint8 and 1 <= len(item.lesions) <= 3
        union = np.zeros((h, w), int)
        for lesion in item.lesions:
            rr, cc = np.nonzero(lesion.mask)
            assert lesion.area_px == rr.size > 0
            assert lesion.area_fraction == pytest.approx(rr.size / (h * w))
            cx, cy = lesion.centroid
            assert cx == pytest.approx((cc.mean() + 0.5) / w, abs=1e-4)
            assert cy == pytest.approx((rr.mean() + 0.5) / h, abs=1e-4)
            assert lesion.horizontal == ("left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "central")
            assert lesion.vertical == ("upper" if cy < 1 / 3 else "lower" if cy > 2 / 3 else "middle")
            assert item.body[lesion.mask].all()
            # polarity on the rendered (speckled) image: the lesion against its ring of tissue
            inside = float(item.image[lesion.mask].mean())
            around = float(item.image[ring(lesion.mask) & item.body].mean())
            assert lesion.polarity * (inside - around) / (inside + around) > 0.08
            union += lesion.mask
        assert union.max() == 1  # lesions never overlap


def test_planted_shape_classes_hold():
    items = generate_planted(30, seed=11, size_range=(192, 224))
    lesions = [lesion for item in items for lesion in item.lesions]
    assert {lesion.shape for lesion in lesions} == {"disc", "ellipse", "irregular"}
    for lesion in lesions:
        solidity, ratio = shape_stats(lesion.mask)
        assert (solidity, ratio) == pytest.approx((lesion.solidity, lesion.axis_ratio), abs=1e-3)
        if lesion.shape == "irregular":
            assert solidity <= 0.88
        elif lesion.shape == "ellipse":
            assert ratio < 0.7
        else:
            assert ratio > 0.85
    assert {lesion.polarity for lesion in lesions} == {-1, 1}


def test_write_planted_layouts(tmp_path, planted):
    truth = write_planted(planted[:3], tmp_path / "with", with_masks=True)
    write_planted(planted[:3], tmp_path / "without", with_masks=False)
    assert sorted(p.name for p in (tmp_path / "with" / "images").iterdir()) == sorted(
        p.name for p in (tmp_path / "with" / "masks").iterdir())
    assert not (tmp_path / "without" / "masks").exists()
    item = planted[0]
    mask = np.asarray(Image.open(tmp_path / "with" / "masks" / f"{item.name}.png"))
    assert set(np.unique(mask)) == {0, 1} and int(mask.sum()) == sum(x.area_px for x in item.lesions)
    labels = np.asarray(Image.open(truth / "lesions" / f"{item.name}.png"))
    assert int(labels.max()) == len(item.lesions)
    table = json.loads((truth / "truth.json").read_text())
    assert table[item.name][0]["area_px"] == item.lesions[0].area_px


def _lesion(mask: np.ndarray, shape: str = "disc", polarity: int = 1) -> PlantedLesion:
    from medtrinity_assets.demo.planted import _truth

    return _truth(mask, shape, polarity, 0.4)


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


NEW_LOC = ("It lies horizontally in the left third of the image and vertically in the middle third; it covers "
           "{area} of the image area and it has a {shape} outline.")
OLD_LOC = ("It is positioned horizontally at the left third and vertically in the middle third of the image; "
           "it covers {area} of the image area and it has a {shape} outline (circularity 0.91).")


def test_claim_readers_read_old_and_new_wording(fid):
    for template in (NEW_LOC, OLD_LOC):
        text = template.format(area="3.2%", shape="round")
        assert fid.read_position(text) == ("left", "middle")
        assert fid.read_area(text) == pytest.approx((0.0315, 0.0325))
        assert fid.read_shape(text) == "round"
    assert fid.read_position("Within the frame it sits vertically in the lower third and horizontally in the "
                             "right third") == ("right", "lower")
    assert fid.read_area("it covers less than 0.1% of the image area") == (0.0, 0.001)
    assert fid.read_box("its bounding box spans 37-68% of the image width and 33-46% of its height") == (
        pytest.approx((0.37, 0.33, 0.68, 0.46)))
    assert fid.read_box("its box spans 0.20-0.40 of the image width and 0.30-0.50 of its height") == (
        pytest.approx((0.2, 0.3, 0.4, 0.5)))
    assert fid.read_position("Its position was not measured.") == (None, None) and fid.read_area("") is None


def test_judges_count_contradicted_claims_and_only_those(fid):
    mask = _disc(200, 200, 100, 30, 12)  # left third, middle third; about 1.1% of the image
    disc = _lesion(mask, "disc", polarity=1)
    area = f"{disc.area_fraction * 100:.1f}%"
    good = {"roi_location": NEW_LOC.format(area=area, shape="round"),
            "roi_texture": "Relative to the surrounding tissue it appears hyperintense."}
    assert not any(fid.judge_description(good, disc).values())
    assert fid.judge_description(good, disc)["position"] is False  # a claim was read and found true
    assert fid.judge_description(good, disc)["whole_image"] is None
    assert fid.judge_position(good["roi_location"].replace("left third", "right third"), disc) is True
    assert fid.judge_area(NEW_LOC.format(area="5.0%", shape="round"), disc) is True
    x0, x1, y0, y1 = 18 / 200 * 100, 43 / 200 * 100, 88 / 200 * 100, 113 / 200 * 100  # the disc's box, in %
    box = f"its bounding box spans {x0:.0f}-{x1:.0f}% of the image width and {y0:.0f}-{y1:.0f}% of its height"
    assert fid.judge_box(box, disc) is False
    assert fid.judge_box(box.replace(f"{x0:.0f}-{x1:.0f}%", "50-60%"), disc) is True
    assert fid.judge_area(NEW_LOC.format(area="less than 0.1%", shape="round"), disc) is True
    assert fid.judge_polarity("it appears hypointense", disc) is True
    assert fid.judge_polarity("it appears isointense", disc) is True
    assert fid.judge_polarity("its texture is homogeneous", disc) is None
    assert fid.judge_shape("it has an irregular outline", disc) is True
    assert fid.judge_shape("it has an oval outline", disc) is False
    blob = _lesion(mask, "irregular", polarity=-1)
    assert fid.judge_shape("it has a round outline", blob) is True
    assert fid.judge_shape("it has a lobulated outline", blob) is False
    assert fid.judge_polarity("it appears hypointense", blob) is False
    whole = {"roi_location": "No region was localised in this image; the description covers the whole image."}
    assert fid.judge_description(whole, disc)["whole_image"] is True


def test_matching_and_scoring_of_one_image(fid):
    h = w = 120
    a, b = _disc(h, w, 30, 30, 8), _disc(h, w, 90, 90, 6)
    item = PlantedImage("x", np.zeros((h, w), np.uint8), np.ones((h, w), bool), [_lesion(a), _lesion(b)])
    assert fid.match_roi(a, None, [a, b]) == 0
    assert fid.match_roi(_disc(h, w, 30, 30, 15), [0.25, 0.25], [a, b]) == 0  # IoU < 0.3, centroid inside
    assert fid.match_roi(_disc(h, w, 30, 30, 25), [0.25, 0.25], [a, b]) is None  # too large for its centroid
    rim = _disc(h, w, 30, 30, 14) & ~_disc(h, w, 30, 30, 11)  # a ring around a, centred on it
    assert fid.match_roi(rim, [0.25, 0.25], [a, b]) is None
    assert fid.match_roi(_disc(h, w, 60, 20, 5), [0.17, 0.5], [a, b]) is None
    noise = _disc(h, w, 60, 20, 5)
    rows = [{"roi_id": f"x:{i}", "status": "ok", "origin": "expert:u", "mask_rle": rle_json(rle_encode(m)),
             "centroid_norm": None, "area_fraction": float(m.mean())} for i, m in enumerate((a, noise))]
    area = f"{item.lesions[0].area_fraction * 100:.1f}%"
    loc = NEW_LOC.replace("left third", "left third").replace("middle third", "upper third")
    captions = {"x:0": {"roi_location": loc.format(area=area, shape="round"), "roi_texture": "it appears hypointense"},
                "x:1": {"roi_location": loc.format(area="0.5%", shape="round")}}
    tally = fid.Tally()
    fid.score_image(tally, item, rows, captions)
    res = fid.summarise(tally)
    assert (res["lesions"], res["recall"], res["localised_rois"], res["precision"]) == (2, 0.5, 2, 0.5)
    assert res["facet_contradicted_share"]["polarity"] == 1.0  # planted brighter, called hypointense
    assert res["facet_contradicted_share"]["position"] == 0.0 and res["facet_contradicted_share"]["area"] == 0.0
    assert res["descriptions_of_noise_rois"] == 1 and res["contradicted_share"] == 1.0
    assert tally.misses[0]["area_px"] == item.lesions[1].area_px


def test_small_run_goes_through_the_real_stages(fid, tmp_path, capsys):
    out = tmp_path / "fidelity.json"
    report = fid.main(["--n", "12", "--size", "96,128", "--variants", "masked,expert", "--epochs", "2",
                       "--json", str(out)])
    assert json.loads(out.read_text())["n_per_variant"] == 12
    masked = report["variants"]["masked"]
    assert masked["images"] + masked["images_lost_in_ingestion"] == 12 and masked["lesions"] >= 12
    assert masked["localised_rois"] > 0 and masked["descriptions_of_matched_rois"] > 0
    assert report["pipeline"]["masked"]["origins"].get("mask", 0) > 0
    assert "unet_mri__phantom__lesion" in report["experts"]["trained"]  # the bare source asked for an expert
    assert "ROI recall" in capsys.readouterr().out
