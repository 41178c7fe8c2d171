"""Per-offer feature vector fed to the trained projection (numpy only: used at run time too).

Blocks, concatenated in this order (each can be switched off in the spec, for ablations):
``text`` (text embedding, zeros if missing), ``image`` (mean-pooled image embedding, zeros if
missing) + an image-missing flag, ``numeric`` (log price scaled, price-missing flag), ``lexical``
(hashed char 3-grams and identifier tokens of brand + title, sublinear tf, L2-normalised).
"""

from __future__ import annotations

import zlib

import numpy as np

from .lexical import identifiers, normalize

LEX_DIM = 1024
DEFAULT_SPEC = {"text": True, "image": True, "numeric": True, "lexical": True, "lexical_dim": LEX_DIM}


def hashed_lexical(texts: list[str], dim: int = LEX_DIM) -> np.ndarray:
    """Hashed char 3-grams (word-bounded) + identifier tokens → float32[n, dim], rows L2-normalised."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for r, t in enumerate(texts):
        counts: dict[int, float] = {}
        for word in normalize(t).split():
            w = f" {word} "
            for i in range(len(w) - 2):
                h = zlib.crc32(w[i:i + 3].encode()) % dim
                counts[h] = counts.get(h, 0.0) + 1.0
        for ident in identifiers(t):
            h = zlib.crc32(b"id:" + ident.encode()) % dim
            counts[h] = counts.get(h, 0.0) + 2.0
        if counts:
            idx = np.fromiter(counts.keys(), dtype=np.int64)
            val = 1.0 + np.log(np.fromiter(counts.values(), dtype=np.float32))
            out[r, idx] = val / np.linalg.norm(val)
    return out


def feature_dim(spec: dict, text_dim: int, image_dim: int) -> int:
    """Width of the feature vector for a spec."""
    return ((text_dim if spec.get("text") else 0) + (image_dim + 1 if spec.get("image") else 0)
            + (2 if spec.get("numeric") else 0) + (int(spec.get("lexical_dim", LEX_DIM)) if spec.get("lexical") else 0))


def offer_features(text: np.ndarray, text_ok: np.ndarray, image: np.ndarray, image_ok: np.ndarray,
                   price: np.ndarray, lexical: list[str], spec: dict) -> np.ndarray:
    """Assemble the projection's input for a batch of offers (``price`` is NaN where missing)."""
    blocks = []
    if spec.get("text"):
        blocks.append(text * text_ok[:, None])
    if spec.get("image"):
        blocks.append(image * image_ok[:, None])
        blocks.append((~image_ok).astype(np.float32)[:, None])
    if spec.get("numeric"):
        missing = np.isnan(price)
        blocks.append((np.log1p(np.where(missing, 0.0, np.maximum(price, 0.0))) / 10.0).astype(np.float32)[:, None])
        blocks.append(missing.astype(np.float32)[:, None])
    if spec.get("lexical"):
        blocks.append(hashed_lexical(lexical, int(spec.get("lexical_dim", LEX_DIM))))
    return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else np.zeros((len(text), 0), np.float32)
