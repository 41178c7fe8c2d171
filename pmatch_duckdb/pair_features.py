"""Cheap pairwise features for the decision model (numpy only)."""

from __future__ import annotations

import re

import numpy as np

from .features.lexical import normalize

PAIR_FEATURES = ("fused", "text", "text_missing", "image", "image_missing", "lexical", "id_shared",
                 "id_conflict", "id_partial", "number_jaccard", "brand_agree", "brand_conflict",
                 "log_price_ratio", "price_missing", "token_jaccard", "rank", "gap_to_best",
                 # description-aware (index format 2): identifiers of title + description, and the char
                 # TF-IDF cosine of title + start of description
                 "full_id_shared", "full_id_strong", "full_id_conflict", "full_text", "description_missing",
                 # near-identical identifiers (variant suffixes, typos): prefix+suffix similarity, digits
                 "id_similarity", "id_digits_agree", "id_digits_differ",
                 # the offer tables' gtin columns (index format 3): equal / different valid GTINs
                 "gtin_equal", "gtin_conflict")
FULL_TEXT_CHARS = 300  # description characters in the ``full_text`` cosine
_NUM = re.compile(r"\d+(?:\.\d+)?")


def _tokens(s: str) -> set[str]:
    return set(normalize(s).split())


def _partial(a: list[str], b: list[str]) -> bool:
    return any(x != y and (x in y or y in x) and min(len(x), len(y)) >= 5 for x in a for y in b)


def id_similarity(a: str, b: str) -> float:
    """(common prefix + common suffix) / longer length, at most 1: ``du1100ss``/``du1100xtps`` 0.7."""
    n = min(len(a), len(b))
    p = 0
    while p < n and a[p] == b[p]:
        p += 1
    q = 0
    while q < n - p and a[-1 - q] == b[-1 - q]:
        q += 1
    return (p + q) / max(len(a), len(b), 1)


def _digits(t: str) -> str:
    return "".join(c for c in t if c.isdigit())


def best_id_pair(a: set[str] | list[str], b: set[str] | list[str]) -> tuple[float, bool, bool]:
    """Over all identifier pairs: best similarity, whether any pair has the same ≥ 3 digits, and whether
    the most similar pair's digits differ (``msmt1g``/``msmt2g``: a different capacity, not a variant)."""
    best, agree, differ = 0.0, False, False
    for x in a:
        dx = _digits(x)
        for y in b:
            dy = _digits(y)
            sim = id_similarity(x, y)
            if len(dx) >= 3 and dx == dy:
                agree = True
            if sim > best:
                best, differ = sim, dx != dy
    return best, agree, differ


def pair_feature_matrix(fused: np.ndarray, text: np.ndarray, image: np.ndarray, lexical: np.ndarray,
                        src_idents: list[list[str]], tgt_idents: list[list[str]],
                        src_text: list[str], tgt_text: list[str], src_brand: list[str | None],
                        tgt_brand: list[str | None], src_price: np.ndarray, tgt_price: np.ndarray,
                        rank: np.ndarray, gap: np.ndarray, src_desc_idents: list[list[str]] | None = None,
                        tgt_desc_idents: list[list[str]] | None = None, full_text: np.ndarray | None = None,
                        desc_missing: np.ndarray | None = None, gtin: np.ndarray | None = None) -> np.ndarray:
    """float32[n_pairs, len(PAIR_FEATURES)]; ``text``/``image`` are NaN where a side lacks the modality.

    ``*_desc_idents``: identifiers found only in the description; ``full_text``: cosine of title +
    description; ``desc_missing``: a side has no description (the description features are 0 then);
    ``gtin``: 1 equal valid GTINs, -1 different ones, 0 a side has none.
    """
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
        if src_desc_idents is not None and tgt_desc_idents is not None:
            fa, fb = set(a) | set(src_desc_idents[i]), set(b) | set(tgt_desc_idents[i])
            both = fa & fb
            out[i, 17] = bool(both)
            out[i, 18] = any(len(x) >= 6 for x in both)
            # both sides name identifiers in their titles, and neither title id occurs anywhere on the other side
            out[i, 19] = bool(a and b and not (set(a) & fb) and not (set(b) & fa))
            out[i, 22], out[i, 23], out[i, 24] = best_id_pair(fa, fb)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (src_price > 0) & (tgt_price > 0)
        out[:, 12] = np.where(ok, np.abs(np.log(np.where(ok, src_price, 1) / np.where(ok, tgt_price, 1))), 0.0)
    out[:, 13] = ~ok
    out[:, 15] = np.log(rank)
    out[:, 16] = gap
    if full_text is not None:
        out[:, 20] = full_text
    if desc_missing is not None:
        out[:, 21] = desc_missing
    if gtin is not None:
        out[:, 25] = gtin > 0
        out[:, 26] = gtin < 0
    return out
