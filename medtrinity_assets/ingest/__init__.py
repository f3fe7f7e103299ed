"""Stage 1, ingestion: the source registry, readers per layout, slicing, intensity, dedup and the
process pool that turn a source into ``source_manifest`` and ``preprocessed_images``."""

from medtrinity_assets.ingest.pipeline import IngestResult, count_shards, ingest_source
from medtrinity_assets.ingest.readers.base import SourceLayoutMissing, SourceRootMissing
from medtrinity_assets.ingest.registry import RegistryError, SourceSpec, load_registry

__all__ = [
    "IngestResult",
    "RegistryError",
    "SourceLayoutMissing",
    "SourceRootMissing",
    "SourceSpec",
    "count_shards",
    "ingest_source",
    "load_registry",
]
