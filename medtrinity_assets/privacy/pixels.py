"""Burned-in text (PHI in pixels): find text in an 8-bit image with Tesseract and black it out.

Ultrasound frames, DICOM secondary captures and screenshots carry names, dates and institutions
in their pixels. :func:`find_text` runs Debian's ``tesseract`` binary over a few renderings of
the image (:data:`PASSES`), keeps words that read like text, grows them into whole lines and
pads them; :func:`redact_text` returns a copy with those boxes filled black.

What the OCR reads is PHI: it is never logged, and :attr:`TextBox.text` (kept only so tests can
check what was read) is left out of ``repr``. Pass only the boxes' geometry downstream. Images
reach Tesseract on stdin, so no copy of them is written to disk.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image
from scipy import ndimage

TESSERACT = "tesseract"
INSTALL_HINT = "install Debian's tesseract-ocr (apt-get install tesseract-ocr)"
PROBE_TIMEOUT_S = 10.0
OCR_TIMEOUT_S = 30.0

# Chosen by measurement on synthetic sector scans and screenshots (names, dates, IDs and
# institutions in 4 fonts at 9-14 px, grey and coloured, on black and on header bands) and on
# pydicom's demo ultrasounds: 286/286 text lines covered when tuned, 176/176 on 40 fresh images,
# with under 1.5% of a synthetic scan blacked out by mistake (colour Doppler is the weak spot:
# ~5% of US1_J2KR's scan area); about 0.5 s per 512x512 image.
UPSCALE_BELOW = 1024  # images whose longer side is under this are upscaled before OCR
UPSCALE = 2
TOPHAT_SIZE = 7  # px; a white top-hat this wide keeps strokes up to ~6 px, drops bands and tissue
TOPHAT_INK = 50  # a top-hat level this high is ink; speckle stays under it (99.9th pct 42-70)
MIN_ALNUM = 2
MIN_CONFIDENCE = 20.0  # for a word on a flat background (see _on_flat_background)
MIN_CONFIDENCE_TEXTURED = 70.0  # for a word over image content
MAX_MIDTONES = 0.3  # share of a word box's pixels between its background and its ink
MIN_CONTRAST = 30  # grey levels between a word box's 5th and 95th percentiles
MIN_HEIGHT, MAX_HEIGHT = 5, 80  # a word's height in source pixels
MERGE_GAP = 2.5  # words on one line merge across gaps of up to this many line heights
GROW_HEIGHT = (0.5, 2.0)  # a neighbour joins a line when its height is within these factors
GROW_WIDTH = 2.5  # ... and it is at most this many line heights wide
MIN_AGREEMENT = 0.3  # IoU with another pass's word that confirms a low-confidence word
MIN_CONFIDENCE_ALONE = 60.0  # for a word on a flat background that no other pass confirms
GROW_MIN_CONFIDENCE = 50.0  # only words this confident start growing a line
PAD = 3  # pixels added on every side of a box


@dataclass(frozen=True)
class OcrPass:
    """One Tesseract run. The image is inverted first with ``inverted`` (dark text turns light);
    with ``tophat`` only its light thin strokes are kept (white top-hat) and shown dark on white."""

    psm: int
    tophat: bool = False
    inverted: bool = False


#: The inverted image with automatic page segmentation, the image as sparse text (between them,
#: text of either polarity on flat backgrounds), and its light strokes as sparse text (text on
#: bands, gradients and tissue).
PASSES: tuple[OcrPass, ...] = (
    OcrPass(psm=3, inverted=True),
    OcrPass(psm=11),
    OcrPass(psm=11, tophat=True),
)


class OcrUnavailable(RuntimeError):
    """The ``tesseract`` binary is missing or does not run."""


class OcrFailed(RuntimeError):
    """Tesseract ran but failed or timed out: the image was not checked."""


@dataclass(frozen=True)
class TextBox:
    """A text region in source pixel coordinates: ``x0 <= x < x1``, ``y0 <= y < y1``.

    ``text`` is what the OCR read (PHI): it exists for tests only and is excluded from ``repr``.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    text: str = field(repr=False, compare=False)
    confidence: float = 0.0

    @property
    def height(self) -> int:
        """The box's height in pixels."""
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        """The box's width in pixels."""
        return self.x1 - self.x0

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``: the only part of a box to pass downstream."""
        return (self.x0, self.y0, self.x1, self.y1)


# -- the binary -------------------------------------------------------------------------------


@functools.cache
def _runs(path: str) -> bool:
    try:
        done = subprocess.run([path, "--version"], capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _binary() -> str | None:
    path = shutil.which(TESSERACT)
    return path if path is not None and _runs(path) else None


def ocr_available() -> bool:
    """Whether the ``tesseract`` binary is on ``PATH`` and runs (the probe is cached per path)."""
    return _binary() is not None


def _require_binary() -> str:
    path = _binary()
    if path is None:
        raise OcrUnavailable(f"the tesseract OCR binary was not found or does not run: {INSTALL_HINT}")
    return path


def _tesseract_tsv(binary: str, png: bytes, psm: int) -> str:
    """Tesseract's TSV for one PNG, fed on stdin; one OCR thread (faster for small images)."""
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    cmd = [binary, "stdin", "stdout", "-l", "eng", "--psm", str(psm), "tsv"]
    try:
        done = subprocess.run(
            cmd, input=png, capture_output=True, timeout=OCR_TIMEOUT_S, env=env, check=False
        )
    except subprocess.TimeoutExpired:  # its partial output may hold PHI: do not chain it
        raise OcrFailed(f"tesseract timed out after {OCR_TIMEOUT_S:.0f} s") from None
    except OSError as exc:
        raise OcrUnavailable(f"the tesseract OCR binary could not be run: {INSTALL_HINT}") from exc
    if done.returncode != 0:  # stderr may echo what was read: never put it in the message
        raise OcrFailed(f"tesseract exited with status {done.returncode}")
    return done.stdout.decode("utf-8", errors="replace")


# -- rendering and reading --------------------------------------------------------------------


def _grey(image: np.ndarray) -> np.ndarray:
    """``image`` as a 2-D uint8 array (ITU-R 601 luma for RGB); ``ValueError`` for other inputs."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError("expected a uint8 numpy array")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    raise ValueError(f"expected an (h, w) or (h, w, 3) image, got shape {image.shape}")


def _upscaled(grey: np.ndarray, scale: int) -> np.ndarray:
    if scale == 1:
        return grey
    img = Image.fromarray(grey)
    return np.asarray(img.resize((img.width * scale, img.height * scale), Image.Resampling.BICUBIC))


def _render(grey: np.ndarray, ocr_pass: OcrPass, scale: int) -> np.ndarray:
    """What Tesseract reads for one pass, upscaled ``scale`` times.

    A top-hat pass is binarised here at a fixed level (ink: strokes :data:`TOPHAT_INK` above
    their surroundings) rather than by Tesseract's global Otsu threshold, which on an image
    without text would turn speckle into ink and read words in it.
    """
    img = 255 - grey if ocr_pass.inverted else grey
    if not ocr_pass.tophat:
        return _upscaled(img, scale)
    strokes = _upscaled(ndimage.white_tophat(img, size=(TOPHAT_SIZE, TOPHAT_SIZE)), scale)
    return np.where(strokes >= TOPHAT_INK, 0, 255).astype(np.uint8)


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _words(tsv: str, scale: int) -> list[TextBox]:
    """Word rows (level 5) of a TSV with some text, in source pixel coordinates."""
    out = []
    for line in tsv.splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) < 12 or cols[0] != "5" or not cols[11].strip():
            continue
        try:
            left, top, width, height = (int(c) for c in cols[6:10])
            conf = float(cols[10])
        except ValueError:
            continue
        x1, y1 = -(-(left + width) // scale), -(-(top + height) // scale)
        out.append(TextBox(left // scale, top // scale, x1, y1, cols[11].strip(), conf))
    return out


def _read_passes(image: np.ndarray, passes: Sequence[OcrPass], upscale: int | None) -> list[list[TextBox]]:
    binary = _require_binary()
    grey = _grey(image)
    scale = upscale or (UPSCALE if max(grey.shape) < UPSCALE_BELOW else 1)
    return [
        _words(_tesseract_tsv(binary, _png(_render(grey, ocr_pass, scale)), ocr_pass.psm), scale)
        for ocr_pass in passes
    ]


def ocr_words(
    image: np.ndarray, passes: Sequence[OcrPass] | None = None, upscale: int | None = None
) -> list[TextBox]:
    """Every word Tesseract reports over ``passes`` (default :data:`PASSES`), unfiltered and unmerged.

    The raw material of :func:`find_text`; with more passes, also a check of a redaction that is
    more sensitive than :func:`find_text` itself. ``upscale`` defaults to :data:`UPSCALE` for
    images under :data:`UPSCALE_BELOW` pixels. Raises :class:`OcrUnavailable` without the binary.
    """
    by_pass = _read_passes(image, PASSES if passes is None else passes, upscale)
    return [w for words in by_pass for w in words]


# -- from words to lines ----------------------------------------------------------------------


def _on_flat_background(grey: np.ndarray, box: TextBox) -> bool:
    """Ink on a flat background: contrast, and few pixels between background and ink (speckle
    and tissue are a continuum of grey levels; burned-in text is two levels plus anti-aliasing)."""
    patch = grey[box.y0 : box.y1, box.x0 : box.x1].astype(np.float32)
    if patch.size == 0:
        return False
    lo, hi = np.percentile(patch, (5, 95))
    if hi - lo < MIN_CONTRAST:
        return False
    mid = (patch > lo + 0.25 * (hi - lo)) & (patch < lo + 0.75 * (hi - lo))
    return float(mid.mean()) <= MAX_MIDTONES


def _is_text(grey: np.ndarray, box: TextBox) -> bool:
    """Enough letters or digits, a text-like height, and confident enough for its background."""
    if sum(ch.isalnum() for ch in box.text) < MIN_ALNUM or not MIN_HEIGHT <= box.height <= MAX_HEIGHT:
        return False
    if box.confidence >= MIN_CONFIDENCE_TEXTURED:
        return True
    return box.confidence >= MIN_CONFIDENCE and _on_flat_background(grey, box)


def _corroborated(box: TextBox, others: np.ndarray) -> bool:
    """Whether ``others`` (``(n, 4)`` boxes another pass read letters or digits in) overlap
    ``box`` by an intersection over union above :data:`MIN_AGREEMENT`."""
    if len(others) == 0:
        return False
    iw = np.clip(np.minimum(others[:, 2], box.x1) - np.maximum(others[:, 0], box.x0), 0, None)
    ih = np.clip(np.minimum(others[:, 3], box.y1) - np.maximum(others[:, 1], box.y0), 0, None)
    inter = iw * ih
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return bool((inter > MIN_AGREEMENT * (box.width * box.height + areas - inter)).any())


def _seeds(grey: np.ndarray, by_pass: Sequence[Sequence[TextBox]]) -> list[TextBox]:
    """Words that are text (:func:`_is_text`); below :data:`MIN_CONFIDENCE_ALONE`, only where
    another pass also read something (garbage read in image content depends on the rendering)."""
    boxes = [
        np.array([w.bbox for w in ws if any(c.isalnum() for c in w.text)]).reshape(-1, 4) for ws in by_pass
    ]
    seeds = []
    for i, words in enumerate(by_pass):
        others = np.concatenate([b for j, b in enumerate(boxes) if j != i] or [np.zeros((0, 4))])
        for w in words:
            if _is_text(grey, w) and (
                len(by_pass) == 1 or w.confidence >= MIN_CONFIDENCE_ALONE or _corroborated(w, others)
            ):
                seeds.append(w)
    return seeds


def _same_line(a: TextBox, b: TextBox) -> bool:
    """Overlapping, or side by side on one line with a gap of at most :data:`MERGE_GAP` heights."""
    overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
    if overlap_y < 0.5 * min(a.height, b.height):
        return False
    return max(a.x0, b.x0) - min(a.x1, b.x1) <= MERGE_GAP * min(a.height, b.height)


def _union(a: TextBox, b: TextBox) -> TextBox:
    left, right = (a, b) if a.x0 <= b.x0 else (b, a)
    return TextBox(
        min(a.x0, b.x0),
        min(a.y0, b.y0),
        max(a.x1, b.x1),
        max(a.y1, b.y1),
        f"{left.text} {right.text}".strip(),
        max(a.confidence, b.confidence),
    )


def merge_boxes(boxes: Iterable[TextBox]) -> list[TextBox]:
    """Boxes that overlap or sit side by side on one line, merged until none do; top to bottom."""
    pending = sorted(boxes, key=lambda b: (b.y0, b.x0))
    changed = True
    while changed:
        changed = False
        out: list[TextBox] = []
        for box in pending:
            for i, kept in enumerate(out):
                if _same_line(kept, box):
                    out[i], changed = _union(kept, box), True
                    break
            else:
                out.append(box)
        pending = sorted(out, key=lambda b: (b.y0, b.x0))
    return pending


def _joins(anchor: TextBox, word: TextBox) -> bool:
    """Whether ``word`` (any confidence) continues the line of ``anchor`` (a kept word): of a
    similar height, on the same line, and either a word space away or short and near."""
    ratio = word.height / max(anchor.height, 1)
    overlap_y = min(anchor.y1, word.y1) - max(anchor.y0, word.y0)
    if not (GROW_HEIGHT[0] <= ratio <= GROW_HEIGHT[1] and overlap_y >= 0.5 * word.height):
        return False
    gap = max(anchor.x0, word.x0) - min(anchor.x1, word.x1)
    if gap <= anchor.height:
        return True
    return gap <= MERGE_GAP * anchor.height and word.width <= GROW_WIDTH * anchor.height


def _grow(grey: np.ndarray, seeds: list[TextBox], words: Iterable[TextBox]) -> list[TextBox]:
    """``seeds`` and the words next to them on their lines, whatever their confidence or length
    ("A" of "SMITH, JOHN A", "GARCIA^" of "GARCIA^MARIA"), word by word from confident seeds.

    Only words on a flat background join a line (and only they or very confident words start
    one), so a line never grows into image content; comparing word with word keeps one tall
    misread from stretching a line.
    """
    anchors = [
        w
        for w in seeds
        if w.confidence >= MIN_CONFIDENCE_TEXTURED
        or (w.confidence >= GROW_MIN_CONFIDENCE and _on_flat_background(grey, w))
    ]
    rest = [w for w in words if MIN_HEIGHT <= w.height <= MAX_HEIGHT]
    grown: list[TextBox] = []
    while anchors:
        new = [w for w in rest if any(_joins(a, w) for a in anchors) and _on_flat_background(grey, w)]
        taken = {id(w) for w in new}
        rest = [w for w in rest if id(w) not in taken]
        grown += new
        anchors = new
    return seeds + grown


def _pad(box: TextBox, shape: tuple[int, ...]) -> TextBox:
    h, w = shape[:2]
    return replace(
        box,
        x0=max(0, box.x0 - PAD),
        y0=max(0, box.y0 - PAD),
        x1=min(w, box.x1 + PAD),
        y1=min(h, box.y1 + PAD),
    )


def _lines(image: np.ndarray, by_pass: Sequence[Sequence[TextBox]]) -> list[TextBox]:
    """The text lines in the words of each pass, padded by :data:`PAD`."""
    grey = _grey(image)
    seeds = _seeds(grey, by_pass)
    taken = {id(w) for w in seeds}
    others = [w for words in by_pass for w in words if id(w) not in taken]
    return [_pad(b, image.shape) for b in merge_boxes(_grow(grey, seeds, others))]


# -- the API ----------------------------------------------------------------------------------


def find_text(image: np.ndarray) -> list[TextBox]:
    """Text lines in an ``(h, w)`` grey or ``(h, w, 3)`` RGB uint8 image, padded by :data:`PAD`.

    Keeps words with at least :data:`MIN_ALNUM` letters or digits, a text-like height and a
    confidence of :data:`MIN_CONFIDENCE` on a flat background or :data:`MIN_CONFIDENCE_TEXTURED`
    over image content, then joins neighbouring words on their lines. Raises
    :class:`OcrUnavailable` when the ``tesseract`` binary is missing, :class:`OcrFailed` when it
    fails, and ``ValueError`` for other arrays.
    """
    return _lines(image, _read_passes(image, PASSES, None))


def redact_text(image: np.ndarray) -> tuple[np.ndarray, list[TextBox]]:
    """A copy of ``image`` with every :func:`find_text` box filled black, and the boxes.

    The input is never modified. Raises as :func:`find_text` does.
    """
    boxes = find_text(image)
    out = np.array(image, copy=True)
    for b in boxes:
        out[b.y0 : b.y1, b.x0 : b.x1] = 0
    return out, boxes
