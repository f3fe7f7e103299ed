"""LLaVA-Tri: a LLaVA model (vision tower, MLP projector, language model) built from configuration,
trained on the export's triplets (projector alignment, then multigranular pretraining) and
fine-tuned on VQA sets. Domain code: no Dagster here; the assets live in ``defs/model.py``."""
