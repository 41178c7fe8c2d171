"""Cost of the zero-shot conflict penalty at match time: ``match_products`` against the same catalog indexed with
and without it, side by side.

The zero-shot score lowers pairs whose titles say two products (``pair_features.conflict_evidence``: model
numbers, colours or quantities that differ), which needs the candidates' titles, brands and description
identifiers besides what the score read before. This copies the database (``bench_pair_cost.scratch_db``), puts
the target table's rows in a second table indexed with ``conflict_penalty`` 0, and runs
``match_products(source, T, k := 10)`` on the two in alternation: a warm-up round (views built, not counted), then
``--rounds`` counted rounds. Reports wall and process CPU seconds (best of the rounds), their ratio, and how many
returned pairs change decision.

Usage (after ``bench_quality.py --only abt-buy-full --workdir W``)::

    python benchmarks/bench_conflict_cost.py --db W/abt-buy-full.duckdb --source abt --target buy_all
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pair_cost import scratch_db, scratch_home  # noqa: E402

import pmatch_duckdb as pm  # noqa: E402
from pmatch_duckdb.fusion import FusionConfig  # noqa: E402
from pmatch_duckdb.home import pmatch_home  # noqa: E402
from pmatch_duckdb.sqlident import quote_ident  # noqa: E402


def run(con, source: str, target: str) -> tuple[float, float, dict]:  # noqa: ANN001
    """One ``match_products`` → (wall s, process CPU s, {(source, target rank): decision})."""
    c0, w0 = time.process_time(), time.perf_counter()
    rows = con.execute(f"SELECT source_id, rank, target_id, decision FROM match_products('{source}', '{target}', "
                       "k := 10)").fetchall()
    return time.perf_counter() - w0, time.process_time() - c0, {(s, t): d for s, _, t, d in rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--source", default="abt")
    ap.add_argument("--target", default="buy_all")
    ap.add_argument("--home", type=Path, default=pmatch_home(), help="the pmatch home holding the models")
    ap.add_argument("--rounds", type=int, default=3, help="counted rounds after one warm-up round")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pmatch-conflict-cost-"))
    try:
        copy = scratch_db(args.db, work)
        scratch_home(args.home, [], work / "home")
        con = pm.connect(copy, home=work / "home", matcher="none")
        con.execute(f"SET threads = {args.threads}")
        off = f"{args.target}_no_penalty"
        con.execute(f"CREATE OR REPLACE TABLE {quote_ident(off)} AS SELECT * FROM {quote_ident(args.target)}")
        pm.index(con, args.target, progress=False, rebuild=True)  # today's default settings
        pm.index(con, off, progress=False, rebuild=True, fusion=FusionConfig(conflict_penalty=0.0))
        n_src = con.execute(f"SELECT count(*) FROM {quote_ident(args.source)}").fetchone()[0]
        print(f"# bench_conflict_cost {time.strftime('%Y-%m-%dT%H:%M:%S')} load avg "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} cpus {len(os.sched_getaffinity(0))} duckdb threads "
              f"{args.threads}; match_products('{args.source}' ({n_src} offers), '{args.target}', k := 10)")
        arms = [("conflict penalty 0.2 (default)", args.target), ("no conflict penalty", off)]
        res: dict[str, list[tuple[float, float]]] = {a: [] for a, _ in arms}
        decisions: dict[str, dict] = {}
        for r in range(args.rounds + 1):
            for label, table in arms:
                w, c, dec = run(con, args.source, table)
                decisions[label] = dec
                print(f"  round {r} {label}: {w:.2f} s wall, {c:.2f} s CPU, {len(dec)} rows", flush=True)
                if r:
                    res[label].append((w, c))
        con.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {a: (min(x[0] for x in v), min(x[1] for x in v)) for a, v in res.items()}
    base_w, base_c = best["no conflict penalty"]
    print(f"| zero-shot score | wall s (best of {args.rounds}) | CPU s (best of {args.rounds}) | wall / without | "
          "CPU / without |\n|---|---|---|---|---|")
    for label, _ in reversed(arms):
        w, c = best[label]
        print(f"| {label} | {w:.2f} | {c:.2f} | {w / base_w:.2f} | {c / base_c:.2f} |")
    a, b = decisions["conflict penalty 0.2 (default)"], decisions["no conflict penalty"]
    common = a.keys() & b.keys()
    moved: dict[tuple[str, str], int] = {}
    for key in common:
        if a[key] != b[key]:
            moved[(b[key], a[key])] = moved.get((b[key], a[key]), 0) + 1
    print(f"# pairs returned by both: {len(common)} (only with the penalty {len(a.keys() - b.keys())}, only without "
          f"{len(b.keys() - a.keys())}); decisions moved (without -> with): "
          + (", ".join(f"{x} -> {y} {n}" for (x, y), n in sorted(moved.items())) or "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
