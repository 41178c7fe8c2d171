"""The vector channel's ANN width against exact search (issue 16: what fewer IVF probes cost).

On the generated index ``bench_pipeline.py`` builds (``--workdir``/match_N), for ``--sources`` offers sampled
from it (dedup, their stored vectors reused), per ``nprobes`` value:

* CPU of ``TargetView.vector_candidates`` (top-31, what ``candidate_pairs`` asks for at k = 10) and of the
  whole ``match`` (ms per source);
* of the first ``--exact`` sources: recall of the exact top-31 by fused cosine (a chunked scan of the stored
  vectors, the source itself excluded) in the ANN top-31, and how much of the exact top-10 is inside it;
* the final top-10 pairs (and decisions) ``match`` returns, shared with the first ``nprobes`` value's.

Usage::

    python benchmarks/bench_ann_nprobes.py --n 100000 --workdir /work/bench1m --nprobes 20,10,5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_pipeline as B  # noqa: E402

import pmatch_duckdb.matching as M  # noqa: E402
from pmatch_duckdb.api import context_of  # noqa: E402
from pmatch_duckdb.home import pmatch_home  # noqa: E402
from pmatch_duckdb.offers import read_offers  # noqa: E402


def exact_top(view: M.TargetView, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-``k`` rows (positions, unordered) by cosine of the stored ``vector`` column, scanned in batches."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    off = 0
    for b in view.dataset.to_batches(columns=["vector"], batch_size=50_000):
        v = np.asarray(b.column(0).values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(b), -1)
        s = np.concatenate([best_s, q @ v.T], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(off, off + len(b)), (len(q), len(b)))], axis=1)
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, part, 1), np.take_along_axis(i, part, 1)
        off += len(b)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=Path(".bench"))
    ap.add_argument("--sources", type=int, default=1000)
    ap.add_argument("--exact", type=int, default=300)
    ap.add_argument("--nprobes", default="20,10,5")
    a = ap.parse_args()
    probes = [int(x) for x in a.nprobes.split(",")]
    B._fake_text_encoder()
    con, index, _ = B.build_match_index(a.n, a.workdir / f"match_{a.n}", pmatch_home(None))
    ctx = context_of(con)
    view = M.target_view(index, ctx.settings.home)
    con.execute(f"CREATE OR REPLACE TEMP TABLE src AS SELECT * FROM offers USING SAMPLE {a.sources} ROWS (reservoir, 1)")
    offers = read_offers(con, "src")
    src = M.source_vectors(offers, ctx.settings, view.fusion, reuse=view, matcher=view.matcher)
    M.match(src.take(np.arange(min(50, len(offers)))), view, 10, exclude_self=True)  # warm the index caches
    runs = {}
    for npb in probes:
        M.ANN_NPROBES = npb
        c = time.process_time()
        vidx, _ = view.vector_candidates(src.fused, 31)
        c_vec = time.process_time() - c
        c = time.process_time()
        cand = M.match(src, view, 10, exclude_self=True)
        c_match = time.process_time() - c
        runs[npb] = (vidx, cand)
        print(f"nprobes {npb}: vector search {1e3 * c_vec / len(offers):.2f} ms CPU per source, "
              f"match {1e3 * c_match / len(offers):.2f} ms CPU per source", flush=True)
    ne = min(a.exact, len(offers))
    exact = exact_top(view, src.fused[:ne], 32)
    self_pos = view.positions(src.ids[:ne])
    truth31 = [set(exact[i].tolist()) - {int(self_pos[i])} for i in range(ne)]
    truth10 = [set([r for r in exact[i].tolist() if r != self_pos[i]][:10]) for i in range(ne)]
    base = runs[probes[0]][1]
    base_pairs = dict(zip(zip(base.source.tolist(), base.target.tolist(), strict=True), base.decision, strict=True))
    print(f"# {a.n:,}-offer index, {len(offers)} sources ({ne} against exact search)")
    for npb in probes:
        vidx, cand = runs[npb]
        r31 = np.mean([len(set(vidx[i].tolist()) & t) / max(1, len(t)) for i, t in enumerate(truth31)])
        r10 = np.mean([len(set(vidx[i].tolist()) & t) / max(1, len(t)) for i, t in enumerate(truth10)])
        pairs = dict(zip(zip(cand.source.tolist(), cand.target.tolist(), strict=True), cand.decision, strict=True))
        kept = len(pairs.keys() & base_pairs.keys()) / max(1, len(base_pairs))
        same = sum(pairs.get(k) == d for k, d in base_pairs.items()) / max(1, len(base_pairs))
        print(f"nprobes {npb}: exact top-31 in ANN top-31 {r31:.4f}; exact top-10 in ANN top-31 {r10:.4f}; final top-10 "
              f"pairs shared with nprobes {probes[0]} {kept:.4f} (same decision {same:.4f})")
    con.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
