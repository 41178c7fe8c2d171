"""What a Lance ``take`` of candidate rows costs per row and per column (issue 16: the fetch stage's floor).

On the generated index ``bench_pipeline.py`` builds (``--workdir``/match_N): ``--rows`` distinct random rows
(about one 512-source batch's candidates), read with ``LanceDataset.take`` column group by column group,
twice each (the second read finds the pages cached), and the text vectors of the first 100k rows read by a
sequential scan for comparison. Prints CPU µs per row.

Usage::

    python benchmarks/bench_take.py --n 1000000 --workdir /work/bench1m
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa

GROUPS = {
    "zero-shot scoring columns (identifiers, mpn, gtin, price, text_vec, n_images_ok)":
        ["identifiers", "mpn", "gtin", "price", "text_vec", "n_images_ok"],
    "text_vec (384 floats)": ["text_vec"],
    "image_vec (1,280 floats; NULL for every row here)": ["image_vec"],
    "identifiers, mpn, gtin, price, n_images_ok": ["identifiers", "mpn", "gtin", "price", "n_images_ok"],
    "texts (id, content_hash, title, brand, lexical_text, description, desc_identifiers)":
        ["id", "content_hash", "title", "brand", "lexical_text", "description", "desc_identifiers"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=Path(".bench"))
    ap.add_argument("--rows", type=int, default=512 * 45)
    a = ap.parse_args()
    ds = lance.dataset(a.workdir / f"match_{a.n}" / "idx" / "lancedb" / "offers.lance")
    rng = np.random.default_rng(0)
    print(f"# {a.n:,} rows, {len(ds.get_fragments())} fragment(s); CPU µs per row (first read, second read)")
    for name, cols in GROUPS.items():
        rows = np.unique(rng.integers(0, a.n, a.rows))
        per = []
        for _ in range(2):
            c = time.process_time()
            ds.take(pa.array(rows), columns=cols)
            per.append(1e6 * (time.process_time() - c) / len(rows))
        print(f"take {len(rows):,} rows, {name}: {per[0]:.1f}, {per[1]:.1f}")
    m = min(a.n, 100_000)
    c = time.process_time()
    ds.to_table(columns=["text_vec"], limit=m)
    print(f"scan of the first {m:,} rows, text_vec: {1e6 * (time.process_time() - c) / m:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
