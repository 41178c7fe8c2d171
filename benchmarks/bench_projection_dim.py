"""How wide should the trained projection be? One command, one table (issue 4: "default chosen by measurement").

For each Magellan split (Abt-Buy, Amazon-Google; loading and protocol of ``bench_quality.py``) and each
``--dims`` value, ``train_matcher(..., dim=D)`` with every other option at its default, then:

* ``valid best F1``: the best F1 on the validation pairs — **the number the default is chosen by** (the
  test split is not looked at for the choice);
* ``vector R@1 valid``: recall@1 of the projection alone on the validation pairs' left offers (each
  left offer of a validation match against all right offers);
* ``test F1 @valid t``: test F1 at the validation-best threshold, for reference;
* ``train (s)``: wall seconds of ``train_matcher`` (noisy on a shared machine; ratios only).

Usage (from the repository root; PMATCH_HOME must hold the default encoders)::

    PMATCH_HOME=/tmp/pmhome_bench python benchmarks/bench_projection_dim.py [--dims 64,128,256,512]
        [--only abt-buy-magellan,amazon-google-magellan] [--workdir DIR] [--data ../shared/data]

With ``--workdir`` pointing at a ``bench_quality.py`` workdir the indexes are reused (nothing is embedded).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_quality as bq  # noqa: E402

from pmatch_duckdb.fusion import FusionConfig  # noqa: E402
from pmatch_duckdb.matchers import load_matcher  # noqa: E402


def vector_recall_at_1(src, tgt, pairs: list[tuple[str, str, int]], matcher) -> float:
    """recall@1 of the projected vectors: each matched left offer against every right offer."""
    s = bq.with_fused(src, FusionConfig(), matcher)
    t = bq.with_fused(tgt, FusionConfig(), matcher)
    spos = {i: p for p, i in enumerate(s.ids)}
    truth: dict[str, set[str]] = {}
    for a, b, y in pairs:
        if y:
            truth.setdefault(a, set()).add(b)
    q = np.array([spos[a] for a in truth])
    best = np.argmax(s.fused[q] @ t.fused.T, axis=1)
    return float(np.mean([t.ids[j] in truth[a] for a, j in zip(truth, best, strict=True)]))


def main(argv: list[str] | None = None) -> int:
    """Sweep the projection dimension and print one table."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--dims", default="64,128,256,512")
    ap.add_argument("--only", default="abt-buy-magellan,amazon-google-magellan")
    ap.add_argument("--data", type=Path, default=bq.DEFAULT_DATA)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    dims = [int(d) for d in args.dims.split(",")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pmatch-bench-dim-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = bq.Ctx(data=args.data.resolve(), workdir=workdir, plots=None, home=None, seed=args.seed, quick=True,
                 grocery_per_class=10, epochs=None)
    rows = []
    for part in [p.strip() for p in args.only.split(",") if p.strip()]:
        folder = ctx.data / part.removesuffix("-magellan") / "magellan"
        con = bq.open_db(ctx, part, "bench-dim")
        try:
            splits = bq.load_magellan(con, folder)
            bq.index_tables(con, ["mag_left", "mag_right"])
            src, tgt = bq.load_rows(con, "mag_left"), bq.load_rows(con, "mag_right")
            for dim in dims:
                from pmatch_duckdb.training import train_matcher

                t0 = time.perf_counter()
                res = train_matcher(con, ["mag_left", "mag_right"], pairs="mag_train", valid_pairs="mag_valid",
                                    name=f"bench-dim-{part}", dim=dim, seed=args.seed, activate=False,
                                    progress=False, log=lambda _: None)
                secs = time.perf_counter() - t0
                m = load_matcher(f"bench-dim-{part}", res.version, bq.context_of(con).settings.home)
                valid = bq.score_pairs(src, tgt, splits["valid"], FusionConfig(), m)
                test = bq.score_pairs(src, tgt, splits["test"], FusionConfig(), m)
                lm = bq.labelled_metrics(valid, test, m.decision.accept_threshold)
                r1 = vector_recall_at_1(src, tgt, splits["valid"], m)
                rows.append([part, str(dim), f"{lm['valid_best_f1']:.3f}", f"{r1:.3f}", f"{lm['f1_valid']:.3f}",
                             f"{secs:.1f}"])
                bq.log(f"  {part} dim {dim}: valid best F1 {lm['valid_best_f1']:.3f}, vector R@1 {r1:.3f}, "
                       f"test F1 @valid t {lm['f1_valid']:.3f}, {secs:.1f}s")
        finally:
            con.close()
    print(bq.fmt_table(["part", "dim", "valid best F1", "vector R@1 valid", "test F1 @valid t", "train (s)"],
                        rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
