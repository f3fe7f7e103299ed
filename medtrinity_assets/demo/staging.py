"""Stage the embedded demo sources from real medical images that ship inside installed packages.

Nothing here downloads anything: every file comes from a wheel that the project depends on
(pydicom and pydicom-data, nibabel, nilearn, scikit-image) or is generated (MONAI phantoms,
marked ``synthetic: true`` in the registry). The registry files in ``data/sources/`` point at
the folders written here (``data/demo/<source>/``). Staging is idempotent: a file already in
place with the same bytes is left alone.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medtrinity_assets.core.paths import DEFAULT_DEMO_DIR  # noqa: E402
from medtrinity_assets.core.storage import atomic_write_bytes

# source name -> pydicom test files (found by pydicom.data.get_testdata_file, which also
# looks inside the pydicom-data package).
DICOM_SOURCES: dict[str, list[str]] = {
    "ct_head": ["J2K_pixelrep_mismatch.dcm"],
    "ct_pancreas": ["explicit_VR-UN.dcm"],
    "mr_abdomen_liver": ["MR-SIEMENS-DICOM-WithOverlays.dcm"],
    "mr_shoulder": ["MR2_J2KR.dcm"],
    "mr_head_multiframe": ["emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm"],
    "xray_chest": ["RG1_J2KR.dcm"],
    "xray_tibia": ["RG3_J2KR.dcm"],
    "us_general": ["US1_J2KR.dcm", "gdcm-US-ALOKA-16.dcm", "color-px.dcm"],
    "nm_bone_scan": ["JPEG-LL.dcm", "JPEG2000_UNC.dcm"],
}

SKIMAGE_FILES = {
    "fundus_retina": ["retina.jpg", "microaneurysms.png"],
    "histology_ihc": ["ihc.png"],
}


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    atomic_write_bytes(path, data)


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and dst.stat().st_size == src.stat().st_size:
        return
    atomic_write_bytes(dst, src.read_bytes())  # test workers stage the same folder at once


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def stage_dicom(dest: Path) -> list[str]:
    from pydicom.data import get_testdata_file

    staged = []
    for source, names in DICOM_SOURCES.items():
        for name in names:
            path = get_testdata_file(name)
            if path is None:
                continue
            _copy(Path(path), dest / source / name)
        staged.append(source)
    return staged


def stage_skimage(dest: Path) -> list[str]:
    import skimage

    data_dir = Path(skimage.__file__).parent / "data"
    for source, names in SKIMAGE_FILES.items():
        for name in names:
            _copy(data_dir / name, dest / source / "images" / name)
    # A phase-contrast micrograph as a table source with a box, a label and a QA pair. The box
    # holds the one phase-bright cell and its dark halo (located on the image: x 368-487, y 317-432).
    cell = data_dir / "cell.png"
    _copy(cell, dest / "microscopy_cells" / "images" / "cell.png")
    rows = [
        {
            "image": "images/cell.png",
            "label": "cultured cell",
            "bbox": "355,305,500,445",
            "report": "Phase-contrast micrograph of a cell in culture.",
            "question": "What imaging technique is used?",
            "answer": "phase-contrast microscopy",
        }
    ]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    _write_if_changed(dest / "microscopy_cells" / "index.csv", buf.getvalue().encode())
    return [*SKIMAGE_FILES, "microscopy_cells"]


def _nifti_bytes(array: np.ndarray, affine: np.ndarray, dtype) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(array.astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    return img.to_bytes()


def stage_mni(dest: Path) -> list[str]:
    """MNI ICBM152 2009 T1 template with grey/white-matter label maps (MSD layout)."""
    import gzip

    import nibabel as nib
    import nilearn

    data_dir = Path(nilearn.__file__).parent / "datasets" / "data"
    t1 = nib.load(data_dir / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm = nib.load(data_dir / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").get_fdata()
    wm = nib.load(data_dir / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").get_fdata()
    t1_data = t1.get_fdata()
    # 2 mm grid (block average of the 1 mm template) keeps the demo small; labels by majority.
    step = 2
    shape = tuple(s // step * step for s in t1_data.shape)

    def pool(a: np.ndarray) -> np.ndarray:
        a = a[: shape[0], : shape[1], : shape[2]]
        return a.reshape(shape[0] // step, step, shape[1] // step, step, shape[2] // step, step).mean(
            axis=(1, 3, 5)
        )

    t1_2 = pool(t1_data)
    gm_2, wm_2 = pool(gm) / 255.0, pool(wm) / 255.0
    labels = np.zeros(t1_2.shape, dtype=np.uint8)
    labels[(gm_2 >= 0.5) & (gm_2 >= wm_2)] = 1
    labels[(wm_2 >= 0.5) & (wm_2 > gm_2)] = 2
    affine = t1.affine.copy()
    affine[:3, :3] = affine[:3, :3] * step
    root = dest / "mni152_brain"
    _write_if_changed(
        root / "imagesTr" / "mni152_t1.nii.gz",
        gzip.compress(_nifti_bytes(t1_2, affine, np.float32), mtime=0),
    )
    _write_if_changed(
        root / "labelsTr" / "mni152_t1.nii.gz",
        gzip.compress(_nifti_bytes(labels, affine, np.uint8), mtime=0),
    )
    # nibabel's own small anatomical MRI as an unlabelled test image.
    anat = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    _copy(anat, root / "imagesTs" / "nibabel_anatomical.nii")
    dataset = {
        "name": "MNI152 2009 T1 template (2 mm) with tissue labels",
        "modality": {"0": "T1"},
        "labels": {"0": "background", "1": "grey matter", "2": "white matter"},
        "numTraining": 1,
        "numTest": 1,
        "training": [{"image": "./imagesTr/mni152_t1.nii.gz", "label": "./labelsTr/mni152_t1.nii.gz"}],
        "test": ["./imagesTs/nibabel_anatomical.nii"],
    }
    _write_if_changed(root / "dataset.json", json.dumps(dataset, indent=2).encode())
    return ["mni152_brain"]


PHANTOM_HELD_OUT = 8  # the last phantoms are staged without their masks: an expert grounds them


def stage_phantoms(dest: Path, n: int = 40, size: int = 128, seed: int = 7) -> list[str]:
    """MONAI-generated 2D phantoms with lesion masks (synthetic, for tests and expert training).

    The last :data:`PHANTOM_HELD_OUT` are staged without a mask in the source (their masks go to
    ``synthetic_phantoms_truth/``, outside the source): the source then has unannotated images of
    the phantom scope, which the expert trained on the annotated ones grounds, and the truth
    masks score that expert's output.
    """
    root = dest / "synthetic_phantoms"
    marker, key = dest / ".synthetic_phantoms.staged", _phantoms_key(n, size, seed)
    if _still_staged(marker, key, dest):
        return ["synthetic_phantoms"]  # MONAI's import alone takes about 6 s
    from monai.data.synthetic import create_test_image_2d

    rng = np.random.default_rng(seed)
    written: list[Path] = []
    for i in range(n):
        img, seg = create_test_image_2d(
            size,
            size,
            num_objs=int(rng.integers(1, 5)),
            rad_max=int(size * 0.15),
            rad_min=int(size * 0.05),
            noise_max=0.3,
            num_seg_classes=1,
            random_state=np.random.RandomState(seed + i),
        )
        # A smooth bias field makes plain global thresholding imperfect, as on real scanners.
        yy, xx = np.mgrid[0:size, 0:size] / size
        bias = 0.6 * (xx * rng.uniform(0.5, 1.0) + yy * rng.uniform(0.0, 0.5))
        arr = np.clip((img + bias) / (1.0 + bias.max()), 0, 1)
        held_out = i >= n - PHANTOM_HELD_OUT
        mask_dir = dest / "synthetic_phantoms_truth" / "masks" if held_out else root / "masks"
        written += [root / "images" / f"phantom_{i:03d}.png", mask_dir / f"phantom_{i:03d}.png"]
        _write_if_changed(written[-2], _png_bytes((arr * 255).astype(np.uint8)))
        _write_if_changed(written[-1], _png_bytes((seg > 0).astype(np.uint8)))
        if held_out:
            (root / "masks" / f"phantom_{i:03d}.png").unlink(missing_ok=True)  # staged by an older version
    listing = {str(f.relative_to(dest)): f.stat().st_size for f in written}
    atomic_write_bytes(marker, json.dumps({"key": key, "files": listing}).encode())
    return ["synthetic_phantoms"]


def _phantoms_key(n: int, size: int, seed: int) -> str:
    """What the phantoms are made from: this module's code, the versions of MONAI, NumPy and
    Pillow, and the parameters."""
    import hashlib
    from importlib.metadata import version

    parts = [Path(__file__).read_bytes(), *(version(d).encode() for d in ("monai", "numpy", "pillow"))]
    return hashlib.sha256(b"\0".join([*parts, f"{n},{size},{seed}".encode()])).hexdigest()


def _still_staged(marker: Path, key: str, dest: Path) -> bool:
    """Whether the files the marker lists were staged with ``key`` and are all there, at their size."""
    try:
        staged = json.loads(marker.read_text())
        return staged["key"] == key and all((dest / f).stat().st_size == size for f, size in staged["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


STAGERS: list[Callable[[Path], list[str]]] = [stage_dicom, stage_skimage, stage_mni, stage_phantoms]


def stage_demo_data(dest: str | Path = DEFAULT_DEMO_DIR) -> list[str]:
    """Write every demo source under ``dest``; returns the staged source names."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staged: list[str] = []
    for stager in STAGERS:
        staged.extend(stager(dest))
    return staged
