"""Builders of small test sources in tmp_path from real files shipped by installed packages.

Imported by test_imaging.py and test_preprocess.py (not a pytest conftest: no fixtures here).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medtrinity_assets.ingest.registry import SourceSpec

SKIMAGE_DATA = Path(__import__("skimage").__file__).parent / "data"
NIBABEL_ANAT = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def make_spec(tmp_path: Path, name: str, layout: str, root: Path, **kw) -> SourceSpec:
    """A spec as the YAML loader would build it: relative root, registry_file in tmp_path."""
    reg = tmp_path / "registry"
    reg.mkdir(exist_ok=True)
    fields = {"modality": "MRI", "organ": "brain", "license": "test", **kw}
    rel = Path("..") / root.relative_to(tmp_path)
    return SourceSpec(
        name=name, layout=layout, root=str(rel), registry_file=str(reg / f"{name}.yaml"), **fields
    )


def pydicom_file(name: str) -> Path:
    return Path(get_testdata_file(name))


def copy_dicoms(dest: Path, names: list[str]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(pydicom_file(n), dest / n)
    return dest


def truncated_copy(src: Path, dest: Path, fraction: float = 0.7) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * fraction)])
    return dest


def ct_series(dest: Path, n: int = 4, shuffle: bool = True) -> list[pydicom.Dataset]:
    """n CT slices from CT_small.dcm with distinct positions (written in shuffled file order)."""
    dest.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    series_uid = generate_uid()
    out = []
    order = [2, 0, 3, 1][:n] if shuffle and n == 4 else list(range(n))
    for fileno, k in enumerate(order):
        ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ipp = [float(v) for v in base.ImagePositionPatient]
        ipp[2] += 5.0 * k
        ds.ImagePositionPatient = ipp
        arr = base.pixel_array.copy()
        arr = np.roll(arr, 9 * k, axis=1)  # distinct slices (no exact duplicates)
        # a marker of the slice position in the top-left corner, in HU inside a soft-tissue window
        hu = -10.0 + 40.0 * k
        arr[:8, :8] = int(round((hu - float(base.RescaleIntercept)) / float(base.RescaleSlope)))
        ds.PixelData = arr.astype(base.pixel_array.dtype).tobytes()
        ds.save_as(dest / f"slice_{fileno:02d}.dcm", enforce_file_format=True)
        out.append(ds)
    return out


def write_seg(
    path: Path, sources: list[pydicom.Dataset], masks: list[np.ndarray], label: str = "tumour"
) -> None:
    """A minimal binary DICOM SEG with one frame per source image."""
    from pydicom.pixels import pack_bits

    seg = Dataset()
    seg.file_meta = FileMetaDataset()
    seg.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    seg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    seg.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    seg.SOPClassUID = seg.file_meta.MediaStorageSOPClassUID
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID
    seg.Modality = "SEG"
    seg.SeriesInstanceUID = generate_uid()
    seg.PatientName = "Doe^Jane"
    rows, cols = masks[0].shape
    seg.Rows, seg.Columns, seg.NumberOfFrames = rows, cols, len(masks)
    seg.SamplesPerPixel, seg.PhotometricInterpretation = 1, "MONOCHROME2"
    seg.BitsAllocated, seg.BitsStored, seg.HighBit, seg.PixelRepresentation = 1, 1, 0, 0
    seg.SegmentationType = "BINARY"
    item = Dataset()
    item.SegmentNumber, item.SegmentLabel = 1, label
    seg.SegmentSequence = [item]
    frames = []
    for src in sources:
        ref = Dataset()
        ref.ReferencedSOPClassUID = src.SOPClassUID
        ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
        der = Dataset()
        der.SourceImageSequence = [ref]
        ident = Dataset()
        ident.ReferencedSegmentNumber = 1
        fg = Dataset()
        fg.DerivationImageSequence = [der]
        fg.SegmentIdentificationSequence = [ident]
        frames.append(fg)
    seg.PerFrameFunctionalGroupsSequence = frames
    seg.PixelData = pack_bits(np.stack(masks).astype(np.uint8))
    seg["PixelData"].VR = "OB"
    seg.save_as(path, enforce_file_format=True)


def msd_source(root: Path, with_label: bool = True) -> Path:
    """nibabel's anatomical.nii wrapped into an MSD layout with a thresholded label."""
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    img = nib.load(NIBABEL_ANAT)
    data = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image(data, img.affine), root / "imagesTr" / "anat_001.nii.gz")
    if with_label:
        thr = np.percentile(data, 97)
        lab = (data > thr).astype(np.uint8)
        lab[:, :, :10] = 0  # labelled only on a few axial slices
        lab[:, :, 15:] = 0
        nib.save(nib.Nifti1Image(lab, img.affine), root / "labelsTr" / "anat_001.nii.gz")
    meta = {"name": "test", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "bright tissue"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def phantom_volume(
    shape=(40, 48, 30), affine=None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noisy volume with a bright box and its label (value 1) exactly on the box."""
    rng = np.random.default_rng(seed)
    data = (rng.normal(100, 10, shape)).astype(np.float32)
    data += np.linspace(0, 40, shape[0])[:, None, None].astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[5:15, 30:40, 10:20] = 1
    data[lab == 1] += 300
    if affine is None:
        affine = np.diag([-2.0, 1.0, 3.0, 1.0])
    return data, lab, affine


def folder_source(root: Path, names=("retina.jpg", "ihc.png", "cell.png")) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(SKIMAGE_DATA / n, root / "images" / n)
    return root


def spy_on_listings(monkeypatch, root: Path, refuse: str) -> list[str]:
    """Record every folder listed (relative to ``root``, ``.`` for the root) from now on; a folder
    whose path ends with ``refuse`` cannot be listed (permission denied, as for another user)."""
    import os

    real_scandir, listed = os.scandir, []

    def scandir(path="."):
        listed.append(os.path.relpath(path, root))
        if str(path).endswith(refuse):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return listed
