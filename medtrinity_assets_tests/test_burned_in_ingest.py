"""Burned-in text through ingestion: a patient name and a date rendered into a DICOM ultrasound are
blacked out in the stored image (a sensitive OCR reads them in the input and not in the output),
counted in the table; an image that cannot be checked is quarantined, never kept unchecked."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

from medtrinity_assets.ingest.pipeline import ingest_source
from medtrinity_assets.privacy.pixels import ocr_available, ocr_words
from medtrinity_assets_tests.sources_builders import make_spec
from medtrinity_assets_tests.test_pixel_phi import ALOKA_LINES, SENSITIVE, US1_LINES, ultrasound_like

needs_ocr = pytest.mark.skipif(not ocr_available(), reason="tesseract-ocr is not installed")
TOKENS = ["ROE", "MARY", "1987", "0612"]


def _us_dicom(path, burned_in: str | None = None) -> np.ndarray:
    """A DICOM ultrasound whose pixels carry a patient name and a date; returns its pixels."""
    img, _, _ = ultrasound_like(seed=3)
    canvas = Image.fromarray(img.copy())
    draw = ImageDraw.Draw(canvas)
    draw.text((300, 8), "ROE^MARY", fill=220, font=ImageFont.load_default(size=14))
    draw.text((300, 30), "1987-06-12", fill=220, font=ImageFont.load_default(size=14))
    pixels = np.asarray(canvas)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "US"
    ds.PatientName = "ROE^MARY"
    ds.PatientID = "MRN-55512"
    if burned_in:
        ds.BurnedInAnnotation = burned_in
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return pixels


def _read(image: np.ndarray) -> set[str]:
    words = ocr_words(image, SENSITIVE, upscale=3)
    text = {re.sub(r"[^A-Z0-9]", "", w.text.upper()) for w in words}
    return {t for t in TOKENS if any(t in w for w in text)}


@needs_ocr
def test_name_and_date_in_ultrasound_pixels_are_not_legible_in_the_output(tmp_path):
    root = tmp_path / "us"
    root.mkdir()
    pixels = _us_dicom(root / "scan.dcm")
    assert _read(pixels) == set(TOKENS)  # the check can read them where they are
    spec = make_spec(tmp_path, "us_burned", "dicom", root, modality="Ultrasound", organ="unspecified")
    result = ingest_source(spec, tmp_path / "out", workers=1)
    images = result.images
    assert images.height == 1 and images["text_boxes_redacted"][0] >= 2
    stored = np.asarray(Image.open(tmp_path / "out" / images["image_path"][0]).convert("L"))
    assert _read(stored) == set()
    assert result.burned_in_text["text_redacted_images"] == 1
    # the scan itself is kept: most of the fan is untouched
    assert float((stored > 0).mean()) > 0.25


def test_unchecked_text_is_quarantined_with_the_reason(tmp_path, monkeypatch):
    """Without an OCR engine an image that may carry text is quarantined, never kept unchecked;
    a source that declares clean pixels (burned_in_text: none) is not scanned."""
    import medtrinity_assets.privacy.pixels as px

    monkeypatch.setattr(px.shutil, "which", lambda name: None)
    px._runs.cache_clear() if hasattr(px._runs, "cache_clear") else None
    root = tmp_path / "us"
    root.mkdir()
    _us_dicom(root / "scan.dcm", burned_in="YES")
    spec = make_spec(tmp_path, "us_unchecked", "dicom", root, modality="Ultrasound", organ="unspecified")
    result = ingest_source(spec, tmp_path / "out", workers=1)
    manifest = result.manifest
    assert result.images.height == 0
    assert manifest["status"].to_list() == ["quarantined"]
    assert manifest["reason"][0].startswith("burned_in_text_unchecked: ") and "tesseract-ocr" in manifest["reason"][0]
    clean = make_spec(tmp_path, "us_clean", "dicom", root, modality="Ultrasound", organ="unspecified",
                      burned_in_text="none")
    kept = ingest_source(clean, tmp_path / "out2", workers=1)
    assert kept.images.height == 1 and kept.images["text_boxes_redacted"].is_null().all()
    assert pl.Series(kept.manifest["status"]).to_list() == ["ok"]


@needs_ocr
@pytest.mark.parametrize(("name", "lines"), [("US1_J2KR.dcm", US1_LINES), ("gdcm-US-ALOKA-16.dcm", ALOKA_LINES)])
def test_identifying_lines_of_the_demo_ultrasounds_are_black_in_the_stored_image(tmp_path, name, lines):
    """Through ingestion, as the demo stores them (640 x 480 shrunk to 512 x 384): every identifying
    line of pydicom's demo ultrasounds (institution, date, time, IDs; boxes measured by hand) is
    black in the stored image. Text is read at the resolution it was drawn for: read after the
    shrink, the 9-px date "24-MAY-02" and "IM#2" were misread and kept."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not available offline")
    root = tmp_path / "us"
    root.mkdir()
    (root / name).write_bytes(open(path, "rb").read())
    spec = make_spec(tmp_path, "us", "dicom", root, modality="Ultrasound", organ="unspecified", max_side=512)
    res = ingest_source(spec, tmp_path / "out", workers=1)
    image_path = res.images.row(0, named=True)["image_path"]
    stored = np.asarray(Image.open(tmp_path / "out" / image_path).convert("L"))
    sy, sx = stored.shape[0] / 480, stored.shape[1] / 640
    for text, (x0, y0, x1, y1), phi in lines:
        if phi:
            inside = stored[int(y0 * sy) + 1 : int(y1 * sy) - 1, int(x0 * sx) + 1 : int(x1 * sx) - 1]
            assert (inside <= 8).mean() >= 0.97, f"{text!r} is still visible in the stored image"
