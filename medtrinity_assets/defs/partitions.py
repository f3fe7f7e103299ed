"""Partitions: per source and shard (most per-source assets), per source (the assets that summarise
a source over its shards), and per VQA set (the model chain's VQA assets)."""

from __future__ import annotations

import warnings

import dagster as dg

from medtrinity_assets.core.parts import part_name, shard_key

SOURCES = dg.DynamicPartitionsDefinition(name="sources")
"""One partition per registered source; the key is the registry file's ``name``."""

SHARDS = dg.DynamicPartitionsDefinition(name="shards")
"""Shard numbers ``000``, ``001``...: as many as the source with the most shards has."""

SOURCE_SHARDS = dg.MultiPartitionsDefinition({"source": SOURCES, "shard": SHARDS})
"""One partition per shard of a source (a source of up to ``shard_size`` images has one: ``000``).
Key strings read ``<shard>|<source>`` (Dagster orders dimensions by name)."""

VQA_SETS = dg.DynamicPartitionsDefinition(name="vqa_sets")
"""One partition per VQA set: ``demo`` (generated from the export) and each registered benchmark."""

#: per source, any shard: a summary's parents, or a shard's per-source parent
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)  # stable in use since Dagster 1.5
    BY_SOURCE = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="source")


def shard_partition(source: str, shard: int = 0) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"source": source, "shard": shard_key(shard)})


def source_and_shard(key: str | dg.MultiPartitionKey) -> tuple[str, int]:
    """``(source, shard)`` of a per-shard partition key."""
    if not isinstance(key, dg.MultiPartitionKey):
        key = SOURCE_SHARDS.get_partition_key_from_str(key)
    dims = key.keys_by_dimension
    return dims["source"], int(dims["shard"])


def part_of(key: str | dg.MultiPartitionKey) -> str:
    """The part name (where the shard's tables live) of a per-shard partition key."""
    return part_name(*source_and_shard(key))


def shard_keys_needed(counts: dict[str, int], existing: set[str]) -> list[str]:
    """Shard keys to add so that every source's shards have a partition."""
    top = max(counts.values(), default=1)
    return [shard_key(k) for k in range(top) if shard_key(k) not in existing]
