"""What ``pm_index`` costs around the text encoder (issue 16: ``pm_index`` >= 0.8x of the encoder it runs).

One process, interleaved rounds, on real product offers spread over the four Abt-Buy / Amazon-Google tables as
``bench_pipeline.py`` spreads them: the text encoder alone over the titles, and ``pm_index('t', rebuild := true)``
over a table of the same offers, per model. Prints titles/s (median, min–max, per process-CPU second), the ratio
``pm_index`` / encoder, and where ``pm_index``'s time goes (median seconds per stage, timed by wrapping the
functions; the wrappers add a few calls per chunk): tokenising (``prepare_texts``: the order key and the model's
input), the encoders per chunk, the fusion per chunk, building the index rows (identifiers, descriptions, Arrow
columns), the LanceDB write, and the rest (reading the table, content hashes, the index check). Stage medians
are taken apart, so they need not add up to the total.

Usage::

    python benchmarks/bench_index_cost.py --data ../shared/data [--models minilm-l6-v2,minilm-l6-v2-int8] \
        [--n 4096] [--threads 2] [--rounds 5] [--full-rows]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lancedb.db
from bench_pipeline import DEFAULT_DATA, fmt_table, read_rows, read_titles, spread

import pmatch_duckdb as pm
import pmatch_duckdb.offer_vectors as ov
from pmatch_duckdb.bundles import find_bundle
from pmatch_duckdb.encoders.text import TextEncoder

STAGES = {"tokenise (order key and model)": (ov, "prepare_texts"), "encoders": (ov, "_encode_chunk"),
          "fusion": (ov, "fuse_vectors"), "index rows": (ov, "_index_rows"),
          "LanceDB write": (lancedb.db.LanceDBConnection, "create_table"), "embed_offers": (ov, "embed_offers")}


def timed(spent: dict[str, float]) -> None:
    """Wrap the stage functions so that each call adds its wall seconds to ``spent``."""
    for name, (owner, attr) in STAGES.items():
        fn = getattr(owner, attr)

        def wrapper(*a, _fn=fn, _name=name, **kw):  # noqa: ANN002, ANN003, ANN202
            t = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - t
        setattr(owner, attr, wrapper)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--models", default="minilm-l6-v2,minilm-l6-v2-int8")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--full-rows", action="store_true",
                    help="index title, description, brand and price (identifiers are looked for in descriptions "
                         "too), not titles only")
    args = ap.parse_args(argv)

    os.environ["PMATCH_ORT_THREADS"] = str(args.threads)  # pm_index's sessions get the same thread count
    rows = read_rows(args.data) if args.full_rows else [(t, None, None, None) for t in read_titles(args.data)]
    rows = spread(rows, args.n)
    titles = [r[0] for r in rows]
    work = Path(tempfile.mkdtemp(prefix="bench_index_cost_"))
    spent: dict[str, float] = {}
    timed(spent)
    paths: dict[str, Callable[[], None]] = {}
    models = args.models.split(",")
    for n in models:
        enc = TextEncoder(find_bundle(n, args.home), threads=args.threads)
        con = pm.connect(home=args.home, image_roots=[work], text_model=n, index_dir=work / n)
        con.execute("CREATE TABLE t (id VARCHAR, title VARCHAR, description VARCHAR, brand VARCHAR, price DOUBLE)")
        con.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", [(f"t{i}", *r) for i, r in enumerate(rows)])
        paths[f"text encoder {n}"] = lambda e=enc: e.encode(titles)
        paths[f"pm_index {n}"] = lambda c=con: c.execute("SELECT * FROM pm_index('t', rebuild := true)").fetchall()
    for fn in paths.values():  # warm-up
        fn()
    wall: dict[str, list[float]] = {k: [] for k in paths}
    cpu: dict[str, list[float]] = {k: [] for k in paths}
    stages: dict[str, list[dict[str, float]]] = {n: [] for n in models}
    names = list(paths)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            spent.clear()
            t, c = time.perf_counter(), time.process_time()
            paths[name]()
            w = time.perf_counter() - t
            wall[name].append(w)
            cpu[name].append(time.process_time() - c)
            if name.startswith("pm_index "):
                stages[name.removeprefix("pm_index ")].append({**spent, "pm_index": w})
    kind = "offers (title, description, brand, price)" if args.full_rows else "titles"
    print(f"# {len(titles)} real {kind}, ORT threads {args.threads}, {args.rounds} interleaved rounds, "
          f"load avg {os.getloadavg()[0]:.1f}\n")
    print(fmt_table(["path", "median titles/s", "min–max", "median titles per CPU-s"],
                    [[k, f"{len(titles) / statistics.median(v):.0f}", f"{len(titles) / max(v):.0f}–"
                      f"{len(titles) / min(v):.0f}", f"{len(titles) / statistics.median(cpu[k]):.0f}"]
                     for k, v in wall.items()]))
    print()
    rows_out = []
    for n in models:
        med = {k: statistics.median(s.get(k, 0.0) for s in stages[n]) for k in (*STAGES, "pm_index")}
        inner = ("tokenise (order key and model)", "encoders", "fusion", "index rows")
        rest_embed = med["embed_offers"] - sum(med[k] for k in inner)
        rest = med["pm_index"] - med["embed_offers"] - med["LanceDB write"]
        for k, v in (*((k, med[k]) for k in inner), ("rest of embed_offers", rest_embed),
                     ("LanceDB write", med["LanceDB write"]), ("rest of pm_index", rest)):
            rows_out.append([n, k, f"{v:.2f}", f"{v / med['pm_index']:.0%}"])
    print(fmt_table(["model", "stage of pm_index", "median s", "share"], rows_out))
    print()
    for n in models:
        e, p = statistics.median(wall[f"text encoder {n}"]), statistics.median(wall[f"pm_index {n}"])
        ec, pc = statistics.median(cpu[f"text encoder {n}"]), statistics.median(cpu[f"pm_index {n}"])
        print(f"RATIO {n}: pm_index / encoder {e / p:.2f}x wall, {ec / pc:.2f}x per CPU-s (target >= 0.8x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
