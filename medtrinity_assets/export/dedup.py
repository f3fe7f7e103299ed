"""Duplicates across sources and images shared between splits or with an evaluation set.

Within a source, ingestion already keeps one copy of each image (sha256, and pHash with a
thumbnail check across files). Across sources the same image can arrive twice (a public set
mirrored into two collections): the first source in name order keeps it, the others' records
are dropped with their provenance. Candidates for near duplicates come from pHash bands (64 bits
in five bands: two hashes within 4 bits share a band), so the cost grows with the number of
close pairs, not with the square of the images; each is confirmed on 16x16 thumbnails.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from medtrinity_assets.ingest.dedup import BANDED_MAX_DISTANCE, NEAR_DUP_MIN_CORR, phash_bands, thumb_corr

MAX_DISTANCE = BANDED_MAX_DISTANCE


@dataclass(frozen=True)
class ImageRef:
    """One image of the export: who holds it, its hashes."""

    source: str
    record_id: str
    sha256: str
    phash: int


@dataclass(frozen=True)
class Match:
    """``image`` duplicates ``kept`` (exact, or near at a pHash distance)."""

    image: ImageRef
    kept: ImageRef
    reason: str


class PhashIndex:
    """Images by sha256 and by pHash band, for exact and near-duplicate lookups. A lookup gathers
    the (few) images sharing one of its five bands and compares their hashes at once in numpy,
    so its cost does not grow with the number of images indexed."""

    def __init__(self) -> None:
        self.by_sha: dict[str, ImageRef] = {}
        self.refs: list[ImageRef] = []
        self._hashes = np.zeros(1024, np.uint64)
        self.by_band: dict[tuple[int, int], list[int]] = defaultdict(list)

    def add(self, ref: ImageRef) -> None:
        self.by_sha.setdefault(ref.sha256, ref)
        i = len(self.refs)
        if i == len(self._hashes):
            self._hashes = np.resize(self._hashes, 2 * i)
        self._hashes[i] = np.uint64(ref.phash)
        self.refs.append(ref)
        for band in phash_bands(ref.phash):
            self.by_band[band].append(i)

    def near(self, ph: int, max_distance: int = MAX_DISTANCE) -> Iterable[tuple[ImageRef, int]]:
        """Indexed images within ``max_distance`` bits of ``ph`` (each once, nearest first)."""
        buckets = [b for b in (self.by_band.get(band) for band in phash_bands(ph)) if b]
        if not buckets:
            return []
        idx = np.unique(np.fromiter((i for b in buckets for i in b), np.int64))
        dist = np.bitwise_count(self._hashes[idx] ^ np.uint64(ph))
        keep = np.argsort(dist, kind="stable")[: int((dist <= max_distance).sum())]
        return [(self.refs[int(idx[k])], int(dist[k])) for k in keep]


def cross_source_duplicates(
    images: Iterable[ImageRef], thumb: Callable[[ImageRef], np.ndarray], max_distance: int = MAX_DISTANCE
) -> list[Match]:
    """Images that duplicate one kept from another source (``images`` in priority order)."""
    index, dropped = PhashIndex(), []
    for ref in images:
        exact = index.by_sha.get(ref.sha256)
        if exact is not None and exact.source != ref.source:
            dropped.append(Match(ref, exact, "exact_duplicate: identical pixels"))
            continue
        near = next(
            (
                (k, d)
                for k, d in index.near(ref.phash, max_distance)
                if k.source != ref.source and thumb_corr(thumb(k), thumb(ref)) >= NEAR_DUP_MIN_CORR
            ),
            None,
        )
        if near is not None:
            dropped.append(Match(ref, near[0], f"near_duplicate: phash distance {near[1]}"))
            continue
        index.add(ref)
    return dropped
