"""Stage 3, metadata integration: one coarse caption per image from what the source states."""
