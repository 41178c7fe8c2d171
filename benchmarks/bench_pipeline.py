"""Pipeline speed on one machine (issue 16): int8 vs fp32 encoders, training scaling, matching throughput.

Parts (``--parts``, default all), each printing ratios measured side by side in this one run:

* ``encoders``: items/s of the fp32 and int8 bundles through our encoder classes (tokenization / image
  decoding included) and of ``pm_index`` over a table of the same titles with each text model, in
  ``--rounds`` interleaved rounds (order rotating); median and min–max. Real data: Abt, Buy, Amazon and
  Google titles; Grocery Store photos.
* ``quality``: what int8 costs. Zero-shot text-cosine R@1 and the zero-shot ``match_products`` R@1 on the
  Abt-Buy and Amazon-Google full tables; Grocery store photo → catalog image accuracy@1.
* ``training``: ``train_matcher`` wall time and peak RSS (a child process per size) on generated offers
  with group labels (:func:`pmatch_duckdb.demo.grouped.grouped_offers`; their text vectors come from a
  hashed stand-in encoder so that training itself is timed — embedding is the encoder's cost, see
  ``encoders``), plus Abt-Buy (real text encoder, labelled pairs). And the old dense ``_retrieval`` vs the
  new one on the same inputs (``--retrieval-n`` offers).
* ``match``: source offers/s of the matching path ``match_products`` runs (source vectors reused from the
  index, vector + lexical + identifier channels, zero-shot score) against generated indexes of
  ``--match-sizes`` offers (built once under ``--workdir`` by a streamed build, ``_build N``, and reused), with
  the share of each stage (source vectors, vector search, lexical candidates, fetching the candidate rows,
  pair features, decision), the peak RSS and the view's arrays (child process per size); with
  ``--baseline TREE`` the same child of another source tree (e.g. the previous commit unpacked with
  ``git archive``) on the same index and sources, and the ratios; the approximate lexical channel's
  agreement with the exact one (``--lexical-check``). The staged run is on one thread; then, in the same process,
  the same sources on DuckDB's threads (as ``match_products`` runs them), on one thread again, and on one thread
  with the text vectors taken per candidate row instead of held by the view (``TEXT_IN_MEMORY_MAX_BYTES``).

Usage (repository root)::

    PMATCH_HOME=... python benchmarks/bench_pipeline.py [--parts encoders,quality,training,match]
        [--data ../shared/data] [--rounds 3] [--n-texts 1024] [--n-images 96]
        [--train-sizes 5000,20000,50000,100000] [--match-sizes 100000,1000000] [--workdir .bench]
        [--baseline DIR]

Needs the int8 bundles: ``pmatch models build --int8``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
from peak_rss import peak_rss_kib  # benchmarks/ is on sys.path as the script's folder
from PIL import Image

import pmatch_duckdb as pm
from pmatch_duckdb.bundles import find_bundle
from pmatch_duckdb.encoders.image import ImageEncoder
from pmatch_duckdb.encoders.image_io import ImagePolicy, load_image
from pmatch_duckdb.encoders.text import TextEncoder

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
TEXT = ("minilm-l6-v2", "minilm-l6-v2-int8")
IMAGE = ("efficientnet-lite0", "efficientnet-lite0-int8")


def log(msg: str) -> None:
    print(f"# [{_dt.datetime.now(_dt.timezone.utc):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def peak_rss_gb() -> float:
    """Peak RSS of this process so far, GB (``VmHWM``: a child's ``ru_maxrss`` carries the parent's peak)."""
    return peak_rss_kib() / 1e6  # KiB / 1e6, the unit of the figures published before


def fmt_table(header: list[str], rows: list[list[str]]) -> str:
    w = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (x + 2) for x in w) + "|", *map(line, rows)])


# ------------------------------------------------------------------------------------------ data


def read_rows(data: Path) -> list[tuple[str, str | None, str | None, float | None]]:
    """(title, description, brand, price) of the Abt-Buy and Amazon-Google offers that have a title, table by
    table (Abt, Buy, Amazon, Google)."""
    out = []
    for folder, fname, sep, title, brand in (("abt-buy", "abt.csv", "|", "name", None),
                                             ("abt-buy", "buy.csv", "|", "name", None),
                                             ("amazon-google", "amazon.csv", "#", "title", "manufacturer"),
                                             ("amazon-google", "gp.csv", "#", "title", "manufacturer")):
        with open(data / folder / fname, newline="", encoding="utf-8", errors="replace") as f:
            for r in csv.DictReader(f, delimiter=sep, quoting=csv.QUOTE_NONE):
                if (r.get(title) or "").strip():
                    try:
                        price = float(r.get("price") or "")
                    except ValueError:
                        price = None
                    out.append((r[title], r.get("description") or None, r.get(brand) if brand else None, price))
    return out


def read_titles(data: Path) -> list[str]:
    """The titles of :func:`read_rows`."""
    return [r[0] for r in read_rows(data)]


def spread(items: list, n: int) -> list:
    """``n`` items taken in a fixed stride over ``items`` (wrapping), so a sample of the four tables read above
    mixes them (the same sample in every benchmark that uses it)."""
    return [items[(i * 7919) % len(items)] for i in range(n)]


def grocery_photos(data: Path, list_file: str) -> list[tuple[str, int]]:
    rows = []
    for line in (data / "grocery" / list_file).read_text(encoding="utf-8").splitlines():
        if line.strip():
            path, cls, _ = (x.strip() for x in line.split(","))
            rows.append((path.lstrip("/"), int(cls)))
    return rows


# -------------------------------------------------------------------------------------- encoders


def part_encoders(args: argparse.Namespace) -> None:
    titles = read_titles(args.data)
    titles = spread(titles, args.n_texts)  # spread over the four tables
    photos = grocery_photos(args.data, "val.txt")
    photos = [photos[(i * 101) % len(photos)][0] for i in range(args.n_images)]
    policy = ImagePolicy(roots=((args.data / "grocery").resolve(),), max_pixels=40_000_000, max_bytes=50 << 20)
    threads = args.ort_threads or os.cpu_count() or 1
    os.environ["PMATCH_ORT_THREADS"] = str(threads)  # pm_index's sessions get the same thread count
    text_enc = {n: TextEncoder(find_bundle(n), threads=threads) for n in TEXT}
    # the product's image path (one batch per ORT thread at a time, batches of 8) and the one it replaced (one
    # batch of 32 at a time on all threads, decoding overlapped where ORT leaves a core free)
    img_enc = {n: ImageEncoder(find_bundle(n), threads=threads) for n in IMAGE}
    img_before = {n: ImageEncoder(find_bundle(n), threads=threads, batch_size=32, workers=1) for n in IMAGE}
    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_enc_"))
    cons = {}
    for n in TEXT:
        con = pm.connect(home=args.home, image_roots=[work], text_model=n, index_dir=work / n)
        con.execute("CREATE TABLE t (id VARCHAR, title VARCHAR)")
        con.executemany("INSERT INTO t VALUES (?, ?)", [(f"t{i}", t) for i, t in enumerate(titles)])
        cons[n] = con
    paths: dict[str, tuple[str, int, Callable[[], None]]] = {}
    for n in TEXT:
        paths[f"text encoder {n}"] = ("text", len(titles), lambda e=text_enc[n]: e.encode(titles))
        paths[f"pm_index {n}"] = ("text", len(titles), lambda c=cons[n]: c.execute(
            "SELECT * FROM pm_index('t', rebuild := true)").fetchall())
    for n in IMAGE:
        paths[f"image encoder {n}"] = ("image", len(photos), lambda e=img_enc[n]: e.encode(photos, policy))
        paths[f"image encoder {n}, one batch of 32 at a time"] = (
            "image", len(photos), lambda e=img_before[n]: e.encode(photos, policy))
    log("encoders: warm-up")
    for _name, (_, _, fn) in paths.items():
        fn()
    times: dict[str, list[float]] = {k: [] for k in paths}
    cpu: dict[str, list[float]] = {k: [] for k in paths}  # items per process-CPU second: robust to other load
    names = list(paths)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t, c = time.perf_counter(), time.process_time()
            paths[name][2]()
            times[name].append(paths[name][1] / (time.perf_counter() - t))
            cpu[name].append(paths[name][1] / max(time.process_time() - c, 1e-9))
        log(f"encoders: round {r + 1}/{args.rounds}")
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    rows = [[k, paths[k][0], str(paths[k][1]), f"{med[k]:.1f}", f"{min(v):.1f}–{max(v):.1f}", f"{med_cpu[k]:.1f}"]
            for k, v in times.items()]
    print(f"\n## encoders: {args.n_texts} real titles, {args.n_images} real photos, {args.rounds} interleaved rounds, "
          f"ORT threads {threads}\n")
    print(fmt_table(["path", "modality", "items", "median items/s", "min–max", "median items per CPU-s"], rows))
    print()
    t32, t8 = med[f"text encoder {TEXT[0]}"], med[f"text encoder {TEXT[1]}"]
    i32, i8 = med[f"image encoder {IMAGE[0]}"], med[f"image encoder {IMAGE[1]}"]
    workers = img_enc[IMAGE[0]].workers
    print(f"RATIO text int8 / fp32 encoder: {t8 / t32:.2f}x (target >= 2x)")
    print(f"RATIO image int8 / fp32 encoder: {i8 / i32:.2f}x (target >= 2x; the default path at {threads} ORT "
          f"threads: {workers} batch(es) of {img_enc[IMAGE[0]].batch_size} at a time)")
    for n in IMAGE:
        print(f"RATIO image encoder {n}, default / one batch of 32 at a time (the previous default): "
              f"{med[f'image encoder {n}'] / med[f'image encoder {n}, one batch of 32 at a time']:.2f}x")
    decode, model = image_costs(photos, policy)
    print(f"image costs, one thread, CPU-ms per photo: decode + preprocess {decode:.2f}; model "
          + ", ".join(f"{n} {ms:.2f}" for n, ms in model.items()))
    m32, m8 = model[IMAGE[0]], model[IMAGE[1]]
    print(f"RATIO image int8 / fp32, model only: {m32 / m8:.2f}x; ceiling of the whole path with every core busy "
          f"(decode + model): {(decode + m32) / (decode + m8):.2f}x")
    for n in TEXT:
        print(f"RATIO pm_index / encoder ({n}): {med[f'pm_index {n}'] / med[f'text encoder {n}']:.2f}x wall, "
              f"{med_cpu[f'pm_index {n}'] / med_cpu[f'text encoder {n}']:.2f}x per CPU-s (target >= 0.8x)")
    for c in cons.values():
        c.close()


def image_costs(photos: list[str], policy: ImagePolicy, reps: int = 3) -> tuple[float, dict[str, float]]:
    """CPU-ms per photo on one thread (best of ``reps``): decoding + preprocessing, and each image model alone on
    the preprocessed batches (the default batch size)."""
    enc = {n: ImageEncoder(find_bundle(n), threads=1, workers=1, prefetch=False) for n in IMAGE}
    first = enc[IMAGE[0]]
    chunks = [range(s, min(s + first.batch_size, len(photos))) for s in range(0, len(photos), first.batch_size)]

    def cpu_ms(fn: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(reps):
            c = time.process_time()
            fn()
            best = min(best, time.process_time() - c)
        return best * 1000 / len(photos)

    reasons: list[str | None] = [None] * len(photos)
    decode = cpu_ms(lambda: [first._load_chunk(photos, idx, policy, reasons) for idx in chunks])
    batches = [px for _, px in (first._load_chunk(photos, idx, policy, reasons) for idx in chunks) if px is not None]
    model = {n: cpu_ms(lambda e=e: [e.run(px) for px in batches]) for n, e in enc.items()}
    # the split of ``decode``: reading + JPEG decoding alone, then the product's preprocessing (only the kept box
    # resampled) against resampling the whole photo and cropping after (the path before issue 16's third pass)
    images = [load_image(p, policy, draft_size=first.resize).image for p in photos]
    images = [im for im in images if im is not None]
    read = cpu_ms(lambda: [load_image(p, policy, draft_size=first.resize) for p in photos])
    box = cpu_ms(lambda: [first.preprocess(im) for im in images])
    whole = cpu_ms(lambda: [_preprocess_whole(first, im) for im in images])
    print(f"image decoding, one thread, CPU-ms per photo: read + decode {read:.2f}; preprocess {box:.2f} "
          f"(resize the whole photo, then crop: {whole:.2f}; RATIO whole / box {whole / box:.2f}x)")
    return decode, model


def _preprocess_whole(enc: ImageEncoder, img: Image.Image) -> np.ndarray:
    """The textbook preprocessing: resize the whole image (shorter side), centre-crop, normalise."""
    w, h = img.size
    s = enc.resize / min(w, h)
    nw, nh = max(enc.crop, round(w * s)), max(enc.crop, round(h * s))
    left, top = (nw - enc.crop) // 2, (nh - enc.crop) // 2
    img = img.resize((nw, nh), enc.interp).crop((left, top, left + enc.crop, top + enc.crop))
    out = np.empty((3, enc.crop, enc.crop), dtype=np.float32)
    np.multiply(np.asarray(img).transpose(2, 0, 1), enc._gain, out=out)
    out += enc._offset
    return out


# --------------------------------------------------------------------------------------- quality


def _r_at_1(src_ids: list[str], tgt_ids: list[str], sim: np.ndarray, truth: dict[str, set[str]]) -> float:
    best = np.argmax(sim, axis=1)
    hits = [tgt_ids[best[i]] in truth[s] for i, s in enumerate(src_ids) if s in truth]
    return float(np.mean(hits)) if hits else float("nan")


def part_quality(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_match_real import DATASETS, evaluate, load_dataset, run_pmatch

    from pmatch_duckdb.offer_vectors import text_input
    from pmatch_duckdb.offers import read_offers

    rows = []
    for ds in ("abt-buy", "amazon-google"):
        spec = DATASETS[ds]
        res = {}
        for n in TEXT:
            work = Path(tempfile.mkdtemp(prefix=f"bench_pipeline_q_{ds}_"))
            con = pm.connect(work / "q.duckdb", home=args.home, image_roots=[work], text_model=n)
            gt = load_dataset(con, args.data, spec)
            truth: dict[str, set[str]] = {}
            for a, b in gt:
                truth.setdefault(a, set()).add(b)
            src, tgt = read_offers(con, spec.source), read_offers(con, spec.target)
            enc = TextEncoder(find_bundle(n), threads=os.cpu_count() or 1)
            a = enc.encode([text_input(o) or " " for o in src])
            b = enc.encode([text_input(o) or " " for o in tgt])
            r_text = _r_at_1([str(o.id) for o in src], [str(o.id) for o in tgt], a @ b.T, truth)
            if args.match_quality:
                ranked, _, _ = run_pmatch(con, spec)
                m = evaluate(ranked, gt)
                res[n] = (r_text, m.recall1, m.best_f1)
            else:
                res[n] = (r_text, float("nan"), float("nan"))
            con.close()
            log(f"quality {ds} {n}: text R@1 {r_text:.4f}, match_products R@1 {res[n][1]:.4f}")
        for k, label in ((0, "zero-shot text cosine R@1"), (1, "zero-shot match_products R@1"),
                         (2, "zero-shot match_products best F1")):
            f, q = res[TEXT[0]][k], res[TEXT[1]][k]
            rows.append([ds, label, f"{f:.4f}", f"{q:.4f}", f"{q - f:+.4f}"])
    # grocery: store photo -> catalog iconic image, image cosine
    folder = args.data / "grocery"
    classes = []
    with open(folder / "classes.csv", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            classes.append((int(r["Class ID (int)"]), r["Iconic Image Path (str)"].lstrip("/")))
    test = grocery_photos(args.data, "test.txt" if (folder / "test.txt").exists() else "val.txt")
    test = test[::max(1, len(test) // args.grocery_photos)] if args.grocery_photos else test
    policy = ImagePolicy(roots=(folder.resolve(),), max_pixels=40_000_000, max_bytes=50 << 20)
    acc = {}
    for n in IMAGE:
        enc = ImageEncoder(find_bundle(n), threads=os.cpu_count() or 1)
        cat, _ = enc.encode([p for _, p in classes], policy)
        q, _ = enc.encode([p for p, _ in test], policy)
        best = np.argmax(q @ cat.T, axis=1)
        acc[n] = float(np.mean([classes[j][0] == c for j, (_, c) in zip(best, test, strict=True)]))
        log(f"quality grocery {n}: acc@1 {acc[n]:.4f}")
    rows.append(["grocery", f"zero-shot photo→catalog image acc@1 ({len(test)} photos)", f"{acc[IMAGE[0]]:.4f}",
                 f"{acc[IMAGE[1]]:.4f}", f"{acc[IMAGE[1]] - acc[IMAGE[0]]:+.4f}"])
    print("\n## quality: fp32 vs int8 (adopt int8 as default only if R@1 drops <= 0.005)\n")
    print(fmt_table(["data", "metric", "fp32", "int8", "int8 - fp32"], rows))


# -------------------------------------------------------------------------------------- training


def _child(args_list: list[str], tree: Path | None = None) -> dict:
    """This script (or the same script of another source ``tree``, imported from there) in a child process."""
    env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}
    script = __file__ if tree is None else str(Path(tree) / "benchmarks" / "bench_pipeline.py")
    out = subprocess.run([sys.executable, script, *args_list], capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fake_text_encoder() -> None:
    import pmatch_duckdb.offer_vectors as ov
    from pmatch_duckdb.demo.grouped import hashed_text_vectors

    assert hasattr(ov, "embed_prepared")  # the seam replaced below (a missing one would leave the real encoder on)
    ov.embed_prepared = lambda texts, settings, threads=None: hashed_text_vectors(texts.texts)


def _home_copy(home: Path, root: Path) -> Path:
    """A pmatch home linking the encoders (matchers trained by the benchmark stay out of the user's home)."""
    h = root / "home"
    (h / "models").mkdir(parents=True, exist_ok=True)
    for b in (*TEXT, *IMAGE):
        if (home / "models" / b).exists() and not (h / "models" / b).exists():
            (h / "models" / b).symlink_to(home / "models" / b)
    return h


def child_train(n: int, home: Path, pair: bool = True) -> dict:
    from pmatch_duckdb.demo.grouped import grouped_offers
    from pmatch_duckdb.training import train_matcher

    _fake_text_encoder()
    root = Path(tempfile.mkdtemp(prefix=f"bench_train_{n}_"))
    con = pm.connect(home=_home_copy(home, root), image_roots=[root], index_dir=root / "idx")
    con.register("g", grouped_offers(n, seed=0))
    con.execute("CREATE TABLE offers AS SELECT * FROM g")
    t, c = time.perf_counter(), time.process_time()
    pm.index(con, "offers")
    t_index, c_index = time.perf_counter() - t, time.process_time() - c
    rss_index = peak_rss_gb()
    t, c = time.perf_counter(), time.process_time()
    r = train_matcher(con, "offers", group_column="group_id", name="bench", progress=False, log=lambda m: None,
                      pair_model=pair)
    pm_entry = json.loads((r.path / "manifest.json").read_text()).get("pair_model") or {}
    return {"n": n, "pair": pair, "index_s": t_index, "index_cpu_s": c_index, "train_s": time.perf_counter() - t,
            "train_cpu_s": time.process_time() - c, "peak_rss_gb": peak_rss_gb(), "rss_after_index_gb": rss_index,
            "r10": r.metrics["valid"].get("vector_recall@10_trained"),
            "best_f1": r.metrics["valid"].get("best_f1"), "pairs": r.metrics["valid"].get("pairs"),
            "pair_s": pm_entry.get("seconds"), "pair_trained": (pm_entry.get("train") or {}).get("pairs"),
            "pair_valid": (pm_entry.get("valid") or {}).get("pairs"),
            "pair_ap": (pm_entry.get("valid") or {}).get("average_precision_stacked_oof")}


def child_train_real(data: Path, home: Path) -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_match_real import DATASETS, load_dataset

    from pmatch_duckdb.training import train_matcher

    root = Path(tempfile.mkdtemp(prefix="bench_train_real_"))
    con = pm.connect(root / "db.duckdb", home=_home_copy(home, root), image_roots=[root])
    spec = DATASETS["abt-buy"]
    load_dataset(con, data, spec)
    con.execute("CREATE VIEW src AS SELECT 'a' || id AS id, title, description, brand, price FROM abt")
    con.execute("CREATE VIEW tgt AS SELECT 'b' || id AS id, title, description, brand, price FROM buy")
    con.execute("CREATE TABLE labels AS SELECT 'a' || source_id AS left_id, 'b' || target_id AS right_id "
                "FROM abt_buy_gt")
    t, c = time.perf_counter(), time.process_time()
    pm.index(con, "src")
    pm.index(con, "tgt")
    t_index, c_index = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    r = train_matcher(con, ["src", "tgt"], pairs="labels", name="bench", progress=False, log=lambda m: None)
    return {"n": 2152, "index_s": t_index, "index_cpu_s": c_index, "train_s": time.perf_counter() - t,
            "train_cpu_s": time.process_time() - c, "peak_rss_gb": peak_rss_gb(),
            "r10": r.metrics["valid"].get("vector_recall@10_trained"), "best_f1": r.metrics["valid"].get("best_f1"),
            "pairs": r.metrics["valid"].get("pairs")}


def _old_retrieval(trained, zero_shot, side, comp, valid_comp, tgt_pos, truth_pairs, n_tables) -> dict:  # noqa: ANN001
    """The dense ``_retrieval`` that issue 16 replaced (kept here, verbatim, for the side-by-side ratio)."""
    from pmatch_duckdb.evaluation import recall_at_k

    srcs = [i for i in range(len(side)) if side[i] == 0 and comp[i] in valid_comp]
    out = {}
    for label, v in (("trained", trained), ("zero_shot", zero_shot)):
        sims = v.fused[srcs] @ v.fused[tgt_pos].T
        if n_tables == 1:
            for r, i in enumerate(srcs):
                sims[r, np.flatnonzero(tgt_pos == i)] = -np.inf
        top = np.argsort(-sims, axis=1)[:, :10]
        ranked = {str(i): [str(int(tgt_pos[j])) for j in row] for i, row in zip(srcs, top, strict=True)}
        truth = {str(i): {str(int(t)) for t in tgt_pos if (i, int(t)) in truth_pairs} for i in srcs}
        for key, val in recall_at_k(ranked, truth).items():
            out[f"vector_{key}_{label}"] = val
    return out


def child_retrieval(n: int) -> dict:
    """Old vs new validation-retrieval metric on the same ``n`` generated offers (20% validation sources)."""
    from pmatch_duckdb.demo.grouped import grouped_offers, hashed_text_vectors
    from pmatch_duckdb.fusion import FusionConfig
    from pmatch_duckdb.matching import TargetView
    from pmatch_duckdb.offer_vectors import OfferVectors
    from pmatch_duckdb.training.train import _retrieval

    t = grouped_offers(n, seed=0)
    vec, ok = hashed_text_vectors(t["title"].to_pylist())
    groups = np.unique(np.array(t["group_id"].to_pylist()), return_inverse=True)[1]
    rows = OfferVectors(ids=t["id"].to_pylist(), hashes=[""] * n, text=vec, text_ok=ok,
                        image=np.zeros((n, 1), np.float32), image_ok=np.zeros(n, bool), fused=vec,
                        lexical=t["title"].to_pylist(), idents=[[] for _ in range(n)], price=np.full(n, np.nan),
                        titles=t["title"].to_pylist(), brands=[None] * n, descriptions=[None] * n,
                        desc_idents=[[] for _ in range(n)])
    pos = np.array([(i, j) for i in range(n) for j in range(i + 1, min(n, i + 7)) if groups[i] == groups[j]])
    valid_comp = {int(g) for g in np.unique(groups) if g % 5 == 0}
    view = TargetView.from_vectors(rows, FusionConfig())
    truth_pairs = {(int(a), int(b)) for a, b in pos} | {(int(b), int(a)) for a, b in pos}
    t0 = time.process_time()
    new = _retrieval(rows, rows, view, [0] * n, groups, valid_comp, np.arange(n), pos, 1)
    t_new = time.process_time() - t0
    t0 = time.process_time()
    old = _old_retrieval(rows, rows, [0] * n, groups, valid_comp, np.arange(n), truth_pairs, 1)
    t_old = time.process_time() - t0
    return {"n": n, "new_s": t_new, "old_s": t_old, "new_r1": new["vector_recall@1_trained"],
            "old_r1": old["vector_recall@1_trained"], "sources": int(np.isin(groups, list(valid_comp)).sum())}


def part_training(args: argparse.Namespace) -> None:
    rows = []
    for n in args.train_sizes:
        log(f"training: {n} generated offers, stage 1 only (child process)")
        r = _child(["_train", str(n), "--home", str(args.home), "--no-pair"])
        log(f"training {n}: {r}")
        rows.append(r)
    pair_rows = []
    for n in args.train_pair_sizes:
        log(f"training: {n} generated offers, with the pair scorer (child process)")
        r = _child(["_train", str(n), "--home", str(args.home)])
        log(f"training {n} with pair scorer: {r}")
        pair_rows.append({**r, "label": f"{n:,} generated offers, with pair scorer"} if "error" not in r else r)
    if args.train_real:
        log("training: Abt-Buy (real text encoder)")
        real = _child(["_train_real", "--home", str(args.home), "--data", str(args.data)])
        log(f"training abt-buy: {real}")
    print("\n## training: train_matcher (defaults: cross-fitted logistic decision model), child process per row\n")
    table = []
    for r in [*[{**r, "label": f"{r['n']:,} generated offers, stage 1 only"} if "error" not in r else r
                for r in rows], *pair_rows,
              *([{**real, "label": "Abt-Buy (real, 1,081 + 1,092 offers, labelled pairs)"}] if args.train_real else [])]:
        if "error" in r:
            table.append([str(r.get("label", "?")), "error", r["error"], "", "", ""])
            continue
        table.append([r.get("label", f"{r['n']:,} generated offers, group labels"),
                      f"{r['index_s']:.1f} ({r['index_cpu_s']:.1f})",
                      f"{r['train_s']:.1f} ({r['train_cpu_s']:.1f})", f"{r['peak_rss_gb']:.2f}", f"{r['r10']:.3f}" if r.get("r10") else "",
                      f"{r['best_f1']:.3f}" if r.get("best_f1") else ""])
    print(fmt_table(["data", "index wall s (CPU s); stand-in encoder for generated", "train wall s (CPU s)", "peak RSS GB",
                     "valid vector R@10", "valid best F1"], table))
    ok = [r for r in rows if "error" not in r]
    for a, b in zip(ok, ok[1:], strict=False):
        print(f"GROWTH {a['n']:,} -> {b['n']:,} offers ({b['n'] / a['n']:.1f}x): train CPU time "
              f"{b['train_cpu_s'] / a['train_cpu_s']:.2f}x, wall {b['train_s'] / a['train_s']:.2f}x, peak RSS {b['peak_rss_gb'] / a['peak_rss_gb']:.2f}x")
    for r in pair_rows:
        if "error" not in r and r.get("pair_s") is not None:
            print(f"PAIR STAGE {r['n']:,} offers: {r['pair_s']:.0f} s wall of {r['train_s']:.0f} s, fine-tuned on "
                  f"{r['pair_trained']:,} pairs, stacked on {r['pair_valid']:,} (caps: PairOptions.max_train_pairs / "
                  f"max_valid_pairs), stacked out-of-fold AP {r['pair_ap']:.3f}")
        elif "error" not in r:
            print(f"PAIR STAGE {r['n']:,} offers: no pair scorer kept (skipped or dropped by the gain gate)")
    at50 = [r for r in ok if r["n"] == 50_000]
    if at50:
        r = at50[0]
        print(f"TARGET 50k offers, stage 1 (projection + decision model; the pair stage is capped, see PAIR STAGE): "
              f"{r['train_s']:.0f} s (<= 300 s), peak RSS {r['peak_rss_gb']:.2f} GB (<= 4 GB): "
              f"{'MET' if r['train_s'] <= 300 and r['peak_rss_gb'] <= 4 else 'NOT MET'}")
    if args.retrieval_n:
        log(f"training: old vs new _retrieval on {args.retrieval_n} offers")
        r = _child(["_retrieval", str(args.retrieval_n)])
        if "error" in r:
            print(f"retrieval comparison failed: {r['error']}")
        else:
            print(f"RATIO validation retrieval metric, {r['n']:,} offers, {r['sources']:,} validation sources: "
                  f"old dense {r['old_s']:.1f} CPU s, new {r['new_s']:.2f} CPU s = {r['old_s'] / r['new_s']:.0f}x less CPU "
                  f"(R@1 old {r['old_r1']:.4f}, new {r['new_r1']:.4f})")


# ----------------------------------------------------------------------------------------- match


def build_match_index(n: int, root: Path, home: Path, chunk: int = 20_000):
    """The ``n``-offer generated table and its index under ``root`` (built once, reused when complete).

    Streamed: offers are read from DuckDB and embedded (stand-in text encoder, no images) in chunks of
    ``chunk`` and written by ``OfferIndex.refresh_hashes`` in one commit, so a 1M-offer build never holds the
    index rows in memory. ``pm_index`` embeds in slices the same way (``offer_vectors.embed_offer_slices``) but
    holds every offer it read; this build does not even do that. Returns (connection, index, build seconds).
    """
    from pmatch_duckdb.api import context_of
    from pmatch_duckdb.demo.grouped import grouped_offers
    from pmatch_duckdb.fusion import FusionConfig
    from pmatch_duckdb.offer_vectors import content_salt, embed_offers
    from pmatch_duckdb.offers import offer_from_mapping
    from pmatch_duckdb.sqlident import index_name_for
    from pmatch_duckdb.store import OfferIndex

    root.mkdir(parents=True, exist_ok=True)
    con = pm.connect(root / "db.duckdb", home=_home_copy(home, root), image_roots=[root], index_dir=root / "idx")
    if "offers" not in {r[0] for r in con.execute("SHOW TABLES").fetchall()}:
        con.register("g", grouped_offers(n, seed=0))
        con.execute("CREATE TABLE offers AS SELECT id, title, brand, description, price FROM g")
        con.unregister("g")
    ctx = context_of(con)
    index = OfferIndex(ctx.index_root, index_name_for("offers"))
    t = time.perf_counter()
    if index.exists() and index.table().count_rows() == n:
        return con, index, 0.0
    salt = content_salt(ctx.settings)

    def chunks():
        cur = con.cursor()
        reader = cur.execute("SELECT id, title, brand, description, price FROM offers ORDER BY id").to_arrow_reader(chunk)
        for b in reader:
            yield [offer_from_mapping(r) for r in b.to_pylist()]
        cur.close()

    hashes = {o.id: o.content_hash(salt) for part in chunks() for o in part}

    def embed(ids: list[str], cfg: FusionConfig):
        first = embed_offers([offer_from_mapping({"id": "x", "title": "x"})], ctx.settings, cfg, ["x"], progress=False)

        def batches():
            done = 0
            for part in chunks():
                rows = embed_offers(part, ctx.settings, cfg, [hashes[o.id] for o in part], progress=False)
                done += len(part)
                log(f"build {n}: {done:,} offers embedded")
                yield from rows.cast(first.schema).to_batches()
        return pa.RecordBatchReader.from_batches(first.schema, batches())

    index.refresh_hashes(hashes, embed, ctx.settings, source_table="offers", rebuild=True)
    return con, index, time.perf_counter() - t


def child_match(n: int, n_src: int, workdir: Path, home: Path, lexical_check: int = 0,
                nprobes_alt: list[int] | None = None) -> dict:
    """Offers/s of the match_products path against an ``n``-offer index; per-stage seconds; peak RSS.

    ``lexical_check``: that many sources' lexical top-20 also taken exactly (dense, the channel below
    ``APPROX_TOPK_MIN_ROWS``) to report how many of the approximate channel's rows agree.
    """
    import pmatch_duckdb.features.lexical as L
    import pmatch_duckdb.matching as M
    from pmatch_duckdb.api import context_of
    from pmatch_duckdb.offers import read_offers

    _fake_text_encoder()
    root = workdir / f"match_{n}"
    con, index, t_index = build_match_index(n, root, home)
    rss_index = peak_rss_gb()
    ctx = context_of(con)
    t, c = time.perf_counter(), time.process_time()
    view = M.target_view(index, ctx.settings.home)
    t_view, c_view = time.perf_counter() - t, time.process_time() - c
    rss_view = peak_rss_gb()
    con.execute(f"CREATE OR REPLACE TABLE src AS SELECT * FROM offers USING SAMPLE {n_src} ROWS (reservoir, 1)")
    offers = read_offers(con, "src")
    stages: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*a, **kw):  # noqa: ANN002, ANN003, ANN202
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0
                cpu[name] = cpu.get(name, 0.0) + time.process_time() - c0
        return wrapper

    real_top_k = L.CharTfidf.top_k
    M.TargetView.vector_candidates = timed("vector search", M.TargetView.vector_candidates)
    L.CharTfidf.top_k = timed("lexical candidates", L.CharTfidf.top_k)
    M.TargetView.candidates = timed("fetch candidate rows (Lance take)", M.TargetView.candidates)
    M.pair_signals = timed("pair features", M.pair_signals)
    M.pair_score = timed("decision (score)", M.pair_score)
    M.conflict_evidence = timed("conflict evidence (zero-shot penalty)", M.conflict_evidence)
    M.decide = timed("decision (score)", M.decide)
    t, c = time.perf_counter(), time.process_time()
    src = timed("source vectors (reused from the index)", M.source_vectors)(offers, ctx.settings, view.fusion,
                                                                             reuse=view, matcher=view.matcher)
    cand = timed("match() total", M.match)(src, view, 10, exclude_self=True)
    total, total_cpu = time.perf_counter() - t, time.process_time() - c
    for d in (stages, cpu):
        d["candidate union + identifiers (rest of match)"] = d["match() total"] - sum(
            d.get(k, 0) for k in ("vector search", "lexical candidates", "fetch candidate rows (Lance take)",
                                  "pair features", "decision (score)", "conflict evidence (zero-shot penalty)"))
    out = {"n": n, "sources": len(offers), "seconds": total, "offers_per_s": len(offers) / total,
           "cpu_seconds": total_cpu, "offers_per_cpu_s": len(offers) / total_cpu, "stages": stages, "cpu": cpu,
           "pairs": int(len(cand.source)), "index_s": t_index, "view_s": t_view, "view_cpu_s": c_view,
           "ann": bool(view.use_ann), "on_disk": bool(view.on_disk), "view_bytes": view.nbytes(),
           "rss_index_gb": rss_index, "rss_view_gb": rss_view, "peak_rss_gb": peak_rss_gb()}
    saved = {k: dict(v) for k, v in (("stages", stages), ("cpu", cpu))}
    for npb in nprobes_alt or []:  # the same sources again with another ANN_NPROBES: CPU and final pairs kept
        if not hasattr(M, "ANN_NPROBES"):
            break
        before_npb, M.ANN_NPROBES = M.ANN_NPROBES, npb
        c0, v0 = time.process_time(), cpu.get("vector search", 0.0)
        alt = M.match(src, view, 10, exclude_self=True)
        alt_cpu, alt_vs = time.process_time() - c0, cpu.get("vector search", 0.0) - v0
        M.ANN_NPROBES = before_npb
        base = dict(zip(zip(cand.source.tolist(), cand.target.tolist(), strict=True), cand.decision, strict=True))
        other = dict(zip(zip(alt.source.tolist(), alt.target.tolist(), strict=True), alt.decision, strict=True))
        out.setdefault("nprobes_alt", {})[str(npb)] = {
            "cpu_seconds": alt_cpu, "vector_cpu_seconds": alt_vs,
            "pairs_kept": len(base.keys() & other.keys()) / max(1, len(base)),
            "same_decision": sum(other.get(k) == d for k, d in base.items()) / max(1, len(base))}
    threads = ctx.duckdb_threads
    if threads > 1 and "threads" in inspect.signature(M.match).parameters:
        # match_products hands DuckDB's thread count to match(): the source batches on that many threads; the
        # per-stage split above is of the one-thread run (process CPU time cannot be split by stage across
        # threads). A one-thread run after it, on the same warm caches, brackets the threaded one.
        runs = {}
        held = getattr(view, "text", None)
        for label, th, text in (("threads", threads, held), ("one thread, again", 1, held),
                                ("one thread, text vectors taken per candidate row", 1, None)):
            if label.endswith("per candidate row") and held is None:
                continue
            view.text = text  # None: candidates() reads text_vec with Lance take, as before TEXT_IN_MEMORY_MAX_BYTES
            t0, c0 = time.perf_counter(), time.process_time()  # source vectors included, as the staged total
            alt = M.match(M.source_vectors(offers, ctx.settings, view.fusion, reuse=view, matcher=view.matcher),
                          view, 10, exclude_self=True, threads=th)
            view.text = held
            runs[label] = {"threads": th, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                           "same": bool(np.array_equal(alt.target, cand.target) and np.array_equal(alt.score, cand.score)
                                        and alt.decision == cand.decision)}
        out["threaded"] = runs
    # the public path: the SQL macro on the same sources (source 'src', target 'offers': not dedup mode), the view
    # already loaded, the sources' vectors taken from their own index (built here, not timed); DuckDB calls
    # _pm_match on 2,048-row chunks, on its own threads
    con.execute("SELECT * FROM pm_index('src')").fetchall()
    for label, th in (("SQL match_products", threads), ("SQL match_products, one thread per call", 1)):
        if "threads" not in inspect.signature(M.match).parameters and th != threads:
            continue
        ctx.duckdb_threads = th
        t0, c0 = time.perf_counter(), time.process_time()
        n_rows = con.execute("SELECT count(*) FROM match_products('src', 'offers', 10)").fetchone()[0]
        out.setdefault("sql", {})[label] = {"threads": th, "seconds": time.perf_counter() - t0,
                                            "cpu_seconds": time.process_time() - c0, "rows": n_rows}
    ctx.duckdb_threads = threads
    stages.clear(), stages.update(saved["stages"]), cpu.clear(), cpu.update(saved["cpu"])  # the main run's
    out["ann_nprobes"] = getattr(M, "ANN_NPROBES", 20)  # trees before ANN_NPROBES searched with nprobes 20
    if lexical_check:
        q = src.lexical[:lexical_check]
        approx, _ = real_top_k(view.tfidf, q, 20)
        L.APPROX_TOPK_MIN_ROWS = 1 << 62
        exact, ev = real_top_k(view.tfidf, q, 20)
        both = [len(set(a[a >= 0]) & set(e[(e >= 0) & (v > 0)])) / max(1, int(((e >= 0) & (v > 0)).sum()))
                for a, e, v in zip(approx, exact, ev, strict=True)]
        top1 = [a[0] == e[0] for a, e in zip(approx, exact, strict=True)]
        out["lexical_agreement"] = {"sources": len(q), "top20_overlap": float(np.mean(both)),
                                    "top1_same": float(np.mean(top1))}
    con.close()
    return out


def part_match(args: argparse.Namespace) -> None:
    print(f"\n## match_products path: {args.match_sources} source offers already in the index (dedup), k=10\n")
    print("# new = this tree; before = --baseline tree (its own bench_pipeline.py child, same index, same sources)")
    for n in args.match_sizes:
        runs = [("new", None)] + ([("before", args.baseline)] if args.baseline and n <= args.baseline_max else [])
        res = {}
        for label, tree in runs:
            log(f"match: {n}-offer index, {label} (child process)")
            extra = ([] if label != "new" else ["--lexical-check", str(args.lexical_check if n <= 200_000 else 100),
                                                 "--match-nprobes", args.match_nprobes])
            r = _child(["_match", str(n), "--home", str(args.home), "--workdir", str(args.workdir),
                        "--match-sources", str(args.match_sources), *extra], tree=tree)
            log(f"match {n} {label}: {r}")
            res[label] = r
            if "error" in r:
                print(f"{n:,}-offer index, {label}: failed: {r['error']}")
                continue
            print(f"{n:,}-offer index, {label} ({'ANN' if r['ann'] else 'exact'} vector search"
                  f"{', vectors on disk' if r.get('on_disk') else ''}): {r['offers_per_s']:.1f} source offers/s wall, "
                  f"{r['offers_per_cpu_s']:.1f} per process-CPU second ({r['sources']} in {r['seconds']:.1f} s wall, "
                  f"{r['cpu_seconds']:.1f} s CPU; {r['pairs']:,} pairs); loading the target view {r['view_s']:.1f} s "
                  f"wall (once per index version); peak RSS {r['peak_rss_gb']:.2f} GB ({r['rss_index_gb']:.2f} GB "
                  f"after the index step (built here or reused), {r['rss_view_gb']:.2f} GB after loading the view)")
            if r.get("view_bytes"):
                print("view arrays held: " + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in r["view_bytes"].items()))
            rows = [[k, f"{v:.2f}", f"{100 * v / r['seconds']:.0f}%", f"{r['cpu'][k]:.2f}",
                     f"{100 * r['cpu'][k] / r['cpu_seconds']:.0f}%"] for k, v in r["stages"].items()
                    if k != "match() total"]
            print(fmt_table(["stage", "wall s", "wall share", "CPU s", "CPU share"], rows))
            for npb, alt in r.get("nprobes_alt", {}).items():
                print(f"ANN nprobes {npb} instead of {r.get('ann_nprobes')}: {r['sources'] / alt['cpu_seconds']:.1f} per process-CPU second "
                      f"({alt['cpu_seconds']:.2f} s CPU, vector search {alt['vector_cpu_seconds']:.2f} s); final top-10 pairs "
                      f"kept {alt['pairs_kept']:.4f}, same pair and decision {alt['same_decision']:.4f}")
            if r.get("lexical_agreement"):
                a = r["lexical_agreement"]
                print(f"lexical channel (approximate from 100,000 rows) vs exact, "
                      f"{a['sources']} sources: top-20 overlap {a['top20_overlap']:.3f}, same top-1 {a['top1_same']:.3f}")
            for label, x in r.get("sql", {}).items():
                print(f"{label} (threads={x['threads']}; {x['rows']:,} rows): {r['sources'] / x['seconds']:.1f} source "
                      f"offers/s wall, {r['sources'] / x['cpu_seconds']:.1f} per process-CPU second")
            best = r["offers_per_s"]
            for label, x in r.get("threaded", {}).items():
                rate = r["sources"] / x["seconds"]
                best = max(best, rate) if x["threads"] > 1 else best
                how = "DuckDB's threads, as match_products runs it" if x["threads"] > 1 else "1"
                print(f"{label} (threads={x['threads']}: {how}): {rate:.1f} source offers/s wall, "
                      f"{r['sources'] / x['cpu_seconds']:.1f} per process-CPU second; same pairs, scores and "
                      f"decisions as the staged run: {x['same']}")
            sql = max((r["sources"] / x["seconds"] for x in r.get("sql", {}).values() if x["threads"] > 1), default=0.0)
            print(f"TARGET >= 500 source offers/s vs {n:,}: matching path {best:.0f}/s wall "
                  f"({'MET' if best >= 500 else 'NOT MET'}), "
                  + (f"SQL match_products {sql:.0f}/s wall ({'MET' if sql >= 500 else 'NOT MET'}); " if sql else "")
                  + f"{r['offers_per_cpu_s']:.0f}/CPU-s x {os.cpu_count()} cores = "
                  f"{r['offers_per_cpu_s'] * (os.cpu_count() or 1):.0f}/s if both cores were ours\n")
        if "before" in res and "error" not in res["before"] and "error" not in res["new"]:
            b, a = res["before"], res["new"]
            print(f"RATIO {n:,}: new/before source offers per CPU-s {a['offers_per_cpu_s'] / b['offers_per_cpu_s']:.1f}x, "
                  f"wall {a['offers_per_s'] / b['offers_per_s']:.1f}x; peak RSS {a['peak_rss_gb']:.2f} vs "
                  f"{b['peak_rss_gb']:.2f} GB ({a['peak_rss_gb'] / b['peak_rss_gb']:.2f}x); view load CPU "
                  f"{a.get('view_cpu_s', float('nan')):.1f} s vs wall {b['view_s']:.1f} s before\n")


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", nargs="?", default="run", help=argparse.SUPPRESS)
    ap.add_argument("n", nargs="?", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--parts", default="encoders,quality,training,match")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-texts", type=int, default=1024)
    ap.add_argument("--n-images", type=int, default=96)
    ap.add_argument("--ort-threads", default="0",
                    help="encoders: ONNX Runtime intra-op threads (0: all CPUs); 1 makes the per-CPU-s ratios exact; "
                         "a list (1,2) runs the encoders part once per value")
    ap.add_argument("--match-quality", action="store_true",
                    help="quality: also the zero-shot match_products R@1 (pm_index + match_products per model)")
    ap.add_argument("--grocery-photos", type=int, default=0, help="quality: evenly spaced test photos (0: all)")
    ap.add_argument("--train-sizes", default="5000,20000,50000,100000", help="training: stage-1-only rows")
    ap.add_argument("--train-pair-sizes", default="5000,50000",
                    help="training: sizes also trained with the pair scorer (its stage is capped, so ~constant)")
    ap.add_argument("--no-pair", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--train-real", type=int, default=1, help="training: also the Abt-Buy row (0: skip)")
    ap.add_argument("--retrieval-n", type=int, default=20000, help="old vs new _retrieval size (0: skip)")
    ap.add_argument("--match-sizes", default="100000")
    ap.add_argument("--match-sources", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=REPO / ".bench")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="match: also time the code of this source tree (e.g. `git archive <commit>` unpacked)")
    ap.add_argument("--baseline-max", type=int, default=100_000, help="match: largest size the baseline runs at")
    ap.add_argument("--match-nprobes", default="",
                    help="match: also rerun the new tree's match with these ANN nprobes (CPU, final pairs kept)")
    ap.add_argument("--lexical-check", type=int, default=300,
                    help="match: sources whose approximate lexical top-20 is compared with the exact one")
    args = ap.parse_args(argv)
    from pmatch_duckdb.home import pmatch_home

    args.home = pmatch_home(args.home)
    args.train_sizes = [int(x) for x in str(args.train_sizes).split(",") if x]
    args.train_pair_sizes = [int(x) for x in str(args.train_pair_sizes).split(",") if x]
    args.match_sizes = [int(x) for x in str(args.match_sizes).split(",") if x]
    ort_threads = [int(x) for x in str(args.ort_threads).split(",") if x] or [0]
    args.ort_threads = ort_threads[0]
    if args.mode == "_train":
        print(json.dumps(child_train(args.n, args.home, pair=not args.no_pair)))
        return 0
    if args.mode == "_train_real":
        print(json.dumps(child_train_real(args.data, args.home)))
        return 0
    if args.mode == "_retrieval":
        print(json.dumps(child_retrieval(args.n)))
        return 0
    if args.mode == "_build":  # build (or check) the generated match index only
        _fake_text_encoder()
        _, index, secs = build_match_index(args.n, args.workdir / f"match_{args.n}", args.home)
        print(json.dumps({"n": args.n, "build_s": secs, "rows": index.table().count_rows(), "peak_rss_gb": peak_rss_gb()}))
        return 0
    if args.mode == "_match":
        print(json.dumps(child_match(args.n, args.match_sources, args.workdir, args.home, args.lexical_check,
                                     [int(x) for x in str(args.match_nprobes).split(",") if x])))
        return 0
    load = os.getloadavg()
    print(f"# bench_pipeline {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}  {platform.platform()}  "
          f"cpus={os.cpu_count()}  load avg {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}  parts={args.parts}")
    print(f"# command: python benchmarks/bench_pipeline.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    parts = {p.strip() for p in args.parts.split(",")}
    for name, fn in (("encoders", part_encoders), ("quality", part_quality), ("training", part_training),
                     ("match", part_match)):
        if name in parts:
            for t in ort_threads if name == "encoders" else [args.ort_threads]:
                fn(argparse.Namespace(**{**vars(args), "ort_threads": t}))
                sys.stdout.flush()
    load = os.getloadavg()
    print(f"\n# done {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}  "
          f"load avg {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (2 cores shared with other developers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
