"""Near-duplicate index benchmark (issue 15): ingestion's per-source index with pHash bands
against the same index comparing every kept image (what it did before), side by side.

Random 64-bit hashes (distinct images; a planted share of one-to-four-bit neighbours from other
files) are looked up and kept one by one, as ingestion does; the figures are lookups per second
and the growth of the time per image from the smallest to the largest size.

    python benchmarks/dedup.py [--sizes 16000 64000 256000] [--near 0.02]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from medtrinity_assets.ingest.dedup import NearDuplicateIndex

THUMB = np.zeros((16, 16), np.uint8)


def hashes(n: int, near: float, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    out = [int(h) for h in rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)]
    for i in rng.choice(np.arange(1, n), int(n * near), replace=False):
        src = out[int(rng.integers(0, i))]
        for b in rng.choice(64, int(rng.integers(1, 5)), replace=False):
            src ^= 1 << int(b)
        out[int(i)] = src
    return out


def run(values: list[int], banded: bool) -> tuple[float, int]:
    index = NearDuplicateIndex(4)
    if not banded:
        index._candidates = lambda ph, m: np.arange(m)  # the baseline: every kept image
    dups = 0
    start = time.perf_counter()
    for i, ph in enumerate(values):
        if index.find(f"s{i}", ph, i, THUMB)[0] is None:
            index.add(f"r{i}", f"s{i}", ph, i, THUMB)
        else:
            dups += 1
    return time.perf_counter() - start, dups


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16_000, 64_000, 256_000])
    parser.add_argument("--near", type=float, default=0.02)
    args = parser.parse_args()
    per_image: dict[str, list[float]] = {"banded": [], "full scan (baseline)": []}
    print(f"{'images':>9} {'index':>22} {'seconds':>9} {'lookups/s':>11} {'dups':>6}")
    for n in args.sizes:
        values = hashes(n, args.near)
        found = set()
        for name, banded in (("banded", True), ("full scan (baseline)", False)):
            seconds, dups = run(values, banded)
            found.add(dups)
            per_image[name].append(seconds / n)
            print(f"{n:>9,} {name:>22} {seconds:>9.2f} {n / seconds:>11,.0f} {dups:>6}")
        assert len(found) == 1, "the banded index must find what the full scan finds"
    for name, costs in per_image.items():
        print(f"{name}: time per image grows {costs[-1] / costs[0]:.2f}x from {args.sizes[0]:,} to {args.sizes[-1]:,}")


if __name__ == "__main__":
    main()
