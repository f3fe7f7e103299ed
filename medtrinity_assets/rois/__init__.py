"""Stage 2, ROI locating: region geometry per image from masks, boxes, expert models or the whole
image, COCO RLE, measured attributes (position, size, intensity, texture, shape, relations)
and overlays."""

from medtrinity_assets.rois.build import RoiSetResult, build_roi_set
from medtrinity_assets.rois.config import RoiConfig, default_config
from medtrinity_assets.rois.measure import measure_roi
from medtrinity_assets.rois.overlay import draw_roi_overlay
from medtrinity_assets.rois.rle import rle_decode, rle_encode

__all__ = [
    "RoiConfig",
    "RoiSetResult",
    "build_roi_set",
    "default_config",
    "draw_roi_overlay",
    "measure_roi",
    "rle_decode",
    "rle_encode",
]
