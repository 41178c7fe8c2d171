"""Column-level embedding used by both the SQL functions and the index builder.

Where an image or a text becomes a vector: :func:`embed_texts` and :func:`embed_image_lists`
(the encoders themselves live in :mod:`pmatch_duckdb.encoders`).
"""

from __future__ import annotations

import numpy as np

from .encoders.image_io import ImagePolicy
from .encoders.registry import get_image_encoder, get_text_encoder
from .settings import Settings


def policy_of(settings: Settings) -> ImagePolicy:
    """The image-reading policy a connection's settings define."""
    return ImagePolicy(roots=settings.image_roots, max_pixels=settings.max_image_pixels,
                       max_bytes=settings.max_image_bytes)


def _embeddable(values: list[str | None]) -> np.ndarray:
    """Which texts get embedded: not NULL, not empty, not whitespace only."""
    return np.array([isinstance(v, str) and bool(v.strip()) for v in values], dtype=bool)


def embed_texts(values: list[str | None], settings: Settings, threads: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Embed a column of texts; NULL, empty and whitespace-only texts are invalid (NULL out)."""
    valid = _embeddable(values)
    enc = get_text_encoder(settings, duckdb_threads=threads)
    out = np.zeros((len(values), enc.dim), dtype=np.float32)
    if valid.any():
        idx = np.flatnonzero(valid)
        out[idx] = enc.encode([values[i] for i in idx])
    return out, valid


def text_lengths(values: list[str | None], settings: Settings) -> np.ndarray:
    """The text encoder's padded length of each text (0 for NULL, empty and whitespace-only ones, which are not
    embedded): the key to order a column by before embedding it in chunks."""
    idx = np.flatnonzero(_embeddable(values))
    out = np.zeros(len(values), dtype=np.int64)
    if len(idx):
        out[idx] = get_text_encoder(settings).token_lengths([values[i] for i in idx])
    return out


def embed_image_lists(lists: list[list | None], settings: Settings, threads: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray, list[list[str | None]]]:
    """Mean-pool the embeddings of each row's images (as in the paper), failures skipped, re-normalised.

    Returns vectors, validity (at least one image usable) and the per-image failure reasons.
    """
    enc = get_image_encoder(settings, duckdb_threads=threads)
    flat: list = []
    owner: list[int] = []
    for row, imgs in enumerate(lists):
        for img in imgs or []:
            flat.append(img)
            owner.append(row)
    vecs, reasons = enc.encode(flat, policy_of(settings))
    out = np.zeros((len(lists), enc.dim), dtype=np.float32)
    counts = np.zeros(len(lists), dtype=np.int64)
    per_row: list[list[str | None]] = [[] for _ in lists]
    for j, row in enumerate(owner):
        per_row[row].append(reasons[j])
        if reasons[j] is None:
            out[row] += vecs[j]
            counts[row] += 1
    valid = counts > 0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out, valid, per_row
