"""Burned-in text (PHI in pixels): names, dates and institutions drawn into an ultrasound-like
image, and the header text of pydicom's demo ultrasounds, are found by Tesseract and blacked out;
a more sensitive OCR run on the result reads none of them, and the image content is left alone."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

from medtrinity_assets.privacy import pixels
from medtrinity_assets.privacy.pixels import (
    OcrPass,
    OcrUnavailable,
    TextBox,
    find_text,
    ocr_available,
    ocr_words,
    redact_text,
)

needs_ocr = pytest.mark.skipif(not ocr_available(), reason="tesseract-ocr is not installed")

#: More sensitive than find_text: every rendering as sparse text, plus automatic and block
#: segmentation, at x3 instead of x2, and every word read counts (no confidence or length filter).
SENSITIVE = (
    OcrPass(psm=11),
    OcrPass(psm=11, inverted=True),
    OcrPass(psm=11, tophat=True),
    OcrPass(psm=11, tophat=True, inverted=True),
    OcrPass(psm=3, inverted=True),
    OcrPass(psm=6, inverted=True),
)

# (text, font size, top-left corner) drawn in light grey into the synthetic ultrasound
SYNTHETIC_TEXT = [
    ("DOE^JANE", 12, (8, 6)),
    ("BAPTIST MED CTR", 11, (8, 22)),
    ("03/04/2021", 12, (420, 6)),
    ("Jane Doe", 14, (8, 488)),
    ("2021-03-04", 10, (420, 490)),
]
SYNTHETIC_TOKENS = ["DOE", "JANE", "BAPTIST", "CTR", "2021", "0304"]

#: For the demo images' pixel fonts x2 reads more than x3; each of these two passes alone reads
#: all of US1's identifying lines before redaction.
DEMO_CHECK = (OcrPass(psm=11), OcrPass(psm=3, inverted=True))
US1_TOKENS = ["BAPT", "630P", "78F7", "44CG", "20904", "22G22", "78DR"]
ALOKA_TOKENS = ["WESTW", "MEDICAL", "24MAY", "112420"]

# The text lines visible in pydicom's demo ultrasounds (looked at, boxes measured by hand);
# True marks the identifying ones (institution, IDs, date, time).
US1_LINES = [
    ("BAPTIST MED CTR", (20, 26, 168, 38), True),
    ("630P630", (20, 42, 78, 54), True),
    ("78F78", (20, 58, 68, 70), True),
    ("44CG43", (20, 74, 78, 86), True),
    ("IM#2", (20, 90, 58, 102), True),
    ("+2:09:04", (280, 42, 358, 54), True),
    ("3cm3cm 8M12L", (500, 25, 618, 41), False),
    ("MSCSKEL", (550, 42, 618, 54), False),
    ("CINE 0118", (530, 58, 618, 70), False),
    ("22G22", (570, 74, 618, 86), True),
    ("78DR78", (560, 90, 618, 102), True),
    ("PWR", (10, 138, 38, 150), False),
    ("PWR", (10, 218, 38, 230), False),
    ("PWR", (600, 138, 628, 150), False),
    ("PWR", (600, 218, 628, 230), False),
    ("LYMPH NODE", (250, 362, 358, 374), False),
    ("TIS<0.4 MI=0.8 AO=100%", (400, 458, 618, 470), False),
]
ALOKA_LINES = [
    ("*WESTWAY MEDICAL*", (81, 1, 248, 11), True),
    ("ULTRASOUND", (111, 13, 208, 23), False),
    ("24-MAY-02", (561, 1, 638, 11), True),
    (":M 11:24:20", (530, 13, 638, 23), True),
    ("127/128", (252, 36, 330, 48), False),
    ("20Hz", (291, 49, 327, 59), False),
    ("110/111", (562, 36, 640, 48), False),
    ("20Hz", (601, 49, 637, 59), False),
    ("L0", (80, 60, 100, 72), False),
    ("9123 5.0 R15 G66 C6 A2", (41, 433, 278, 443), False),
    ("9123 5.0 R15 G63 C6 A2", (341, 433, 578, 443), False),
    ("3:PELVIS", (21, 457, 98, 467), False),
    ("DVA: 94%", (551, 457, 629, 467), False),
]


def ultrasound_like(
    seed: int = 0,
) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]], np.ndarray]:
    """A 512x512 sector scan (speckle with two echo bands in a fan on black) with light grey
    text in the corners at scanner font sizes; returns the image, the text boxes and the fan."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512]
    r = np.hypot(yy - 40, xx - 256)
    fan = (r > 60) & (r < 440) & (np.abs(np.degrees(np.arctan2(xx - 256, yy - 40))) < 35)
    speckle = gaussian_filter(rng.rayleigh(1.0, (512, 512)), (0.8, 1.6))
    tissue = 0.6 + 0.8 * np.exp(-(((r - 180) / 12) ** 2)) + 0.5 * np.exp(-(((r - 300) / 25) ** 2))
    img = Image.fromarray(
        np.where(fan, np.clip(90 * speckle * tissue * np.exp(-(r - 60) / 500), 0, 255), 0).astype(np.uint8)
    )
    draw = ImageDraw.Draw(img)
    boxes = []
    for text, size, xy in SYNTHETIC_TEXT:
        font = ImageFont.load_default(size=size)  # Pillow >= 10.1 (FreeType): a scalable font
        draw.text(xy, text, fill=205, font=font)
        boxes.append((text, draw.textbbox(xy, text, font=font)))
    return np.asarray(img), boxes, fan


def _covered(image: np.ndarray, line: tuple[int, int, int, int], boxes: list[TextBox]) -> float:
    """Share of a line's ink (pixels far from the line box's median grey) inside ``boxes``."""
    grey = pixels._grey(image)
    x0, y0, x1, y1 = line
    patch = grey[y0:y1, x0:x1].astype(int)
    ink = np.abs(patch - np.median(patch)) > 50
    mask = np.zeros(grey.shape, bool)
    for b in boxes:
        mask[b.y0 : b.y1, b.x0 : b.x1] = True
    return float(mask[y0:y1, x0:x1][ink].mean()) if ink.any() else 1.0


def _read(words: list[TextBox], tokens: list[str]) -> set[str]:
    """Which of ``tokens`` any word contains (letters and digits only, case-folded)."""
    found = set()
    for w in words:
        norm = re.sub(r"[^A-Z0-9]", "", w.text.upper())
        found |= {t for t in tokens if t in norm}
    return found


def _dicom_rgb(name: str) -> np.ndarray:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not available offline")
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = np.rint(apply_color_lut(arr, ds) / 257.0).astype(np.uint8)  # 16-bit LUT -> 8-bit
    assert arr.dtype == np.uint8 and arr.ndim == 3
    return arr


@pytest.fixture(scope="module")
def synthetic():
    image, lines, fan = ultrasound_like()
    before = image.copy()
    start = time.perf_counter()
    redacted, boxes = redact_text(image)
    seconds = time.perf_counter() - start
    assert np.array_equal(image, before), "redact_text modified its input"
    return image, lines, fan, redacted, boxes, seconds


@needs_ocr
def test_find_text_covers_names_dates_and_institution(synthetic):
    image, lines, _fan, _redacted, boxes, _ = synthetic
    coverage = {text: _covered(image, box, boxes) for text, box in lines}
    assert all(c >= 0.95 for c in coverage.values()), coverage
    assert all(b.height <= 40 for b in boxes)  # lines, not regions


@needs_ocr
def test_redacted_image_reads_no_phi_and_keeps_the_scan(synthetic):
    image, _lines, fan, redacted, boxes, _ = synthetic
    assert redacted.shape == image.shape and redacted.dtype == image.dtype
    assert all((redacted[b.y0 : b.y1, b.x0 : b.x1] == 0).all() for b in boxes)
    # the sensitive OCR reads the PHI before (so its silence after means something) ...
    assert _read(ocr_words(image, SENSITIVE, upscale=3), SYNTHETIC_TOKENS) == set(SYNTHETIC_TOKENS)
    # ... and none of it after; find_text finds nothing left
    assert _read(ocr_words(redacted, SENSITIVE, upscale=3), SYNTHETIC_TOKENS) == set()
    assert find_text(redacted) == []
    changed = (redacted != image)[fan].mean()
    assert changed < 0.05, f"{changed:.1%} of the fan changed"


@needs_ocr
def test_rgb_input_with_coloured_text():
    grey, lines, _fan = ultrasound_like(seed=1)
    rgb = np.stack([grey, grey, grey], axis=-1)
    for _text, (x0, y0, x1, y1) in lines[:2]:  # the top-left block in yellow, as some scanners do
        ink = grey[y0:y1, x0:x1] > 100
        rgb[y0:y1, x0:x1, 2][ink] = 0
    redacted, boxes = redact_text(rgb)
    assert redacted.shape == rgb.shape
    assert all(_covered(rgb, box, boxes) >= 0.95 for _text, box in lines)


@needs_ocr
@pytest.mark.parametrize(
    ("name", "lines", "tokens", "min_found"),
    [("US1_J2KR.dcm", US1_LINES, US1_TOKENS, 16), ("gdcm-US-ALOKA-16.dcm", ALOKA_LINES, ALOKA_TOKENS, 12)],
)
def test_demo_ultrasound_header_text_is_found_and_blacked_out(name, lines, tokens, min_found):
    image = _dicom_rgb(name)
    redacted, boxes = redact_text(image)
    coverage = [(text, round(_covered(image, box, boxes), 2)) for text, box, _ in lines]
    found = sum(c >= 0.95 for _, c in coverage)
    print(f"\n{name}: {found}/{len(lines)} visible text lines found; {len(boxes)} boxes")
    assert found >= min_found, coverage
    assert all(c >= 0.95 for (_, c), (_, _, phi) in zip(coverage, lines, strict=True) if phi), coverage
    assert all(not redacted[y0:y1, x0:x1].any() for _, (x0, y0, x1, y1), phi in lines if phi)
    assert _read(ocr_words(redacted, DEMO_CHECK), tokens) == set()
    blacked = sum(b.width * b.height for b in boxes) / (image.shape[0] * image.shape[1])
    assert blacked < 0.15, f"{blacked:.1%} of the image blacked out"


@needs_ocr
def test_demo_image_without_text_is_mostly_untouched():
    image = _dicom_rgb("color-px.dcm")  # a colour Doppler frame with no burned-in text
    redacted, boxes = redact_text(image)
    changed = (redacted != image).any(axis=-1).mean()
    assert changed < 0.05, f"{changed:.1%} changed by {len(boxes)} boxes"


@needs_ocr
def test_time_per_512_image(synthetic, record_property):
    *_rest, seconds = synthetic
    print(f"\nredact_text on 512x512: {seconds:.2f} s")  # reported, not asserted
    record_property("seconds_per_512_image", round(seconds, 3))


def test_missing_binary_raises_with_install_hint(monkeypatch):
    monkeypatch.setattr(pixels.shutil, "which", lambda _name: None)
    assert not ocr_available()
    image = np.zeros((32, 32), np.uint8)
    for call in (find_text, redact_text):
        with pytest.raises(OcrUnavailable, match="tesseract-ocr"):
            call(image)


def test_binary_that_does_not_run_is_unavailable(monkeypatch):
    monkeypatch.setattr(pixels.shutil, "which", lambda _name: "/bin/false")
    assert not ocr_available()
    with pytest.raises(OcrUnavailable, match="apt-get install tesseract-ocr"):
        find_text(np.zeros((32, 32), np.uint8))


def test_text_box_repr_leaves_out_what_was_read():
    box = TextBox(1, 2, 30, 14, "DOE^JANE", 91.0)
    assert "DOE" not in repr(box) and "DOE" not in str(box)
    assert box.bbox == (1, 2, 30, 14) and box.width == 29 and box.height == 12


@pytest.mark.parametrize(
    "bad", [np.zeros((8, 8), np.uint16), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8), float), [[0, 1]]]
)
def test_only_8_bit_grey_or_rgb_is_accepted(bad):
    with pytest.raises(ValueError):
        pixels._grey(bad)
