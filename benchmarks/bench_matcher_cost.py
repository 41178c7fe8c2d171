"""``match_products`` wall and CPU time with two matchers on the same tables, interleaved (one run, ratios).

Used for the cost of the ``token_diff`` feature (benchmarks/README.md, "The word-difference feature"): the two
matchers ``bench_quality.py`` trains on a full-table part with and without it, e.g.::

    python benchmarks/bench_matcher_cost.py /tmp/q15/wd_full/abt-buy-full.duckdb abt_test buy_all \\
        bq-abt-buy-full-trained-no-pair-model bq-abt-buy-full-trained-no-pair-model-no-token-diff

Each matcher gets its own connection; one warm-up query each, then ``--rounds`` rounds alternating A, B.
"""

from __future__ import annotations

import argparse
import time

import pmatch_duckdb as pm


def _literal(s: str) -> str:
    """A SQL string literal (table names are passed to match_products as strings)."""
    return "'" + s.replace("'", "''") + "'"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("database")
    ap.add_argument("source")
    ap.add_argument("target")
    ap.add_argument("matcher_a")
    ap.add_argument("matcher_b")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--home", default=None, help="pmatch home (default $PMATCH_HOME)")
    a = ap.parse_args(argv)
    sql = (f"SELECT count(*) FROM match_products({_literal(a.source)}, {_literal(a.target)}, "
           f"k := {int(a.k)})")
    cons = {n: pm.connect(a.database, home=a.home, matcher=n) for n in (a.matcher_a, a.matcher_b)}
    for c in cons.values():
        c.execute(sql).fetchall()  # warm-up: views, ONNX sessions, caches
    runs: dict[str, list[tuple[float, float, int]]] = {n: [] for n in cons}
    for _ in range(a.rounds):
        for n, c in cons.items():
            t0, c0 = time.perf_counter(), time.process_time()
            rows = c.execute(sql).fetchall()[0][0]
            runs[n].append((time.perf_counter() - t0, time.process_time() - c0, rows))

    def median(n: str, i: int) -> float:
        v = sorted(r[i] for r in runs[n])
        return v[len(v) // 2]

    for n in cons:
        print(f"{n}: {runs[n][0][2]} rows; wall median {median(n, 0):.3f} s, CPU median {median(n, 1):.3f} s "
              f"(wall per run {[round(r[0], 3) for r in runs[n]]})")
    print(f"ratio A/B: wall {median(a.matcher_a, 0) / median(a.matcher_b, 0):.3f}, "
          f"CPU {median(a.matcher_a, 1) / median(a.matcher_b, 1):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
