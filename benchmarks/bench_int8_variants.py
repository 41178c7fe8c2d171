"""int8 recipe search (issue 16): which quantization of the default encoders keeps quality and gains speed.

Builds variants of the fp32 bundles' graphs in a scratch folder and measures each against fp32 in one run:

* text (``minilm-l6-v2``): zero-shot text-cosine R@1 on the full Abt-Buy and Amazon-Google tables (the same
  texts and truth as ``bench_pipeline.py --parts quality``), cosine to the fp32 embeddings of those texts, and
  titles per process-CPU second at one ORT thread (1024 real titles, ``--rounds`` interleaved rounds).
  Variants: ORT's transformer optimizer (fused Attention/LayerNorm/Gelu) in fp32; dynamic int8 per tensor
  (recipe 2), per channel, per channel + ``reduce_range``, per channel with the weight MatMuls of
  ``quantize.TEXT_KEEP_FP32`` left fp32 (recipe 3), fused graph + dynamic per channel (QAttention); static
  QDQ int8 calibrated (percentile) on generated titles (:mod:`pmatch_duckdb.demo.grouped`).
* ``--sensitivity``: each feed-forward weight MatMul quantized alone (per channel), mean 1 - cosine to fp32 on
  768 generated titles/descriptions — how ``TEXT_KEEP_FP32`` was chosen.
* image (``efficientnet-lite0``): Grocery store photo → catalog acc@1, cosine to fp32, and model-only images per
  CPU-s (preprocessed pixels, one ORT thread), for static int8 in QOperator and QDQ formats, quantizing all
  convolutions, only the pointwise (1x1) ones and the head (depthwise convolutions fp32), or all convolutions
  plus the ReLU6 Clips and residual Adds (recipe 4, no fp32 round trip between convolutions), and recipe 4 with
  the stem's RGB input padded to 4 channels (recipe 5: ORT's symmetric int8 kernel); and the CPU cost of
  decoding + preprocessing the photos, which bounds what any model speed-up can give the encode path.

Usage (repository root; needs the build extra and the fp32 bundles)::

    PMATCH_HOME=... python benchmarks/bench_int8_variants.py [--data ../shared/data] [--parts text,image]
        [--sensitivity] [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import DEFAULT_DATA, fmt_table, grocery_photos, log, read_titles, spread  # noqa: E402

from pmatch_duckdb.bundles import Bundle, find_bundle  # noqa: E402
from pmatch_duckdb.encoders.text import TextEncoder  # noqa: E402


class _Variant:
    """A bundle look-alike serving another model.onnx with the fp32 bundle's tokenizer and manifest."""

    def __init__(self, fp: Bundle, path: Path) -> None:
        self.path, self.name, self.modality, self.dim = path, path.stem, fp.modality, fp.dim
        self._fp = fp
        self.manifest = {**fp.manifest, "files": {"model.onnx": hashlib.sha256(path.read_bytes()).hexdigest()}}

    def file(self, name: str) -> Path:
        return self.path if name == "model.onnx" else self._fp.file(name)


def _r_at_1(src_ids: list[str], tgt_ids: list[str], sim: np.ndarray, truth: dict[str, set[str]]) -> float:
    best = np.argmax(sim, axis=1)
    return float(np.mean([tgt_ids[best[i]] in truth[s] for i, s in enumerate(src_ids) if s in truth]))


def quality_texts(data: Path, home: Path) -> dict[str, dict[str, Any]]:
    """Texts and truth of bench_pipeline's quality part (full Abt-Buy and Amazon-Google tables)."""
    from bench_match_real import DATASETS, load_dataset

    import pmatch_duckdb as pm
    from pmatch_duckdb.offer_vectors import text_input
    from pmatch_duckdb.offers import read_offers

    out = {}
    for ds in ("abt-buy", "amazon-google"):
        work = Path(tempfile.mkdtemp(prefix="bench_int8_q_"))
        con = pm.connect(work / "q.duckdb", home=home, image_roots=[work])
        spec = DATASETS[ds]
        truth: dict[str, set[str]] = {}
        for a, b in load_dataset(con, data, spec):
            truth.setdefault(a, set()).add(b)
        src, tgt = read_offers(con, spec.source), read_offers(con, spec.target)
        out[ds] = {"src_ids": [str(o.id) for o in src], "tgt_ids": [str(o.id) for o in tgt], "truth": truth,
                   "src": [text_input(o) or " " for o in src], "tgt": [text_input(o) or " " for o in tgt]}
        con.close()
    return out


def build_text_variants(fp: Bundle, work: Path) -> dict[str, Path]:
    """The text variants' ONNX files (see the module docstring)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.transformers.optimizer import optimize_model

    from pmatch_duckdb.build import quantize as qz
    from pmatch_duckdb.encoders.text import runtime_tokenizer

    pre = qz._preprocessed(fp.file("model.onnx"), work)
    out = {"fp32": fp.file("model.onnx")}
    fused = optimize_model(str(fp.file("model.onnx")), model_type="bert", num_heads=12, hidden_size=384, opt_level=0)
    log(f"text: fused operators {fused.get_fused_operator_statistics()}")
    fused.save_model_to_file(str(work / "fused_fp32.onnx"))
    out["fp32 fused (ORT transformer optimizer)"] = work / "fused_fp32.onnx"
    dyn = {"DefaultTensorType": 1}  # float: the fused graph's contrib ops have no inferred output types

    def dynamic(name: str, src: Path, **kw: Any) -> None:
        path = work / f"{len(out)}.onnx"
        quantize_dynamic(str(src), str(path), weight_type=QuantType.QInt8, extra_options=dyn, **kw)
        out[name] = path

    mm = {"op_types_to_quantize": ["MatMul", "Gemm"]}
    dynamic("dynamic per tensor (recipe 2)", pre, per_channel=False, **mm)
    dynamic("dynamic per channel", pre, per_channel=True, **mm)
    dynamic("dynamic per channel, reduce_range", pre, per_channel=True, reduce_range=True, **mm)
    dynamic("dynamic per channel, layer.0 FFN-out fp32 (recipe 3)", pre, per_channel=True,
            nodes_to_exclude=qz.kept_fp32(pre), **mm)
    dynamic("fused + dynamic per channel (QAttention)", work / "fused_fp32.onnx", per_channel=True)
    # static QDQ: activation ranges from generated titles, all batches padded to one width (the calibrator
    # concatenates them)
    from pmatch_duckdb.demo.grouped import grouped_offers

    g = grouped_offers(400, seed=11)
    texts = [x for x in g.column("title").to_pylist() + g.column("description").to_pylist() if x]
    tok = runtime_tokenizer(fp.file("tokenizer.json"), fp.manifest["preprocessing"])
    encs = tok.encode_batch(texts)
    width = max(len(e.ids) for e in encs)
    batches = []
    for s in range(0, len(encs) - 31, 32):
        ids = np.zeros((32, width), np.int64)
        mask = np.zeros_like(ids)
        for r, e in enumerate(encs[s:s + 32]):
            ids[r, :len(e.ids)], mask[r, :len(e.ids)] = e.ids, 1
        batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})

    class Reader:
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

        def rewind(self) -> None:
            self.it = iter(batches)

    path = work / "qdq.onnx"
    quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Percentile, op_types_to_quantize=["MatMul"],
                    extra_options={"CalibPercentile": 99.99})
    out[f"static QDQ per channel, percentile, {32 * len(batches)} generated titles"] = path
    return out


def _interleaved(fns: dict[str, Callable[[], Any]], n_items: int, rounds: int) -> dict[str, float]:
    """Median items per process-CPU second of each function, rounds interleaved with rotating order."""
    names, cpu = list(fns), {k: [] for k in fns}
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            c = time.process_time()
            fns[k]()
            cpu[k].append(n_items / max(time.process_time() - c, 1e-9))
    return {k: statistics.median(v) for k, v in cpu.items()}


def part_text(args: argparse.Namespace, work: Path) -> None:
    fp = find_bundle("minilm-l6-v2", args.home)
    variants = build_text_variants(fp, work)
    q = quality_texts(args.data, args.home)
    encs = {k: TextEncoder(fp if k == "fp32" else _Variant(fp, p), threads=1) for k, p in variants.items()}
    res: dict[str, dict[str, float]] = {}
    ref: dict[str, np.ndarray] = {}
    for k, enc in encs.items():
        cos = []
        res[k] = {}
        for ds, d in q.items():
            a, b = enc.encode(d["src"]), enc.encode(d["tgt"])
            res[k][ds] = _r_at_1(d["src_ids"], d["tgt_ids"], a @ b.T, d["truth"])
            e = np.vstack([a, b])
            ref.setdefault(ds, e)
            cos.append((e * ref[ds]).sum(axis=1))
        c = np.concatenate(cos)
        res[k]["cos_min"], res[k]["cos_med"] = float(c.min()), float(np.median(c))
        log(f"text {k}: {res[k]}")
    # how much R@1 does *unstructured* error of the same size cost? fp32 embeddings plus isotropic Gaussian
    # noise scaled to recipe 3's median cosine, 20 seeds
    target = res["dynamic per channel, layer.0 FFN-out fp32 (recipe 3)"]["cos_med"]
    sigma = float(np.sqrt((1 / target ** 2 - 1) / 384))
    noise_rows = []
    for ds, d in q.items():
        e, n = ref[ds], len(d["src"])
        base = _r_at_1(d["src_ids"], d["tgt_ids"], e[:n] @ e[n:].T, d["truth"])
        deltas = []
        for seed in range(20):
            x = e + np.random.default_rng(seed).normal(0, sigma, e.shape).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            deltas.append(_r_at_1(d["src_ids"], d["tgt_ids"], x[:n] @ x[n:].T, d["truth"]) - base)
        noise_rows.append(f"{ds} {np.mean(deltas):+.4f} [{min(deltas):+.4f}, {max(deltas):+.4f}]")
    titles = read_titles(args.data)
    titles = spread(titles, 1024)
    for e in encs.values():
        e.encode(titles[:256])
    speed = _interleaved({k: (lambda e=e: e.encode(titles)) for k, e in encs.items()}, len(titles), args.rounds)
    rows = [[k, f"{r['abt-buy']:.4f}", f"{r['abt-buy'] - res['fp32']['abt-buy']:+.4f}", f"{r['amazon-google']:.4f}",
             f"{r['amazon-google'] - res['fp32']['amazon-google']:+.4f}", f"{r['cos_min']:.4f}", f"{r['cos_med']:.4f}",
             f"{speed[k]:.1f}", f"{speed[k] / speed['fp32']:.2f}x"] for k, r in res.items()]
    print(f"\n## text variants: R@1 on the full tables, cosine to fp32 on those texts, speed on 1024 real titles "
          f"(1 ORT thread, {args.rounds} interleaved rounds)\n")
    print(fmt_table(["variant", "Abt-Buy R@1", "Δ", "Amazon-Google R@1", "Δ", "cos min", "cos median",
                     "titles per CPU-s", "vs fp32"], rows))
    print(f"\nfp32 + isotropic noise at recipe 3's median cosine {target:.4f} (20 seeds), R@1 change mean [min, max]: "
          + "; ".join(noise_rows))


def part_sensitivity(args: argparse.Namespace, work: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from pmatch_duckdb.build import quantize as qz
    from pmatch_duckdb.demo.grouped import grouped_offers

    fp = find_bundle("minilm-l6-v2", args.home)
    pre = qz._preprocessed(fp.file("model.onnx"), work)
    m = onnx.load(str(pre), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    nodes = [n.name for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in inits
             and "attention" not in n.name]
    g = grouped_offers(600, seed=5)
    texts = [x for x in g.column("title").to_pylist() + g.column("description").to_pylist() if x][:768]
    ref = TextEncoder(fp).encode(texts)
    rows = []
    for nd in nodes:
        path = work / "one.onnx"
        quantize_dynamic(str(pre), str(path), weight_type=QuantType.QInt8, per_channel=True, nodes_to_quantize=[nd],
                         op_types_to_quantize=["MatMul"])
        v = TextEncoder(_Variant(fp, path)).encode(texts)
        rows.append((float(np.mean(1 - (v * ref).sum(axis=1))), nd))
    rows.sort(reverse=True)
    print(f"\n## sensitivity: one feed-forward weight MatMul quantized (per channel), mean 1 - cos to fp32 on "
          f"{len(texts)} generated titles/descriptions\n")
    print(fmt_table(["mean 1 - cos", "node"], [[f"{s:.6f}", n] for s, n in rows]))


def part_image(args: argparse.Namespace, work: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from PIL import Image

    from pmatch_duckdb.build import quantize as qz
    from pmatch_duckdb.encoders.image import ImageEncoder

    fp = find_bundle("efficientnet-lite0", args.home)
    enc = ImageEncoder(fp, threads=1)
    photos = qz.calibration_photos(work / "calibration")
    calib = np.stack([enc.preprocess(Image.open(p).convert("RGB")) for p in photos]).astype(np.float32)
    pre = qz._preprocessed(fp.file("model.onnx"), work)
    m = onnx.load(str(pre))
    dims = {i.name: tuple(i.dims) for i in m.graph.initializer}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    group = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs}
    depthwise = [n.name for n in convs if group[n.name] > 1]
    pointwise = [n.name for n in convs if group[n.name] == 1 and dims.get(n.input[1], ())[2:] == (1, 1)]
    rest = [n.name for n in m.graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and n.name not in depthwise]
    log(f"image: {len(convs)} convolutions: {len(pointwise)} pointwise, {len(depthwise)} depthwise")

    class Reader:
        def __init__(self) -> None:
            self.it = iter([{enc.input_name: calib[s:s + 8]} for s in range(0, len(calib), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

        def rewind(self) -> None:
            pass

    variants = {"fp32": fp.file("model.onnx")}
    conv_ops = ["Conv", "MatMul", "Gemm"]
    for fmt_name, fmt in (("QOperator", QuantFormat.QOperator), ("QDQ", QuantFormat.QDQ)):
        for sel_name, sel, ops in (("all convolutions (recipe 2-3 if QOperator)", None, conv_ops),
                                   ("pointwise + stem + head, depthwise fp32", rest, conv_ops),
                                   ("all convolutions + Clip + Add (recipe 4 if QOperator)", None, qz.IMAGE_OPS)):
            path = work / f"img{len(variants)}.onnx"
            quantize_static(str(pre), str(path), Reader(), quant_format=fmt, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=ops,
                            nodes_to_quantize=sel)
            variants[f"{fmt_name}, {sel_name}"] = path
    # recipe 5: recipe 4 with the stem reading its RGB input padded with a zero channel (ORT's symmetric kernel)
    (work / "padded").mkdir(exist_ok=True)
    if qz.pad_input_channels(fp.file("model.onnx"), work / "padded" / "in.onnx") is not None:
        path = work / f"img{len(variants)}.onnx"
        quantize_static(str(qz._preprocessed(work / "padded" / "in.onnx", work / "padded")), str(path), Reader(),
                        quant_format=QuantFormat.QOperator, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=qz.IMAGE_OPS)
        variants["QOperator, recipe 4 + stem input padded to 4 channels (recipe 5)"] = path
    folder = args.data / "grocery"
    with open(folder / "classes.csv", encoding="utf-8") as fh:
        classes = [(int(r["Class ID (int)"]), r["Iconic Image Path (str)"].lstrip("/")) for r in csv.DictReader(fh)]
    test = grocery_photos(args.data, "test.txt" if (folder / "test.txt").exists() else "val.txt")
    c0 = time.process_time()
    cat = np.stack([enc.preprocess(Image.open(folder / p).convert("RGB")) for _, p in classes])
    qpx = np.stack([enc.preprocess(Image.open(folder / p).convert("RGB")) for p, _ in test])
    prep = (time.process_time() - c0) / (len(cat) + len(qpx))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in variants.items()}

    def embed(s: Any, x: np.ndarray) -> np.ndarray:
        name = s.get_inputs()[0].name
        out = np.concatenate([s.run(["embedding"], {name: x[i:i + 32]})[0] for i in range(0, len(x), 32)])
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    cat_cls, q_cls = np.array([c for c, _ in classes]), np.array([c for _, c in test])
    res, ref = {}, None
    for k, s in sessions.items():
        cv, qv = embed(s, cat), embed(s, qpx)
        ref = qv if ref is None else ref
        res[k] = (float(np.mean(cat_cls[np.argmax(qv @ cv.T, axis=1)] == q_cls)), float(np.median((qv * ref).sum(1))))
    x = qpx[:96]
    speed = _interleaved({k: (lambda s=s: embed(s, x)) for k, s in sessions.items()}, len(x), args.rounds)
    rows = [[k, f"{a:.4f}", f"{a - res['fp32'][0]:+.4f}", f"{c:.4f}", f"{speed[k]:.1f}", f"{speed[k] / speed['fp32']:.2f}x"]
            for k, (a, c) in res.items()]
    print(f"\n## image variants: Grocery acc@1 ({len(test)} photos), model-only speed on 96 preprocessed photos "
          f"(1 ORT thread, {args.rounds} interleaved rounds)\n")
    print(fmt_table(["variant", "acc@1", "Δ", "cos to fp32 (median)", "images per CPU-s", "vs fp32"], rows))
    model_s = 1 / speed["fp32"]
    print(f"\ndecoding + preprocessing one Grocery photo: {1000 * prep:.1f} CPU-ms; fp32 model: {1000 * model_s:.1f} "
          f"CPU-ms per photo. A model 2x faster makes the encode path {(prep + model_s) / (prep + model_s / 2):.2f}x "
          f"faster; an infinitely fast one {(prep + model_s) / prep:.2f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--parts", default="text,image")
    ap.add_argument("--sensitivity", action="store_true", help="text: one-matrix-at-a-time sensitivity table")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    from pmatch_duckdb.home import pmatch_home

    args.home = pmatch_home(args.home)
    load = os.getloadavg()
    print(f"# bench_int8_variants {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}  "
          f"cpus={os.cpu_count()}  load avg {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"# command: python benchmarks/bench_int8_variants.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    parts = {p.strip() for p in args.parts.split(",")}
    with tempfile.TemporaryDirectory(prefix="bench_int8_") as tmp:
        work = Path(tmp)
        cwd = os.getcwd()
        os.chdir(work)  # the quantizer writes scratch files into the working directory
        try:
            if "text" in parts:
                part_text(args, work)
            if args.sensitivity:
                part_sensitivity(args, work)
            if "image" in parts:
                part_image(args, work)
        finally:
            os.chdir(cwd)
    c = os.times()
    load = os.getloadavg()
    print(f"\n# done {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}  process CPU "
          f"{c.user + c.system:.0f} s  load avg {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
