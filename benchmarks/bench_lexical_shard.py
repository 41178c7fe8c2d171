"""The lexical channel at scale: can char n-gram TF-IDF be sharded without losing recall?

Today's channel (``features/lexical.py``: crc32-hashed char 2–5-grams of brand + title, sublinear tf, smoothed
idf fitted on the whole target, L2 rows) needs corpus statistics (document frequencies) of the whole target.
Candidate generation is measured alone — recall@k of the lexical top-k for every true pair — on the real
Abt-Buy and Amazon-Google tables (``../shared/data``), for:

* ``tfidf (today)``        — ``CharTfidf`` on the whole target, as match_products uses it;
* ``tfidf, S shards, df summed`` — the target split into S shards; each shard counts its document frequencies,
  the counts are summed (df is additive), each shard weighs and searches its own rows with the global idf, and
  the per-shard top-k lists are merged: the shardable form of today's channel, run with the code the Ray path
  uses (``document_frequencies``, ``CharTfidf(shard, df=, n_docs=)``, ``merge_top_k``; contiguous shards);
* ``tfidf, S shards, local idf`` — each shard uses only its own df (what naive sharding gives);
* ``hashing tf (no idf)``  — a fixed hashing vectorizer, no corpus statistics at all (sublinear tf, L2).

Usage::

    python benchmarks/bench_lexical_shard.py [--data ../shared/data] [--shards 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb
import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_match_real import DATASETS, load_dataset  # noqa: E402

from pmatch_duckdb.features.lexical import (  # noqa: E402
    N_FEATURES,
    CharTfidf,
    _counts,
    document_frequencies,
    merge_top_k,
)
from pmatch_duckdb.offer_vectors import lexical_input  # noqa: E402
from pmatch_duckdb.offers import Offer  # noqa: E402

KS = (1, 5, 10, 20)


def _weigh(counts: sp.csr_matrix, idf: np.ndarray | None) -> sp.csr_matrix:
    m = counts.copy().astype(np.float32)
    m.data = (1.0 + np.log(m.data)) * (idf[m.indices] if idf is not None else 1.0)
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ m)


def _idf(df: np.ndarray, n: int) -> np.ndarray:
    return np.log((1.0 + n) / (1.0 + df)).astype(np.float32) + 1.0


def _topk(q: sp.csr_matrix, m: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    dense = (q @ m.T).toarray()
    kk = min(k, dense.shape[1])
    part = np.argpartition(-dense, kk - 1, axis=1)[:, :kk]
    sc = np.take_along_axis(dense, part, axis=1)
    order = np.argsort(-sc, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(sc, order, axis=1)


def sharded(queries: list[str], corpus: list[str], shards: int, k: int, global_df: bool) -> np.ndarray:
    """Per-shard top-k merged; shard s holds rows s::shards (positions into ``corpus``)."""
    parts = [np.arange(s, len(corpus), shards) for s in range(shards)]
    counts = [_counts([corpus[i] for i in p]) for p in parts]
    qc = _counts(queries)
    if global_df:  # the only cross-shard state: summed document frequencies and the row count
        df = sum(np.bincount(c.indices, minlength=N_FEATURES) for c in counts).astype(np.float32)
        idfs = [_idf(df, len(corpus))] * shards
    else:
        idfs = [_idf(np.bincount(c.indices, minlength=N_FEATURES).astype(np.float32), c.shape[0]) for c in counts]
    cand_i, cand_s = [], []
    for p, c, idf in zip(parts, counts, idfs, strict=True):
        i, s = _topk(_weigh(qc, idf), _weigh(c, idf), k)
        cand_i.append(p[i])
        cand_s.append(s)
    ii, ss = np.hstack(cand_i), np.hstack(cand_s)
    order = np.argsort(-ss, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ii, order, axis=1)


def sharded_shipped(queries: list[str], corpus: list[str], shards: int, k: int) -> np.ndarray:
    """The Ray path's lexical shards (contiguous ranges, global df, merged top-k), single process."""
    bounds = np.linspace(0, len(corpus), shards + 1).round().astype(int)
    ranges = list(zip(bounds[:-1], bounds[1:], strict=True))
    df = sum(document_frequencies(corpus[a:b]) for a, b in ranges)
    idx, val = np.full((len(queries), 0), -1, np.int64), np.zeros((len(queries), 0), np.float32)
    for a, b in ranges:
        i, v = CharTfidf(corpus[a:b], df=df, n_docs=len(corpus)).top_k(queries, k)
        idx, val = merge_top_k(idx, val, np.where(i >= 0, i + a, -1), v, k)
    return idx


def recall(top: np.ndarray, src_ids: list[str], tgt_ids: list[str], truth: set[tuple[str, str]]) -> list[float]:
    pos = {s: i for i, s in enumerate(src_ids)}
    out = []
    for k in KS:
        hit = sum(tgt_ids[j] == t for s, t in truth for j in top[pos[s], :k])
        out.append(hit / len(truth))
    return out


def _texts(con: duckdb.DuckDBPyConnection, view: str) -> tuple[list[str], list[str]]:
    """Ids and what the lexical channel sees (brand + title) of an offer view."""
    rows = con.execute(f"SELECT CAST(id AS VARCHAR), title, brand FROM {view}").fetchall()
    return [r[0] for r in rows], [lexical_input(Offer(id=r[0], title=r[1], brand=r[2])) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap.add_argument("--shards", type=int, default=4)
    args = ap.parse_args()
    k = max(KS)
    print(f"{'dataset':14s} {'method':36s} " + " ".join(f"{'R@' + str(x):>6s}" for x in KS) + "  same top-20 as today")
    for spec in DATASETS.values():
        con = duckdb.connect()
        truth = load_dataset(con, args.data, spec)

        sid, sq = _texts(con, spec.source)
        tid, tc = _texts(con, spec.target)
        today, _ = CharTfidf(tc).top_k(sq, k)
        runs = {
            "tfidf (today)": today,
            f"tfidf, {args.shards} shards, df summed": sharded_shipped(sq, tc, args.shards, k),
            f"tfidf, {args.shards} shards, local idf": sharded(sq, tc, args.shards, k, global_df=False),
            "hashing tf (no idf)": _topk(_weigh(_counts(sq), None), _weigh(_counts(tc), None), k)[0],
        }
        for name, top in runs.items():
            r = recall(top, sid, tid, truth)
            same = np.mean([set(a) == set(b) for a, b in zip(top, today, strict=True)])
            print(f"{spec.name:14s} {name:36s} " + " ".join(f"{x:6.3f}" for x in r) + f"  {same:6.3f}")


if __name__ == "__main__":
    main()
