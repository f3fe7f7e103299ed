"""Stage 3–4 assets: coarse captions, the knowledge base, its Faiss index and per-ROI retrieval."""

import dagster as dg

from medtrinity_assets.assets.common import (
    GROUP_KNOWLEDGE,
    SOURCES,
    counts_metadata,
    table_metadata,
)
from medtrinity_assets.resources import EmbedderResource, KnowledgeConfig, PipelineStorage

GLOBAL = "_global"


@dg.asset(
    group_name=GROUP_KNOWLEDGE,
    kinds={"parquet", "polars"},
    description="The knowledge base: the embedded corpus plus the user's corpora (JSONL, txt, md), "
    "normalised, deduplicated and chunked with provenance; bad documents quarantined.",
)
def knowledge_corpus(context: dg.AssetExecutionContext, storage: PipelineStorage, knowledge: KnowledgeConfig):
    from medtrinity_assets.knowledge.corpus import ingest_corpora
    from medtrinity_assets.storage import table_path, write_table

    out = storage.out()
    result = ingest_corpora(
        list(knowledge.corpus_paths),
        chunk_tokens=knowledge.chunk_tokens,
        overlap_tokens=knowledge.overlap_tokens,
        include_default=knowledge.include_default,
        progress=lambda msg: context.log.info(msg),
    )
    path = write_table(result.chunks, table_path(out, "knowledge_corpus", GLOBAL))
    write_table(result.quarantine, table_path(out, "knowledge_corpus", "_quarantine"))
    topics = dict(result.chunks.group_by("topic").len().iter_rows()) if result.chunks.height else {}
    reasons = dict(result.quarantine.group_by("reason").len().iter_rows()) if result.quarantine.height else {}
    return dg.MaterializeResult(
        metadata={
            **table_metadata(result.chunks, path, ["chunk_id", "corpus", "title", "topic", "text"]),
            **counts_metadata("counts", result.counts),
            **counts_metadata("chunks_by_topic", {str(k): v for k, v in topics.items()}),
            **counts_metadata("quarantined_by_reason", reasons),
            "chunker": result.chunker,
        }
    )


@dg.asset(
    group_name=GROUP_KNOWLEDGE,
    kinds={"faiss", "parquet"},
    deps=[knowledge_corpus],
    pool="gpu",
    automation_condition=dg.AutomationCondition.eager(),
    description="Faiss index of the knowledge chunks (exact below a size, IVF/HNSW above) with a "
    "Parquet docstore; incremental: only chunks with new content are embedded.",
)
def knowledge_index(context: dg.AssetExecutionContext, storage: PipelineStorage, embedder: EmbedderResource):
    from medtrinity_assets.knowledge.index import build_index
    from medtrinity_assets.storage import read_table, table_path

    out = storage.out()
    chunks = read_table(table_path(out, "knowledge_corpus", GLOBAL))
    index_dir = out / "knowledge_index"
    model = embedder.get()
    result = build_index(chunks, model, index_dir, previous_dir=index_dir if index_dir.exists() else None)
    context.log.info(f"index: {result.count} chunks, {result.reused} reused, {result.embedded} embedded")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(result.count),
            "path": dg.MetadataValue.path(str(index_dir)),
            "reused": result.reused,
            "embedded": result.embedded,
            "index_type": result.index_type,
            "index_params": dg.MetadataValue.json(result.params),
            "embedder": result.embedder,
            "dim": result.dim,
            "faiss_sha256": result.faiss_sha256,
        }
    )


@dg.asset(
    group_name=GROUP_KNOWLEDGE,
    kinds={"parquet", "polars"},
    partitions_def=SOURCES,
    deps=["source_manifest", "preprocessed_images"],
    description="One coarse caption per image from the source's metadata (modality, organ, labels, "
    "descriptions, reports, QA).",
)
def coarse_captions(context: dg.AssetExecutionContext, storage: PipelineStorage):
    from medtrinity_assets.coarse_captions import build_coarse_captions
    from medtrinity_assets.storage import read_table, table_path, write_table

    name = context.partition_key
    spec = storage.source(name)
    out = storage.out()
    manifest = read_table(table_path(out, "source_manifest", name))
    images = read_table(table_path(out, "preprocessed_images", name))
    captions = build_coarse_captions(manifest, images, spec)
    path = write_table(captions, table_path(out, "coarse_captions", name))
    return dg.MaterializeResult(metadata=table_metadata(captions, path, ["record_id", "caption", "terms"]))


@dg.asset(
    group_name=GROUP_KNOWLEDGE,
    kinds={"parquet", "faiss"},
    partitions_def=SOURCES,
    deps=["coarse_captions", "roi_set", knowledge_index],
    description="Top-k knowledge passages per image/ROI (hybrid dense + BM25 retrieval), with scores.",
)
def retrieved_knowledge(
    context: dg.AssetExecutionContext,
    storage: PipelineStorage,
    embedder: EmbedderResource,
    knowledge: KnowledgeConfig,
):
    from medtrinity_assets.coarse_captions import build_queries, retrieve_for_records
    from medtrinity_assets.knowledge.index import load_index
    from medtrinity_assets.knowledge.retrieval import HybridRetriever
    from medtrinity_assets.storage import read_table, table_path, write_table

    name = context.partition_key
    out = storage.out()
    coarse = read_table(table_path(out, "coarse_captions", name))
    rois = read_table(table_path(out, "roi_set", name))
    retriever = HybridRetriever(load_index(out / "knowledge_index"), embedder.get())
    queries = build_queries(coarse, rois)
    hits = retrieve_for_records(queries, retriever, knowledge.top_k, mode=knowledge.mode)
    path = write_table(hits, table_path(out, "retrieved_knowledge", name))
    return dg.MaterializeResult(
        metadata={
            **table_metadata(hits, path, ["record_id", "roi_id", "query", "chunk_ids", "scores"]),
            "mode": knowledge.mode,
            "top_k": knowledge.top_k,
            "distinct_chunks": int(hits["chunk_ids"].explode().n_unique()) if hits.height else 0,
        }
    )
