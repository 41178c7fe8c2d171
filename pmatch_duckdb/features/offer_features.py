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
    """Assemble the projection's input for a batch of offers (``price`` is NaN where missing).

    Each block is written into one preallocated float32 matrix (no concatenated copy and no cast copy of it:
    at 50k training offers those were two transient 0.5 GB matrices); an image block without any valid image
    stays zeros without being computed.
    """
    n = len(text)
    lex_dim = int(spec.get("lexical_dim", LEX_DIM))
    width = feature_dim(spec, text.shape[1], image.shape[1])
    out = np.zeros((n, width), dtype=np.float32)
    at = 0
    if spec.get("text"):
        np.multiply(text, text_ok[:, None], out=out[:, at:at + text.shape[1]], casting="unsafe")
        at += text.shape[1]
    if spec.get("image"):
        if image_ok.any():
            np.multiply(image, image_ok[:, None], out=out[:, at:at + image.shape[1]], casting="unsafe")
        at += image.shape[1]
        out[:, at] = ~image_ok
        at += 1
    if spec.get("numeric"):
        missing = np.isnan(price)
        out[:, at] = np.log1p(np.where(missing, 0.0, np.maximum(price, 0.0))) / 10.0
        out[:, at + 1] = missing
        at += 2
    if spec.get("lexical"):
        out[:, at:at + lex_dim] = hashed_lexical(lexical, lex_dim)
        at += lex_dim
    return out
