"""Cost of the pair scorer's fine-tuning on a real training split (issue 11), measured per step.

The full fine-tuning run cannot be timed honestly on a shared, overloaded machine, so this measures
what one optimiser step costs in CPU seconds for a few (max_len, frozen layers) settings on the
Abt-Buy Magellan training pairs (serialised exactly as ``train_matcher`` serialises them), and
extrapolates to one epoch over the split plus the mined hard negatives (2 per labelled source).
CPU seconds of one process with ``torch.set_num_threads(threads)`` ≈ wall seconds on that many idle
cores. Also measured: the cross-encoder's inference rate through onnxruntime (pairs/s; the speed does
not depend on the weights, so the freshly initialised model is exported).

``--fit SETTINGS`` instead trains each setting to the end on the train split (the labelled pairs only,
no mined hard negatives) and reports the training's CPU and wall seconds and the cross-encoder's
STANDALONE quality: average precision on valid, and test F1 at the threshold with the best F1 on valid
(the comparable protocol of bench_quality.py). It is the quick loop for the fine-tuning knobs.

Usage::

    python benchmarks/bench_pair_train.py [--data ../shared/data] [--steps 6] [--threads 2]
    python benchmarks/bench_pair_train.py --fit 64:4:3:3:2e-4,64:4:1:3:5e-5 [--dataset abt-buy|amazon-google|wdc-products]
        [--device auto|cpu|cuda] [--patience 2]
        # max_len:frozen_layers:epochs:neg_ratio:lr (neg_ratio 0 = all non-matches)[:flag...], flags:
        # p: no precompute; mean: the head reads the mean token state instead of [CLS]; Ditto levers:
        # noid: no id/number marking; sum: descriptions cut to their top TF-IDF words; aug: augmentation
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pair_gpu import f1_at_valid_threshold as f1_valid_threshold  # noqa: E402
from bench_quality import DEFAULT_DATA, parse_ditto_record, parse_price  # noqa: E402

from pmatch_duckdb.features.lexical import identifiers  # noqa: E402
from pmatch_duckdb.pair_scorer import PairScorer, SerializeOptions, Summarizer, serialize_offer  # noqa: E402
from pmatch_duckdb.training.pair_model import (  # noqa: E402
    PairTrainConfig,
    export_cross_encoder,
    minilm_dir,
    train_cross_encoder,
)


def load_pairs(folder: Path, split: str, opts: SerializeOptions, summarizer: Summarizer | None = None
               ) -> tuple[list[str], list[str], np.ndarray]:
    """Serialised (left, right) texts and labels of a Magellan split."""
    a, b, y = [], [], []
    for line in (folder / f"{split}.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        left, right, label = line.split("\t")
        texts = []
        for raw in (left, right):
            r = parse_ditto_record(raw)
            title = r.get("title") or r.get("name")
            texts.append(serialize_offer(title, r.get("manufacturer") or r.get("brand"), parse_price(r.get("price")),
                                         identifiers(title), r.get("description"), opts, summarizer))
        a.append(texts[0])
        b.append(texts[1])
        y.append(int(label))
    return a, b, np.array(y, dtype=np.float32)


WDC_SPLITS = {"train": "wdcproducts80cc20rnd000un_train_medium.json.gz",
              "valid": "wdcproducts80cc20rnd000un_valid_medium.json.gz",
              "test": "wdcproducts80cc20rnd000un_gs.json.gz"}  # the 0 % unseen gold standard


def wdc_records(folder: Path, split: str) -> list[tuple[dict, dict, int]]:
    """(left, right, label) offer records of a WDC Products pair file (title, brand, price, description)."""
    import gzip
    import json

    out = []
    with gzip.open(folder / WDC_SPLITS[split], "rt", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            sides = [{k: r.get(f"{k}_{side}") for k in ("title", "brand", "price", "description")}
                     for side in ("left", "right")]
            out.append((sides[0], sides[1], int(r["label"])))
    return out


def load_wdc_pairs(folder: Path, split: str, opts: SerializeOptions, summarizer: Summarizer | None = None
                   ) -> tuple[list[str], list[str], np.ndarray]:
    """Serialised (left, right) texts and labels of a WDC Products split, as ``load_pairs``."""
    a, b, y = [], [], []
    for left, right, label in wdc_records(folder, split):
        texts = [serialize_offer(r["title"], r["brand"], parse_price(r["price"]), identifiers(r["title"] or ""),
                                 r["description"], opts, summarizer) for r in (left, right)]
        a.append(texts[0])
        b.append(texts[1])
        y.append(label)
    return a, b, np.array(y, dtype=np.float32)


def split_descriptions(folder: Path, split: str) -> list[str | None]:
    """Every record's description in a Magellan split (the corpus the TF-IDF summariser is fitted on)."""
    out: list[str | None] = []
    for line in (folder / f"{split}.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            left, right, _ = line.split("\t")
            out += [parse_ditto_record(left).get("description"), parse_ditto_record(right).get("description")]
    return out


def fit_rows(args: argparse.Namespace) -> int:
    """Train each ``--fit`` setting to the end; standalone valid AP / test F1 and the training's cost."""
    import torch

    from pmatch_duckdb.decision import average_precision
    from pmatch_duckdb.pair_scorer import PairTokenizer
    from pmatch_duckdb.training.pair_model import CrossEncoder, frozen_states, upper_logits

    cache: dict = {}

    def eval_logits(model, max_len: int, frozen: int, texts: tuple) -> np.ndarray:
        """Logits of the trained model; the frozen layers' outputs (unchanged by training) are computed once
        per (max_len, frozen layers, split) with the untouched initial weights and reused by every setting."""
        if frozen == 0:  # nothing frozen to reuse: the full forward pass
            out = []
            tk = PairTokenizer(tok, max_len)
            with torch.no_grad():
                for s in range(0, len(texts[0]), 128):
                    ids, mask, types = (torch.from_numpy(v) for v in tk(texts[0][s:s + 128], texts[1][s:s + 128]))
                    out.append(model(ids, mask, types).numpy())
            return np.concatenate(out)
        key = (max_len, frozen, id(texts))
        if key not in cache:
            base = CrossEncoder.build()
            base.eval()
            tk, out = PairTokenizer(tok, max_len), []
            for s in range(0, len(texts[0]), 128):
                ids, mask, types = (torch.from_numpy(v) for v in tk(texts[0][s:s + 128], texts[1][s:s + 128]))
                out.append((frozen_states(base, ids, mask, types, frozen), mask))
            cache[key] = out
        with torch.no_grad():
            return np.concatenate([upper_logits(model, h, m, frozen).numpy() for h, m in cache[key]])

    wdc = args.dataset == "wdc-products"
    folder = args.data / args.dataset / ("" if wdc else "magellan")
    splits: dict = {}

    def load(mark_ids: bool, summarize: bool) -> tuple:
        """(train, valid, test) serialised with these Ditto levers (the summariser's idf from train)."""
        if (mark_ids, summarize) not in splits:
            opts = SerializeOptions(mark_ids=mark_ids, summarize=summarize)
            if wdc:
                summ = Summarizer.fit([r["description"] for x in wdc_records(folder, "train") for r in x[:2]]
                                      ) if summarize else None
                splits[mark_ids, summarize] = tuple(load_wdc_pairs(folder, s, opts, summ)
                                                    for s in ("train", "valid", "test"))
            else:
                summ = Summarizer.fit(split_descriptions(folder, "train")) if summarize else None
                splits[mark_ids, summarize] = tuple(load_pairs(folder, s, opts, summ)
                                                    for s in ("train", "valid", "test"))
        return splits[mark_ids, summarize]

    tr, va, te = load(not args.no_mark_ids, False)
    tok = minilm_dir() / "tokenizer.json"
    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} load avg {os.getloadavg()[0]:.1f} torch threads {args.threads}; "
          f"{args.dataset} {'train_medium / valid_medium / 0 % unseen gold standard' if wdc else 'Magellan'}: "
          f"train {len(tr[2])} pairs ({int(tr[2].sum())} matches), valid {len(va[2])}, "
          f"test {len(te[2])}")
    print("| max_len | frozen | epochs | neg ratio | lr | pooling | levers | precompute | pairs trained | train CPU s | train wall s | "
          "valid AP | valid best F1 | test F1 (valid thr) | best epoch (valid AP per epoch) | device | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for setting in args.fit.split(","):
        f = setting.split(":")
        max_len, frozen, epochs, ratio, lr = int(f[0]), int(f[1]), int(f[2]), float(f[3]), float(f[4])
        flags = set(f[5:])
        unknown = flags - {"p", "mean", "aug", "noid", "sum"}
        if unknown:
            raise SystemExit(f"--fit {setting}: unknown flag(s) {sorted(unknown)} (p, mean, aug, noid, sum)")
        mark_ids = not (args.no_mark_ids or "noid" in flags)
        tr, va, te = load(mark_ids, "sum" in flags)
        levers = ",".join([("ids marked" if mark_ids else "no id marking")] + (["TF-IDF summary"] if "sum" in flags
                          else []) + (["augmentation"] if "aug" in flags else []))
        cfg = PairTrainConfig(max_len=max_len, epochs=epochs, freeze_layers=frozen, threads=args.threads,
                              neg_ratio=ratio or None, precompute="p" not in flags, lr=lr,
                              pooling="mean" if "mean" in flags else "cls", augment="aug" in flags,
                              device=args.device, patience=args.patience or None)
        c0, w0 = time.process_time(), time.perf_counter()
        # validation pairs pick the epoch (the model of the best validation AP is returned), as train_matcher does
        model, info = train_cross_encoder(tr[0], tr[1], tr[2], tok, cfg, valid=va,
                                          log=lambda m: print("#", m, file=sys.stderr, flush=True))
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        lv, lt = eval_logits(model, max_len, frozen, va), eval_logits(model, max_len, frozen, te)
        bf, tf = f1_valid_threshold(lv, va[2], lt, te[2])
        print(f"| {max_len} | {frozen} | {epochs} | {ratio or 'all'} | {lr:g} | {cfg.pooling} | {levers} | "
              f"{cfg.precompute and frozen > 0 and not cfg.augment} | "
              f"{info['pairs']} | {cpu:.0f} | {wall:.0f} | {average_precision(lv.astype(float), va[2]):.3f} | "
              f"{bf:.3f} | {tf:.3f} | {info['best_epoch']} ({', '.join(f'{v:.3f}' for v in info['valid_ap_history'])}) | "
              f"{info['device']} | {os.getloadavg()[0]:.1f} |", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--steps", type=int, default=6, help="optimiser steps timed per setting")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settings", default="64:4,64:0,96:4,128:4", help="max_len:frozen_layers,...")
    ap.add_argument("--fit", default=None, help="max_len:frozen:epochs:neg_ratio[:p],... trained to the end")
    ap.add_argument("--dataset", default="abt-buy", choices=["abt-buy", "amazon-google", "wdc-products"],
                    help="--fit: a Magellan split (abt-buy, amazon-google) or WDC Products (train_medium, "
                         "valid_medium, the 0 %% unseen gold standard as test)")
    ap.add_argument("--device", default="auto", help="--fit: torch device (auto, cpu, cuda, cuda:N)")
    ap.add_argument("--patience", type=int, default=2, help="--fit: epochs without a validation gain before "
                                                           "stopping (0: run every epoch)")
    ap.add_argument("--no-mark-ids", action="store_true", help="--fit: serialise without id/number marking")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.fit:
        return fit_rows(args)
    folder = args.data / "abt-buy" / "magellan"
    opts = SerializeOptions()
    a, b, y = load_pairs(folder, "train", opts)
    n_sources = len({x for x in a})
    n_train = len(y) + 2 * n_sources  # + mined hard negatives (at most 2 per labelled source)
    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} load avg {os.getloadavg()[0]:.1f} cpus "
          f"{len(os.sched_getaffinity(0))} torch threads {args.threads}; Abt-Buy Magellan train: {len(y)} pairs "
          f"({int(y.sum())} matches), {n_sources} sources -> ~{n_train} pairs with hard negatives")
    tok = minilm_dir() / "tokenizer.json"
    rng = np.random.default_rng(0)
    sample = rng.choice(len(y), size=16 * args.steps, replace=False)
    sa, sb, sy = [a[i] for i in sample], [b[i] for i in sample], y[sample]
    print("| max_len | frozen layers | CPU s / step (16 pairs) | wall s / step | est. CPU min, 1 epoch |")
    print("|---|---|---|---|---|")
    for setting in args.settings.split(","):
        max_len, frozen = (int(v) for v in setting.split(":"))
        cfg = PairTrainConfig(max_len=max_len, epochs=1, batch_size=16, freeze_layers=frozen, threads=args.threads)
        c0, w0 = time.process_time(), time.perf_counter()
        _, info = train_cross_encoder(sa, sb, sy, tok, cfg)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        # the first step includes loading the weights: report the mean over all steps (conservative)
        per = cpu / info["steps"]
        steps = (n_train + 15) // 16
        print(f"| {max_len} | {frozen} | {per:.2f} | {wall / info['steps']:.2f} | "
              f"{per * steps / 60 / args.threads:.1f} (÷{args.threads} threads) |", flush=True)
    # inference rate (onnxruntime), default settings
    cfg = PairTrainConfig(max_len=64, epochs=1, batch_size=16, threads=args.threads)
    model, _ = train_cross_encoder(sa[:16], sb[:16], sy[:16], tok, cfg)
    with tempfile.TemporaryDirectory() as d:
        diff = export_cross_encoder(model, Path(d), tok, 64, sa[:32], sb[:32])
        from pmatch_duckdb.bundles import sha256_file

        scorer = PairScorer(Path(d) / "pair_model.onnx", sha256_file(Path(d) / "pair_model.onnx"),
                            Path(d) / "pair_tokenizer.json", {"max_len": 64}, threads=args.threads)
        n = min(512, len(a))
        c0, w0 = time.process_time(), time.perf_counter()
        scorer.logits(a[:n], b[:n])
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    print(f"\ninference (onnxruntime, max_len 64, {args.threads} threads): {n} pairs in {wall:.1f}s wall / "
          f"{cpu:.1f}s CPU -> {n / wall:.0f} pairs/s wall, {n / cpu * args.threads:.0f} pairs/s per "
          f"{args.threads} idle cores (CPU-time based); ONNX vs torch max |diff| {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
