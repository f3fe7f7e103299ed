"""The ROI stage's thresholds and parameters, read from ``roi_config.yaml``.

Every threshold that turns a measured number into a word lives in ``roi_config.yaml`` (loaded
into :class:`RoiConfig`), never in code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from medtrinity_assets.core.vocabulary import canonical_modality

DEFAULT_CONFIG_PATH = Path(__file__).with_name("roi_config.yaml")


@dataclass(frozen=True)
class RoiConfig:
    """Thresholds and parameters of the ROI stage (see ``roi_config.yaml`` for each meaning)."""

    # geometry: what counts as a structure
    min_area_px: int = 24
    min_area_fraction: float = 0.0002
    predicted_min_area_px: int = 64
    predicted_min_area_fraction: float = 0.002
    min_component_share: float = 0.1
    fragment_min_components: int = 5
    split_min_solidity: float = 0.75
    split_max_neck: float = 0.7
    connectivity_8: bool = True
    # position
    lower_third: float = 1 / 3
    upper_third: float = 2 / 3
    position_max_span: float = 0.6667
    # intensity
    ring_width_px: int = 5
    ring_gap_px: int = 1
    iso_contrast_max: float = 0.05
    # overrides of the vocabulary's [brighter, darker, similar] words, by canonical modality
    intensity_words: dict[str, list[str]] = field(default_factory=dict)
    # texture
    texture_levels: int = 32
    glcm_distance: int = 1
    homogeneity_min: float = 0.5
    entropy_max_homogeneous: float = 3.0
    contrast_max_smooth: float = 4.0
    texture_min_area_px: int = 16
    # shape
    irregular_solidity_max: float = 0.75
    lobulated_solidity_max: float = 0.9
    round_circularity_min: float = 0.8
    round_axis_ratio_min: float = 0.8
    shape_min_area_px: int = 80
    fill_hole_max_share: float = 0.25
    shape_named_for_classical: bool = False
    # relations
    inside_fraction: float = 0.9
    max_relations: int = 5
    diagonal_ratio: float = 0.5
    bordered_share: float = 0.5
    # classical fallback
    classical_modalities: tuple[str, ...] = (
        "microscopy",
        "histopathology",
        "nuclear medicine",
        "pet",
        "dermoscopy",
    )
    classical_smooth_sigma: float = 1.0
    classical_opening_radius: int = 1

    # YAML section/key -> dataclass field
    _YAML_MAP = {
        ("geometry", "min_area_px"): "min_area_px",
        ("geometry", "predicted_min_area_px"): "predicted_min_area_px",
        ("geometry", "min_area_fraction"): "min_area_fraction",
        ("geometry", "predicted_min_area_fraction"): "predicted_min_area_fraction",
        ("geometry", "min_component_share"): "min_component_share",
        ("geometry", "fragment_min_components"): "fragment_min_components",
        ("geometry", "split_min_solidity"): "split_min_solidity",
        ("geometry", "split_max_neck"): "split_max_neck",
        ("geometry", "connectivity_8"): "connectivity_8",
        ("position", "lower_third"): "lower_third",
        ("position", "upper_third"): "upper_third",
        ("position", "max_span"): "position_max_span",
        ("intensity", "ring_width_px"): "ring_width_px",
        ("intensity", "ring_gap_px"): "ring_gap_px",
        ("intensity", "iso_contrast_max"): "iso_contrast_max",
        ("intensity", "words"): "intensity_words",
        ("texture", "levels"): "texture_levels",
        ("texture", "glcm_distance"): "glcm_distance",
        ("texture", "homogeneity_min"): "homogeneity_min",
        ("texture", "entropy_max_homogeneous"): "entropy_max_homogeneous",
        ("texture", "contrast_max_smooth"): "contrast_max_smooth",
        ("texture", "min_area_px"): "texture_min_area_px",
        ("shape", "irregular_solidity_max"): "irregular_solidity_max",
        ("shape", "lobulated_solidity_max"): "lobulated_solidity_max",
        ("shape", "round_circularity_min"): "round_circularity_min",
        ("shape", "round_axis_ratio_min"): "round_axis_ratio_min",
        ("shape", "min_area_px"): "shape_min_area_px",
        ("shape", "fill_hole_max_share"): "fill_hole_max_share",
        ("shape", "named_for_classical"): "shape_named_for_classical",
        ("relations", "inside_fraction"): "inside_fraction",
        ("relations", "max_relations"): "max_relations",
        ("relations", "diagonal_ratio"): "diagonal_ratio",
        ("relations", "bordered_share"): "bordered_share",
        ("classical", "modalities"): "classical_modalities",
        ("classical", "smooth_sigma"): "classical_smooth_sigma",
        ("classical", "opening_radius"): "classical_opening_radius",
    }

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> RoiConfig:
        """Read a YAML file (default: the packaged ``roi_config.yaml``), then apply overrides.

        Overrides use the dataclass field names (``RoiConfig.load(ring_width_px=3)``).
        Unknown sections or keys raise ``ValueError`` naming them.
        """
        path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path.name}: expected a mapping of sections")
        values: dict[str, Any] = {}
        for section, body in raw.items():
            if not isinstance(body, dict):
                raise ValueError(f"{path.name}: section '{section}' must be a mapping")
            for key, value in body.items():
                name = cls._YAML_MAP.get((section, key))
                if name is None:
                    raise ValueError(f"{path.name}: unknown key '{section}.{key}'")
                values[name] = value
        values.update(overrides)
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown RoiConfig fields: {sorted(unknown)}")
        if "classical_modalities" in values:
            values["classical_modalities"] = tuple(
                canonical_modality(m) for m in values["classical_modalities"]
            )
        if "intensity_words" in values:
            words = {
                canonical_modality(k) if k != "default" else k: list(v)
                for k, v in values["intensity_words"].items()
            }
            for k, v in words.items():
                if len(v) != 3:
                    raise ValueError(f"intensity words for '{k}' must be [brighter, darker, similar]")
            values["intensity_words"] = words
        cfg = cls(**values)
        if not 0 < cfg.lower_third < cfg.upper_third < 1:
            raise ValueError("position thirds must satisfy 0 < lower_third < upper_third < 1")
        return cfg

    def with_overrides(self, **overrides: Any) -> RoiConfig:
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown RoiConfig fields: {sorted(unknown)}")
        return replace(self, **overrides)

    def floor(self, image_px: int, predicted: bool) -> int:
        """The smallest area (pixels) a region of an image of ``image_px`` pixels may have: the
        absolute floor or the share of the image, whichever is larger."""
        if predicted:
            return max(self.predicted_min_area_px, int(round(self.predicted_min_area_fraction * image_px)))
        return max(self.min_area_px, int(round(self.min_area_fraction * image_px)))


_DEFAULT: RoiConfig | None = None


def default_config() -> RoiConfig:
    """The packaged configuration (read once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = RoiConfig.load()
    return _DEFAULT

