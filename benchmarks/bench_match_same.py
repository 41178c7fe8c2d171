"""Does this tree's ``match`` give another tree's results? (issue 16: speed-ups must not move a score)

On the generated index ``bench_pipeline.py`` builds (``--workdir``/match_N), ``--sources`` offers sampled from it
(dedup, k = 10) are matched by this tree and by ``--baseline`` (e.g. ``git archive <commit>`` unpacked), each in a
child process importing its own ``pmatch_duckdb``; the outputs are compared row for row: source, target, rank,
decision, and every score column bit for bit.

Usage::

    python benchmarks/bench_match_same.py --n 1000000 --workdir /work/bench1m --baseline /work/bench1m/old
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve()
SCORES = ("score", "text", "image", "lexical", "price_ratio")


def child(n: int, n_src: int, workdir: Path, out: Path) -> None:
    """(in the child) match the sampled sources with the ``pmatch_duckdb`` on ``sys.path`` and write them."""
    sys.path.insert(0, str(Path(os.environ.get("PYTHONPATH", HERE.parents[1]).split(os.pathsep)[0]) / "benchmarks"))
    import bench_pipeline as B

    import pmatch_duckdb.matching as M
    from pmatch_duckdb.api import context_of
    from pmatch_duckdb.home import pmatch_home
    from pmatch_duckdb.offers import read_offers

    B._fake_text_encoder()
    con, index, _ = B.build_match_index(n, workdir / f"match_{n}", pmatch_home(None))
    ctx = context_of(con)
    view = M.target_view(index, ctx.settings.home)
    con.execute(f"CREATE OR REPLACE TEMP TABLE src AS SELECT * FROM offers USING SAMPLE {n_src} ROWS (reservoir, 7)")
    src = M.source_vectors(read_offers(con, "src"), ctx.settings, view.fusion, reuse=view, matcher=view.matcher)
    c = M.match(src, view, 10, exclude_self=True)
    pq.write_table(pa.table({
        "source": [src.ids[i] for i in c.source], "target": view.target_ids(c.target), "rank": c.rank,
        "score": c.score, "text": c.text_score, "image": c.image_score, "lexical": c.lexical_score,
        "id_match": c.id_match, "price_ratio": c.price_ratio, "decision": c.decision,
        "module": [M.__file__] * len(c.source)}), out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=Path(".bench"))
    ap.add_argument("--sources", type=int, default=2000)
    ap.add_argument("--baseline", type=Path, required=True)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_out:
        child(a.n, a.sources, a.workdir, a.child_out)
        return 0
    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, tree in (("this tree", HERE.parents[1]), ("baseline", a.baseline.resolve())):
            out = Path(tmp) / f"{label.replace(' ', '_')}.parquet"
            subprocess.run([sys.executable, str(HERE), "--n", str(a.n), "--workdir", str(a.workdir), "--sources",
                            str(a.sources), "--baseline", str(a.baseline), "--child-out", str(out)],
                           check=True, env={**os.environ, "PYTHONPATH": str(tree)})
            tables[label] = pq.read_table(out)
            print(f"{label}: {len(tables[label])} pairs from {tables[label]['module'][0]}")
    x, y = tables["this tree"], tables["baseline"]
    same = len(x) == len(y) and all(x[c].equals(y[c]) for c in ("source", "target", "rank", "decision", "id_match"))
    print(f"# {a.n:,}-offer index, {a.sources} sources: same pairs, ranks, decisions and identifier flags in order: {same}")
    for c in SCORES:
        u, v = x[c].to_numpy(), y[c].to_numpy()
        ok = len(u) == len(v) and np.array_equal(u, v, equal_nan=True)
        print(f"{c}: {'bit-identical' if ok else 'DIFFERENT'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
