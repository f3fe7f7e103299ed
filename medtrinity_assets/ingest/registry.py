"""Source registry: one YAML file per source dataset, declared as data, never in code.

A registry folder holds ``<name>.yaml`` files. Each becomes one dynamic partition of the
per-source assets. Validation errors name the file and the field so that a user can fix them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medtrinity_assets.core.vocabulary import keeps_colour

NAME_RE = re.compile(r"^[a-z0-9_]+$")


class RegistryError(ValueError):
    """A registry file could not be read or does not follow the schema."""


class SliceConfig(BaseModel):
    """How volumes are cut into 2D slices."""

    model_config = ConfigDict(extra="forbid")
    axis: Literal["axial", "coronal", "sagittal", "auto"] = "auto"
    stride: int = Field(4, ge=1, description="keep every Nth informative slice outside labelled ones")
    min_std: float = Field(
        0.02, ge=0.0, description="slices whose normalised intensity std is below this are skipped"
    )


class WindowConfig(BaseModel):
    """Intensity mapping to 8 bit. CT uses a Hounsfield window; others use percentiles."""

    model_config = ConfigDict(extra="forbid")
    center: float | None = None
    width: float | None = None
    low_percentile: float = 0.5
    high_percentile: float = 99.5


class SourceSpec(BaseModel):
    """One source dataset as declared in the registry."""

    model_config = ConfigDict(extra="forbid")

    name: str
    layout: str = Field(description="a registered reader: dicom | nifti_msd | image_folder | table | plug-ins")
    root: str
    modality: str
    organ: str
    labels: dict[int, str] = Field(default_factory=dict)
    license: str
    synthetic: bool = False
    description: str = ""
    origin: str = ""
    include: list[str] = Field(default_factory=list, description="glob patterns relative to root")
    slicing: SliceConfig = Field(default_factory=SliceConfig)
    window: WindowConfig | None = None
    max_side: int = Field(512, ge=16, le=4096)
    max_pixels: int = Field(200_000_000, ge=1, description="decompression-bomb limit per image/volume")
    colour: bool | None = Field(None, description="keep RGB; default depends on modality")
    channels: list[int] | None = Field(
        None,
        description="4D NIfTI: which channels (MSD 'modality' indices, e.g. MRI sequences) become "
        "images; default every channel",
    )
    split: str = "train"
    expert_model: str | None = Field(None, description="path to user weights (safetensors/TorchScript)")
    expert_model_sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="refuse the weights unless their sha256 matches"
    )

    # Set by the loader, not by the user.
    registry_file: str = ""

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must match [a-z0-9_]+ (it is the partition key)")
        return v

    @field_validator("layout")
    @classmethod
    def _layout_ok(cls, v: str) -> str:
        from medtrinity_assets.ingest.readers import layouts

        known = layouts()
        if v not in known:
            raise ValueError(f"unknown layout {v!r}; known: {', '.join(known)}")
        return v

    @field_validator("modality")
    @classmethod
    def _modality_ok(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
        return v

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_ok(cls, v: Any) -> Any:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("must be a mapping of mask value -> label name")
        out = {}
        for key, name in v.items():
            try:
                ikey = int(key)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"mask value {key!r} is not an integer") from exc
            if ikey <= 0:
                raise ValueError(f"mask value {ikey} must be > 0 (0 is background)")
            out[ikey] = str(name)
        return out

    @property
    def is_remote(self) -> bool:
        return "://" in self.root

    def resolved_root(self) -> str:
        """The root as an absolute local path or an fsspec URL."""
        if self.is_remote:
            return self.root
        root = Path(self.root).expanduser()
        if not root.is_absolute() and self.registry_file:
            root = Path(self.registry_file).parent / root
        return str(root.resolve())

    @property
    def keeps_colour(self) -> bool:
        if self.colour is not None:
            return self.colour
        return keeps_colour(self.modality)

    def fingerprint(self) -> str:
        """Hash of the declaration: a change means the source's outputs are stale."""
        # fields left at their defaults are omitted, so a new optional field does not make every
        # existing declaration look changed
        payload = self.model_dump(exclude={"registry_file"}, exclude_defaults=True)
        return hashlib.sha256(yaml.safe_dump(payload, sort_keys=True).encode()).hexdigest()[:16]


def _format_validation_error(path: Path, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        field = ".".join(str(x) for x in e["loc"]) or "<file>"
        parts.append(f"{path.name}: field '{field}': {e['msg']}")
    return "; ".join(parts)


def load_source_file(path: str | Path) -> SourceSpec:
    """Read and validate one registry file; errors name the file and the field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path.name}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path.name}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RegistryError(f"{path.name}: expected a mapping of fields, got {type(raw).__name__}")
    raw = dict(raw)
    raw.pop("registry_file", None)
    try:
        spec = SourceSpec(**raw, registry_file=str(path.resolve()))
    except ValidationError as exc:
        raise RegistryError(_format_validation_error(path, exc)) from None
    return spec


def registry_files(registry_dir: str | Path) -> list[Path]:
    d = Path(registry_dir)
    if not d.is_dir():
        raise RegistryError(f"registry folder {d} does not exist")
    return sorted([*d.glob("*.yaml"), *d.glob("*.yml")])


def load_registry(registry_dir: str | Path, strict: bool = True) -> tuple[list[SourceSpec], list[str]]:
    """Load every source of a registry folder.

    Returns the valid specs and the error messages of the rejected files. With ``strict`` a
    single bad file raises. Two files declaring the same name are an error either way.
    """
    specs: list[SourceSpec] = []
    errors: list[str] = []
    seen: dict[str, Path] = {}
    for path in registry_files(registry_dir):
        try:
            spec = load_source_file(path)
        except RegistryError as exc:
            if strict:
                raise
            errors.append(str(exc))
            continue
        if spec.name in seen:
            msg = f"{path.name}: field 'name': '{spec.name}' is already declared by {seen[spec.name].name}"
            if strict:
                raise RegistryError(msg)
            errors.append(msg)
            continue
        seen[spec.name] = path
        specs.append(spec)
    return specs, errors


def find_source(registry_dir: str | Path, name: str) -> SourceSpec:
    """The spec of one source, by partition key."""
    specs, _ = load_registry(registry_dir, strict=False)
    for spec in specs:
        if spec.name == name:
            return spec
    raise RegistryError(f"source '{name}' is not declared (or not valid) in {registry_dir}")
