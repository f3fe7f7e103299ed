"""Partitions of the per-source assets."""

from __future__ import annotations

import dagster as dg

SOURCES = dg.DynamicPartitionsDefinition(name="sources")
"""One partition per registered source; the key is the registry file's ``name``."""
