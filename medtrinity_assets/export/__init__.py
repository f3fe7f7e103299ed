"""The export (stage 6): verified triplets in the formats trainers read, leak-free splits, a
dataset card, a DuckDB catalog and a viewer. No Dagster here: ``defs/export.py`` wires it."""
