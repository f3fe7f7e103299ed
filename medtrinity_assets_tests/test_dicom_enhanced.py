"""Enhanced multi-frame DICOM whose geometry is only in the per-frame functional groups.

Enhanced CT/MR objects may carry orientation, position and pixel measures in
PerFrameFunctionalGroupsSequence only (nothing in the shared groups, nothing at top level): the
reader must still find orientation and spacing, sort the frames along the slice normal and take
the slice spacing from consecutive frame positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medtrinity_assets.ingest.pipeline import ingest_source
from medtrinity_assets.ingest.readers import dicom as dcm
from medtrinity_assets_tests.sources_builders import make_spec

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # axial, image rotated 180 degrees
OBLIQUE = (0.0, 0.866025, -0.5, 0.0, -0.5, -0.866025)  # sagittal plane tilted 30 degrees
ROWS, COLS = 32, 48
PIXEL_SPACING = (0.5, 1.0)  # (between rows, between columns) in mm
GAP = 2.0  # mm between consecutive frame positions (SliceThickness says 2.5: not the spacing)
FILE_ORDER = [2, 0, 3, 1]  # frame f of the file lies at GAP * FILE_ORDER[f] along the normal


def _frame_pixels(k: int) -> np.ndarray:
    """Distinct, informative content per slice position k (a ramp plus a k-sized block)."""
    rng = np.random.default_rng(k)
    img = np.add.outer(np.arange(ROWS) * 20, np.arange(COLS) * 10).astype(np.uint16) + 1000
    img[4 : 8 + 4 * k, 6 : 10 + 5 * k] += 800
    return img + rng.integers(0, 50, img.shape).astype(np.uint16)


def _item(**kw) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def enhanced_ct(
    path: Path,
    iop: tuple[float, ...] = AXIAL,
    per_frame_iops: list[tuple[float, ...]] | None = None,
    origin: tuple[float, float, float] = (-12.0, -8.0, 30.0),
) -> Path:
    """An Enhanced CT file of 4 frames (uint16) with all geometry in the per-frame groups."""
    r, c = np.asarray(iop[:3]), np.asarray(iop[3:])
    normal = np.cross(r, c)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENHANCED_CT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = ENHANCED_CT
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.SeriesDescription = "enhanced test"
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = len(FILE_ORDER)
    ds.Rows, ds.Columns = ROWS, COLS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    # shared groups hold no geometry at all, only the pixel value transformation
    ds.SharedFunctionalGroupsSequence = Sequence(
        [
            _item(
                PixelValueTransformationSequence=Sequence(
                    [_item(RescaleSlope="1", RescaleIntercept="-1024", RescaleType="HU")]
                )
            )
        ]
    )
    frames = []
    for f, k in enumerate(FILE_ORDER):
        pos = np.asarray(origin) + GAP * k * normal
        frame_iop = per_frame_iops[f] if per_frame_iops else iop
        frames.append(
            _item(
                PlanePositionSequence=Sequence([_item(ImagePositionPatient=[f"{v:.4f}" for v in pos])]),
                PlaneOrientationSequence=Sequence(
                    [_item(ImageOrientationPatient=[f"{v:.6f}" for v in frame_iop])]
                ),
                PixelMeasuresSequence=Sequence(
                    [_item(PixelSpacing=[str(v) for v in PIXEL_SPACING], SliceThickness="2.5")]
                ),
            )
        )
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack([_frame_pixels(k) for k in FILE_ORDER]).astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def _load(path: Path) -> dcm.Volume:
    (h,) = [dcm.scan_header(path.name, str(path), 10**9)]
    assert h.reason is None
    (task,) = dcm.group_headers([h], 10**9)
    assert isinstance(task, dcm.DicomTask)
    (vol,) = dcm.load_series(task, "CT", {})
    return vol


def test_fixture_has_geometry_only_per_frame(tmp_path):
    ds = pydicom.dcmread(enhanced_ct(tmp_path / "e.dcm"), stop_before_pixels=True)
    assert "ImageOrientationPatient" not in ds and "PixelSpacing" not in ds
    assert "PlaneOrientationSequence" not in ds.SharedFunctionalGroupsSequence[0]
    assert "PixelMeasuresSequence" not in ds.SharedFunctionalGroupsSequence[0]
    assert dcm.image_orientation(ds) == pytest.approx(AXIAL)
    assert dcm.pixel_spacing(ds) == pytest.approx(PIXEL_SPACING)


def test_per_frame_geometry_gives_a_sorted_volume_with_spacing(tmp_path):
    vol = _load(enhanced_ct(tmp_path / "e.dcm"))
    assert vol.kind == "volume" and vol.data.shape == (4, ROWS, COLS)
    # slice spacing from consecutive frame positions, not SliceThickness
    assert vol.spacing == pytest.approx((GAP, *PIXEL_SPACING))
    assert vol.axes_lps is not None
    assert vol.axes_lps == pytest.approx(np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float))
    # frames sorted along the normal (the file stores positions 2, 0, 3, 1)
    for k in range(4):
        assert np.array_equal(vol.data[k], _frame_pixels(k))
    assert vol.intercept == pytest.approx([-1024.0] * 4)


def test_per_frame_orientations_that_disagree_stay_frames(tmp_path):
    """A localizer-like object whose frames lie in different planes is not one volume."""
    iops = [AXIAL, AXIAL, OBLIQUE, AXIAL]
    vol = _load(enhanced_ct(tmp_path / "loc.dcm", per_frame_iops=iops))
    assert vol.kind == "frames" and vol.axes_lps is None


def test_scan_header_reads_per_frame_geometry(tmp_path):
    h = dcm.scan_header("e.dcm", str(enhanced_ct(tmp_path / "e.dcm", origin=(1.0, 2.0, 3.0))), 10**9)
    assert h.frames == 4 and h.iop == pytest.approx(AXIAL)
    assert h.ipp == pytest.approx((1.0, 2.0, 3.0 + GAP * FILE_ORDER[0]))


@pytest.mark.parametrize(
    ("iop", "right", "down", "axis"),
    [(AXIAL, "L", "P", "axial"), (FLIPPED, "R", "A", "axial"), (OBLIQUE, "P", "I", "sagittal")],
    ids=["axial", "flipped", "oblique"],
)
def test_ingest_keeps_orientation_and_spacing(tmp_path, iop, right, down, axis):
    root = tmp_path / "src"
    enhanced_ct(root / "enhanced.dcm", iop=iop)
    spec = make_spec(tmp_path, "enhanced", "dicom", root, modality="CT", organ="head", slicing={"stride": 1})
    res = ingest_source(spec, tmp_path / "out", workers=1)
    assert res.counts["ok"] == 4, res.manifest
    man = res.manifest.sort("slice_index")
    assert man["slice_axis"].to_list() == [axis] * 4
    assert man["slice_index"].to_list() == [0, 1, 2, 3]
    assert man["depth"].to_list() == [4] * 4
    for img in res.images.to_dicts():
        assert (img["display_right"], img["display_down"]) == (right, down)
        # 0.5 x 1.0 mm pixels become square 0.5 mm pixels: 32 rows, 48 columns x 2
        assert (img["height"], img["width"]) == (ROWS, 2 * COLS)
        assert img["original_spacing"] == pytest.approx([0.5, 0.5])


def test_a_truncated_copy_of_a_series_slice_does_not_replace_the_good_one(tmp_path):
    """Two files of one SOP instance (an interrupted re-copy): the complete one joins the
    series, the truncated one is quarantined on its own; the volume has no gap."""
    from medtrinity_assets_tests.sources_builders import ct_series, make_spec, truncated_copy

    root = tmp_path / "src"
    ct_series(root / "series", n=4, shuffle=False)
    # "a_..." sorts before "slice_01": with equal positions the copy would otherwise come first
    truncated_copy(root / "series" / "slice_01.dcm", root / "series" / "a_copy.dcm")
    spec = make_spec(tmp_path, "trunc", "dicom", root, modality="CT", organ="abdomen", slicing={"stride": 1})
    res = ingest_source(spec, tmp_path / "out", workers=1)
    m = res.manifest
    q = m.filter(pl.col("status") == "quarantined")
    assert q["relpath"].to_list() == ["series/a_copy.dcm"] and q["reason"][0].startswith("truncated")
    series = m.filter(pl.col("status") == "ok")
    assert sorted(series["slice_index"].to_list()) == [0, 1, 2, 3] and set(series["depth"]) == {4}
    assert sorted(series["relpath"]) == [f"series/slice_{k:02d}.dcm" for k in range(4)]


def test_a_series_with_a_missing_slice_is_kept_and_its_gap_counted(tmp_path):
    from medtrinity_assets_tests.sources_builders import ct_series, make_spec

    root = tmp_path / "src"
    ct_series(root / "series", n=4, shuffle=False)
    spec = make_spec(tmp_path, "gap", "dicom", root, modality="CT", organ="abdomen", slicing={"stride": 1})
    whole = ingest_source(spec, tmp_path / "out", workers=1)
    assert not any(k.startswith("warning:") for k in whole.counts)
    (root / "series" / "slice_02.dcm").unlink()  # positions 0, 5, 15 mm: one slice missing
    res = ingest_source(spec, tmp_path / "out2", workers=1)
    assert res.counts["warning:series_gap"] == 1
    ok = res.manifest.filter(pl.col("status") == "ok")
    assert ok.height == 3 and set(ok["depth"]) == {3}
    assert {tuple(s) for s in res.images["original_spacing"].to_list()} == {
        tuple(s) for s in whole.images["original_spacing"].to_list()
    }
