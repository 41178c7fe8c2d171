"""The real Ray job with and without lexical shards against a large generated index: peak RSS per actor kind
(sampled from ``ps`` every 0.5 s), wall and CPU time, and how many result rows the two runs share.

Uses the index ``bench_pipeline.py --parts match`` built (``--workdir``/match_N; its pmatch home is the one
beside it). The sources are ``--sources`` offers of its ``offers`` table, matched in dedup mode (``k = 10``)
by ``match_dataset`` on a local Ray instance (``--cpus``), one scoring actor (``workers=1``) so that both runs
have the same scoring parallelism. NB: that index was embedded with the stand-in text encoder and the sources
here with the real one, so the vector channel is not meaningful; this measures memory and time, and the two
runs' agreement (same code, same inputs).

Usage::

    python benchmarks/bench_lexical_ray.py --workdir /work/bench1m --n 100000 --shards 2 [--sources 300]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import duckdb

KINDS = {"LexicalShardStage": "shard actor", "OfferScorer": "scoring actor", "_shard_df": "df task"}


def _cpu_s(pid: str) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _sample(stop: threading.Event, peaks: dict[str, float], cpu: dict[str, list[float]]) -> None:
    """Peak RSS (GB) and CPU seconds (last minus first seen while of that kind) per Ray worker process, from
    ``ps`` / ``/proc`` every 0.5 s, until ``stop``."""
    while not stop.is_set():
        out = subprocess.run(["ps", "-eo", "pid,rss,args"], capture_output=True, text=True).stdout
        for line in out.splitlines()[1:]:
            parts = line.split(None, 2)
            if len(parts) < 3 or not parts[2].startswith("ray::"):
                continue
            for key, kind in KINDS.items():
                if key in parts[2]:
                    name = f"{kind} pid {parts[0]}"
                    peaks[name] = max(peaks.get(name, 0.0), int(parts[1]) / 2**20)
                    try:
                        c = _cpu_s(parts[0])
                    except (OSError, IndexError, ValueError):
                        continue
                    cpu.setdefault(name, [c, c])[1] = c
        stop.wait(0.5)


def run(args: argparse.Namespace, shards: int, src: Path, out: Path) -> dict:
    from pmatch_duckdb.distributed import match_dataset

    peaks: dict[str, float] = {}
    cpu: dict[str, list[float]] = {}
    stop = threading.Event()
    th = threading.Thread(target=_sample, args=(stop, peaks, cpu), daemon=True)
    th.start()
    t, c = time.perf_counter(), time.process_time()
    root = args.workdir / f"match_{args.n}"
    res = match_dataset(str(src), root / "idx", "offers", out, k=10, home=str(root / "home"), workers=1,
                        dedup=True, progress=False, lexical_shards=shards)
    wall = time.perf_counter() - t
    stop.set()
    th.join()
    return {"shards": shards, "wall_s": wall, "driver_cpu_s": time.process_time() - c, "rows": res.rows,
            "peaks": peaks, "cpu": {k: b - a for k, (a, b) in cpu.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path(".bench"))
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--sources", type=int, default=300)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    import ray

    print(f"# bench_lexical_ray {time.strftime('%Y-%m-%dT%H:%M:%S')}  n={args.n:,} shards={args.shards} "
          f"sources={args.sources} ray cpus={args.cpus}  load avg {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src.parquet"
        con = duckdb.connect(str(args.workdir / f"match_{args.n}" / "db.duckdb"), read_only=True)
        con.execute(f"COPY (SELECT * FROM offers USING SAMPLE {int(args.sources)} ROWS (reservoir, 1)) TO ? "
                    f"(FORMAT parquet)", [str(src)])
        con.close()
        ray.init(num_cpus=args.cpus, object_store_memory=300 * 2**20, include_dashboard=False, log_to_driver=False)
        results = []
        for s in (0, args.shards):
            results.append(run(args, s, src, Path(tmp) / f"m{s}.parquet"))
        ray.shutdown()
        q = duckdb.connect()
        a, b = (str(Path(tmp) / f"m{s}.parquet") for s in (0, args.shards))
        shared = q.execute("SELECT count(*) FROM read_parquet(?) x JOIN read_parquet(?) y USING (source_id, target_id) "
                           "WHERE abs(x.score - y.score) < 1e-6 AND x.decision = y.decision", [a, b]).fetchall()[0][0]
    for r in results:
        label = "whole TF-IDF in the scoring actor" if r["shards"] == 0 else f"{r['shards']} lexical shards"
        print(f"\n{label}: wall {r['wall_s']:.1f} s, driver CPU {r['driver_cpu_s']:.1f} s, Ray workers CPU "
              f"{sum(r['cpu'].values()):.1f} s (sampled), {r['rows']} result rows")
        for name, gb in sorted(r["peaks"].items(), key=lambda kv: re.sub(r"\d+", "", kv[0])):
            print(f"  {name:28s} peak RSS {gb:5.2f} GB  CPU {r['cpu'].get(name, 0.0):6.1f} s")
    print(f"\nrows of the sharded run equal to the unsharded run's (same source, target, score ±1e-6, decision): "
          f"{shared} of {results[0]['rows']}")
    print(f"# done {time.strftime('%Y-%m-%dT%H:%M:%S')}  load avg {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
