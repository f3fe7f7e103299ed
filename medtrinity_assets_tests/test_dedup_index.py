"""The banded near-duplicate index finds exactly what comparing with every kept image finds."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from medtrinity_assets.ingest.dedup import NearDuplicateIndex

THUMB = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every near pair also passes the thumbnail check


def _flip(ph: int, bits: list[int]) -> int:
    for b in bits:
        ph ^= 1 << b
    return ph


@settings(max_examples=60, deadline=None)
@given(
    base=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=40),
    flips=st.lists(st.lists(st.integers(0, 63), max_size=6), min_size=1, max_size=20),
    distance=st.integers(0, 4),
)
def test_banded_lookup_matches_a_full_scan(base, flips, distance):
    banded, full = NearDuplicateIndex(distance), NearDuplicateIndex(distance)
    full._candidates = lambda ph, m: np.arange(m)  # the reference: every kept image
    for i, ph in enumerate(base):
        for index in (banded, full):
            if index.find(f"s{i}", ph, i, THUMB)[0] is None:
                index.add(f"r{i}", f"s{i}", ph, i, THUMB)
    for j, bits in enumerate(flips):
        query = _flip(base[j % len(base)], bits)
        group = 10_000 + j  # another file than every kept image
        assert banded.find(f"q{j}", query, group, THUMB) == full.find(f"q{j}", query, group, THUMB)


def test_larger_distances_compare_with_every_kept_image():
    index = NearDuplicateIndex(max_distance=8)
    index.add("r0", "s0", 0, 0, THUMB)
    assert index.find("s1", (1 << 8) - 1, 1, THUMB) == ("r0", "near_duplicate: phash distance 8")
