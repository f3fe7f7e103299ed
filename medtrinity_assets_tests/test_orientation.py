"""Images are shown upright as their headers say: 2D CT/MR slices in their plane's display
convention, projection radiographs in the radiological one (patient's left on the viewer's right)."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from medtrinity_assets.core.images import read_png
from medtrinity_assets.ingest import ingest_source
from medtrinity_assets_tests.sources_builders import make_spec


def _ingest(tmp_path, name: str, modality: str):
    root = tmp_path / name
    root.mkdir()
    shutil.copy(get_testdata_file(name), root / name)
    res = ingest_source(make_spec(tmp_path, "s", "dicom", root, modality=modality), tmp_path / "out", workers=1)
    row = res.images.row(0, named=True)
    return row, read_png(tmp_path / "out" / row["image_path"])


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    from PIL import Image

    small = [np.asarray(Image.fromarray(x.astype(np.float32)).resize((64, 64)), float).ravel() for x in (a, b)]
    return float(np.corrcoef(*small)[0, 1])


def test_axial_ct_slice_is_shown_anterior_up(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("explicit_VR-UN.dcm"))
    assert ds.ImageOrientationPatient[4] < 0  # stored with +row towards anterior: upside down
    row, img = _ingest(tmp_path, "explicit_VR-UN.dcm", "CT")
    assert (row["display_right"], row["display_down"]) == ("L", "P")
    stored = ds.pixel_array
    assert _corr(img, stored[::-1]) > _corr(img, stored) + 0.1


def test_projection_radiograph_gets_the_patient_left_on_the_right(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("RG3_J2KR.dcm"), stop_before_pixels=True)
    assert list(ds.PatientOrientation) == ["R", "F"]  # stored with the patient's right on the right
    row, _ = _ingest(tmp_path, "RG3_J2KR.dcm", "X-ray")
    assert (row["display_right"], row["display_down"]) == ("L", "I")


def test_a_slice_far_from_every_axis_is_called_oblique(tmp_path):
    """The plane a caption names comes from the header's geometry: axial for MR_small, oblique
    for the same slice tilted 35 degrees (no axis within 30 degrees of its normal)."""
    from medtrinity_assets.metadata.coarse_captions import build_coarse_captions

    row, _ = _ingest(tmp_path, "MR_small.dcm", "MRI")
    assert row["plane"] == "axial"
    root = tmp_path / "tilted"
    root.mkdir()
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    c, s = np.cos(np.radians(35)), np.sin(np.radians(35))
    ds.ImageOrientationPatient = [c, s, 0.0, 0.0, 0.0, -1.0]  # rows along S-I, normal 35 deg off L-R
    ds.save_as(root / "tilted.dcm")
    spec = make_spec(tmp_path, "t", "dicom", root, modality="MRI", organ="shoulder")
    res = ingest_source(spec, tmp_path / "out2", workers=1)
    assert res.images["plane"].to_list() == ["oblique"]
    caption = build_coarse_captions(res.manifest, res.images, spec)["caption"][0]
    assert caption.startswith("Oblique") and "sagittal" not in caption and "coronal" not in caption
