"""The VQA data stage: benchmark readers (VQA-RAD, SLAKE, PathVQA), questions generated from the
export's triplets, split and pretraining leakage checks, and the LLaVA-Med scoring conventions.

Every module here is plain domain code (no Dagster, no torch); every set has the shape of
:data:`medtrinity_assets.core.tables.VQA_DATASET` and every scored answer that of
:data:`medtrinity_assets.core.tables.VQA_EVALUATION`.
"""
