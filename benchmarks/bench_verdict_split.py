"""Training on review verdicts: which validation split lets the known-products stage be judged, and what it gives.

WDC Products' labelled pairs (``train_medium`` + ``valid_medium``: 9,500 pairs, 2,000 matches) are written as
review verdicts into a ``pm_labels``-shaped table, in one of these orders:

* ``shuffled<S>``: a random order (seed S) — verdicts on all kinds of offers arrive mixed;
* ``ordered``: ``train_medium`` first, then ``valid_medium`` — the last reviewed offers are new offers of the
  products reviewed before (the benchmark's own validation design).

For each order and each ``--valid-split`` (``groups``: 20 % of the label groups held out, the default for labels
that are not review verdicts; ``offers``: every verdict on a random 20 % of the offers; ``latest``: every verdict
on the offers reviewed last), ``train_matcher(con, "wdc_offers", pairs=<verdicts>, valid_split=...)`` trains with
the ``known`` pair kind asked for (``--pair-kind``) and the real gate (``min_gain`` 0.005): the known products are kept only where the
validation pairs show a gain. (The default ``cross`` kind would first fine-tune for ~15 minutes; on WDC the gate
drops it and tries the same ``known`` fit instead, where the split lets it — benchmarks/README.md, "Known products by
stage 1's vectors".) Each matcher then scores both gold standards (0 % / 50 % unseen products) through
``score_pairs``: average precision and the best F1 over thresholds (the same oracle threshold for every row, since
``valid_medium`` is among the training verdicts here).

Usage::

    python benchmarks/bench_verdict_split.py --data ../shared/data --workdir /tmp/bvs \
        [--orders shuffled0,shuffled1,ordered] [--splits groups,offers,latest] [--pair-kind known|cross|siamese]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import index_tables, load_wdc, sql_score_pairs  # noqa: E402

import pmatch_duckdb as pm  # noqa: E402
from pmatch_duckdb.decision import average_precision  # noqa: E402
from pmatch_duckdb.evaluation import summarize  # noqa: E402
from pmatch_duckdb.home import pmatch_home  # noqa: E402
from pmatch_duckdb.review.labels import ensure_labels  # noqa: E402
from pmatch_duckdb.sqlident import quote_ident  # noqa: E402


def verdicts_table(con, order: str, first: int | None = None) -> str:  # noqa: ANN001
    """``pm_labels``-shaped table of WDC's train + valid pairs as verdicts in ``order`` (only the ``first`` of them:
    an early review round); its name."""
    name = f"verdicts_{order}" + (f"_first{first}" if first else "")
    if con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchall()[0][0]:
        return name
    rows = con.execute("SELECT left_id, right_id, label FROM wdc_train UNION ALL "
                       "SELECT left_id, right_id, label FROM wdc_valid").fetchall()
    if order.startswith("shuffled"):
        random.Random(int(order[len("shuffled"):] or 0)).shuffle(rows)
    elif order != "ordered":
        raise SystemExit(f"unknown order {order!r}: shuffled<S> or ordered")
    rows = rows[:first] if first else rows
    ensure_labels(con)
    q = quote_ident(name)
    con.execute(f"CREATE TABLE {q} AS SELECT * FROM pm_labels LIMIT 0")
    con.executemany(f"INSERT INTO {q} (label_id, source_table, source_id, target_table, target_id, verdict) "
                    "VALUES (?, 'wdc_offers', least(?, ?), 'wdc_offers', greatest(?, ?), ?)",
                    [(n + 1, a, b, a, b, "match" if y else "no_match") for n, (a, b, y) in enumerate(rows)])
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--orders", default="shuffled0,shuffled1,ordered")
    ap.add_argument("--splits", default="groups,offers,latest")
    ap.add_argument("--pair-kind", default="known", choices=["known", "cross", "siamese"],
                    help="the pair kind asked for (cross: pmatch train's default, which falls back to known where the "
                         "gate drops it)")
    ap.add_argument("--verdicts", type=int, default=None,
                    help="only the first N verdicts of each order (an early review round; default: all 9,500)")
    ap.add_argument("--pair-min-matches", type=int, default=None,
                    help="PairOptions.min_positives (pmatch train --pair-min-matches; default: the product's)")
    args = ap.parse_args()
    from pmatch_duckdb.training import train_matcher
    from pmatch_duckdb.training.pair_model import PairOptions

    args.workdir.mkdir(parents=True, exist_ok=True)
    home = args.workdir / "home"  # a scratch matcher registry; the encoder bundles linked from the default home
    if not home.exists():
        (home / "models").mkdir(parents=True)
        for b in ("minilm-l6-v2", "efficientnet-lite0"):
            (home / "models" / b).symlink_to(pmatch_home() / "models" / b)
    db = args.workdir / "wdc-verdicts.duckdb"
    fresh = not db.exists()
    con = pm.connect(db, home=home, image_roots=[args.workdir])
    if fresh:
        load_wdc(con, args.data / "wdc-products")
        index_tables(con, ["wdc_offers"])
    gold = {k: con.execute(f"SELECT left_id, right_id, label FROM wdc_{k}").fetchall() for k in ("gs000", "gs050")}
    print(f"# bench_verdict_split {time.strftime('%Y-%m-%dT%H:%M:%S')}  orders={args.orders}  splits={args.splits}"
          f"  verdicts={args.verdicts or 'all'}  pair_kind={args.pair_kind}  pair_min_matches="
          f"{args.pair_min_matches or 'default'}")
    print("| order | valid_split | training matches | validation matches / non-matches | known products (stacked vs stage 1 valid AP) | "
          "0 % unseen AP / best F1 | 50 % unseen AP / best F1 | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for order in args.orders.split(","):
        table = verdicts_table(con, order, args.verdicts)
        for split in args.splits.split(","):
            name = (f"bvs-{order}-{split}" + ("" if args.pair_kind == "known" else f"-{args.pair_kind}")
                    + (f"-first{args.verdicts}" if args.verdicts else "")
                    + (f"-min{args.pair_min_matches}" if args.pair_min_matches is not None else ""))
            extra = {} if args.pair_min_matches is None else {"min_positives": args.pair_min_matches}
            lines: list[str] = []
            t0 = time.perf_counter()
            train_matcher(con, "wdc_offers", pairs=table, valid_split=split, name=name,
                          pair_options=PairOptions.from_recipe("cpu", "cpu", train={"kind": args.pair_kind}, **extra),
                          progress=False, log=lines.append)
            secs = time.perf_counter() - t0
            # "4127 offers; train 1567 positive / 6019 negative pairs, valid 433 / 1481; labelled pairs only"
            sizes = next((ln for ln in lines if " offers; train " in ln), "")
            n_train = sizes.split("; train ")[1].split(" positive")[0] if sizes else "?"
            n_valid = sizes.split(", valid ")[1].split(";")[0] if sizes else "?"
            judged = next((ln for ln in lines if ln.startswith("known products: validation average precision")), "")
            kept = "kept" if judged and not any(ln.startswith("known products dropped") for ln in lines) else "dropped"
            if args.pair_kind != "known":  # what became of the transformer, in the training log's words
                kept += "; " + "; ".join(ln.split(": ", 1)[1][:90] for ln in lines
                                         if ln.startswith(("pair model dropped", "pair model: trying known")))
            if judged:
                st1 = float(judged.split("stage 1 ")[1].split(",")[0])
                stk = float(judged.split("stacked (out-of-fold) ")[1].split(";")[0])
                known = f"{kept} ({stk:.3f} vs {st1:.3f})"
            else:
                known = next((ln.split(": ", 1)[1][:60] for ln in lines if ln.startswith("pair model skipped")),
                             "not judged")
            cells = []
            for key in ("gs000", "gs050"):
                s, y = sql_score_pairs(con, "wdc_offers", "wdc_offers", f"wdc_{key}", gold[key], name)
                cells.append(f"{average_precision(s, y):.3f} / {summarize(s, y, int(y.sum()))['best_f1']:.3f}")
            print(f"| {order} | {split} | {n_train} | {n_valid} | {known} | {cells[0]} | {cells[1]} | {secs:.0f} |", flush=True)
    con.close()


if __name__ == "__main__":
    main()
