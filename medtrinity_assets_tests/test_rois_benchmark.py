"""The ROI benchmark's fair baseline (benchmarks/rois.py: scikit-image ``regionprops`` and
``graycomatrix``) measures what the stage measures: on the same phantom images, the regions both find
have the same box, area, mean, masked GLCM contrast and homogeneity and entropy (the stage computes its
GLCM from the pixel pairs, without the matrices), so the side-by-side timing compares the same work."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.rois.build import build_roi_set
from medtrinity_assets.rois.config import default_config

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "rois.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_rois", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_rois"] = module
    spec.loader.exec_module(module)
    return module


def test_regionprops_baseline_measures_what_the_stage_measures(bench, tmp_path):
    cfg = default_config()
    df = bench.make_source(tmp_path, 4, 192, seed=3)
    spec = SourceSpec(name="bench", layout="image_folder", root=".", modality="CT", organ="phantom",
                      labels={1: "lesion", 2: "speck"}, license="synthetic")
    stage = build_roi_set(df, spec, tmp_path).rois.filter(origin="mask")
    pairs = [(tmp_path / a, tmp_path / b) for a, b in df.select("image_path", "mask_path").iter_rows()]
    assert bench.regionprops_stage(pairs, tmp_path / "baseline.parquet", cfg) > 0

    compared = 0
    for (image_path, mask_path), record in zip(pairs, df["record_id"], strict=True):
        from PIL import Image

        grey = np.asarray(Image.open(image_path, formats=["PNG"]).convert("L"), np.float64)
        label_map = np.asarray(Image.open(mask_path, formats=["PNG"]))
        baseline = {tuple(r["bbox"]): r for r in bench.regionprops_rois(grey, label_map, cfg)}
        rows = stage.filter(record_id=record).to_dicts()
        for row in rows:
            found = baseline.get(tuple(int(round(v)) for v in row["bbox_xyxy"]))
            if found is None:  # a region the stage split or merged differently
                continue
            compared += 1
            assert found["area"] == row["area_px"]
            assert found["roi_mean"] == pytest.approx(row["roi_mean"], rel=1e-9)
            assert found["entropy"] == pytest.approx(row["entropy"], abs=1e-9)
            if row["glcm_contrast"] is not None:
                assert found["glcm_contrast"] == pytest.approx(row["glcm_contrast"], rel=1e-9, abs=1e-12)
                assert found["glcm_homogeneity"] == pytest.approx(row["glcm_homogeneity"], rel=1e-9)
        assert len(rows) > 0
    assert compared >= 0.7 * stage.height
