"""Core: default paths, storage, table contracts, the vocabulary, images and pictures."""
