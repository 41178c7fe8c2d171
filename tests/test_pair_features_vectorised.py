"""The numpy pair features (``pair_features_at``) equal the per-pair Python loop they replaced (kept here only,
as the reference), on generated offers with model numbers, descriptions, missing brands and typos, plus edge
cases; and the text of each offer is tokenised once, not once per pair (operation count, not wall time)."""

from __future__ import annotations

import re

import numpy as np

from pmatch_duckdb import pair_features as pf
from pmatch_duckdb.demo.grouped import grouped_offers
from pmatch_duckdb.features.lexical import identifiers, normalize
from pmatch_duckdb.pair_features import (
    PAIR_FEATURES,
    PairTexts,
    best_id_pair,
    pair_feature_matrix,
    pair_features_at,
)

_NUM = re.compile(r"\d+(?:\.\d+)?")


def _tokens(s: str) -> set[str]:
    return set(normalize(s).split())


def _partial(a: list[str], b: list[str]) -> bool:
    return any(x != y and (x in y or y in x) and min(len(x), len(y)) >= 5 for x in a for y in b)


def reference_text_columns(src_idents, tgt_idents, src_text, tgt_text, src_brand, tgt_brand, src_desc, tgt_desc):
    """The per-pair loop of pair_feature_matrix before it was vectorised (columns 6-11, 14, 17-19, 22-24), and
    the colour columns (27-28) written the same way."""
    n = len(src_idents)
    out = np.zeros((n, len(PAIR_FEATURES)), dtype=np.float32)
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
        ca = {pf.COLOURS[w] for w in ta - set(ba.split()) if w in pf.COLOURS}
        cb = {pf.COLOURS[w] for w in tb - set(bb.split()) if w in pf.COLOURS}
        out[i, 27] = bool(ca & cb)
        out[i, 28] = bool(ca and cb and not ca & cb)
        qa, qb = pf.quantities(src_text[i]), pf.quantities(tgt_text[i])
        units_both = {u for u, _ in qa} & {u for u, _ in qb}
        units_agreeing = {u for u, _ in qa & qb}
        out[i, 29] = bool(units_agreeing)
        out[i, 30] = bool(units_both - units_agreeing)
        fa, fb = set(a) | set(src_desc[i]), set(b) | set(tgt_desc[i])
        both = fa & fb
        out[i, 17] = bool(both)
        out[i, 18] = any(len(x) >= 6 for x in both)
        out[i, 19] = bool(a and b and not (set(a) & fb) and not (set(b) & fa))
        out[i, 22], out[i, 23], out[i, 24] = best_id_pair(fa, fb)
    return out


def _differ_ties(fa: set[str], fb: set[str]) -> set[bool]:
    """The 'digits differ' values of all identifier pairs sharing the best similarity (the old loop took the
    first in set order, which depends on the string hash seed: ambiguous where this has two values)."""
    sims = {(x, y): pf.id_similarity(x, y) for x in fa for y in fb}
    if not sims or max(sims.values()) == 0:
        return {False}
    best = max(sims.values())
    return {pf._digits(x) != pf._digits(y) for (x, y), v in sims.items() if v == best}


def _generated(n: int = 400, n_pairs: int = 6000):
    t = grouped_offers(n, seed=7)
    titles, brands = t["title"].to_pylist(), t["brand"].to_pylist()
    descs = t["description"].to_pylist()
    idents = [identifiers(f"{b or ''} {x}") for b, x in zip(brands, titles, strict=True)]
    desc_ids = [[d for d in identifiers(x) if d not in ids] for x, ids in zip(descs, idents, strict=True)]
    # edge cases: empty / None title, brand only in the other title, unicode, tied and nested identifiers
    titles += ["", None, "Ünïcode Ñame 4K 55in", "msmt1g msmt2g kit", "ab12345 xy", "ab1234 pack 2.5", "xq1c",
               "xq2c xq1d", "Black & Decker drill", "Orange phone Gray/Silver", "orange phone grey",
               "HyperX 4GB DDR3 1600MHz", "HyperX 4 GB DDR3 1.866 GHz 2-pack", "SSD 2TB 2 pack", "SSD 2000 GB"]
    brands += [None, "Nordwind", "Ünïcode", None, "Acme Corp", "acme  corp", None, "Xq", "Black & Decker", "Orange",
               "Orange", None, None, None, None]
    idents += [[], [], ["55in4k"], ["msmt1g", "msmt2g"], ["ab12345"], ["ab1234"], ["xq1c"], ["xq2c", "xq1d"], [], [],
               [], [], [], [], []]
    desc_ids += [[], ["zz9999"], [], ["msmt3g"], ["abc999999"], [], [], [], [], [], [], [], [], [], []]
    m = len(titles)
    rng = np.random.default_rng(0)
    groups = np.array(t["group_id"].to_pylist() + [f"e{i}" for i in range(m - n)])
    s = rng.integers(0, m, n_pairs)
    near = np.clip(s + rng.integers(-3, 4, n_pairs), 0, m - 1)  # neighbours: mostly the same group/line
    tt = np.where(rng.random(n_pairs) < 0.6, near, rng.integers(0, m, n_pairs))
    edge = np.arange(n, m)
    s, tt = np.r_[s, np.repeat(edge, m - n), edge], np.r_[tt, np.tile(edge, m - n), rng.integers(0, n, m - n)]
    return titles, brands, idents, desc_ids, s, tt, groups


def test_vectorised_pair_features_equal_the_per_pair_loop():
    titles, brands, idents, desc_ids, s, t, groups = _generated()
    n = len(s)
    rng = np.random.default_rng(1)
    fused, text = rng.random(n).astype(np.float32), np.where(rng.random(n) < 0.2, np.nan, rng.random(n))
    price = np.where(rng.random(len(titles)) < 0.2, np.nan, rng.random(len(titles)) * 100)
    rank, gap = rng.integers(1, 30, n).astype(np.float64), rng.random(n).astype(np.float32)
    full, missing, gtin = rng.random(n), rng.random(n) < 0.5, rng.integers(-1, 2, n)
    texts = PairTexts(idents, titles, brands, desc_ids)
    got = pair_features_at(texts, texts, s, t, fused, text, text, fused, price[s], price[t], rank, gap,
                           full, missing, gtin)
    ref = reference_text_columns([idents[i] for i in s], [idents[j] for j in t], [titles[i] for i in s],
                                 [titles[j] for j in t], [brands[i] for i in s], [brands[j] for j in t],
                                 [desc_ids[i] for i in s], [desc_ids[j] for j in t])
    cols = [6, 7, 8, 9, 10, 11, 14, 17, 18, 19, 22, 23, 27, 28, 29, 30]
    np.testing.assert_array_equal(got[:, cols], ref[:, cols])
    # the digits-differ flag: equal wherever the best identifier pair is unambiguous; at a tie, 'differ' only
    # if the digits differ for every best pair
    ties = [_differ_ties(set(idents[i]) | set(desc_ids[i]), set(idents[j]) | set(desc_ids[j]))
            for i, j in zip(s.tolist(), t.tolist(), strict=True)]
    plain = np.array([len(v) == 1 for v in ties])
    np.testing.assert_array_equal(got[plain, 24], ref[plain, 24])
    tied = [i for i, v in enumerate(ties) if len(v) > 1]
    assert tied and all(got[i, 24] == (ties[i] == {True}) for i in tied)
    # the whole row equals the per-pair form's (the public signature, texts given per pair)
    per_pair = pair_feature_matrix(fused, text, text, fused, [idents[i] for i in s], [idents[j] for j in t],
                                   [titles[i] for i in s], [titles[j] for j in t], [brands[i] for i in s],
                                   [brands[j] for j in t], price[s], price[t], rank, gap,
                                   [desc_ids[i] for i in s], [desc_ids[j] for j in t], full, missing, gtin)
    np.testing.assert_array_equal(per_pair, got)
    # the data exercise every column: a test of all-zero columns would prove little
    assert all(got[:, c].any() and not got[:, c].all() for c in [*cols, 24]), [PAIR_FEATURES[c] for c in cols]
    assert (groups[s] == groups[t]).sum() > 500


def test_each_offer_text_is_tokenised_once(monkeypatch):
    """normalize runs once per distinct offer of each side (title and brand), not once per pair."""
    titles, brands, idents, desc_ids, s, t, _ = _generated()
    calls = []
    real = pf.normalize
    monkeypatch.setattr(pf, "normalize", lambda x: calls.append(1) or real(x))
    n = len(s)
    z = np.zeros(n)
    texts = PairTexts(idents, titles, brands, desc_ids)
    pair_features_at(texts, texts, s, t, z, z, z, z, z, z, np.ones(n), z)
    assert len(calls) == 2 * (len(np.unique(s)) + len(np.unique(t))), (len(calls), n)
