"""Imaging readers per layout (dicom, nifti_msd, image_folder, table) with safe decode."""

from medtrinity_assets.imaging.common import (
    REASONS,
    InputRejected,
    SourceRootMissing,
    Volume,
    direction_letter,
    read_pil,
    resolve_inside,
    scrub_text,
)
from medtrinity_assets.imaging.dicom import IDENTIFYING_KEYWORDS, dicom_identifier_values

__all__ = [
    "IDENTIFYING_KEYWORDS",
    "REASONS",
    "InputRejected",
    "SourceRootMissing",
    "Volume",
    "dicom_identifier_values",
    "direction_letter",
    "read_pil",
    "resolve_inside",
    "scrub_text",
]
