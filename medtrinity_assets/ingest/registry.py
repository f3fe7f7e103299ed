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

NAME_RE = re.compile(r"[a-z0-9_]{1,64}")


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
    min_foreground: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="slices of a volume whose foreground (pixels above a tenth of the intensity "
        "range) is under this share of the fullest slice's are skipped, labelled or not: the edge "
        "of a volume, where a label is a speck on an empty slice",
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
    root: str = Field(max_length=4096)
    modality: str = Field(max_length=100)
    organ: str = Field(max_length=200)
    labels: dict[int, str] = Field(default_factory=dict, max_length=10_000)
    mask_colours: dict[int, tuple[int, int, int]] | None = Field(
        None,
        max_length=1_000,
        description="RGB masks: mask value -> [r, g, b]; each colour is its own label (an RGB mask "
        "without this map is quarantined, since its colours cannot be told apart as labels)",
    )
    license: str = Field(max_length=500)
    synthetic: bool = False
    description: str = Field("", max_length=4000)
    origin: str = Field("", max_length=2000)
    include: list[str] = Field(default_factory=list, max_length=200, description="glob patterns relative to root")
    watch_files: bool = Field(
        True,
        description="a new, changed or removed file under a local root re-runs the source (registry "
        "sensor); false: only an edited declaration does (e.g. for a root of millions of files)",
    )
    shard_size: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="images per shard: a larger source is built in shards of about this many images "
        "(files, a DICOM folder's files, or a volume's slices; a unit never splits), each its own partition",
    )
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
    burned_in_text: Literal["auto", "scan", "none"] = Field(
        "auto",
        description="scan pixels for burned-in text and black it out: auto (DICOM BurnedInAnnotation YES, "
        "ultrasound, secondary captures, screenshots), scan (every image), none (pixels known clean)",
    )
    expert_model: str | None = Field(None, description="path to user weights (safetensors/TorchScript)")
    expert_label: str | None = Field(None, max_length=200, description="what the user's expert_model segments")
    rois: dict[str, float | int | bool] | None = Field(
        None, max_length=20, description="overrides of roi_config.yaml for this source, e.g. {min_area_px: 8}"
    )
    expert_model_sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="refuse the weights unless their sha256 matches"
    )

    # Set by the loader, not by the user.
    registry_file: str = ""

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not isinstance(v, str) or not NAME_RE.fullmatch(v):
            raise ValueError("must be 1-64 characters of [a-z0-9_] (it is the partition key and a file name)")
        return v

    @field_validator("layout")
    @classmethod
    def _layout_ok(cls, v: str) -> str:
        from medtrinity_assets.ingest.readers import layouts

        known = layouts()
        if v not in known:
            raise ValueError(f"unknown layout {v!r}; known: {', '.join(known)}")
        return v

    @field_validator("mask_colours")
    @classmethod
    def _colours_ok(cls, v: dict[int, tuple[int, int, int]] | None) -> dict[int, tuple[int, int, int]] | None:
        if v is None:
            return v
        for value, rgb in v.items():
            if value <= 0:
                raise ValueError(f"mask value {value} must be > 0 (black is background)")
            if not all(0 <= c <= 255 for c in rgb) or not any(rgb):
                raise ValueError(f"colour of mask value {value} must be three numbers 0-255, not black")
        if len(set(v.values())) != len(v):
            raise ValueError("two mask values share one colour")
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
            if not isinstance(name, str | int | float) or isinstance(name, bool) or len(str(name)) > 200:
                raise ValueError(f"label of mask value {ikey} must be a short text, not {type(name).__name__}")
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
        parts.append(f"{path.name}: field '{field}': {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


#: A registry file is a few lines: anything larger is refused before it is parsed.
MAX_REGISTRY_BYTES = 64 * 1024
#: Nesting deeper than this is not a source declaration.
MAX_YAML_DEPTH = 8


class _PlainLoader(yaml.SafeLoader):
    """YAML without anchors and aliases (an alias can expand a few bytes into gigabytes), and
    without deep nesting; safe types only."""

    def compose_node(self, parent, index):  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.constructor.ConstructorError(
                None, None, "anchors and aliases (&, *) are not allowed in a registry file", event.start_mark
            )
        depth = getattr(self, "_depth", 0)
        if depth > MAX_YAML_DEPTH:
            raise yaml.constructor.ConstructorError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth


def _read_yaml(path: Path) -> object:
    with open(path, "rb") as fh:  # the size is checked on what is read, not on what stat says
        data = fh.read(MAX_REGISTRY_BYTES + 1)
    if len(data) > MAX_REGISTRY_BYTES:
        raise RegistryError(f"{path.name}: larger than {MAX_REGISTRY_BYTES // 1024} KiB: not a source declaration")
    return yaml.load(data.decode("utf-8"), Loader=_PlainLoader)  # noqa: S506 - _PlainLoader is a SafeLoader


def load_source_file(path: str | Path) -> SourceSpec:
    """Read and validate one registry file; errors name the file and the field."""
    path = Path(path)
    try:
        raw = _read_yaml(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path.name}: cannot read: {type(exc).__name__}: {exc}") from None
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path.name}: not valid YAML: {' '.join(str(exc).split())}") from None
    except (MemoryError, RecursionError) as exc:
        raise RegistryError(f"{path.name}: {type(exc).__name__} while reading it") from None
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
