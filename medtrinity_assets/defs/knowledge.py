"""Stage 4 assets: the knowledge base, its Faiss index and the passages retrieved per ROI."""


import time

import dagster as dg

from medtrinity_assets.core.tables import (
    COARSE_CAPTIONS,
    KNOWLEDGE_CORPUS,
    KNOWLEDGE_QUARANTINE,
    RETRIEVED_KNOWLEDGE,
    ROI_SET,
)
from medtrinity_assets.defs.accelerators import gpu_step
from medtrinity_assets.defs.partitions import SOURCE_SHARDS, part_of
from medtrinity_assets.defs.reporting import GROUP_KNOWLEDGE, counts_metadata, stage_metrics, table_metadata
from medtrinity_assets.defs.resources import (
    EmbedderResource,
    KnowledgeConfig,
    OutputStorage,
)

KNOWLEDGE_INDEX = "knowledge_index"


@dg.asset(
    name=KNOWLEDGE_CORPUS.name,
    group_name=GROUP_KNOWLEDGE,
    kinds={"parquet", "polars"},
    description="The knowledge base: the embedded corpus plus the user's corpora (JSONL, txt, md), "
    "normalised, deduplicated and chunked with provenance; bad documents quarantined.",
)
def knowledge_corpus(context: dg.AssetExecutionContext, storage: OutputStorage, knowledge: KnowledgeConfig):
    from medtrinity_assets.knowledge.corpus import ingest_corpora

    started = time.perf_counter()
    out = storage.out()
    result = ingest_corpora(
        list(knowledge.corpus_paths),
        chunk_tokens=knowledge.chunk_tokens,
        overlap_tokens=knowledge.overlap_tokens,
        include_default=knowledge.include_default,
        progress=lambda msg: context.log.info(msg),
    )
    path = KNOWLEDGE_CORPUS.write(result.chunks, out)
    KNOWLEDGE_QUARANTINE.write(result.quarantine, out)
    topics = dict(result.chunks.group_by("topic").len().iter_rows()) if result.chunks.height else {}
    reasons = dict(result.quarantine.group_by("reason").len().iter_rows()) if result.quarantine.height else {}
    return dg.MaterializeResult(
        metadata={
            **table_metadata(result.chunks, path, ["chunk_id", "corpus", "title", "topic", "text"]),
            **stage_metrics(started, rows_in=result.chunks.height + result.quarantine.height,
                            rows_out=result.chunks.height, quarantined=result.quarantine.height),
            **counts_metadata("counts", result.counts),
            **counts_metadata("chunks_by_topic", {str(k): v for k, v in topics.items()}),
            **counts_metadata("quarantined_by_reason", reasons),
            "chunker": result.chunker,
        }
    )


@dg.asset(
    name=KNOWLEDGE_INDEX,
    group_name=GROUP_KNOWLEDGE,
    kinds={"faiss", "parquet"},
    deps=[KNOWLEDGE_CORPUS.name],
    **gpu_step(EmbedderResource),
    description="Faiss index of the knowledge chunks (exact below a size, IVF/HNSW above) with a "
    "Parquet docstore; incremental: only chunks with new content are embedded.",
)
def knowledge_index(context: dg.AssetExecutionContext, storage: OutputStorage, embedder: EmbedderResource):
    from medtrinity_assets.knowledge.index import build_index

    started = time.perf_counter()
    out = storage.out()
    chunks = KNOWLEDGE_CORPUS.read(out)
    index_dir = out / KNOWLEDGE_INDEX
    result = build_index(chunks, embedder.get(), index_dir, previous_dir=index_dir if index_dir.exists() else None)
    context.log.info(f"index: {result.count} chunks, {result.reused} reused, {result.embedded} embedded")
    return dg.MaterializeResult(
        # the content, not the run: retrieval follows a rebuilt index only when it changed
        data_version=dg.DataVersion(result.faiss_sha256[:32]),
        metadata={
            "dagster/row_count": dg.MetadataValue.int(result.count),
            **stage_metrics(started, rows_in=chunks.height, rows_out=result.count),
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
    name=RETRIEVED_KNOWLEDGE.name,
    group_name=GROUP_KNOWLEDGE,
    kinds={"parquet", "faiss"},
    partitions_def=SOURCE_SHARDS,
    deps=[COARSE_CAPTIONS.name, ROI_SET.name, KNOWLEDGE_INDEX],
    description="Top-k knowledge passages per image/ROI from concept queries (hybrid dense + BM25 candidates), above a cosine-similarity floor; scores are cosine similarities.",
)
def retrieved_knowledge(
    context: dg.AssetExecutionContext,
    storage: OutputStorage,
    embedder: EmbedderResource,
    knowledge: KnowledgeConfig,
):
    from medtrinity_assets.knowledge.index import load_index
    from medtrinity_assets.knowledge.queries import build_queries, retrieve_for_records
    from medtrinity_assets.knowledge.retrieval import HybridRetriever

    started = time.perf_counter()
    name = part_of(context.partition_key)
    out = storage.out()
    coarse = COARSE_CAPTIONS.read(out, name)
    rois = ROI_SET.read(out, name)
    retriever = HybridRetriever(load_index(out / KNOWLEDGE_INDEX), embedder.get())
    hits = retrieve_for_records(
        build_queries(coarse, rois),
        retriever,
        knowledge.top_k,
        mode=knowledge.mode,
        min_similarity=knowledge.min_similarity,
    )
    path = RETRIEVED_KNOWLEDGE.write(hits, out, name)
    return dg.MaterializeResult(
        metadata={
            **table_metadata(hits, path, ["record_id", "roi_id", "query", "chunk_ids", "scores"]),
            **stage_metrics(started, rows_in=rois.height, rows_out=hits.height),
            "mode": knowledge.mode,
            "top_k": knowledge.top_k,
            "distinct_chunks": int(hits["chunk_ids"].explode().n_unique()) if hits.height else 0,
        }
    )
