"""Peak resident memory while embedding many texts and images through the SQL functions.

Each phase runs in a fresh process: connect, warm up (the ONNX session is created and one batch run), then
``SELECT count(pm_embed_text(title)) FROM texts`` (resp. ``pm_embed_image(path)``) over N rows, and report
the RSS after warm-up, the peak RSS during the query (VmHWM) and the growth. Small and large N side by side
show whether memory grows with N (it should not: DuckDB streams 2048-row vectors through the UDFs, and
the results are aggregated, not kept).

Inputs are real: Abt-Buy and Amazon-Google product names (cycled, each row made distinct with a suffix)
and the Grocery Store photos (cycled: every row is read and decoded again).

    python benchmarks/bench_memory.py --texts 10000 100000 --images 1000 10000 --data ../shared/data

``--index N ...``: ``pm_index`` over an N-offer table of real rows (the Abt-Buy and Amazon-Google offers' title,
description, brand and price, cycled, each row a distinct id and a title suffix), in a fresh process each, once
as the product runs it (``INDEX_SLICE`` offers embedded at a time, streamed into one write) and once with the whole
table embedded before the write (the path before slicing): peak RSS and wall seconds side by side.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # MB
    return float("nan")


def _titles(data: Path) -> list[str]:
    out = []
    for rel, col in (("abt-buy/abt.csv", "name"), ("amazon-google/amazon.csv", "title")):
        p = data / rel
        if not p.is_file():
            continue
        with open(p, newline="", encoding="utf-8", errors="replace") as f:
            sample = f.read(4096)
            f.seek(0)
            sep = max("|#,", key=sample.split("\n")[0].count)
            for row in csv.DictReader(f, delimiter=sep):
                v = row.get(col)
                if v:
                    out.append(v)
    return out


def _photos(data: Path) -> list[str]:
    lst = data / "grocery" / "train.txt"
    return [line.split(",")[0].strip() for line in lst.read_text().splitlines() if line.strip()]


def child(kind: str, n: int, data: Path, home: str | None) -> dict:
    """One measurement (runs in its own process)."""
    import pyarrow as pa

    import pmatch_duckdb as pm

    con = pm.connect(home=home, image_roots=[data / "grocery"])
    if kind == "texts":
        base = _titles(data)
        values = [f"{base[i % len(base)]} #{i}" for i in range(n)]
        warm = "SELECT count(pm_embed_text(v)) FROM (SELECT v FROM items LIMIT 64)"
        query = "SELECT count(pm_embed_text(v)) FROM items"
    else:
        base = _photos(data)
        values = [base[i % len(base)] for i in range(n)]
        warm = "SELECT count(pm_embed_image(v)) FROM (SELECT v FROM items LIMIT 32)"
        query = "SELECT count(pm_embed_image(v)) FROM items"
    con.register("items_arrow", pa.table({"v": pa.array(values, pa.string())}))
    con.execute("CREATE TABLE items AS SELECT * FROM items_arrow")
    con.unregister("items_arrow")
    del values
    con.execute(warm).fetchall()
    before = _status("VmRSS")
    t0 = time.perf_counter()
    (count,), = con.execute(query).fetchall()
    secs = time.perf_counter() - t0
    return {"kind": kind, "n": n, "embedded": count, "rss_after_warmup_mb": round(before, 1),
            "peak_rss_mb": round(_status("VmHWM"), 1), "rss_after_mb": round(_status("VmRSS"), 1),
            "seconds": round(secs, 1), "per_second": round(n / secs, 1)}


def index_child(n: int, whole: bool, data: Path, home: str | None) -> dict:
    """pm_index over ``n`` real offer rows (runs in its own process); ``whole``: one slice of the whole table."""
    import tempfile

    import pyarrow as pa

    import pmatch_duckdb as pm
    import pmatch_duckdb.offer_vectors as ov

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_pipeline import read_rows

    if whole:
        ov.INDEX_SLICE = n
    base = read_rows(data)
    rows = [base[i % len(base)] for i in range(n)]
    work = Path(tempfile.mkdtemp(prefix="bench_memory_index_"))
    con = pm.connect(work / "db.duckdb", home=home, image_roots=[work])
    con.register("t", pa.table({"id": [f"o{i}" for i in range(n)], "title": [f"{r[0]} #{i}" for i, r in enumerate(rows)],
                                "description": [r[1] for r in rows], "brand": [r[2] for r in rows],
                                "price": pa.array([r[3] for r in rows], pa.float64())}))
    con.execute("CREATE TABLE offers AS SELECT * FROM t")
    con.unregister("t")
    del rows, base
    before = _status("VmRSS")
    t0 = time.perf_counter()
    (total,), = con.execute("SELECT total FROM pm_index('offers')").fetchall()
    secs = time.perf_counter() - t0
    return {"kind": "pm_index, whole table at once" if whole else f"pm_index, slices of {ov.INDEX_SLICE:,}",
            "n": n, "embedded": total, "rss_after_warmup_mb": round(before, 1),
            "peak_rss_mb": round(_status("VmHWM"), 1), "rss_after_mb": round(_status("VmRSS"), 1),
            "seconds": round(secs, 1), "per_second": round(n / secs, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--images", type=int, nargs="*", default=[1_000, 10_000])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder")
    ap.add_argument("--home", default=None)
    ap.add_argument("--index", type=int, nargs="*", default=[], help="pm_index over N real offer rows")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, n = a.child[0], int(a.child[1])
        out = (index_child(n, kind == "index-whole", a.data, a.home) if kind.startswith("index")
               else child(kind, n, a.data, a.home))
        print(json.dumps(out))
        return
    rows = []
    for kind, sizes in (("texts", a.texts), ("images", a.images), ("index-sliced", a.index),
                        ("index-whole", a.index)):
        for n in sizes:
            cmd = [sys.executable, __file__, "--child", kind, str(n), "--data", str(a.data.resolve())]
            if a.home:
                cmd += ["--home", a.home]
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if r.returncode != 0:
                sys.exit(r.stderr[-3000:])
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| input | rows | embedded | RSS after warm-up (MB) | peak RSS (MB) | peak − warm-up (MB) | rows/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['n']:,} | {r['embedded']:,} | {r['rss_after_warmup_mb']:.0f} | "
              f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['rss_after_warmup_mb']:.0f} | {r['per_second']:.0f} |")
    by = {(r["kind"].split(",")[1].strip(), r["n"]): r for r in rows if r["kind"].startswith("pm_index")}
    for n in a.index:
        s = next(r for (k, m), r in by.items() if m == n and k.startswith("slices"))
        w = by[("whole table at once", n)]
        print(f"RATIO pm_index, {n:,} offers, whole table / slices: peak RSS {w['peak_rss_mb'] / s['peak_rss_mb']:.2f}x "
              f"({w['peak_rss_mb']:.0f} vs {s['peak_rss_mb']:.0f} MB), wall {w['seconds'] / s['seconds']:.2f}x")


if __name__ == "__main__":
    main()
