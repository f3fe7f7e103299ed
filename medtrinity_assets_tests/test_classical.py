"""The classical fallback's uptake (nuclear medicine, PET): focal hot spots against the tissue
around them, scored against planted truth and looked for on a real bone scintigram."""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy import ndimage

from medtrinity_assets.demo.planted import generate_planted, match_roi
from medtrinity_assets.rois.candidates import predicted_candidates
from medtrinity_assets.rois.config import RoiConfig
from medtrinity_assets.segmentation import classical_segment


def test_uptake_is_the_hot_spot_not_the_rim_nor_the_body_it_encloses():
    """A hot rim round a body of background activity and a hot spot with a cold centre inside: the
    spot is uptake (its centre filled); the rim, a ribbon along the outline, and the body are not."""
    yy, xx = np.mgrid[0:200, 0:200]
    r = np.hypot(yy - 100, xx - 100)
    image = np.where(r < 80, 90.0, 10.0)
    image[(r >= 72) & (r < 80)] = 230  # the rim
    spot = np.hypot(yy - 90, xx - 120)
    image[spot < 9] = 230
    image[spot < 3] = 90  # a cold centre of the spot: a small hole, filled
    image += np.random.default_rng(0).normal(0, 4, image.shape)
    mask = classical_segment(np.clip(image, 0, 255).astype(np.uint8), "nuclear medicine")
    labels, n = ndimage.label(mask)
    assert n == 1 and mask[90, 120] and not mask[100, 24] and not mask[176, 100] and not mask[130, 100]
    assert abs(int(mask.sum()) - int((spot < 9).sum())) < 0.2 * (spot < 9).sum()


def _planted_scores(n: int, seed: int) -> tuple[float, float]:
    """(recall of the hot lesions, share of regions that are no lesion) of the classical fallback's
    regions (as the ROI stage cuts them) on ``n`` planted images."""
    cfg, hot, found, rois, noise = RoiConfig(), 0, 0, 0, 0
    for im in generate_planted(n, seed=seed):
        h, w = im.image.shape
        truths, hit = [lesion.mask for lesion in im.lesions], set()
        for c in predicted_candidates(classical_segment(im.image, "nuclear medicine"), "classical", cfg, Counter()):
            full = np.zeros((h, w), bool)
            full[c.window[0] : c.window[1], c.window[2] : c.window[3]] = c.crop
            rr, cc = np.nonzero(full)
            k = match_roi(full, [(cc.mean() + 0.5) / w, (rr.mean() + 0.5) / h], truths)
            rois, noise = rois + 1, noise + (k is None)
            hit |= {k} - {None}
        hot_ids = {k for k, lesion in enumerate(im.lesions) if lesion.polarity > 0}
        hot, found = hot + len(hot_ids), found + len(hit & hot_ids)
    return found / hot, noise / max(rois, 1)


def test_planted_hot_lesions_are_found_and_few_regions_are_noise():
    """On planted phantoms (a bright rim, brighter and darker tissue regions, speckle) most hot
    lesions are found and most regions are lesions: 0.67 and 0.14 here, where the hottest Otsu class
    gave 0.52 and 0.81 (the rim and the brighter tissue were regions). Lesions under the ROI stage's
    area floor cannot be found, and cold ones are not uptake."""
    recall, noise = _planted_scores(24, seed=3)
    assert recall >= 0.55 and noise <= 0.25


def test_bone_scan_uptake_is_focal_not_the_skeleton():
    """A real whole-body bone scintigram (pydicom's test file): the hottest spot (the bladder) is
    uptake, and the regions are focal: a few, covering a small share of the body."""
    import pydicom
    from pydicom.data import get_testdata_file

    counts = pydicom.dcmread(get_testdata_file("JPEG-LL.dcm")).pixel_array.astype(float)
    image = np.round(255 * (counts - counts.min()) / (counts.max() - counts.min())).astype(np.uint8)
    mask = classical_segment(image, "nuclear medicine")
    hottest = np.unravel_index(np.argmax(ndimage.gaussian_filter(counts, 3)), counts.shape)
    body = ndimage.gaussian_filter(image.astype(float), 1) > 20
    assert mask[hottest] and ndimage.label(mask)[1] <= 4 and mask.sum() < 0.1 * body.sum()
