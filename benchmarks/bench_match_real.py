"""Matching quality and speed on real data: Abt-Buy and Amazon-Google, pmatch vs two baselines.

Reads the full tables of ``../shared/data/abt-buy`` (abt.csv, buy.csv, gt.csv; sep ``|``) and
``../shared/data/amazon-google`` (amazon.csv, gp.csv, gt.csv; sep ``#``) with DuckDB ``read_csv``
(``all_varchar`` then cast) into one pmatch database, exposes each side as an offer view
(``id, title, description, brand, price, currency``; brand = ``manufacturer`` where the data has one)
and matches **source = left table → target = right table** (abt → buy, amazon → google).

Methods, all on the same offers and the same text (brand + title):

* **pmatch**: ``SELECT * FROM pm_index('<target>', rebuild := true)`` then
  ``CREATE TABLE ... AS SELECT * FROM match_products('<source>', '<target>', k := 10)``; time = the
  wall time of both statements (the ONNX session is warmed up first, never timed).
* **char TF-IDF** (baseline 1): scikit-learn ``TfidfVectorizer(analyzer='char_wb', sublinear_tf=True)``
  with n-grams (2, 5) and (3, 5), fitted on source + target texts, exact cosine top-10 (rows skipped
  without scikit-learn), and pmatch's own ``pmatch_duckdb.features.lexical.CharTfidf`` (fitted on the
  target only, as inside pmatch; always run). The text is pmatch's lexical input
  (``offer_vectors.lexical_input``: brand + title).
* **zero-shot text** (baseline 2): cosine of ``pm_embed_text`` vectors computed in SQL over pmatch's
  text input (``offer_vectors.text_input``: title, prefixed by the brand when the title lacks it), exact top-10.

Metrics, over source offers that have at least one true match (any true match counts when a source
has several): recall@1 and recall@10 of the true match. ``best F1``: the candidate pairs (top-10 per
source) scored by the method's score, thresholds swept, F1 against ALL ground-truth pairs (true pairs
never retrieved are false negatives). ``R@P>=0.99``: the highest recall at a threshold with precision
≥ 0.99. For pmatch a second table gives precision/recall/F1 of the built-in decision (``accept``, and
``accept`` + ``review``) and R@P>=0.95. A details table adds, for every method, best F1 and
R@P>=0.99 after a 1:1 mutual-best filter (see :func:`mutual_best`) and process CPU seconds.

The ablation (skip with ``--no-ablation``) re-scores with other ``FusionConfig`` weights through the
Python API (the same ``matching.match`` the UDF calls, the index rows reused: there are no images, so
the fused vectors only depend on whether ``text_weight`` is 0; the default config is checked to give
the SQL result's rank-1 candidates), and re-ranks the SQL result by ``score + w * ln(price_ratio)``.

Usage (from the repository root)::

    PMATCH_HOME=/tmp/pmhome python benchmarks/bench_match_real.py [--data ../shared/data]
        [--datasets abt-buy,amazon-google] [--workdir DIR] [--no-ablation]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

import pmatch_duckdb as pm
from pmatch_duckdb.api import context_of
from pmatch_duckdb.features.lexical import CharTfidf
from pmatch_duckdb.fusion import fuse
from pmatch_duckdb.matching import match, source_vectors, target_view
from pmatch_duckdb.offer_vectors import lexical_input, text_input
from pmatch_duckdb.offers import Offer, read_offers
from pmatch_duckdb.sqlident import index_name_for
from pmatch_duckdb.store import OfferIndex

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
K = 10


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's files are and how its columns map onto the offer-table convention."""

    name: str
    folder: str
    source: str  # view name of the left table (the source of match_products)
    target: str  # view name of the right table (the target, which gets the index)
    source_file: str
    target_file: str
    sep: str
    title_col: str
    has_brand: bool


DATASETS: dict[str, DatasetSpec] = {
    "abt-buy": DatasetSpec("abt-buy", "abt-buy", "abt", "buy", "abt.csv", "buy.csv", "|", "name", False),
    "amazon-google": DatasetSpec("amazon-google", "amazon-google", "amazon", "google", "amazon.csv", "gp.csv",
                                 "#", "title", True),
}


@dataclass
class Ranked:
    """A method's candidates: ``pairs[source_id]`` = [(target_id, score), ...] best first (≤ K)."""

    pairs: dict[str, list[tuple[str, float]]]
    seconds: float  # wall time
    cpu_seconds: float = float("nan")  # process CPU time (all threads), for a noisy machine


@dataclass
class Metrics:
    """Quality of one method on one dataset."""

    recall1: float
    recall10: float
    best_f1: float
    best_f1_threshold: float
    best_f1_precision: float
    best_f1_recall: float
    r_at_p99: float
    r_at_p95: float
    mutual_f1: float  # best F1 over mutual-best pairs only (1:1 filter, see evaluate)
    mutual_r_at_p99: float
    n_queries: int
    n_gt: int


def _read(path: Path, sep: str) -> str:
    p = str(path).replace("'", "''")
    return f"read_csv('{p}', delim='{sep}', header=true, all_varchar=true, quote='', escape='')"


def _price_sql(col: str) -> str:
    """VARCHAR price ('399', '$1,299.00', '69.71 gbp', '0.0', '') → DOUBLE, NULL when missing or 0."""
    num = f"TRY_CAST(replace(regexp_extract({col}, '([0-9][0-9,]*(\\.[0-9]+)?)', 1), ',', '') AS DOUBLE)"
    return f"NULLIF({num}, 0)"


def load_dataset(con: duckdb.DuckDBPyConnection, data: Path, spec: DatasetSpec) -> set[tuple[str, str]]:
    """Create raw tables, offer views and the ground-truth table; return the true (source, target) pairs."""
    folder = data / spec.folder
    for view, fname in ((spec.source, spec.source_file), (spec.target, spec.target_file)):
        raw = f"{view}_raw"
        con.execute(f"CREATE OR REPLACE TABLE {raw} AS SELECT * FROM {_read(folder / fname, spec.sep)}").fetchall()
        brand = "NULLIF(trim(manufacturer), '')" if spec.has_brand else "CAST(NULL AS VARCHAR)"
        con.execute(f"""
            CREATE OR REPLACE VIEW {view} AS SELECT
                CAST(id AS BIGINT) AS id,
                NULLIF(trim({spec.title_col}), '') AS title,
                NULLIF(trim(description), '') AS description,
                {brand} AS brand,
                {_price_sql('price')} AS price,
                CASE WHEN price ILIKE '%gbp%' THEN 'GBP' WHEN {_price_sql('price')} IS NOT NULL THEN 'USD' END
                    AS currency
            FROM {raw}""").fetchall()
    gt = f"{spec.source}_{spec.target}_gt"
    con.execute(f"CREATE OR REPLACE TABLE {gt} AS SELECT CAST(D1 AS BIGINT) AS source_id, "
                f"CAST(D2 AS BIGINT) AS target_id FROM {_read(folder / 'gt.csv', spec.sep)}").fetchall()
    missing = con.execute(
        f"SELECT count(*) FROM {gt} g WHERE g.source_id NOT IN (SELECT id FROM {spec.source}) "
        f"OR g.target_id NOT IN (SELECT id FROM {spec.target})").fetchall()[0][0]
    if missing:
        raise SystemExit(f"{spec.name}: {missing} ground-truth pairs reference unknown ids")
    rows = con.execute(f"SELECT DISTINCT CAST(source_id AS VARCHAR), CAST(target_id AS VARCHAR) FROM {gt}").fetchall()
    return {(a, b) for a, b in rows}


# ----------------------------------------------------------------------------------------- metrics


def _pr_curve(scored: list[tuple[float, bool]], n_gt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, precision, recall) at every distinct score, pairs with score ≥ threshold predicted."""
    if not scored:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    s = np.array([x[0] for x in scored], dtype=np.float64)
    y = np.array([x[1] for x in scored], dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    pred = np.arange(1, len(s) + 1)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # end of each tie group
    return s[last], tp[last] / pred[last], tp[last] / max(n_gt, 1)


def _best_f1(scored: list[tuple[float, bool]], n_gt: int) -> tuple[float, float, float, float, float, float]:
    """(best F1, its threshold, its precision, its recall, R@P>=0.99, R@P>=0.95) of scored pairs."""
    thr, prec, rec = _pr_curve(scored, n_gt)
    if not len(thr):
        return 0.0, float("nan"), 0.0, 0.0, 0.0, 0.0
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    b = int(np.argmax(f1))

    def r_at(p: float) -> float:
        ok = prec >= p
        return float(rec[ok].max()) if ok.any() else 0.0

    return float(f1[b]), float(thr[b]), float(prec[b]), float(rec[b]), r_at(0.99), r_at(0.95)


def mutual_best(pairs: dict[str, list[tuple[str, float]]]) -> list[tuple[str, str, float]]:
    """Pairs that are the source's rank-1 candidate AND the best-scored source of that target.

    Only retrieved pairs count (a target's sources are those that have it in their top-k); ties go to
    the first source in id order. A 1:1 filter that ``match_products`` output allows in plain SQL::

        QUALIFY rank = 1 AND row_number() OVER (PARTITION BY target_id ORDER BY score DESC) = 1
    """
    best_src: dict[str, tuple[float, str]] = {}
    for src in sorted(pairs):
        for tgt, sc in pairs[src][:K]:
            if tgt not in best_src or sc > best_src[tgt][0]:
                best_src[tgt] = (sc, src)
    return [(src, lst[0][0], lst[0][1]) for src, lst in pairs.items()
            if lst and best_src[lst[0][0]][1] == src]


def evaluate(ranked: Ranked, gt: set[tuple[str, str]]) -> Metrics:
    """recall@1/@10 over sources with a true match; best F1 and recall at fixed precision over all pairs."""
    truth: dict[str, set[str]] = {}
    for a, b in gt:
        truth.setdefault(a, set()).add(b)
    r1 = r10 = 0
    for src, targets in truth.items():
        cands = [t for t, _ in ranked.pairs.get(src, [])[:K]]
        r1 += bool(cands) and cands[0] in targets
        r10 += any(t in targets for t in cands)
    scored = [(sc, (s, t) in gt) for s, lst in ranked.pairs.items() for t, sc in lst[:K]]
    f1, thr, p, r, r99, r95 = _best_f1(scored, len(gt))
    mf1, _, _, _, mr99, _ = _best_f1([(sc, (s, t) in gt) for s, t, sc in mutual_best(ranked.pairs)], len(gt))
    n = len(truth)
    return Metrics(recall1=r1 / max(n, 1), recall10=r10 / max(n, 1), best_f1=f1, best_f1_threshold=thr, best_f1_precision=p,
                   best_f1_recall=r, r_at_p99=r99, r_at_p95=r95, mutual_f1=mf1, mutual_r_at_p99=mr99,
                   n_queries=n, n_gt=len(gt))


def prf(predicted: Iterable[tuple[str, str]], gt: set[tuple[str, str]]) -> tuple[float, float, float, int]:
    """Precision, recall, F1 and count of a set of predicted pairs against all ground-truth pairs."""
    pred = set(predicted)
    tp = len(pred & gt)
    p = tp / len(pred) if pred else 0.0
    r = tp / len(gt) if gt else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0), len(pred)


# ----------------------------------------------------------------------------------------- methods


class Timer:
    """Wall and process-CPU seconds of a block (CPU covers all threads: ORT, DuckDB, numpy)."""

    def __enter__(self) -> Timer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def topk_dense(sim: np.ndarray, src_ids: Sequence[str], tgt_ids: Sequence[str], k: int = K
               ) -> dict[str, list[tuple[str, float]]]:
    """Exact top-k per row of a dense similarity matrix."""
    kk = min(k, sim.shape[1])
    part = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
    sc = np.take_along_axis(sim, part, axis=1)
    order = np.argsort(-sc, axis=1, kind="stable")
    part, sc = np.take_along_axis(part, order, axis=1), np.take_along_axis(sc, order, axis=1)
    return {s: [(tgt_ids[j], float(v)) for j, v in zip(part[i], sc[i], strict=True)]
            for i, s in enumerate(src_ids)}


def run_pmatch(con: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> tuple[Ranked, dict[str, float], str]:
    """pm_index + match_products in SQL; returns the candidates, timings and the result table's name."""
    index_sql = f"SELECT * FROM pm_index('{spec.target}', rebuild := true)"
    with Timer() as ti:
        con.execute(index_sql).fetchall()
    table = f"m_{spec.source}_{spec.target}"
    with Timer() as tm:
        con.execute(f"CREATE OR REPLACE TABLE {table} AS "
                    f"SELECT * FROM match_products('{spec.source}', '{spec.target}', k := {K})").fetchall()
    rows = con.execute(f"SELECT CAST(source_id AS VARCHAR), CAST(target_id AS VARCHAR), score FROM {table} "
                       "ORDER BY source_id, rank").fetchall()
    pairs: dict[str, list[tuple[str, float]]] = {}
    for s, t, sc in rows:
        pairs.setdefault(s, []).append((t, float(sc)))
    times = {"index": ti.wall, "match": tm.wall, "index_cpu": ti.cpu, "match_cpu": tm.cpu}
    return Ranked(pairs, ti.wall + tm.wall, ti.cpu + tm.cpu), times, table


def price_rerank(con: duckdb.DuckDBPyConnection, table: str, weight: float) -> Ranked:
    """pmatch's candidates re-ranked in SQL by ``score + weight * ln(price_ratio)`` (price missing: + 0).

    A post-hoc experiment: ``price_ratio`` (min/max of the two prices, currencies ignored) is an output
    column of ``match_products`` but not part of its score.
    """
    with Timer() as t:
        rows = con.execute(
            f"SELECT CAST(source_id AS VARCHAR), CAST(target_id AS VARCHAR), "
            f"score + coalesce({weight} * ln(price_ratio), 0) AS s2 FROM {table} "
            "ORDER BY source_id, s2 DESC, rank").fetchall()
    pairs: dict[str, list[tuple[str, float]]] = {}
    for s_, t_, sc in rows:
        pairs.setdefault(s_, []).append((t_, float(sc)))
    return Ranked(pairs, t.wall, t.cpu)


def run_tfidf_sklearn(src: list[Offer], tgt: list[Offer], ngrams: tuple[int, int]) -> Ranked:
    """scikit-learn char_wb TF-IDF (sublinear tf), fitted on source + target texts, exact top-k."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    with Timer() as t:
        st = [lexical_input(o) for o in src]
        tt = [lexical_input(o) for o in tgt]
        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=ngrams, sublinear_tf=True)
        vec.fit(st + tt)
        sim = (vec.transform(st) @ vec.transform(tt).T).toarray()
        pairs = topk_dense(sim, [o.id for o in src], [o.id for o in tgt])
    return Ranked(pairs, t.wall, t.cpu)


def run_tfidf_pmatch(src: list[Offer], tgt: list[Offer]) -> Ranked:
    """pmatch's own hashed char n-gram TF-IDF (fitted on the target, as in the lexical channel)."""
    with Timer() as t:
        tf = CharTfidf([lexical_input(o) for o in tgt])
        idx, val = tf.top_k([lexical_input(o) for o in src], K)
        ids = [o.id for o in tgt]
        pairs = {o.id: [(ids[j], float(v)) for j, v in zip(idx[i], val[i], strict=True) if j >= 0]
                 for i, o in enumerate(src)}
    return Ranked(pairs, t.wall, t.cpu)


def embed_sql(con: duckdb.DuckDBPyConnection, texts: list[str | None], dim: int) -> np.ndarray:
    """``pm_embed_text`` over a registered Arrow table, in input order (NULL → zero vector)."""
    con.register("_bench_texts", pa.table({"pos": pa.array(range(len(texts)), pa.int64()),
                                           "txt": pa.array(texts, pa.string())}))
    try:
        rows = con.execute("SELECT pos, pm_embed_text(txt) FROM _bench_texts ORDER BY pos").fetchall()
    finally:
        con.unregister("_bench_texts")
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for pos, v in rows:
        if v is not None:
            out[pos] = v
    n = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, n, out=out, where=n > 0)
    return out


def run_zero_shot(con: duckdb.DuckDBPyConnection, src: list[Offer], tgt: list[Offer]) -> Ranked:
    """Zero-shot text-only: cosine of SQL ``pm_embed_text`` vectors of both sides, exact top-k."""
    dim = len(con.execute("SELECT pm_embed_text('x')").fetchall()[0][0])
    with Timer() as t:
        a = embed_sql(con, [text_input(o) for o in src], dim)
        b = embed_sql(con, [text_input(o) for o in tgt], dim)
        pairs = topk_dense(a @ b.T, [o.id for o in src], [o.id for o in tgt])
    return Ranked(pairs, t.wall, t.cpu)


# ---------------------------------------------------------------------------------------- ablation

ABLATIONS: list[tuple[str, dict[str, float]]] = [
    ("default", {}),
    ("identifier_bonus=0", {"identifier_bonus": 0.0}),
    ("lexical_weight=0", {"lexical_weight": 0.0}),
    ("text_weight=0", {"text_weight": 0.0}),
    ("text only (lexical=0, id=0)", {"lexical_weight": 0.0, "identifier_bonus": 0.0}),
    ("lexical only (text=0, id=0)", {"text_weight": 0.0, "identifier_bonus": 0.0}),
    ("lexical_weight=1.2", {"lexical_weight": 1.2}),
    ("lexical_weight=2.0", {"lexical_weight": 2.0}),
    ("identifier_bonus=0.4", {"identifier_bonus": 0.4}),
]


PRICE_WEIGHTS = (0.05, 0.1)


def run_ablation(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, gt: set[tuple[str, str]],
                 sql_result: Ranked) -> list[tuple[str, Metrics, float]]:
    """Re-score with other fusion weights via ``matching.match`` (index rows and source vectors reused)."""
    ctx = context_of(con)
    index = OfferIndex(ctx.index_root, index_name_for(spec.target))
    view = target_view(index)
    base_cfg = view.fusion
    src_offers = read_offers(con, spec.source)
    src = source_vectors(src_offers, ctx.settings, base_cfg)
    out = []
    for name, change in ABLATIONS:
        cfg = dataclasses.replace(base_cfg, **change)
        v = copy.copy(view)
        v.fusion = cfg
        v.rows = dataclasses.replace(view.rows, fused=fuse(view.rows.text, view.rows.text_ok, view.rows.image,
                                                           view.rows.image_ok, cfg))
        s = dataclasses.replace(src, fused=fuse(src.text, src.text_ok, src.image, src.image_ok, cfg))
        with Timer() as tm:
            cand = match(s, v, K)
        sec = tm.wall
        pairs: dict[str, list[tuple[str, float]]] = {}
        for i in range(len(cand.source)):
            pairs.setdefault(s.ids[int(cand.source[i])], []).append((v.rows.ids[int(cand.target[i])],
                                                                       float(cand.score[i])))
        if not change and _top1(pairs) != _top1(sql_result.pairs):
            print(f"WARNING {spec.name}: the Python re-run of the default config differs from the SQL result",
                  file=sys.stderr)
        out.append((name, evaluate(Ranked(pairs, sec, tm.cpu), gt), sec))
    return out


def _top1(pairs: dict[str, list[tuple[str, float]]]) -> dict[str, str]:
    return {s: lst[0][0] for s, lst in pairs.items() if lst}


# ------------------------------------------------------------------------------------------ output


def fmt_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def main(argv: list[str] | None = None) -> int:
    """Run every method on every requested dataset and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    ap.add_argument("--datasets", default="abt-buy,amazon-google", help="comma-separated: " + ",".join(DATASETS))
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where bench.duckdb and its index go (default: a temporary folder, removed after)")
    ap.add_argument("--no-ablation", action="store_true", help="skip the FusionConfig ablation")
    args = ap.parse_args(argv)

    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in names if d not in DATASETS]
    if unknown:
        ap.error(f"unknown dataset(s) {unknown}; choose from {list(DATASETS)}")
    tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="pmatch-bench-real-")) if tmp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        has_sklearn = True
        try:
            import sklearn  # noqa: F401
        except ImportError:
            has_sklearn = False
        con = pm.connect(workdir / "bench.duckdb")
        t0 = time.perf_counter()
        con.execute("SELECT pm_embed_text('warm up')").fetchall()
        warm = time.perf_counter() - t0
        threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
        print(f"# {_dt.datetime.now().isoformat(timespec='seconds')}  python {platform.python_version()}  "
              f"duckdb {duckdb.__version__}  threads={threads}  cpus={_cpus()}  "
              f"load avg {os.getloadavg()[0]:.1f}  text model warm-up (untimed) {warm:.1f}s")
        main_rows: list[list[str]] = []
        extra_rows: list[list[str]] = []
        decision_rows: list[list[str]] = []
        ablation_rows: list[list[str]] = []
        for name in names:
            spec = DATASETS[name]
            gt = load_dataset(con, args.data, spec)
            src = read_offers(con, spec.source)
            tgt = read_offers(con, spec.target)
            print(f"# {name}: source {spec.source} ({len(src)} offers) -> target {spec.target} "
                  f"({len(tgt)} offers), {len(gt)} true pairs", flush=True)
            results: list[tuple[str, Ranked, str]] = []
            ranked, times, table = run_pmatch(con, spec)
            results.append(("pmatch match_products", ranked,
                            f"{ranked.seconds:.1f} (index {times['index']:.1f} + match {times['match']:.1f})"))
            cpu_note = {"pmatch match_products": f"{ranked.cpu_seconds:.1f} (index {times['index_cpu']:.1f} + "
                                                 f"match {times['match_cpu']:.1f})"}
            if has_sklearn:
                for ng in ((2, 5), (3, 5)):
                    r = run_tfidf_sklearn(src, tgt, ng)
                    results.append((f"char TF-IDF sklearn char_wb {ng[0]}-{ng[1]}", r, f"{r.seconds:.1f}"))
            r = run_tfidf_pmatch(src, tgt)
            results.append(("char TF-IDF pmatch CharTfidf 2-5", r, f"{r.seconds:.1f}"))
            r = run_zero_shot(con, src, tgt)
            results.append(("zero-shot text (pm_embed_text)", r, f"{r.seconds:.1f}"))
            for method, rk, tm in results:
                m = evaluate(rk, gt)
                main_rows.append([name, method, f"{m.recall1:.3f}", f"{m.recall10:.3f}", f"{m.best_f1:.3f}",
                                  f"{m.r_at_p99:.3f}", tm])
                extra_rows.append([name, method, f"{m.best_f1:.3f} @ {m.best_f1_threshold:.3f} "
                                   f"(P {m.best_f1_precision:.3f}, R {m.best_f1_recall:.3f})", f"{m.r_at_p95:.3f}",
                                   f"{m.mutual_f1:.3f}", f"{m.mutual_r_at_p99:.3f}",
                                   cpu_note.get(method, f"{rk.cpu_seconds:.1f}")])
                print(f"  {method}: R@1 {m.recall1:.3f} R@10 {m.recall10:.3f} bestF1 {m.best_f1:.3f} "
                      f"(t={m.best_f1_threshold:.3f} P={m.best_f1_precision:.3f} R={m.best_f1_recall:.3f}) "
                      f"R@P.99 {m.r_at_p99:.3f} R@P.95 {m.r_at_p95:.3f} [{m.n_queries} queries]", flush=True)
            m = evaluate(ranked, gt)
            dec = con.execute(f"SELECT CAST(source_id AS VARCHAR), CAST(target_id AS VARCHAR), decision "
                              f"FROM {table}").fetchall()
            pa_, ra, fa, na = prf(((s, t) for s, t, d in dec if d == "accept"), gt)
            pr_, rr, fr, nr = prf(((s, t) for s, t, d in dec if d in ("accept", "review")), gt)
            decision_rows.append([name, f"{pa_:.3f} / {ra:.3f} / {fa:.3f} ({na})",
                                  f"{pr_:.3f} / {rr:.3f} / {fr:.3f} ({nr})",
                                  f"{m.best_f1:.3f} @ {m.best_f1_threshold:.3f}", f"{m.r_at_p95:.3f}",
                                  f"{m.r_at_p99:.3f}"])
            if not args.no_ablation:
                ablation = run_ablation(con, spec, gt, ranked)
                for w in PRICE_WEIGHTS:
                    rr_ = price_rerank(con, table, w)
                    ablation.append((f"default + price re-rank w={w} (post-hoc SQL)", evaluate(rr_, gt), rr_.seconds))
                for aname, am, sec in ablation:
                    ablation_rows.append([name, aname, f"{am.recall1:.3f}", f"{am.recall10:.3f}",
                                          f"{am.best_f1:.3f}", f"{am.r_at_p99:.3f}", f"{am.mutual_f1:.3f}",
                                          f"{sec:.1f}"])
        con.close()
        print()
        print(f"Direction: source = left table -> target = right table (abt -> buy, amazon -> google); k = {K}.")
        print(fmt_table(["dataset", "method", "recall@1", "recall@10", "best F1", "R@P>=0.99", "time (s)"],
                         main_rows))
        print()
        print("Details: best F1 at its threshold; R@P>=0.95; the same after a 1:1 mutual-best filter (a pair is kept "
              "when it is its source's rank 1 and its target's best-scored source); process CPU seconds.")
        print(fmt_table(["dataset", "method", "best F1 @ threshold (P, R)", "R@P>=0.95", "1:1 best F1",
                          "1:1 R@P>=0.99", "cpu (s)"], extra_rows))
        print()
        print("pmatch built-in decision, precision / recall / F1 (pairs) against all ground-truth pairs:")
        print(fmt_table(["dataset", "accept", "accept+review", "best F1 @ threshold", "R@P>=0.95",
                          "R@P>=0.99"], decision_rows))
        if ablation_rows:
            print()
            print("pmatch FusionConfig ablation (Python matching.match on the same index; time = match only) "
                  "and post-hoc price re-rank of the SQL result:")
            print(fmt_table(["dataset", "fusion", "recall@1", "recall@10", "best F1", "R@P>=0.99", "1:1 best F1",
                              "time (s)"], ablation_rows))
    finally:
        if tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    raise SystemExit(main())
