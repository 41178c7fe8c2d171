"""What the approximate channels of a large target cost in recall (issues 12 and 16).

On the generated index ``bench_pipeline.py`` builds (``--workdir``/match_N, offers of
:func:`pmatch_duckdb.demo.grouped.grouped_offers` with seed 0, whose product groups are known), for
sources that have siblings in their group:

* ``lexical``: same-group recall@20 of the char TF-IDF channel alone, exact vs approximate
  (``APPROX_TOPK_MIN_ROWS``; ``PRUNE_DF`` 5,000 = the default, and 50,000), with CPU ms per query;
* ``union``: same-group recall of ``candidate_pairs`` (vector ANN + lexical + identifiers, k = 10, what
  ``match_products`` scores) with the lexical channel approximate (both ``PRUNE_DF``) and exact.

Usage::

    python benchmarks/bench_match_recall.py --n 1000000 --workdir /work/bench1m [--sources 300]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np

import pmatch_duckdb.features.lexical as L
import pmatch_duckdb.matching as M
from pmatch_duckdb.demo.grouped import grouped_offers
from pmatch_duckdb.offer_vectors import OfferVectors
from pmatch_duckdb.store import OfferIndex


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--workdir", type=Path, default=Path(".bench"))
    ap.add_argument("--sources", type=int, default=300)
    a = ap.parse_args()
    view = M.TargetView(OfferIndex(a.workdir / f"match_{a.n}" / "idx", "offers"), None)
    g = grouped_offers(a.n, seed=0)
    grp = dict(zip(g["id"].to_pylist(), g["group_id"].to_pylist(), strict=True))
    group = np.array([grp[i] for i in view._ids.to_pylist()])
    del g, grp
    cnt = Counter(group.tolist())
    rng = np.random.default_rng(0)
    cand = np.array([i for i in rng.permutation(a.n)[:20 * a.sources] if cnt[group[i]] > 1][:a.sources])
    others = np.array([cnt[group[i]] - 1 for i in cand])
    src = OfferVectors.from_arrow(view.row_table(cand))
    print(f"# {a.n:,}-offer generated index, {len(cand)} sources with siblings")
    default_df = L.PRUNE_DF
    for label, df_ in (("exact", None), (f"approximate PRUNE_DF={default_df}", default_df),
                       ("approximate PRUNE_DF=50000", 50_000)):
        L.APPROX_TOPK_MIN_ROWS = 1 << 62 if df_ is None else min(L.APPROX_TOPK_MIN_ROWS, a.n)
        L.PRUNE_DF = df_ or default_df
        c = time.process_time()
        idx, _ = view.tfidf.top_k(src.lexical, 21)
        ms = 1000 * (time.process_time() - c) / len(cand)
        found = [(group[row[(row >= 0) & (row != i)][:20]] == group[i]).sum() for row, i in zip(idx, cand, strict=True)]
        print(f"lexical channel alone, {label}: same-group recall@20 {np.mean(np.array(found) / others):.4f}, "
              f"{ms:.1f} ms CPU per query")
        c = time.process_time()
        s, t = M.candidate_pairs(src, view, 10, exclude_self=True)
        ms = 1000 * (time.process_time() - c) / len(cand)
        hit = np.bincount(s, weights=group[t] == group[cand[s]], minlength=len(cand))
        print(f"candidate union (vector + lexical + identifiers), {label}: same-group recall "
              f"{np.mean(hit / others):.4f}, {len(s) / len(cand):.1f} candidates per source, {ms:.1f} ms CPU per source")
        L.APPROX_TOPK_MIN_ROWS = 100_000


if __name__ == "__main__":
    main()
