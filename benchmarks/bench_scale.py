"""The Ray path's throughput: offers/s with 1 and 2 Ray workers side by side, and its overhead against pm_index.

Offers are real: Grocery Store photos (``../shared/data/grocery/train``), one photo per offer, titled with the
product's class name and coarse class; each offer costs one image decode + one EfficientNet-Lite0 run and one
MiniLM run, as a catalog row does. In one run, interleaved over ``--rounds``:

* ``pm_index``   — the in-process path (one process; ONNX sessions with ``--threads`` intra-op threads);
* ``ray x1``     — ``index_dataset(..., workers=1, threads_per_worker=--threads)`` on a local Ray instance;
* ``ray x2``     — the same with 2 workers (one actor per CPU, 1 ORT thread each).

Every run is a full rebuild of a fresh index (no incremental shortcut). The Ray instance is started once and
warmed (one small job) before timing: worker start-up is a per-cluster cost, reported separately. Ratios are
taken per round (the machine is shared and noisy) and the median is printed.

Each ``index_dataset`` call also pays per-JOB costs (its actor pool starts: imports, model hash checks, ONNX
sessions; pass 1 over the dataset; the LanceDB commit). To separate them from the per-offer cost, every round
also times each path on the first ``--small`` offers; the marginal rate ``(n - small) / (t_n - t_small)`` is
what more offers cost once a job runs, i.e. the throughput a large job approaches.

Usage (from the repository root)::

    PMATCH_HOME=... python benchmarks/bench_scale.py [--n 240] [--rounds 2] [--threads 1] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def grocery_offers(data: Path, n: int) -> pa.Table:
    """``n`` offers from the Grocery Store train photos, spread over all classes."""
    root = data / "grocery"
    classes = {}
    with open(root / "classes.csv") as f:
        for r in csv.DictReader(f):
            classes[int(r["Class ID (int)"])] = (r["Class Name (str)"], r["Coarse Class Name (str)"])
    rows = [line.split(",") for line in (root / "train.txt").read_text().splitlines() if line.strip()]
    step = max(1, len(rows) // n)
    picked = rows[::step][:n]
    return pa.table({
        "id": [f"G{i:05d}" for i in range(len(picked))],
        "title": [" ".join(classes[int(r[1])][::-1]).replace("-", " ") for r in picked],
        "images": [[str(root / r[0].strip())] for r in picked],
        "price": [1.0 + (i % 17) for i in range(len(picked))],
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=240)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads per worker / for pm_index")
    ap.add_argument("--small", type=int, default=32, help="offers of the per-job fixed-cost run (0: skip)")
    args = ap.parse_args()
    os.environ["PMATCH_ORT_THREADS"] = str(args.threads)

    import ray

    import pmatch_duckdb as pm
    from pmatch_duckdb.distributed import index_dataset

    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    offers = grocery_offers(args.data, args.n)
    pq.write_table(offers, tmp / "offers.parquet")
    if args.small:
        pq.write_table(offers.slice(0, args.small), tmp / "small.parquet")
    roots = [args.data / "grocery"]
    con = pm.connect(tmp / "shop.duckdb", image_roots=roots)
    con.execute("CREATE TABLE offers AS FROM read_parquet(?)", [str(tmp / "offers.parquet")])
    con.execute(f"CREATE TABLE small AS FROM offers LIMIT {int(args.small)}")
    n = offers.num_rows

    t = time.perf_counter()
    ray.init(num_cpus=2, object_store_memory=300 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    start_s = time.perf_counter() - t
    t = time.perf_counter()
    index_dataset(str(tmp / "offers.parquet"), tmp / "warm.pmatch", "offers", image_roots=roots, workers=2,
                  progress=False, batch_size=16)  # worker processes start, imports, model loading
    warm_s = time.perf_counter() - t
    pm.index(con, "offers", progress=False)  # warm the in-process sessions

    def run_pm(k: int, table: str = "offers") -> float:
        t = time.perf_counter()
        pm.index(con, table, name=f"pm{k}{table}", rebuild=True, progress=False)
        return time.perf_counter() - t

    def run_ray(workers: int, k: int, file: str = "offers") -> float:
        t = time.perf_counter()
        index_dataset(str(tmp / f"{file}.parquet"), tmp / f"ray{workers}_{k}{file}.pmatch", "offers",
                      image_roots=roots, workers=workers, threads_per_worker=args.threads, progress=False,
                      batch_size=16)
        return time.perf_counter() - t

    def run(name: str, k: int, what: str) -> float:
        return run_pm(k, what) if name == "pm_index" else run_ray(1 if name == "ray x1" else 2, k, what)

    times: dict[str, list[float]] = {"pm_index": [], "ray x1": [], "ray x2": []}
    small: dict[str, list[float]] = {name: [] for name in times}
    order = list(times)
    for k in range(args.rounds):
        for name in order[k % 3:] + order[:k % 3]:
            s = run(name, k, "offers")
            times[name].append(s)
            print(f"round {k} {name:9s} {s:7.1f} s  {n / s:6.1f} offers/s", flush=True)
            if args.small:
                s = run(name, k, "small")
                small[name].append(s)
                print(f"round {k} {name:9s} {s:7.1f} s  for the first {args.small} offers (per-job cost)", flush=True)
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{n} offers (1 image each), ORT threads per worker {args.threads}, {args.rounds} rounds, "
          f"ray.init {start_s:.1f} s, first (warm-up) Ray job {warm_s:.1f} s")
    print(f"{'path':10s} {'median s':>9s} {'offers/s':>9s}")
    for name, ts in times.items():
        print(f"{name:10s} {statistics.median(ts):9.1f} {n / statistics.median(ts):9.1f}")
    r12 = statistics.median([a / b for a, b in zip(times["ray x1"], times["ray x2"], strict=True)])
    ovh = statistics.median([a / b for a, b in zip(times["ray x1"], times["pm_index"], strict=True)])
    print(f"speed-up 2 workers vs 1 (per-round median): {r12:.2f}x")
    print(f"Ray 1 worker time / pm_index time (per-round median): {ovh:.2f}x")
    if args.small:
        marg = {name: statistics.median([(n - args.small) / max(b - a, 1e-9)
                                         for a, b in zip(small[name], times[name], strict=True)]) for name in times}
        print(f"\nper-job cost (median time for {args.small} offers) and marginal rate (n - {args.small}) / (t_n - t_small):")
        for name in times:
            print(f"{name:10s} job {statistics.median(small[name]):6.1f} s   marginal {marg[name]:7.1f} offers/s")
        print(f"marginal speed-up 2 workers vs 1: {marg['ray x2'] / marg['ray x1']:.2f}x; "
              f"marginal Ray 1 worker / pm_index: {marg['ray x1'] / marg['pm_index']:.2f}x of pm_index's rate")


if __name__ == "__main__":
    main()
