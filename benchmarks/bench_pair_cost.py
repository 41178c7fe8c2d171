"""Cost of the pair scorer at match time (issue 11): ``match_products`` with the scorer off and on, side by side.

Runs ``match_products(source, target, k := 10)`` in SQL on an existing database with a trained matcher
that has a pair scorer, alternating the connection setting ``pair_top_m=0`` (scorer off) and the bundle's
default ``m`` (on): off, on, off, on, ...; the first off/on pair warms caches and is not counted. Reports
wall seconds AND process CPU seconds per run (DuckDB's and onnxruntime's threads are in this process, so
CPU seconds stay meaningful on a shared machine), their on/off ratios, and the scorer's pairs per
CPU-second and per wall-second (pairs re-read = each source's ``m`` best candidates). The scorer's speed
does not depend on its weights, so any matcher with a pair scorer of the default size measures it.

Usage (after ``bench_quality.py --only abt-buy-full --workdir W``; any trained matcher name)::

    PMATCH_HOME=... python benchmarks/bench_pair_cost.py --db W/abt-buy-full.duckdb --matcher NAME \
        --source abt_test --target buy_all [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import pmatch_duckdb as pm
from pmatch_duckdb.api import context_of
from pmatch_duckdb.matchers import load_matcher


def run(con, source: str, target: str) -> tuple[float, float, int]:  # noqa: ANN001
    """One ``match_products`` → (wall s, process CPU s, rows)."""
    c0, w0 = time.process_time(), time.perf_counter()
    n = con.execute(f"SELECT count(*) FROM match_products('{source}', '{target}', k := 10)").fetchone()[0]
    return time.perf_counter() - w0, time.process_time() - c0, int(n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--matcher", required=True)
    ap.add_argument("--version", default="v1")
    ap.add_argument("--source", default="abt_test")
    ap.add_argument("--target", default="buy_all")
    ap.add_argument("--rounds", type=int, default=2, help="counted off/on rounds after one warm-up round")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    args = ap.parse_args(argv)
    con = pm.connect(args.db, matcher=args.matcher)
    con.execute(f"SET threads = {args.threads}")
    settings = context_of(con).settings
    m = load_matcher(args.matcher, args.version, settings.home)
    if m.pair is None:
        raise SystemExit(f"matcher {args.matcher} has no pair scorer")
    n_src = con.execute(f"SELECT count(*) FROM {args.source}").fetchone()[0]
    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} load avg {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"cpus {len(os.sched_getaffinity(0))} duckdb threads {args.threads}; match_products('{args.source}' "
          f"({n_src} offers), '{args.target}', k := 10); matcher {args.matcher} (pair scorer m = {m.pair.top_m}, "
          f"max_len {m.pair.max_len})")
    res: dict[str, list[tuple[float, float, int]]] = {"off": [], "on": []}
    try:
        for r in range(args.rounds + 1):
            for mode in ("off", "on"):
                pm.install(con, dataclasses.replace(settings, pair_top_m=0 if mode == "off" else None))
                out = run(con, args.source, args.target)
                print(f"  round {r} scorer {mode}: {out[0]:.1f} s wall, {out[1]:.1f} s CPU, {out[2]} rows", flush=True)
                if r:
                    res[mode].append(out)
    finally:
        pm.install(con, settings)
    off_w, off_c = (min(x[i] for x in res["off"]) for i in (0, 1))
    on_w, on_c = (min(x[i] for x in res["on"]) for i in (0, 1))
    pairs = n_src * m.pair.top_m
    print(f"| scorer | wall s (best of {args.rounds}) | CPU s (best of {args.rounds}) |\n|---|---|---|\n"
          f"| off (m=0) | {off_w:.1f} | {off_c:.1f} |\n| on (m={m.pair.top_m}) | {on_w:.1f} | {on_c:.1f} |\n"
          f"| ratio on/off | {on_w / off_w:.2f} | {on_c / off_c:.2f} |")
    print(f"scorer: ~{pairs} pairs re-read -> {pairs / max(on_c - off_c, 1e-9):.1f} pairs per CPU-second, "
          f"{pairs / max(on_w - off_w, 1e-9):.1f} pairs per wall-second (extra time of the on runs)")
    print(f"# done {time.strftime('%Y-%m-%dT%H:%M:%S')} load avg {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
