"""Chunk order when embedding a table (issue 16): ``embed_offers`` embeds offers in chunks of
``EMBED_CHUNK``, and the text encoder pads each batch to its longest text.

Side by side in one process, interleaved rounds, on real product titles (Abt-Buy and Amazon-Google, spread
over the four tables as ``bench_pipeline.py`` does): the encoder over all titles in one call, and over chunks
of ``EMBED_CHUNK`` titles taken in table order (the order before this change), sorted by characters, and
sorted by the encoder's token length (what ``embed_offers`` does now). Prints the best wall seconds of each and
the ratios to table order; the token-length key's own cost (tokenising once more) is timed too.

Usage::

    python benchmarks/bench_embed_order.py --data ../shared/data [--model minilm-l6-v2-int8] [--n 4096] \
        [--threads 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_pipeline import DEFAULT_DATA, read_titles, spread

from pmatch_duckdb.bundles import find_bundle
from pmatch_duckdb.encoders.text import TextEncoder
from pmatch_duckdb.offer_vectors import EMBED_CHUNK


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--model", default="minilm-l6-v2-int8")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    titles = read_titles(args.data)
    titles = spread(titles, args.n)
    enc = TextEncoder(find_bundle(args.model, args.home), threads=args.threads)
    t = time.perf_counter()
    ntok = enc.token_lengths(titles)
    key_s = time.perf_counter() - t
    orders = {"table order": np.arange(len(titles)),
              "sorted by characters": np.argsort([len(x) for x in titles], kind="stable"),
              "sorted by token length": np.argsort(ntok, kind="stable")}

    def chunked(order: np.ndarray) -> Callable[[], None]:
        ts = [titles[i] for i in order]

        def run() -> None:
            for s in range(0, len(ts), EMBED_CHUNK):
                enc.encode(ts[s:s + EMBED_CHUNK])
        return run

    paths = {"one call": lambda: enc.encode(titles), **{f"chunks of {EMBED_CHUNK}, {k}": chunked(o)
                                                        for k, o in orders.items()}}
    for fn in paths.values():  # warm-up
        fn()
    best = {k: float("inf") for k in paths}
    names = list(paths)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            paths[name]()
            best[name] = min(best[name], time.perf_counter() - t)
    print(f"# {args.model}, {len(titles)} real titles (tokens: mean {ntok.mean():.1f}, p99 "
          f"{np.percentile(ntok, 99):.0f}, max {ntok.max()}), ORT threads {args.threads}, best of {args.rounds} "
          f"interleaved rounds, load avg {os.getloadavg()[0]:.1f}")
    base = best[f"chunks of {EMBED_CHUNK}, table order"]
    print("| path | best wall s | titles/s | vs table-order chunks |")
    print("|---|---|---|---|")
    for k, v in best.items():
        print(f"| {k} | {v:.2f} | {len(titles) / v:.0f} | {base / v:.2f}x |")
    print(f"token-length key (tokenising the titles once more): {key_s:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
