"""What a reject audit adds to ``pm_queue_review`` on a large match result, and what ``pmatch calibrate --matches``
costs there: wall time and peak memory.

The queue reads the result's review / accept pairs (and labelled ones) into Python; a reject audit
(``audit_rejects := N``) draws its stratified sample of the rejected pairs in DuckDB (``audit.draw_rejects``), so
the rejected rows, nine in ten of a top-10 result, never leave it. This script measures that on a generated
result of ``--rows`` rows (``--k`` candidates per source; the best candidate a random score in 0.6-1.0, the others
in 0-0.55, so about 1 / k of the rows are accepted or reviewed), in a child process per measurement (peak RSS is
per process): the plain queue, then the queue with the audit (and, ``--compare-with DIR``, the audit with the code
of another checkout, e.g. a git worktree of an earlier commit), and ``calibrate --matches``' count of the result's
review band before and after a calibration (the same two ways), ``--rounds`` times interleaved, and prints the
ratios of the medians measured side by side.

Generated data, because the point is size: the real result sets in ../shared/data hold about 60,000 pairs, where
either way takes a second.

Usage::

    python benchmarks/bench_queue_scale.py --rows 3000000 --audit-rejects 200 --rounds 3 [--compare-with /tmp/old]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _make(db: Path, rows: int, k: int) -> None:
    import pmatch_duckdb as pm

    con = pm.connect(db)
    con.execute(f"""CREATE TABLE big AS SELECT 'feed' AS source_table, 's' || (i // {k}) AS source_id,
        'catalog' AS target_table, 't' || (hash(i) % 1000000) AS target_id,
        CASE WHEN i % {k} = 0 THEN 0.6 + 0.4 * random() ELSE 0.55 * random() END AS score,
        (i % {k}) + 1 AS rank FROM range({rows}) t(i)""")
    con.execute("CREATE TABLE res AS SELECT *, CASE WHEN score >= 0.8 THEN 'accept' WHEN score >= 0.55 THEN 'review' "
                "ELSE 'reject' END AS decision FROM big")
    con.close()


def _child(db: str, audit: int, queue: str) -> None:
    """One measurement: ``pm_queue_review`` (``audit`` >= 0), or (``audit`` -1) ``pmatch calibrate --matches``' count
    of the review band before and after, for a calibration that lowers the review threshold 0.55 -> 0.50."""
    import resource

    import pmatch_duckdb as pm
    from pmatch_duckdb.api import context_of
    from pmatch_duckdb.review.calibrate import Calibration, review_band_counts
    from pmatch_duckdb.review.queue import queue_review

    con = pm.connect(db)
    t = time.perf_counter()
    if audit >= 0:
        st = queue_review(con, "res", queue, accept_sample=0.05, audit_rejects=audit)
        got = {"queued": st.queued, "reject_samples": st.reject_samples}
    else:
        cal = Calibration("zero-shot", "catalog", 0, 0, 0, 0.8, 0.55, 0.8, 0.5, 0.95, None, None, 0)
        got = {"queued": review_band_counts(con, context_of(con), "res", cal)}
    print(json.dumps({"wall_s": time.perf_counter() - t, **got,
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--audit-rejects", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare-with", default=None,
                    help="a checkout of another commit (e.g. a git worktree): a third arm runs the audit with its code")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child(a.child[0], int(a.child[1]), a.child[2])
        return
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "queue.duckdb"
        t = time.perf_counter()
        _make(db, a.rows, a.k)
        print(f"# bench_queue_scale {time.strftime('%Y-%m-%dT%H:%M:%S')}  load avg "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}  cpus={os.cpu_count()}")
        print(f"# result: {a.rows:,} rows, k = {a.k} (made in {time.perf_counter() - t:.1f} s); audit_rejects = "
              f"{a.audit_rejects}; {a.rounds} interleaved rounds, one child process each")
        arms = [("plain", 0, None), (f"audit_rejects := {a.audit_rejects}", a.audit_rejects, None),
                ("calibrate --matches: the review band before / after", -1, None)]
        if a.compare_with:
            code = str(Path(a.compare_with).resolve())
            arms += [(f"audit_rejects := {a.audit_rejects}, code at {a.compare_with}", a.audit_rejects, code),
                     (f"calibrate --matches: the review band before / after, code at {a.compare_with}", -1, code)]
        runs: dict[str, list[dict]] = {label: [] for label, _, _ in arms}
        for r in range(a.rounds):
            for i, (label, audit, code) in enumerate(arms):
                env = {**os.environ, **({"PYTHONPATH": code} if code else {})}
                out = subprocess.run([sys.executable, __file__, "--child", str(db), str(audit), f"q{i}_{r}"],
                                     check=True, capture_output=True, text=True, env=env).stdout
                runs[label].append(json.loads(out.strip().splitlines()[-1]))
        print("| call | queued (band: before, after) | wall s (median) | peak RSS GB (median) |")
        print("|---|---|---|---|")
        med = {}
        for label, got in runs.items():
            med[label] = (statistics.median(g["wall_s"] for g in got), statistics.median(g["peak_rss_gb"] for g in got))
            n = got[0]["queued"]
            print(f"| {label} | {f'{n:,}' if isinstance(n, int) else n} | {med[label][0]:.2f} | {med[label][1]:.2f} |")
        base = med["plain"]
        for label, (w, m) in med.items():
            if label != "plain":
                print(f"# {label} / plain queue: wall x{w / base[0]:.2f}, peak RSS x{m / base[1]:.2f}")

if __name__ == "__main__":
    main()
