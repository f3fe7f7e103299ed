"""Duplicate detection: sha256 for exact copies, a 64-bit DCT perceptual hash plus a thumbnail
correlation for near duplicates, and the index the pipeline keeps of what it has kept."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import numpy as np
from PIL import Image

NEAR_DUP_MIN_CORR = 0.97  # Pearson correlation of 16x16 thumbnails a near duplicate must reach as well
BANDS = ((0, 13), (13, 26), (26, 39), (39, 52), (52, 64))  # bit ranges of a 64-bit pHash
BANDED_MAX_DISTANCE = len(BANDS) - 1  # two hashes this close share a band (pigeonhole)
Thumb = np.ndarray | Callable[[], np.ndarray]  # a 16x16 thumbnail, or what makes it when needed


def phash_bands(ph: int) -> list[tuple[int, int]]:
    """``(band, value)`` of each of the five bands of a 64-bit pHash."""
    ph = int(ph)
    return [(i, (ph >> lo) & ((1 << (hi - lo)) - 1)) for i, (lo, hi) in enumerate(BANDS)]


def grey32(image: np.ndarray) -> np.ndarray:
    """32x32 grey thumbnail (box filter) as float64."""
    im = Image.fromarray(image)
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im.resize((32, 32), Image.Resampling.BOX), np.float64)


def _dct_rows(n: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the orthonormal DCT-II matrix of size ``n``: ``D @ x`` equals
    ``scipy.fft.dct(x, norm="ortho")[:keep]`` (kept in numpy so that pool workers need no scipy)."""
    k = np.arange(keep)[:, None]
    i = np.arange(n)[None, :]
    d = np.sqrt(2.0 / n) * np.cos(np.pi * k * (2 * i + 1) / (2 * n))
    d[0] /= np.sqrt(2.0)
    return d


_DCT_32_8 = _dct_rows(32, 8)


def phash_bits(grey32: np.ndarray) -> int:
    # the 8x8 lowest 2D DCT-II frequencies; rounding drops float noise (a flat image has AC 0)
    coeffs = np.round((_DCT_32_8 @ grey32 @ _DCT_32_8.T).ravel(), 6)
    med = np.partition(coeffs[1:], 31)[31:33].mean()  # median of the 63 AC coefficients
    value = 0
    for b in (coeffs > med).tolist():
        value = (value << 1) | b
    return value


def phash(image: np.ndarray) -> int:
    """64-bit perceptual hash: DCT of a 32x32 grey thumbnail, 8x8 low frequencies vs their median."""
    return phash_bits(grey32(image))


def hamming(a: int | str, b: int | str) -> int:
    a = int(a, 16) if isinstance(a, str) else a
    b = int(b, 16) if isinstance(b, str) else b
    return (a ^ b).bit_count()


def thumb16(grey32: np.ndarray) -> np.ndarray:
    """16x16 grey thumbnail (2x2 means of the 32x32 one) for the near-duplicate check."""
    return np.rint(grey32.reshape(16, 2, 16, 2).mean(axis=(1, 3))).astype(np.uint8)


def thumb_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two thumbnails (1.0 when both are flat and equal)."""
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    if den == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(x @ y) / den


class NearDuplicateIndex:
    """The kept images of a source: exact (sha256) and near (pHash + thumbnail) duplicate lookup.

    Near duplicates are looked for only across groups (files): the slices, frames or channels
    of one file are never near duplicates of each other, only exact ones. Candidates come from
    pHash bands when ``max_distance`` is at most 4 (two hashes within 4 bits share one of five
    bands, so nothing is missed), so a lookup costs the images in its bands, not all of them;
    a larger distance compares with every kept image. A thumbnail may be given as a function
    that makes it: it is then made only when a pHash neighbour needs it (once).
    """

    def __init__(self, max_distance: int | None = 4, capacity: int = 256) -> None:
        self.max_distance = max_distance
        self._by_band: dict[tuple[int, int], list[int]] = defaultdict(list)
        self._sha: dict[str, str] = {}
        self._ph = np.zeros(capacity, np.uint64)
        self._grp = np.zeros(capacity, np.int64)
        self._thumbs = np.zeros((capacity, 16, 16), np.uint8)
        self._lazy: dict[int, Callable[[], np.ndarray]] = {}  # thumbnails not made yet, by index
        self._ids: list[str] = []

    def find(self, sha256: str, ph: int, group: int, thumb: Thumb) -> tuple[str | None, str]:
        """``(kept record id, reason)`` of the image this one duplicates, or ``(None, "")``."""
        hit = self._sha.get(sha256)
        if hit is not None:
            return hit, "exact_duplicate: identical pixels"
        m = len(self._ids)
        if self.max_distance is None or not m:
            return None, ""
        idx = self._candidates(ph, m)
        dist = np.bitwise_count(self._ph[idx] ^ np.uint64(ph))
        for j in np.nonzero((dist <= self.max_distance) & (self._grp[idx] != group))[0]:
            i = int(idx[j])
            thumb = thumb() if callable(thumb) else thumb
            if thumb_corr(self._thumb(i), thumb) >= NEAR_DUP_MIN_CORR:
                return self._ids[i], f"near_duplicate: phash distance {int(dist[j])}"
        return None, ""

    def _thumb(self, i: int) -> np.ndarray:
        make = self._lazy.pop(i, None)
        if make is not None:
            self._thumbs[i] = make()
        return self._thumbs[i]

    def _candidates(self, ph: int, m: int) -> np.ndarray:
        """Indices of the kept images that may be within ``max_distance`` (in the order kept)."""
        if self.max_distance is None or self.max_distance > BANDED_MAX_DISTANCE:
            return np.arange(m)
        hits = {i for band in phash_bands(ph) for i in self._by_band.get(band, ())}
        return np.asarray(sorted(hits), np.int64)  # np.unique costs ~10x more on these few indices

    def add(self, record_id: str, sha256: str, ph: int, group: int, thumb: Thumb) -> None:
        m = len(self._ids)
        if m == len(self._ph):
            cap = 2 * m
            self._ph = np.resize(self._ph, cap)
            self._grp = np.resize(self._grp, cap)
            self._thumbs = np.resize(self._thumbs, (cap, 16, 16))
        self._ph[m], self._grp[m] = ph, group
        if callable(thumb):
            self._lazy[m] = thumb
        else:
            self._thumbs[m] = thumb
        self._sha[sha256] = record_id
        self._ids.append(record_id)
        for band in phash_bands(ph):
            self._by_band[band].append(m)
