"""What a region's intensity is compared with: its surroundings, without background or other
tissue, and how regions of one image nest."""

from __future__ import annotations

import numpy as np

from medtrinity_assets.core.images import to_grey
from medtrinity_assets.rois.candidates import RoiCandidate
from medtrinity_assets.rois.config import RoiConfig
from medtrinity_assets.rois.measure import foreground_mask
from medtrinity_assets.rois.relations import bordering, containment


def _mask_crops(rois: list[RoiCandidate]) -> list[tuple[np.ndarray, tuple[int, int, int, int]] | None]:
    return [(r.crop, r.window) if r.status == "ok" and r.has_mask and r.crop is not None else None for r in rois]


def nesting(rois: list[RoiCandidate], cfg: RoiConfig) -> dict[tuple[int, int], str]:
    """Which ok mask regions of an image lie within which (see :func:`containment`)."""
    return containment(_mask_crops(rois), cfg)


def touching(rois: list[RoiCandidate], cfg: RoiConfig, nested: dict[tuple[int, int], str]) -> dict[tuple[int, int], str]:
    """``nested``, and which other ok mask regions of the image border which (see :func:`bordering`)."""
    return {**bordering(_mask_crops(rois), cfg, skip=nested), **nested}


class Surroundings:
    """What may count as a region's surroundings when its intensity is compared: the image's
    foreground (never the flat background around a body or a slide), only the labelled tissue
    when the image has a label map that reaches beyond the regions (grey matter against the
    white matter, not the CSF, skull or air), and for a region that lies within another only that other region's pixels
    (a lesion against its organ)."""

    def __init__(
        self,
        image: np.ndarray | None,
        rois: list[RoiCandidate],
        nested: dict,
        h: int,
        w: int,
        label_map: np.ndarray | None = None,
    ) -> None:
        self.rois, self.nested, self.shape = rois, nested, (h, w)
        self.fg: np.ndarray | None = None
        if image is None:
            return
        fg = foreground_mask(to_grey(image))
        options = [fg, np.ones(self.shape, bool)]  # the last: no distinct background
        self.fg = next((o for o in options if self._beyond_rois(o)), options[-1])
        labelled = label_map[label_map > 0] if label_map is not None else None
        if labelled is not None and labelled.size and bool((labelled != labelled[0]).any()):  # two labels or more
            # a tissue map (grey and white matter): each region against the other labelled tissue
            self.fg = fg & (label_map > 0)

    def _beyond_rois(self, fg: np.ndarray) -> bool:
        """Whether the foreground holds more than the regions (5% of the image at least)."""
        rest = fg.copy()
        for r in self.rois:
            if r.crop is not None and r.window is not None and r.origin != "whole_image":
                r0, r1, c0, c1 = r.window
                rest[r0:r1, c0:c1] &= ~r.crop
        return float(rest.mean()) >= 0.05

    def of(self, n: int) -> np.ndarray | None:
        if self.fg is None:
            return None
        holders = [j for (i, j), rel in self.nested.items() if i == n and rel == "lies within"]
        if not holders:
            return self.fg
        j = min(holders, key=lambda k: int(self.rois[k].crop.sum()))  # the closest holder
        r0, r1, c0, c1 = self.rois[j].window
        tissue = np.zeros(self.shape, bool)
        tissue[r0:r1, c0:c1] = self.rois[j].crop
        return tissue & self.fg
