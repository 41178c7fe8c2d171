"""Cheap pairwise features for the decision model (numpy only)."""

from __future__ import annotations

import re

import numpy as np

from .features.lexical import normalize

PAIR_FEATURES = ("fused", "text", "text_missing", "image", "image_missing", "lexical", "id_shared",
                 "id_conflict", "id_partial", "number_jaccard", "brand_agree", "brand_conflict",
                 "log_price_ratio", "price_missing", "token_jaccard", "rank", "gap_to_best")
_NUM = re.compile(r"\d+(?:\.\d+)?")


def _tokens(s: str) -> set[str]:
    return set(normalize(s).split())


def _partial(a: list[str], b: list[str]) -> bool:
    return any(x != y and (x in y or y in x) and min(len(x), len(y)) >= 5 for x in a for y in b)


def pair_feature_matrix(fused: np.ndarray, text: np.ndarray, image: np.ndarray, lexical: np.ndarray,
                        src_idents: list[list[str]], tgt_idents: list[list[str]],
                        src_text: list[str], tgt_text: list[str], src_brand: list[str | None],
                        tgt_brand: list[str | None], src_price: np.ndarray, tgt_price: np.ndarray,
                        rank: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """float32[n_pairs, len(PAIR_FEATURES)]; ``text``/``image`` are NaN where a side lacks the modality."""
    n = len(fused)
    out = np.zeros((n, len(PAIR_FEATURES)), dtype=np.float32)
    out[:, 0] = fused
    out[:, 1] = np.nan_to_num(text)
    out[:, 2] = np.isnan(text)
    out[:, 3] = np.nan_to_num(image)
    out[:, 4] = np.isnan(image)
    out[:, 5] = lexical
    for i in range(n):
        a, b = src_idents[i], tgt_idents[i]
        shared = bool(set(a) & set(b))
        out[i, 6] = shared
        out[i, 7] = bool(a and b and not shared)
        out[i, 8] = (not shared) and _partial(a, b)
        na, nb = set(_NUM.findall(src_text[i] or "")), set(_NUM.findall(tgt_text[i] or ""))
        out[i, 9] = len(na & nb) / len(na | nb) if na | nb else 0.0
        ba, bb = normalize(src_brand[i] or ""), normalize(tgt_brand[i] or "")
        ta, tb = _tokens(src_text[i] or ""), _tokens(tgt_text[i] or "")
        if ba and bb:
            out[i, 10] = ba == bb
            out[i, 11] = ba != bb
        elif ba or bb:
            brand, other = (ba, tb) if ba else (bb, ta)
            out[i, 10] = set(brand.split()) <= other
        out[i, 14] = len(ta & tb) / len(ta | tb) if ta | tb else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (src_price > 0) & (tgt_price > 0)
        out[:, 12] = np.where(ok, np.abs(np.log(np.where(ok, src_price, 1) / np.where(ok, tgt_price, 1))), 0.0)
    out[:, 13] = ~ok
    out[:, 15] = np.log(rank)
    out[:, 16] = gap
    return out
