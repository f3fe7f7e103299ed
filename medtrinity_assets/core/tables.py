"""Table contracts: one object per table with its name, schema, location and validating I/O.

Every Parquet table the pipeline writes is declared here, once: the asset that produces it,
the stages that read it and the docs (``docs/ARCHITECTURE.md``, tested against this module)
all use the same :class:`TableContract`. Reading a table checks that every column of the
contract is there (an older or foreign file fails with the table and the column named,
instead of being silently padded); writing casts to the declared types and refuses a frame
with a missing or an undeclared column.

Layout under an output root: ``<out>/<table>/<source>.parquet`` for per-source tables and
``<out>/<table>/_global.parquet`` for global ones (see :meth:`TableContract.path`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from medtrinity_assets.core.contract import GLOBAL_PART, ContractError, TableContract

__all__ = ["GLOBAL_PART", "ContractError", "TableContract", "CONTRACTS", "contract"]
FACETS: tuple[str, ...] = ("modality", "organ", "roi_location", "roi_texture", "relationship")


SOURCE_MANIFEST = TableContract(
    "source_manifest",
    {
        "record_id": pl.String,
        "source": pl.String,
        "relpath": pl.String,
        "status": pl.String,
        "reason": pl.String,
        "duplicate_of": pl.String,
        "modality": pl.String,
        "organ": pl.String,
        "labels": pl.List(pl.String),
        "split": pl.String,
        "width": pl.Int32,
        "height": pl.Int32,
        "depth": pl.Int32,
        "slice_axis": pl.String,
        "slice_index": pl.Int32,
        "body_part": pl.String,
        "description": pl.String,
        "label": pl.String,
        "report": pl.String,
        "question": pl.String,
        "answer": pl.String,
        "synthetic": pl.Boolean,
        "sequence": pl.String,
        "group_id": pl.String,
    },
    description="Every file (or kept volume slice) of a source: ok | quarantined | duplicate, with a reason.",
    optional=frozenset({"sequence", "group_id"}),
)

PREPROCESSED_IMAGES = TableContract(
    "preprocessed_images",
    {
        "record_id": pl.String,
        "source": pl.String,
        "image_path": pl.String,
        "sha256": pl.String,
        "phash": pl.String,
        "width": pl.Int32,
        "height": pl.Int32,
        "channels": pl.Int8,
        "window": pl.String,
        "original_spacing": pl.List(pl.Float64),
        "display_right": pl.String,
        "display_down": pl.String,
        "plane": pl.String,
        "mask_path": pl.String,
        "mask_labels": pl.List(pl.Int32),
        "mask_label_names": pl.List(pl.String),
        "boxes": pl.List(pl.List(pl.Float64)),
        "box_labels": pl.List(pl.String),
        "box_clipped": pl.List(pl.Boolean),
        "text_boxes_redacted": pl.Int32,
    },
    description="Kept 2D images: content-addressed PNGs, window, spacing, orientation, masks and boxes; "
    "text_boxes_redacted: burned-in text boxes blacked out (null: pixels not scanned).",
    optional=frozenset({"text_boxes_redacted", "plane"}),
)

ROI_ATTRIBUTES: dict[str, Any] = {
    "centroid_norm": pl.List(pl.Float64),
    "horizontal": pl.String,
    "vertical": pl.String,
    "patient_lr": pl.String,
    "patient_ap": pl.String,
    "patient_si": pl.String,
    "patient_side": pl.String,
    "area_px": pl.Int64,
    "area_fraction": pl.Float64,
    "longest_diameter_px": pl.Float64,
    "longest_diameter_mm": pl.Float64,
    "roi_mean": pl.Float64,
    "ring_mean": pl.Float64,
    "intensity_contrast": pl.Float64,
    "intensity_word": pl.String,
    "glcm_contrast": pl.Float64,
    "glcm_homogeneity": pl.Float64,
    "entropy": pl.Float64,
    "texture_homogeneity_word": pl.String,
    "texture_smoothness_word": pl.String,
    "circularity": pl.Float64,
    "solidity": pl.Float64,
    "axis_ratio": pl.Float64,
    "shape_word": pl.String,
}
"""The measured columns of ``roi_set`` (what :func:`medtrinity_assets.rois.measure.measure_roi` returns)."""

ROI_SET = TableContract(
    "roi_set",
    {
        "record_id": pl.String,
        "source": pl.String,
        "roi_id": pl.String,
        "label": pl.String,
        "label_value": pl.Int64,
        "origin": pl.String,
        "status": pl.String,
        "reason": pl.String,
        "image_width": pl.Int64,
        "image_height": pl.Int64,
        "bbox_xyxy": pl.List(pl.Float64),
        "bbox_norm": pl.List(pl.Float64),
        "mask_rle": pl.String,
        **ROI_ATTRIBUTES,
        "roi_count": pl.Int64,
        "label_count": pl.Int64,
        "relations": pl.String,
        "inside_label": pl.String,
    },
    description="One row per ROI: geometry (box, COCO RLE) and measured attributes.",
)

COARSE_CAPTIONS = TableContract(
    "coarse_captions",
    {
        "record_id": pl.String,
        "source": pl.String,
        "caption": pl.String,
        "modality": pl.String,
        "organ": pl.String,
        "terms": pl.List(pl.String),
        "concepts": pl.List(pl.String),
        "synthetic": pl.Boolean,
        "split": pl.String,
        "plane": pl.String,
        "sequence": pl.String,
        "window": pl.String,
        "channels": pl.Int8,
    },
    description="One short caption per kept image, from metadata only (terms that name a vocabulary or "
    "ontology concept), its retrieval terms, MeSH/ICD-10 concepts and acquisition (plane, sequence, window).",
    optional=frozenset({"concepts", "synthetic", "split", "plane", "sequence", "window", "channels"}),
)

RETRIEVED_KNOWLEDGE = TableContract(
    "retrieved_knowledge",
    {
        "record_id": pl.String,
        "roi_id": pl.String,
        "query": pl.String,
        "chunk_ids": pl.List(pl.String),
        "scores": pl.List(pl.Float64),
        "mode": pl.String,
    },
    description="Top-k knowledge passages per ROI (or image) above the similarity floor; scores: dense cosine similarity to the query, decreasing.",
)

CAPTION_BATCH = TableContract(
    "caption_batch",
    {
        "record_id": pl.String,
        "source": pl.String,
        "roi_id": pl.String,
        "backend": pl.String,
        "model": pl.String,
        "params": pl.String,
        "prompt_version": pl.String,
        "inputs_hash": pl.String,
        "retrieved_chunk_ids": pl.List(pl.String),
        "text": pl.String,
        "facets": pl.String,
        **{f"facet_{k}": pl.String for k in FACETS},
        "status": pl.String,
        "error": pl.String,
        "raw": pl.String,
        "fallback_reason": pl.String,
        "created_at": pl.Datetime("us", "UTC"),
    },
    description="One multigranular description per ROI with every input behind it; fallback_reason: why "
    "the configured backend's description was replaced by the embedded one (its blocking issues).",
    optional=frozenset({"fallback_reason"}),
)

QUALITY_CHECKS: tuple[str, ...] = (
    "facets_present",
    "position_ok",
    "laterality_ok",
    "modality_ok",
    "organ_ok",
    "texture_ok",
    "size_ok",
    "relations_ok",
    "terms_ok",
    "numbers_ok",
    "quotes_ok",
    "length_ok",
)

CAPTION_QUALITY = TableContract(
    "caption_quality",
    {
        "record_id": pl.String,
        "roi_id": pl.String,
        "backend": pl.String,
        "inputs_hash": pl.String,
        **dict.fromkeys(QUALITY_CHECKS, pl.Boolean),
        **{f"facet_{k}_present": pl.Boolean for k in FACETS},
        "phi_found": pl.Boolean,
        "consistent": pl.Boolean,
        "issues": pl.List(pl.String),
        **{f"judge_{k}": pl.Float64 for k in FACETS},
        "judge_mean": pl.Float64,
        "passed": pl.Boolean,
    },
    description="Per-description checks against independent evidence (the ROI mask, metadata, "
    "ontologies, passages), PHI scan and optional judge scores.",
    optional=frozenset({"relations_ok", "terms_ok", "numbers_ok", "quotes_ok"}),
)

_CHUNK_SCHEMA = {
    "chunk_id": pl.String,
    "doc_id": pl.String,
    "corpus": pl.String,
    "title": pl.String,
    "topic": pl.String,
    "text": pl.String,
    "char_start": pl.Int64,
    "char_end": pl.Int64,
    "content_hash": pl.String,
    "path": pl.String,
}

KNOWLEDGE_CORPUS = TableContract(
    "knowledge_corpus",
    _CHUNK_SCHEMA,
    scope="global",
    description="Knowledge chunks with provenance (corpus, document, offsets, content hash).",
)

KNOWLEDGE_QUARANTINE = TableContract(
    "knowledge_quarantine",
    {"path": pl.String, "line": pl.Int64, "reason": pl.String, "corpus": pl.String},
    scope="global",
    folder="knowledge_corpus",
    file="_quarantine.parquet",
    description="Corpus inputs that could not be ingested, with the reason.",
)

KNOWLEDGE_DOCSTORE = TableContract(
    "knowledge_docstore",
    _CHUNK_SCHEMA,
    scope="global",
    folder="knowledge_index",
    file="docstore.parquet",
    description="The indexed chunks; row i is Faiss id i.",
)

TRIPLET_COLUMNS: dict[str, Any] = {
    "triplet_id": pl.String,  # stable: hash of (record_id, roi_id, inputs_hash)
    "source": pl.String,
    "record_id": pl.String,  # provenance: the source_manifest / preprocessed_images row
    "roi_id": pl.String,  # provenance: the roi_set row
    "inputs_hash": pl.String,  # provenance: the caption_batch row (every input behind the text)
    "image_file": pl.String,  # relative to the export folder: images/<sha[:2]>/<sha>.png (original, no overlay)
    "image_sha256": pl.String,
    "image_width": pl.Int32,
    "image_height": pl.Int32,
    "bbox_xyxy": pl.List(pl.Float64),  # pixels of the stored image
    "bbox_norm": pl.List(pl.Float64),  # 0-1
    "mask_rle": pl.String,  # COCO uncompressed RLE (JSON); null for a box or the whole image
    "label": pl.String,
    "origin": pl.String,  # mask | box | expert:<name> | classical | whole_image
    "description": pl.String,
    **{f"facet_{k}": pl.String for k in FACETS},
    "modality": pl.String,
    "organ": pl.String,
    "split": pl.String,  # train | validation | test
    "group_id": pl.String,  # what the split keeps together: patient:<h> | study:<h> | image:<sha>
    "license": pl.String,
    "synthetic": pl.Boolean,
    "backend": pl.String,
    "model": pl.String,
    "prompt_version": pl.String,
}

TRIPLETS = TableContract(
    "triplets",
    TRIPLET_COLUMNS,
    description="The verified triplets of a source: descriptions whose blocking checks passed, with "
    "the original image, ROI geometry, facets, split, licence and provenance.",
)

MEDTRINITY_DATASET = TableContract(
    "medtrinity_dataset",
    {**TRIPLET_COLUMNS, "duplicate_group": pl.String},
    scope="global",
    folder="export",
    file="triplets.parquet",
    description="Every source's triplets after cross-source deduplication, with leak-free splits "
    "(the export's main table; formats, card, catalog and viewer alongside).",
)

VQA_DATASET = TableContract(
    "vqa_dataset",
    {
        "vqa_set": pl.String,  # the partition: demo | a registered benchmark (vqa-rad, slake, pathvqa)
        "question_id": pl.String,  # unique within the set (the benchmark's own id where it has one)
        "split": pl.String,  # train | validation | test
        "image_file": pl.String,  # absolute path of the image the question is about
        "image_sha256": pl.String,  # sha256 of the image file's bytes (leakage is checked on it)
        "question": pl.String,
        "answer": pl.String,
        "answer_type": pl.String,  # closed (yes/no) | open
        "question_type": pl.String,  # modality | organ | presence | position | location | the benchmark's own
        "origin_id": pl.String,  # provenance: the benchmark's image name, or the export's triplet_id
    },
    description="A VQA set in one shape: the benchmark's questions (read from its public layout) or "
    "questions generated from the export's triplets, with image hashes and splits.",
)

VQA_EVALUATION = TableContract(
    "vqa_evaluation",
    {
        "vqa_set": pl.String,
        "variant": pl.String,  # pretrained (from llava_tri_checkpoint) | base (without triplet pretraining) | majority (no model)
        "seed": pl.Int64,
        "question_id": pl.String,
        "answer_type": pl.String,
        "question_type": pl.String,
        "answer": pl.String,
        "prediction": pl.String,
        "closed_correct": pl.Boolean,  # closed questions: the first yes/no of the prediction is the answer
        "token_recall": pl.Float64,  # share of the answer's tokens found in the prediction (LLaVA-Med)
        "exact_match": pl.Boolean,  # normalised prediction == normalised answer
        "candidate_correct": pl.Boolean,  # open: the closest candidate answer is the answer (null: no candidates)
    },
    description="Every test question of a VQA set answered by each fine-tuned checkpoint (variant and "
    "seed) and by the majority baseline (the commonest training answer of its kind), scored per question.",
)

CONTRACTS: dict[str, TableContract] = {
    c.name: c
    for c in (
        SOURCE_MANIFEST,
        PREPROCESSED_IMAGES,
        ROI_SET,
        COARSE_CAPTIONS,
        RETRIEVED_KNOWLEDGE,
        CAPTION_BATCH,
        CAPTION_QUALITY,
        KNOWLEDGE_CORPUS,
        KNOWLEDGE_QUARANTINE,
        KNOWLEDGE_DOCSTORE,
        TRIPLETS,
        MEDTRINITY_DATASET,
        VQA_DATASET,
        VQA_EVALUATION,
    )
}


def contract(name: str) -> TableContract:
    """The contract of a table by name; a KeyError names the known tables."""
    try:
        return CONTRACTS[name]
    except KeyError:
        raise KeyError(f"no table contract '{name}'; known: {', '.join(sorted(CONTRACTS))}") from None


def markdown() -> str:
    """The contracts as Markdown (the generated section of docs/ARCHITECTURE.md)."""
    lines = []
    for c in CONTRACTS.values():
        name = (c.file or f"{GLOBAL_PART}.parquet") if c.scope == "global" else "<source>.parquet"
        where = f"<out>/{c.folder or c.name}/{name}"
        lines.append(f"#### {c.name}")
        lines.append(f"{c.description} `{where}`")
        lines.append("")
        lines.append("| column | type |")
        lines.append("|---|---|")
        lines.extend(f"| `{name}` | {dtype} |" for name, dtype in c.schema.items())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_docs(doc_path: Path) -> None:
    """Replace the generated contracts block of ``doc_path`` (docs/ARCHITECTURE.md) with :func:`markdown`."""
    begin, end = "<!-- contracts:begin -->\n", "<!-- contracts:end -->"
    doc = doc_path.read_text(encoding="utf-8")
    head, rest = doc.split(begin, 1)
    doc_path.write_text(head + begin + markdown() + end + rest.split(end, 1)[1], encoding="utf-8")


if __name__ == "__main__":  # python -m medtrinity_assets.core.tables [--write docs/ARCHITECTURE.md]
    import sys

    if sys.argv[1:2] == ["--write"]:
        write_docs(Path(sys.argv[2] if len(sys.argv) > 2 else "docs/ARCHITECTURE.md"))
    else:
        print(markdown(), end="")
