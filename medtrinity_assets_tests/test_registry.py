from __future__ import annotations

from pathlib import Path

import pytest

from medtrinity_assets.core.vocabulary import canonical_modality
from medtrinity_assets.ingest.registry import (
    RegistryError,
    find_source,
    load_registry,
    load_source_file,
)

GOOD = """
name: my_source
layout: image_folder
root: ./imgs
modality: Fundus
organ: retina
labels: {1: lesion}
license: CC0
"""


def write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.write_text(text)
    return p


def test_valid_file_resolves_relative_root(tmp_path):
    spec = load_source_file(write(tmp_path, "a.yaml", GOOD))
    assert spec.name == "my_source"
    assert spec.labels == {1: "lesion"}
    assert spec.resolved_root() == str((tmp_path / "imgs").resolve())
    assert spec.keeps_colour  # fundus photographs are colour
    assert not spec.synthetic


@pytest.mark.parametrize(
    "bad, field",
    [
        (GOOD.replace("my_source", "My-Source"), "name"),
        (GOOD.replace("image_folder", "zip"), "layout"),
        (GOOD.replace("license: CC0", ""), "license"),
        (GOOD.replace("{1: lesion}", "{zero: lesion}"), "labels"),
        (GOOD.replace("{1: lesion}", "{0: background}"), "labels"),
        (GOOD + "colour_space: weird\n", "colour_space"),
    ],
)
def test_malformed_file_names_file_and_field(tmp_path, bad, field):
    p = write(tmp_path, "broken.yaml", bad)
    with pytest.raises(RegistryError) as err:
        load_source_file(p)
    assert "broken.yaml" in str(err.value)
    assert f"'{field}" in str(err.value)


def test_not_yaml_and_not_mapping(tmp_path):
    with pytest.raises(RegistryError, match="x.yaml: not valid YAML"):
        load_source_file(write(tmp_path, "x.yaml", "name: [unclosed"))
    with pytest.raises(RegistryError, match="y.yaml: expected a mapping"):
        load_source_file(write(tmp_path, "y.yaml", "- a\n- b\n"))


def test_registry_collects_errors_and_rejects_duplicates(tmp_path):
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", GOOD)  # same name
    write(tmp_path, "c.yaml", GOOD.replace("my_source", "other").replace("Fundus", ""))
    specs, errors = load_registry(tmp_path, strict=False)
    assert [s.name for s in specs] == ["my_source"]
    assert any("b.yaml" in e and "already declared" in e for e in errors)
    assert any("c.yaml" in e and "modality" in e for e in errors)
    with pytest.raises(RegistryError):
        load_registry(tmp_path, strict=True)
    with pytest.raises(RegistryError, match="does not exist"):
        load_registry(tmp_path / "missing")


def test_fsspec_root_kept_as_url(tmp_path):
    spec = load_source_file(write(tmp_path, "r.yaml", GOOD.replace("./imgs", "s3://bucket/prefix")))
    assert spec.is_remote and spec.resolved_root() == "s3://bucket/prefix"


def test_fingerprint_changes_with_declaration(tmp_path):
    a = load_source_file(write(tmp_path, "a.yaml", GOOD))
    b = load_source_file(write(tmp_path, "b.yaml", GOOD.replace("retina", "optic disc")))
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == load_source_file(tmp_path / "a.yaml").fingerprint()


def test_demo_registry_is_valid_and_covers_six_modalities(demo_registry):
    specs, errors = load_registry(demo_registry, strict=True)
    assert not errors
    modalities = {canonical_modality(s.modality) for s in specs if not s.synthetic}
    assert len(modalities) >= 6, modalities
    assert {s.layout for s in specs} == {"dicom", "nifti_msd", "image_folder", "table"}
    assert any(s.synthetic for s in specs)
    for s in specs:
        assert Path(s.resolved_root()).is_dir(), s.name
        assert s.license and s.origin
    assert find_source(demo_registry, "xray_tibia").organ == "tibia"
