"""Cost of the pair scorer's fine-tuning on a real training split (issue 11), measured per step.

The full fine-tuning run cannot be timed honestly on a shared, overloaded machine, so this measures
what one optimiser step costs in CPU seconds for a few (max_len, frozen layers) settings on the
Abt-Buy Magellan training pairs (serialised exactly as ``train_matcher`` serialises them), and
extrapolates to one epoch over the split plus the mined hard negatives (2 per labelled source).
CPU seconds of one process with ``torch.set_num_threads(threads)`` ≈ wall seconds on that many idle
cores. Also measured: the cross-encoder's inference rate through onnxruntime (pairs/s; the speed does
not depend on the weights, so the freshly initialised model is exported).

Usage::

    python benchmarks/bench_pair_train.py [--data ../shared/data] [--steps 6] [--threads 2]
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
from bench_quality import DEFAULT_DATA, parse_ditto_record, parse_price  # noqa: E402

from pmatch_duckdb.features.lexical import identifiers  # noqa: E402
from pmatch_duckdb.pair_scorer import PairScorer, SerializeOptions, serialize_offer  # noqa: E402
from pmatch_duckdb.training.pair_model import (  # noqa: E402
    PairTrainConfig,
    export_cross_encoder,
    minilm_dir,
    train_cross_encoder,
)


def load_pairs(folder: Path, split: str, opts: SerializeOptions) -> tuple[list[str], list[str], np.ndarray]:
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
                                         identifiers(title), r.get("description"), opts))
        a.append(texts[0])
        b.append(texts[1])
        y.append(int(label))
    return a, b, np.array(y, dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--steps", type=int, default=6, help="optimiser steps timed per setting")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settings", default="64:4,64:0,96:4,128:4", help="max_len:frozen_layers,...")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
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
