"""Identifying values of a source, gathered in memory for the PHI scan of the descriptions.

The values are read from the source's own DICOM headers each time they are needed and are
never written anywhere: the quality stage only uses them to prove that no description carries
one of them.
"""

from __future__ import annotations

import polars as pl

from medtrinity_assets.registry import SourceSpec


def source_identifier_values(spec: SourceSpec, manifest: pl.DataFrame) -> set[str]:
    """Every identifying DICOM value found in the headers of a source's files.

    All files under the root are scanned (headers only), not just the ones that produced a
    record: a series is recorded under its first file, and a quarantined file may still share
    identifiers with the kept ones.
    """
    if spec.layout != "dicom" or manifest.height == 0:
        return set()
    import pydicom
    from pydicom.errors import InvalidDicomError

    from medtrinity_assets.imaging.common import check_root
    from medtrinity_assets.imaging.dicom import dicom_identifier_values

    root = check_root(spec.name, spec.resolved_root())
    values: set[str] = set()
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError):
            continue
        values |= dicom_identifier_values(ds)
    return values
