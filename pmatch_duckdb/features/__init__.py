"""Cheap, deterministic features beside the neural embeddings: lexical (char n-grams, identifiers), numeric."""
