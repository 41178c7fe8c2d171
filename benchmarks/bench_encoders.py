"""Encoder throughput: torch eager vs onnxruntime vs the DuckDB UDF, on the same real inputs.

For text (real Abt product titles) and images (real Grocery Store photos) this measures, in one run:

(a) **torch eager**: the torch modules the ONNX graphs are exported from
    (``build/*.load_torch_model()``), fed with exactly the runtime's tokenization / image decoding and
    preprocessing and the runtime's batch sizes. Two levels: end to end (tokenize or decode included)
    and forward only (on pre-made tensors).
(b) **onnxruntime** through our encoder classes: ``TextEncoder.encode`` / ``ImageEncoder.encode``
    (tokenization / decoding included), plus the pure ``session.run`` on the same pre-made tensors.
(c) **the DuckDB UDF** over a table: ``CREATE OR REPLACE TABLE emb AS SELECT pm_embed_text(title) ...``
    (result materialised), once per DuckDB ``threads`` setting (1 and 2 by default), each applied with
    ``SET threads`` followed by ``install()``. Each row records the ORT intra-op threads it ran with
    (the runtime now gives every session all cores and serialises its runs; ``PMATCH_ORT_THREADS``
    overrides).

Each path gets a full warm-up pass (session creation and model loading are never timed), then
``--rounds`` interleaved rounds (the order rotates every round); the table reports the median items/s
and the min-max spread. Ratios compare like with like: end-to-end rows against the end-to-end
onnxruntime / torch rows, model-only rows against the model-only ones.

Usage (from the repository root)::

    PMATCH_HOME=/tmp/pmhome python benchmarks/bench_encoders.py [--n-texts 1024] [--n-images 256]
        [--rounds 3] [--data ../shared/data] [--home DIR] [--duckdb-threads 1 2]

torch is only needed for (a); without it (a) is skipped with a note.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import onnxruntime as ort
import pyarrow as pa

import pmatch_duckdb
from pmatch_duckdb.bundles import find_bundle
from pmatch_duckdb.embedding import policy_of
from pmatch_duckdb.encoders.image import ImageEncoder
from pmatch_duckdb.encoders.image_io import ImagePolicy, load_image
from pmatch_duckdb.encoders.registry import get_image_encoder, get_text_encoder
from pmatch_duckdb.encoders.sessions import cpu_count
from pmatch_duckdb.encoders.text import TextEncoder
from pmatch_duckdb.settings import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL, Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"

E2E = "end-to-end"
MODEL = "model only"


@dataclass
class Bench:
    """One timed code path: ``run()`` processes all inputs and returns their embeddings.

    UDF paths return nothing; their vectors are read back from ``con``'s ``emb`` table, untimed.
    """

    modality: str
    name: str
    level: str  # E2E or MODEL
    kind: str  # "torch", "ort", "ort1" (ORT with 1 intra-op thread) or "udf"
    run: Callable[[], np.ndarray | None]
    n_items: int
    con: duckdb.DuckDBPyConnection | None = None
    ort_threads: int | None = None  # ORT intra-op threads this path runs with (onnxruntime and UDF rows)
    times: list[float] = field(default_factory=list)

    def rates(self) -> list[float]:
        """Items per second of every timed round."""
        return [self.n_items / t for t in self.times]

    def median(self) -> float:
        """Median items per second."""
        return statistics.median(self.rates())


# --------------------------------------------------------------------------------------------- inputs

def read_titles(data: Path, n: int) -> list[str]:
    """The first ``n`` non-empty Abt product names (cycled if fewer exist)."""
    with open(data / "abt-buy" / "abt.csv", newline="", encoding="utf-8") as f:
        names = [r["name"] for r in csv.DictReader(f, delimiter="|") if r["name"] and r["name"].strip()]
    return [names[i % len(names)] for i in range(n)]


def read_photo_paths(data: Path, n: int) -> list[str]:
    """The first ``n`` photo paths of ``grocery/train.txt``, relative to ``grocery/`` (cycled if needed)."""
    lines = (data / "grocery" / "train.txt").read_text(encoding="utf-8").splitlines()
    paths = [ln.split(",")[0].strip() for ln in lines if ln.strip()]
    return [paths[i % len(paths)] for i in range(n)]


# ----------------------------------------------------------------------------- shared preprocessing

def text_batches(enc: TextEncoder, texts: Sequence[str]) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Tokenize, length-sort and pad exactly like ``TextEncoder.encode``: ``[(row_idx, feeds), ...]``."""
    encs = enc.tokenizer.encode_batch(list(texts), add_special_tokens=True)
    order = np.argsort([len(e.ids) for e in encs], kind="stable")
    out = []
    for start in range(0, len(order), enc.batch_size):
        idx = order[start:start + enc.batch_size]
        width = max(len(encs[i].ids) for i in idx)
        ids = np.full((len(idx), width), enc.pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        types = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            e = encs[i]
            k = len(e.ids)
            ids[row, :k] = e.ids
            mask[row, :k] = 1
            types[row, :k] = e.type_ids
        out.append((idx, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}))
    return out


def image_batches(enc: ImageEncoder, paths: Sequence[str], policy: ImagePolicy) -> list[np.ndarray]:
    """Decode and preprocess exactly like ``ImageEncoder.encode``, in batches of its batch size."""
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    for p in paths:
        loaded = load_image(p, policy, draft_size=enc.resize)
        if loaded.image is None:
            raise RuntimeError(f"benchmark photo {p!r} is unusable: {loaded.reason}")
        batch.append(enc.preprocess(loaded.image))
        if len(batch) == enc.batch_size:
            out.append(np.stack(batch))
            batch = []
    if batch:
        out.append(np.stack(batch))
    return out


# ---------------------------------------------------------------------------------------- paths

def ort_threads(enc: TextEncoder | ImageEncoder) -> int:
    """The intra-op thread count the encoder's ONNX session was created with."""
    return int(enc.session.get_session_options().intra_op_num_threads)


def fetch_vectors(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """The materialised ``emb`` table's vectors in input order."""
    tbl = con.sql("SELECT e FROM emb ORDER BY i").to_arrow_table()
    col = tbl.column("e").combine_chunks()
    if col.null_count:
        raise RuntimeError(f"{col.null_count} embeddings came back NULL")
    assert isinstance(col, pa.FixedSizeListArray)
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size)


def udf_path(con: duckdb.DuckDBPyConnection, sql: str) -> Callable[[], None]:
    """Run ``sql`` (a ``CREATE OR REPLACE TABLE emb AS SELECT ...``) to completion."""

    def run() -> None:
        con.execute(sql).fetchall()

    return run


def load_torch() -> tuple[Any, Any, Any, str | None]:
    """``(torch, text_module, image_module, None)`` or ``(None, None, None, why)`` when torch is unavailable."""
    try:
        import torch

        from pmatch_duckdb.build import image_efficientnet, text_minilm

        text_model = text_minilm.load_torch_model()
        image_model = image_efficientnet.load_torch_model()
    except ImportError as e:
        return None, None, None, f"torch eager skipped: {e}"
    return torch, text_model, image_model, None


def build_paths(args: argparse.Namespace, settings: Settings, titles: list[str], photos: list[str],
                threads_list: list[int]) -> tuple[list[Bench], dict[str, Any]]:
    """Create every encoder/session/connection (untimed) and the closures to time."""
    info: dict[str, Any] = {"notes": []}
    cores = cpu_count()
    policy = policy_of(settings)
    text_bundle = find_bundle(settings.text_model, settings.home)
    image_bundle = find_bundle(settings.image_model, settings.home)

    # (b) the encoders the UDF uses when DuckDB runs with 1 thread (ORT gets all cores)
    tenc = get_text_encoder(settings, duckdb_threads=1)
    ienc = get_image_encoder(settings, duckdb_threads=1)
    if not isinstance(tenc, TextEncoder) or type(ienc) is not ImageEncoder:
        raise SystemExit("this benchmark measures the default encoders (MiniLM text, EfficientNet-Lite0 image); "
                         f"got {type(tenc).__name__} / {type(ienc).__name__}")
    # the same model with 1 intra-op thread: what each UDF call gets under DuckDB threads = cores
    tenc1 = TextEncoder(text_bundle, threads=1, batch_size=settings.text_batch_size)
    ienc1 = ImageEncoder(image_bundle, threads=1, batch_size=settings.image_batch_size)
    info["ort_threads"] = ort_threads(tenc)

    tb = text_batches(tenc, titles)
    t_feeds = [{k: v for k, v in feeds.items() if k in tenc.input_names} for _, feeds in tb]
    ib = image_batches(ienc, photos, policy)

    def ort_text_run() -> np.ndarray:
        out = np.zeros((len(titles), tenc.dim), np.float32)
        for (idx, _), feeds in zip(tb, t_feeds, strict=True):
            out[idx] = tenc.session.run([tenc.output], feeds)[0]
        return out

    def ort_image_run() -> np.ndarray:
        return np.concatenate([ienc.session.run([ienc.output], {ienc.input_name: b})[0] for b in ib])

    def image_encode(enc: ImageEncoder) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            vecs, reasons = enc.encode(photos, policy)
            if any(reasons):
                raise RuntimeError(f"image failures: {set(reasons) - {None}}")
            return vecs
        return run

    paths: list[Bench] = []
    nt, ni = len(titles), len(photos)

    if (settings.text_model, settings.image_model) != (DEFAULT_TEXT_MODEL, DEFAULT_IMAGE_MODEL):
        torch, ttm, itm, why = None, None, None, "torch eager skipped: the torch modules are the default models'"
    else:
        torch, ttm, itm, why = load_torch()
    if why:
        info["notes"].append(why)
    else:
        torch.set_num_threads(cores)
        info["torch_threads"] = torch.get_num_threads()
        info["torch_version"] = torch.__version__
        tt_batches = [(idx, {k: torch.from_numpy(v) for k, v in feeds.items()}) for idx, feeds in tb]
        it_batches = [torch.from_numpy(b) for b in ib]

        def torch_text(batches: list[tuple[np.ndarray, dict[str, Any]]] | None) -> np.ndarray:
            out = np.zeros((nt, tenc.dim), np.float32)
            with torch.inference_mode():
                for idx, feeds in batches if batches is not None else text_batches(tenc, titles):
                    tf = {k: torch.as_tensor(v) for k, v in feeds.items()}
                    out[idx] = ttm(tf["input_ids"], tf["attention_mask"], tf["token_type_ids"]).numpy()
            return out

        def torch_image(batches: list[Any] | None) -> np.ndarray:
            parts = []
            with torch.inference_mode():
                for b in batches if batches is not None else image_batches(ienc, photos, policy):
                    parts.append(itm(torch.as_tensor(b))[0].numpy())
            return np.concatenate(parts)

        paths += [
            Bench("text", "torch eager (tokenize + forward)", E2E, "torch", lambda: torch_text(None), nt),
            Bench("text", "torch eager forward (tensors)", MODEL, "torch", lambda: torch_text(tt_batches), nt),
            Bench("image", "torch eager (decode + forward)", E2E, "torch", lambda: torch_image(None), ni),
            Bench("image", "torch eager forward (tensors)", MODEL, "torch", lambda: torch_image(it_batches), ni),
        ]

    paths += [
        Bench("text", f"onnxruntime TextEncoder.encode ({ort_threads(tenc)} thr)", E2E, "ort",
              lambda: tenc.encode(titles), nt, ort_threads=ort_threads(tenc)),
        Bench("text", f"onnxruntime session.run (tensors, {ort_threads(tenc)} thr)", MODEL, "ort",
              ort_text_run, nt, ort_threads=ort_threads(tenc)),
        Bench("image", f"onnxruntime ImageEncoder.encode ({ort_threads(ienc)} thr)", E2E, "ort",
              image_encode(ienc), ni, ort_threads=ort_threads(ienc)),
        Bench("image", f"onnxruntime session.run (tensors, {ort_threads(ienc)} thr)", MODEL, "ort",
              ort_image_run, ni, ort_threads=ort_threads(ienc)),
    ]
    if cores > 1:
        paths += [
            Bench("text", "onnxruntime TextEncoder.encode (1 thr)", E2E, "ort1", lambda: tenc1.encode(titles), nt,
                  ort_threads=1),
            Bench("image", "onnxruntime ImageEncoder.encode (1 thr)", E2E, "ort1", image_encode(ienc1), ni,
                  ort_threads=1),
        ]

    # (c) DuckDB UDF, one connection per threads setting; inputs loaded from the same Python lists
    titles_tbl = pa.table({"i": pa.array(range(nt), pa.int32()), "title": pa.array(titles, pa.string())})
    photos_tbl = pa.table({"i": pa.array(range(ni), pa.int32()), "path": pa.array(photos, pa.string())})
    info["udf"] = {}
    for th in threads_list:
        con = duckdb.connect()
        con.execute(f"SET threads = {int(th)}").fetchall()
        pmatch_duckdb.install(con, settings)
        con.register("titles_src", titles_tbl)
        con.register("photos_src", photos_tbl)
        con.execute("CREATE TABLE titles AS SELECT i, title FROM titles_src ORDER BY i").fetchall()
        con.execute("CREATE TABLE photos AS SELECT i, path FROM photos_src ORDER BY i").fetchall()
        con.unregister("titles_src")
        con.unregister("photos_src")
        got = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
        used = {"text": ort_threads(get_text_encoder(settings, duckdb_threads=got)),
                "image": ort_threads(get_image_encoder(settings, duckdb_threads=got))}
        info["udf"][th] = (got, used)
        paths += [
            Bench("text", f"DuckDB UDF, threads={got} (ORT {used['text']} thr)", E2E, "udf",
                  udf_path(con, "CREATE OR REPLACE TABLE emb AS SELECT i, pm_embed_text(title) AS e FROM titles"),
                  nt, con=con, ort_threads=used["text"]),
            Bench("image", f"DuckDB UDF, threads={got} (ORT {used['image']} thr)", E2E, "udf",
                  udf_path(con, "CREATE OR REPLACE TABLE emb AS SELECT i, pm_embed_image(path) AS e FROM photos"),
                  ni, con=con, ort_threads=used["image"]),
        ]
    return paths, info


# ------------------------------------------------------------------------------------------ running

def warm_up_and_check(paths: list[Bench]) -> list[str]:
    """One untimed pass of every path; returns agreement lines (max |Δ| vs onnxruntime encode)."""
    ref: dict[str, np.ndarray] = {}
    got: dict[str, tuple[Bench, np.ndarray]] = {}
    for p in paths:
        vecs = p.run()
        if p.con is not None:
            vecs = fetch_vectors(p.con)
        if p.kind == "ort" and p.level == E2E:
            ref[p.modality] = vecs
        got[f"{p.modality}|{p.name}"] = (p, vecs)
    lines = []
    for p, vecs in got.values():
        if p.kind == "ort" and p.level == E2E:
            continue
        diff = float(np.abs(vecs - ref[p.modality]).max())
        lines.append(f"  {p.modality:5s} {p.name:48s} max|Δ| vs onnxruntime encode = {diff:.2e}")
    return lines


def time_rounds(paths: list[Bench], rounds: int) -> None:
    """Interleaved timing: every round runs every path once, starting one path later each round."""
    for r in range(rounds):
        k = r % len(paths)
        for p in paths[k:] + paths[:k]:
            gc.collect()
            t0 = time.perf_counter()
            p.run()
            p.times.append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)


def baseline(paths: list[Bench], modality: str, level: str, kind: str) -> float | None:
    """Median items/s of the (modality, level) baseline of ``kind`` ('ort' or 'torch')."""
    for p in paths:
        if p.modality == modality and p.level == level and p.kind == kind:
            return p.median()
    return None


def fmt_ratio(x: float, base: float | None) -> str:
    """``x / base`` as ``1.23x`` (or ``-``)."""
    return "-" if base is None else f"{x / base:.2f}x"


def report(paths: list[Bench], info: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the results table, the target checks and the run configuration."""
    print()
    print("| modality | path | level | items/s (median) | min-max | vs onnxruntime | vs torch eager |")
    print("|---|---|---|---:|---:|---:|---:|")
    for p in paths:
        m = p.median()
        lo, hi = min(p.rates()), max(p.rates())
        print(f"| {p.modality} | {p.name} | {p.level} | {m:.1f} | {lo:.1f}-{hi:.1f} | "
              f"{fmt_ratio(m, baseline(paths, p.modality, p.level, 'ort'))} | "
              f"{fmt_ratio(m, baseline(paths, p.modality, p.level, 'torch'))} |")
    print()
    print("Targets:")
    for modality in ("text", "image"):
        ort_e2e = baseline(paths, modality, E2E, "ort")
        for p in paths:
            if p.modality == modality and p.kind == "udf" and ort_e2e:
                r = p.median() / ort_e2e
                same = next((q for q in paths if q.modality == modality and q.level == E2E
                             and q.kind in ("ort", "ort1") and q.ort_threads == p.ort_threads), None)
                extra = (f"; {p.median() / same.median():.2f}x the encoder with the same {p.ort_threads} ORT thread(s)"
                         if same else "")
                print(f"  {modality:5s} {p.name}: {r:.2f}x raw onnxruntime encode (target >= 0.90x) "
                      f"{'PASS' if r >= 0.9 else 'FAIL'}{extra}")
    for level, what in ((E2E, "ImageEncoder.encode vs torch decode+forward"),
                        (MODEL, "session.run vs torch forward")):
        o, t = baseline(paths, "image", level, "ort"), baseline(paths, "image", level, "torch")
        if o and t:
            print(f"  image onnxruntime {what}: {o / t:.2f}x (target >= 3x) {'PASS' if o / t >= 3 else 'FAIL'}")
        else:
            print(f"  image onnxruntime >= 3x torch eager ({level}): not measured (torch missing)")
    print()
    print("Configuration:")
    print(f"  date: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"  machine: {platform.machine()}, {cpu_count()} usable cores, {platform.platform()}")
    print(f"  load average (1/5/15 min) at start: {info['load_start']}, at end: {load_average()} "
          "(other processes compete for the cores when it exceeds the core count)")
    print(f"  python {platform.python_version()}, duckdb {duckdb.__version__}, onnxruntime {ort.__version__}"
          + (f", torch {info['torch_version']}" if "torch_version" in info else ""))
    print(f"  inputs: {args.n_texts} Abt titles, {args.n_images} Grocery photos; rounds: {args.rounds}; "
          f"batch sizes: text {info['text_batch']}, image {info['image_batch']}")
    print(f"  DuckDB default threads (duckdb.connect()): {info['default_threads']}")
    print(f"  ORT intra-op threads for raw onnxruntime rows: {info['ort_threads']}"
          + (f"; torch threads: {info['torch_threads']}" if "torch_threads" in info else ""))
    for th, (got, used) in info["udf"].items():
        print(f"  UDF with SET threads={th}: DuckDB threads={got}, ORT intra-op threads text={used['text']} "
              f"image={used['image']}")
    if os.environ.get("PMATCH_ORT_THREADS"):
        print(f"  PMATCH_ORT_THREADS={os.environ['PMATCH_ORT_THREADS']} overrides the ORT thread choice")
    for note in info["notes"]:
        print(f"  NOTE: {note}")


def load_average() -> str:
    """``os.getloadavg()`` formatted, or ``n/a`` where unsupported."""
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse flags, build every path, warm up, time, report."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-texts", type=int, default=1024, help="titles to embed (default 1024)")
    ap.add_argument("--n-images", type=int, default=256, help="photos to embed (default 256)")
    ap.add_argument("--rounds", type=int, default=3, help="timed interleaved rounds (default 3)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help=f"shared data folder (default {DEFAULT_DATA})")
    ap.add_argument("--home", default=None, help="pmatch home with the model bundles (default $PMATCH_HOME)")
    ap.add_argument("--duckdb-threads", type=int, nargs="+", default=[1, 2],
                    help="DuckDB threads settings to time the UDF with (default: 1 2)")
    args = ap.parse_args(argv)
    if args.n_texts <= 0 or args.n_images <= 0 or args.rounds <= 0:
        ap.error("--n-texts, --n-images and --rounds must be positive")

    data = args.data.resolve()
    grocery = data / "grocery"
    titles = read_titles(data, args.n_texts)
    photos = read_photo_paths(data, args.n_images)
    settings = Settings.create(home=args.home, image_roots=[grocery])

    print(f"building sessions and models (untimed); data: {data}", file=sys.stderr, flush=True)
    load_start = load_average()
    paths, info = build_paths(args, settings, titles, photos, args.duckdb_threads)
    info["load_start"] = load_start
    info["text_batch"], info["image_batch"] = settings.text_batch_size, settings.image_batch_size
    info["default_threads"] = int(duckdb.connect().execute("SELECT current_setting('threads')").fetchall()[0][0])

    print("warm-up pass (untimed) ...", file=sys.stderr, flush=True)
    agreement = warm_up_and_check(paths)
    time_rounds(paths, args.rounds)
    report(paths, info, args)
    print()
    print("Agreement (warm-up outputs):")
    print("\n".join(agreement))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
