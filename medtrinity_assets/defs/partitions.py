"""Partitions: per source (most assets) and per VQA set (the model chain's VQA assets)."""

from __future__ import annotations

import dagster as dg

SOURCES = dg.DynamicPartitionsDefinition(name="sources")
"""One partition per registered source; the key is the registry file's ``name``."""

VQA_SETS = dg.DynamicPartitionsDefinition(name="vqa_sets")
"""One partition per VQA set: ``demo`` (generated from the export) and each registered benchmark."""
