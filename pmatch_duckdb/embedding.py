"""Column-level embedding used by both the SQL functions and the index builder.

Where an image or a text becomes a vector: :func:`embed_texts` (or :func:`prepare_texts` then
:func:`embed_prepared`, to order a column by token length first) and :func:`embed_image_lists`
(the encoders themselves live in :mod:`pmatch_duckdb.encoders`).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class PreparedTexts:
    """A column of texts as the text encoder will take them: which rows get embedded (not NULL, not empty, not
    whitespace only), and each such row's tokens (``TextEncoder.prepare``), so that ordering the column by
    length and embedding it tokenise each text once."""

    texts: list[str | None]  # the texts themselves (a stand-in encoder replacing ``embed_prepared`` reads these)
    valid: np.ndarray  # bool per row
    items: list  # per row: what the encoder's ``encode_prepared`` takes (None where not valid)
    lengths: np.ndarray  # per row: the width a batch is padded to (0 where not valid; constant for CLIP towers)

    def take(self, idx: np.ndarray | range) -> PreparedTexts:
        """The rows ``idx``, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        return PreparedTexts([self.texts[i] for i in idx], self.valid[idx], [self.items[i] for i in idx],
                             self.lengths[idx])


def prepare_texts(values: list[str | None], settings: Settings, threads: int | None = None) -> PreparedTexts:
    """Tokenise a column of texts for :func:`embed_prepared` (NULL, empty and whitespace-only ones are not)."""
    valid = _embeddable(values)
    items: list = [None] * len(values)
    lengths = np.zeros(len(values), dtype=np.int64)
    idx = np.flatnonzero(valid)
    if len(idx):
        enc = get_text_encoder(settings, duckdb_threads=threads)
        prepared = enc.prepare([values[i] for i in idx])
        for j, i in enumerate(idx):
            items[i] = prepared[j]
        lengths[idx] = enc.prepared_lengths(prepared)
    return PreparedTexts(list(values), valid, items, lengths)


def embed_prepared(texts: PreparedTexts, settings: Settings, threads: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Embed a prepared column; rows that are not valid come out as zeros with validity False (NULL)."""
    enc = get_text_encoder(settings, duckdb_threads=threads)
    out = np.zeros((len(texts.valid), enc.dim), dtype=np.float32)
    idx = np.flatnonzero(texts.valid)
    if len(idx):
        out[idx] = enc.encode_prepared([texts.items[i] for i in idx])
    return out, texts.valid


def embed_texts(values: list[str | None], settings: Settings, threads: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Embed a column of texts; NULL, empty and whitespace-only texts are invalid (NULL out)."""
    return embed_prepared(prepare_texts(values, settings, threads), settings, threads)


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
