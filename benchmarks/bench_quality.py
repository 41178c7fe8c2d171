"""Quality of the trained matcher on real data (issue 4): one command, one table.

Parts (``--only`` takes a comma-separated subset; all run by default):

* ``abt-buy-magellan``, ``amazon-google-magellan``: the DeepMatcher/Magellan pair splits used by Ditto
  (``magellan/{train,valid,test}.txt``, Ditto format ``COL attr VAL value ...`` per side, then the label).
  Identical records are merged into one offer per side (ids ``L<n>`` / ``R<n>``, unique across sides); the
  offer tables hold every record of the three splits, the labels only come from ``train``.
  ``train_matcher(con, [left, right], pairs=train, valid_pairs=valid)`` trains (open world: the pairs
  table has label-0 rows, so the decision model learns from exactly the labelled pairs). The test pairs
  are scored the way training scores its labelled pairs (``train.py``, ``pair_data``, open-world branch:
  offer vectors through the matcher's ONNX projection, ``pair_signals`` + ``decision_features`` against a
  ``TargetView`` of the right table, ``DecisionModel.score``). Reported: test F1 at the matcher's
  ``accept`` threshold (precision target 0.99 with a Wilson bound, chosen on ``valid``), test F1 at the
  threshold with the best F1 on ``valid``, the best F1 on test (for reference only: chosen on test), and
  recall at precision ≥ 0.99 on test. Published (same test split): Ditto 89.33 / 75.58, DeepMatcher 62.8
  (Abt-Buy).
* ``abt-buy-full``, ``amazon-google-full``: the full tables (loading code of ``bench_match_real.py``).
  Split: connected components of the ground-truth graph over all source offers (a source offer with no
  match is its own component), assigned to test when ``crc32("<seed>:<smallest node id>") % 100 < 30``
  (seed 0), else to train. ``train_matcher(con, [<source>_train, <target>_all], pairs=gt_train)``
  (closed world: candidates of the train sources, 20 % of the train groups for the decision model's
  validation). Evaluation: ``match_products('<source>_test', '<target>_all', k := 10)`` in SQL, i.e. the
  test sources against the FULL target table (targets of train pairs are there as distractors); no test
  pair and no test source is seen in training. Metrics over the test ground-truth pairs: recall@1/@10
  (sources with a match), best F1 and recall at precision ≥ 0.99 over all returned pairs (a true pair
  never returned is a false negative), the same after the 1:1 mutual-best filter, F1 of ``accept``.
* ``wdc-products``: WDC Products (80 % corner cases). 4,057 of the ~4,100 offer ids appear on both the
  left and the right side of pairs, so the offers form ONE table (one offer per distinct offer id, dedup
  mode) instead of two per-side copies; training on ``train_medium``, thresholds on ``valid_medium``,
  F1 on the 0 % and 50 % unseen gold standards (scored like the Magellan test pairs).
* ``grocery``: store photo → catalog product. Catalog: 81 offers (title = class name, description =
  the product description, images = the iconic image). Photos: offers with an image and no text.
  Zero-shot vs trained; training photos: at most ``--grocery-per-class`` (default 10, evenly spaced) per
  class of ``train.txt``, pairs photo → catalog offer (closed world); test: all of ``val.txt``. Metric:
  accuracy@1 (= recall@1) and recall@10 of ``match_products``' ranking.
* ``laptops-10``: 10 laptops offered by two shops (several photos each, mixed Czech/English titles),
  zero-shot only: how many of the 10 are matched at rank 1.

Ablation (skipped with ``--quick``): the zero-shot fusion, zero-shot text-only and image-only (cosine of
one modality), the trained matcher with the projection restricted to the text block / image block, the
trained matcher without the lexical block, and the full trained fusion. ``spec`` only changes the
projection's input; the decision model always sees every pair feature. Decision-model ablation: the full
fusion trained without cross-fitting (``cross_fit=False``: decision features of the training pairs from
the projection trained on them), with the ``gbdt`` decision model instead of logistic regression, with
``auto`` (the better of the two by held-out average precision), and
with 5 mined hard negatives per training offer for the projection (``mine_negatives=5``).
``--variants cross-fit,gbdt`` runs only the variants whose label contains one of the strings. Where the data has no images,
image rows are left out; where the source has no text (grocery photos), text rows are.

Peer: Splink 5 (optional: rows are skipped when ``import splink`` fails) on the full-table split:
link-only model over normalised brand + title (Jaro-Winkler levels), its token set (array intersection
sizes), the longest product identifier (exact) and the price (relative difference levels); blocking on
the first token, the identifier, the last token or the first 6 characters; u from random sampling,
m from the train split's ground-truth pairs (``estimate_m_from_pairwise_labels``), the prior from the
train split; evaluated like pmatch on the test sources (top 10 by match probability).

Usage (from the repository root; PMATCH_HOME must hold the default encoders)::

    PMATCH_HOME=/tmp/pmhome_bench python benchmarks/bench_quality.py [--only PART,...] [--quick]
        [--data ../shared/data] [--workdir DIR] [--plots benchmarks/results] [--seed 0]

Plots: ``<plots>/<part>/pr_curve.png`` and ``thresholds.png`` (``evaluation.plot_curves``) for the
trained matcher's test scores (zero-shot for laptops-10). With ``--workdir`` the databases and indexes
are kept and a re-run embeds nothing new; trained matchers go to the pmatch home (one name per part and
variant, a new version per run).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as _dt
import gzip
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

import pmatch_duckdb as pm
from pmatch_duckdb.api import context_of
from pmatch_duckdb.clusters import DisjointSet
from pmatch_duckdb.evaluation import plot_curves, recall_at_k, summarize
from pmatch_duckdb.features.offer_features import DEFAULT_SPEC
from pmatch_duckdb.fusion import FusionConfig
from pmatch_duckdb.matchers import Matcher, deactivate, load_matcher
from pmatch_duckdb.matching import (
    OfferVectors,
    TargetView,
    decision_features,
    match,
    pair_signals,
    zero_shot_score,
)
from pmatch_duckdb.offer_vectors import fuse_vectors
from pmatch_duckdb.offers import read_offers
from pmatch_duckdb.sqlident import index_name_for
from pmatch_duckdb.store import OfferIndex

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_match_real: its loaders, Timer, fmt_table
import bench_match_real  # noqa: E402
from bench_match_real import Timer, fmt_table  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_PLOTS = REPO_ROOT / "benchmarks" / "results"
K = 10
PARTS = ("abt-buy-magellan", "amazon-google-magellan", "abt-buy-full", "amazon-google-full", "wdc-products",
         "grocery", "laptops-10")
PUBLISHED = {"abt-buy-magellan": "Ditto 0.893, DeepMatcher 0.628", "amazon-google-magellan": "Ditto 0.756"}
TEST_SHARE = 30  # % of ground-truth components in the full-table test split

# ablation variants: (label, zero-shot FusionConfig or None, trained spec or None, needs)
ZERO_SHOT = FusionConfig()
TEXT_ONLY = FusionConfig(image_weight=0.0, lexical_weight=0.0, identifier_bonus=0.0, conflict_penalty=0.0)
IMAGE_ONLY = FusionConfig(text_weight=0.0, lexical_weight=0.0, identifier_bonus=0.0, conflict_penalty=0.0)
OFF = {"text": False, "image": False, "numeric": False, "lexical": False}
VARIANTS: list[tuple[str, FusionConfig | None, dict | None, str]] = [
    ("zero-shot fusion", ZERO_SHOT, None, ""),
    # without lowering the score of titles that say two products (pair_features.conflict_evidence)
    ("zero-shot fusion, no conflict penalty", FusionConfig(conflict_penalty=0.0), None, ""),
    ("zero-shot text-only", TEXT_ONLY, None, "text"),
    ("zero-shot image-only", IMAGE_ONLY, None, "image"),
    ("trained, projection: text block", None, {**OFF, "text": True}, "text"),
    ("trained, projection: image block", None, {**OFF, "image": True}, "image"),
    ("trained, projection: no lexical block", None, {**DEFAULT_SPEC, "lexical": False}, ""),
    ("trained fusion (all blocks)", None, dict(DEFAULT_SPEC), ""),
    # decision-model ablation ("_train" holds train_matcher options, not projection blocks)
    ("trained, no cross-fit", None, {**DEFAULT_SPEC, "_train": {"cross_fit": False}}, ""),
    ("trained, decision: gbdt", None, {**DEFAULT_SPEC, "_train": {"decision_model": "gbdt"}}, ""),
    ("trained, decision: auto", None, {**DEFAULT_SPEC, "_train": {"decision_model": "auto"}}, ""),
    ("trained, + 5 mined negatives", None, {**DEFAULT_SPEC, "_train": {"mine_negatives": 5}}, ""),
    # pair scorer (issue 11): the main row trains it where there are enough labels; these switch it off or
    # change one Ditto lever ("_pair" holds SerializeOptions / PairTrainConfig fields)
    ("trained, no pair model", None, {**DEFAULT_SPEC, "_train": {"pair_model": False}}, ""),
    # stage 1 without the word-difference feature (token_diff.py): what that feature adds
    ("trained, no pair model, no token diff", None,
     {**DEFAULT_SPEC, "_train": {"pair_model": False, "token_diff": False}}, ""),
    # stage 1 without the source-margin features (pair_features.MARGIN_FEATURES)
    ("trained, no pair model, no margins", None,
     {**DEFAULT_SPEC, "_train": {"pair_model": False, "source_margins": False}}, ""),
    ("trained, pair model: no id/number marking", None, {**DEFAULT_SPEC, "_pair": {"mark_ids": False}}, ""),
    ("trained, pair model: TF-IDF description summary", None, {**DEFAULT_SPEC, "_pair": {"summarize": True}}, ""),
    ("trained, pair model: augmentation", None, {**DEFAULT_SPEC, "_pair": {"augment": True}}, ""),
]
MAIN = "trained fusion (all blocks)"


# ------------------------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One line of the printed table (None prints as '-')."""

    part: str
    method: str
    r1: float | None = None
    r10: float | None = None
    f1_accept: float | None = None
    f1_valid: float | None = None
    best_f1: float | None = None
    r_p99: float | None = None
    r_p99_1to1: float | None = None
    train_s: float | None = None
    reference: str = ""
    extra: dict = dataclasses.field(default_factory=dict)


HEADER = ["part", "method", "R@1", "R@10", "F1 @accept", "F1 @valid-best t", "best F1 (test)", "R@P>=0.99",
          "1:1 R@P>=0.99", "train (s)", "reference / note"]


def _f(x: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else fmt.format(x)


def _cells(r: Row) -> list[str]:
    return [r.part, r.method, _f(r.r1), _f(r.r10), _f(r.f1_accept), _f(r.f1_valid), _f(r.best_f1), _f(r.r_p99),
            _f(r.r_p99_1to1), _f(r.train_s, "{:.1f}"), r.reference]


def log(msg: str) -> None:
    """Progress line on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ data helpers


def create_table(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """(Re)create a DuckDB table from an Arrow table."""
    con.register("_bench_arrow", table)
    try:
        con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _bench_arrow").fetchall()
    finally:
        con.unregister("_bench_arrow")


def offers_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Offer-convention Arrow table (id, title, description, brand, images, price, currency)."""
    cols: dict[str, pa.Array] = {
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "title": pa.array([r.get("title") for r in rows], pa.string()),
        "description": pa.array([r.get("description") for r in rows], pa.string()),
        "brand": pa.array([r.get("brand") for r in rows], pa.string()),
        "price": pa.array([r.get("price") for r in rows], pa.float64()),
        "currency": pa.array([r.get("currency") for r in rows], pa.string()),
    }
    if any(r.get("images") for r in rows):
        cols["images"] = pa.array([r.get("images") for r in rows], pa.list_(pa.string()))
    return pa.table(cols)


def pairs_table(pairs: list[tuple[str, str, int]]) -> pa.Table:
    """Labels table (left_id, right_id, label)."""
    return pa.table({"left_id": pa.array([p[0] for p in pairs], pa.string()),
                     "right_id": pa.array([p[1] for p in pairs], pa.string()),
                     "label": pa.array([int(p[2]) for p in pairs], pa.int32())})


_NUM = re.compile(r"[0-9][0-9,]*(?:\.[0-9]+)?")


def parse_price(v: Any) -> float | None:
    """'29.99', '$1,299.00', '69.71 gbp' → float; missing, unparsable or 0 → None."""
    if v is None:
        return None
    m = _NUM.search(str(v))
    if not m:
        return None
    try:
        p = float(m.group(0).replace(",", ""))
    except ValueError:
        return None
    return p if p > 0 else None


def _blank(v: Any) -> str | None:
    s = None if v is None else str(v).strip()
    return s or None


# ----------------------------------------------------------------------------------- index / vectors


def index_tables(con: duckdb.DuckDBPyConnection, tables: Iterable[str]) -> float:
    """Build/refresh the offer index of each table; wall seconds (embedding happens here)."""
    t0 = time.perf_counter()
    for t in tables:
        stats = pm.index(con, t, progress=False)
        log(f"  index {t}: {stats.inserted} embedded, {stats.unchanged} unchanged, {stats.seconds:.1f}s")
    return time.perf_counter() - t0


def load_rows(con: duckdb.DuckDBPyConnection, table: str) -> OfferVectors:
    """The cached index rows of an offer table (per-modality vectors, lexical fields, prices)."""
    ctx = context_of(con)
    return OfferVectors.from_arrow(OfferIndex(ctx.index_root, index_name_for(table)).table().to_arrow())


def with_fused(v: OfferVectors, cfg: FusionConfig, matcher: Matcher | None) -> OfferVectors:
    """Offer vectors recomputed from the cached per-modality vectors (trained projection or zero-shot fusion)."""
    return dataclasses.replace(v, fused=fuse_vectors(v.text, v.text_ok, v.image, v.image_ok, v.price, v.lexical,
                                                     cfg, matcher).astype(np.float32))


def score_pairs(src_rows: OfferVectors, tgt_rows: OfferVectors, pairs: list[tuple[str, str, int]],
                cfg: FusionConfig, matcher: Matcher | None) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels of labelled (source id, target id) pairs, computed as ``train_matcher`` does.

    Trained: the decision model over ``decision_features`` (one source row per pair, target view over
    the whole target table). Zero-shot: ``matching.zero_shot_score``. Pairs with an unknown id are an error.
    """
    src = with_fused(src_rows, cfg, matcher)
    view = TargetView.from_vectors(with_fused(tgt_rows, cfg, matcher), cfg, matcher)
    spos = {i: p for p, i in enumerate(src.ids)}
    s_idx = np.array([spos[a] for a, _, _ in pairs], dtype=np.int64)
    t_idx = np.array([view.pos[b] for _, b, _ in pairs], dtype=np.int64)
    y = np.array([lab for _, _, lab in pairs], dtype=np.float64)
    one = src.take(s_idx)
    s_local = np.arange(len(pairs), dtype=np.int64)
    sig = pair_signals(one, view, s_local, t_idx)
    if matcher is not None:
        score = matcher.decision.score(decision_features(one, view, s_local, t_idx, sig, matcher.decision.features))
    else:
        score = zero_shot_score(one, view, s_local, t_idx, sig)
    return np.nan_to_num(np.asarray(score, dtype=np.float64), nan=0.0), y


def sql_score_pairs(con: duckdb.DuckDBPyConnection, source: str, target: str, pairs_table: str,
                    pairs: list[tuple[str, str, int]], matcher: str | None,
                    decisions: dict[str, list[str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels of labelled pairs through the public path: ``score_pairs`` in SQL, with the
    connection re-installed for matcher ``matcher`` (None: zero-shot, every bench matcher deactivated).
    ``decisions``: where given, its entry ``pairs_table`` gets the ``decision`` column."""
    settings = context_of(con).settings
    pm.install(con, dataclasses.replace(settings, matcher=matcher or "bq-zero-shot"))
    try:
        con.execute(f"CREATE OR REPLACE TEMP VIEW _bq_pairs AS SELECT left_id AS source_id, right_id AS target_id "
                    f"FROM {pairs_table}").fetchall()
        rows = con.execute(f"SELECT CAST(source_id AS VARCHAR), CAST(target_id AS VARCHAR), score, decision "
                           f"FROM score_pairs('{source}', '{target}', '_bq_pairs')").fetchall()
    finally:
        pm.install(con, settings)
    if [(a, b) for a, b, _, _ in rows] != [(a, b) for a, b, _ in pairs]:
        raise RuntimeError(f"score_pairs did not return the pairs of {pairs_table} in input order")
    if decisions is not None:
        decisions[pairs_table] = [d for _, _, _, d in rows]
    score = np.array([np.nan if sc is None else sc for _, _, sc, _ in rows], dtype=np.float64)
    return np.nan_to_num(score, nan=0.0), np.array([lab for _, _, lab in pairs], dtype=np.float64)


Ranked = dict[str, list[tuple[str, float, str]]]  # source id -> [(target id, score, decision)] best first


def retrieve(src_rows: OfferVectors, tgt_rows: OfferVectors, cfg: FusionConfig, matcher: Matcher | None,
             k: int = K) -> Ranked:
    """``matching.match`` (what ``match_products`` runs) over in-memory rows: top-k per source."""
    src = with_fused(src_rows, cfg, matcher)
    view = TargetView.from_vectors(with_fused(tgt_rows, cfg, matcher), cfg, matcher)
    cand = match(src, view, k)
    out: Ranked = {}
    for i in range(len(cand.source)):
        sc = float(cand.score[i])
        out.setdefault(src.ids[int(cand.source[i])], []).append(
            (view.rows.ids[int(cand.target[i])], 0.0 if np.isnan(sc) else sc, cand.decision[i]))
    for lst in out.values():
        lst.sort(key=lambda x: -x[1])
    return out


# ---------------------------------------------------------------------------------------- metrics


def f1_at(scores: np.ndarray, labels: np.ndarray, n_true: int, threshold: float) -> float:
    """F1 of the pairs with score ≥ threshold (0 when none)."""
    sel = scores >= threshold
    tp = float(labels[sel].sum())
    p = tp / sel.sum() if sel.sum() else 0.0
    r = tp / n_true if n_true else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def labelled_metrics(valid: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                     accept: float, test_decisions: list[str] | None = None) -> dict[str, float]:
    """Pair-classification metrics on a labelled test set with thresholds from the valid set. ``f1_accept``: F1
    of the test pairs decided ``accept`` (``test_decisions``, the public path's column) or, without them, of
    those scoring ≥ ``accept``."""
    vs, vy = valid
    ts, ty = test
    v_best = summarize(vs, vy, int(vy.sum()))
    t_sum = summarize(ts, ty, int(ty.sum()))
    thr = v_best.get("best_f1_threshold", 0.5)
    if test_decisions is not None:
        acc = np.array([d == "accept" for d in test_decisions], dtype=bool)
        tp, n_true = float(ty[acc].sum()), float(ty.sum())
        p, r = (tp / acc.sum() if acc.sum() else 0.0), (tp / n_true if n_true else 0.0)
        f1_accept = 2 * p * r / (p + r) if p + r else 0.0
    else:
        f1_accept = f1_at(ts, ty, int(ty.sum()), accept)
    return {"f1_accept": f1_accept, "f1_valid": f1_at(ts, ty, int(ty.sum()), thr),
            "valid_threshold": thr, "accept_threshold": accept, "best_f1": t_sum.get("best_f1", 0.0),
            "r_p99": t_sum["recall_at_precision_0.99"], "valid_best_f1": v_best.get("best_f1", 0.0)}


def mutual_pairs(ranked: Ranked) -> set[tuple[str, str]]:
    """The 1:1 mutual-best pairs: the source's rank 1 and the best-scored source of that target."""
    best_src: dict[str, tuple[float, str]] = {}
    for s in sorted(ranked):
        for t, sc, _ in ranked[s]:
            if t not in best_src or sc > best_src[t][0]:
                best_src[t] = (sc, s)
    return {(s, lst[0][0]) for s, lst in ranked.items() if lst and best_src[lst[0][0]][1] == s}


def retrieval_metrics(ranked: Ranked, truth: dict[str, set[str]], accept: float | None = None) -> dict:
    """recall@k over sources with a match; best F1 / R@P>=0.99 over all returned pairs (and 1:1 pairs)."""
    n_true = sum(len(v) for v in truth.values())
    rec = recall_at_k({s: [t for t, _, _ in lst] for s, lst in ranked.items()}, truth, (1, 5, 10))
    flat = [(s, t, sc, d) for s, lst in ranked.items() for t, sc, d in lst]
    scores = np.array([x[2] for x in flat], dtype=np.float64)
    labels = np.array([x[1] in truth.get(x[0], ()) for x in flat], dtype=np.float64)
    out = {**rec, **summarize(scores, labels, n_true, [x[3] for x in flat]), "scores": scores, "labels": labels,
           "n_true": n_true}
    mp = mutual_pairs(ranked)
    sel = np.array([(x[0], x[1]) in mp for x in flat], dtype=bool)
    out["mutual"] = summarize(scores[sel], labels[sel], n_true) if sel.any() else {}
    if accept is not None:
        out["f1_accept_threshold"] = f1_at(scores, labels, n_true, accept)
    return out


def retrieval_row(part: str, method: str, m: dict, train_s: float | None = None, reference: str = "") -> Row:
    """A table row from :func:`retrieval_metrics`."""
    return Row(part, method, r1=m["recall@1"], r10=m["recall@10"], f1_accept=m.get("accept_f1"),
               best_f1=m.get("best_f1"), r_p99=m["recall_at_precision_0.99"],
               r_p99_1to1=m["mutual"].get("recall_at_precision_0.99", 0.0), train_s=train_s, reference=reference,
               extra={k: v for k, v in m.items() if k not in ("scores", "labels") and not isinstance(v, np.ndarray)})


def save_plots(plots: Path | None, part: str, scores: np.ndarray, labels: np.ndarray, n_true: int,
               accept: float | None, review: float | None, title: str) -> None:
    """PR curve + threshold chart under ``plots/part``."""
    if plots is None:
        return
    try:
        paths = plot_curves(scores, labels, n_true, plots / part, accept, review, title)
        log(f"  plots: {', '.join(str(p) for p in paths)}")
    except RuntimeError as e:  # matplotlib missing
        log(f"  no plots: {e}")


# ----------------------------------------------------------------------------------------- context


@dataclass
class Ctx:
    """Options shared by the parts."""

    data: Path
    workdir: Path
    plots: Path | None
    home: str | None
    seed: int
    quick: bool
    grocery_per_class: int
    epochs: int | None
    variants: list[str] = dataclasses.field(default_factory=list)
    pair: dict = dataclasses.field(default_factory=dict)  # PairTrainConfig fields from the command line
    pair_max_train_pairs: int | None = None  # PairOptions.max_train_pairs (None: the recipe's; 0: all)
    pair_recipe: str = "auto"  # PairOptions.from_recipe: auto (gpu where torch sees one), cpu, gpu
    pair_hard_negatives: int | None = None  # PairOptions.hard_negatives (None: its auto rule)
    dump_scores: Path | None = None  # pair parts: each variant's scores per split (for bench_pair_gpu.py stack)
    pair_top_m_extra: list[int] = dataclasses.field(default_factory=list)  # full tables: rows at these m too
    text_model: str | None = None  # text encoder bundle (None: the default, minilm-l6-v2)
    #: pairs table -> [(label, mask over its pairs)]: extra rows for parts of a test set (WDC: seen / unseen products)
    subsets: dict[str, list[tuple[str, np.ndarray]]] = dataclasses.field(default_factory=dict)


def open_db(ctx: Ctx, part: str, matcher: str, image_roots: list[Path] | None = None) -> duckdb.DuckDBPyConnection:
    """One database per part; ``matcher`` is the name match_products uses (deactivated first: zero-shot)."""
    con = pm.connect(ctx.workdir / f"{part}.duckdb", home=ctx.home, image_roots=image_roots, matcher=matcher,
                     **({"text_model": ctx.text_model} if ctx.text_model else {}))
    home = context_of(con).settings.home
    for label, _, spec, _ in VARIANTS:
        if spec is not None:
            deactivate(matcher_name(part, label), home)
    return con


def matcher_name(part: str, label: str) -> str:
    """Matcher name of a (part, variant): letters, digits and '-' only."""
    return f"bq-{part}-" + re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def variants(ctx: Ctx, has: set[str]) -> list[tuple[str, FusionConfig | None, dict | None]]:
    """The variants to run for data with modalities ``has`` (quick: zero-shot fusion and the main one)."""
    out = []
    for label, cfg, spec, needs in VARIANTS:
        if needs and needs not in has:
            continue
        if ctx.quick and label not in ("zero-shot fusion", MAIN):
            continue
        if ctx.variants and not any(label == v[1:] if v.startswith("=") else v in label for v in ctx.variants):
            continue
        out.append((label, cfg, spec))
    return out


def train(con: duckdb.DuckDBPyConnection, ctx: Ctx, part: str, label: str, offers: list[str] | str,
          spec: dict, **kw: Any) -> tuple[Matcher, float, float]:
    """``train_matcher`` for one variant → (loaded matcher, wall seconds, CPU seconds)."""
    from pmatch_duckdb.training import train_matcher

    name = matcher_name(part, label)
    lines: list[str] = []
    from pmatch_duckdb.pair_scorer import SerializeOptions
    from pmatch_duckdb.training.pair_model import PairOptions, PairTrainConfig

    spec = dict(spec)
    kw = {**kw, **spec.pop("_train", {})}
    lever = spec.pop("_pair", {})
    ser = {k: v for k, v in lever.items() if k in SerializeOptions.__dataclass_fields__}
    tcfg = {**ctx.pair, **{k: v for k, v in lever.items() if k in PairTrainConfig.__dataclass_fields__}}
    # min_gain=None: the benchmark measures the scorer even where training would drop it for no held-out gain
    caps = {} if ctx.pair_max_train_pairs is None else {"max_train_pairs": ctx.pair_max_train_pairs or None}
    kw.setdefault("pair_options", PairOptions.from_recipe(ctx.pair_recipe, tcfg.get("device", "auto"),
                                                          train={"seed": ctx.seed, **tcfg}, serialize=ser,
                                                          min_gain=None, hard_negatives=ctx.pair_hard_negatives,
                                                          **caps))
    with Timer() as t:
        res = train_matcher(con, offers, name=name, spec=spec, seed=ctx.seed, epochs=ctx.epochs, progress=True,
                            log=lines.append, **kw)
    log(f"  trained {name} {res.version} in {t.wall:.1f}s wall / {t.cpu:.1f}s CPU "
        f"({res.metrics.get('epochs')} epochs): {lines[0] if lines else ''}; {lines[-2] if len(lines) > 1 else ''}")
    for line in lines:
        if line.startswith("pair model"):
            log(f"    {line}")
    return load_matcher(name, res.version, context_of(con).settings.home), t.wall, t.cpu


# ----------------------------------------------------------------------------------- Magellan + WDC


_COL = re.compile(r"COL (\S+) VAL(?: |$)")


def parse_ditto_record(s: str) -> dict[str, str]:
    """``COL name VAL x COL price VAL y`` → {'name': 'x', 'price': 'y'}."""
    parts = _COL.split(s.strip())
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def _ditto_offer(oid: str, rec: dict[str, str]) -> dict[str, Any]:
    return {"id": oid, "title": _blank(rec.get("title") or rec.get("name")), "description": _blank(rec.get("description")),
            "brand": _blank(rec.get("manufacturer") or rec.get("brand")), "price": parse_price(rec.get("price"))}


def load_magellan(con: duckdb.DuckDBPyConnection, folder: Path) -> dict[str, list[tuple[str, str, int]]]:
    """Offer tables ``mag_left`` / ``mag_right`` (deduplicated records) and the split pairs tables."""
    ids: list[dict[str, str]] = [{}, {}]
    offers: list[list[dict[str, Any]]] = [[], []]
    splits: dict[str, list[tuple[str, str, int]]] = {}
    for split in ("train", "valid", "test"):
        pairs = []
        for line in (folder / f"{split}.txt").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            left, right, label = line.split("\t")
            key = []
            for side, raw in enumerate((left, right)):
                raw = raw.strip()
                if raw not in ids[side]:
                    oid = f"{'LR'[side]}{len(ids[side])}"
                    ids[side][raw] = oid
                    offers[side].append(_ditto_offer(oid, parse_ditto_record(raw)))
                key.append(ids[side][raw])
            pairs.append((key[0], key[1], int(label)))
        splits[split] = pairs
        create_table(con, f"mag_{split}", pairs_table(pairs))
    create_table(con, "mag_left", offers_table(offers[0]))
    create_table(con, "mag_right", offers_table(offers[1]))
    log(f"  {len(offers[0])} left / {len(offers[1])} right offers; pairs " +
        ", ".join(f"{s} {len(p)} ({sum(x[2] for x in p)} matches)" for s, p in splits.items()))
    return splits


def run_pair_part(con: duckdb.DuckDBPyConnection, ctx: Ctx, part: str, offers: list[str],
                  splits: dict[str, list[tuple[str, str, int]]], tests: list[tuple[str, str]],
                  has: set[str], reference: str) -> list[Row]:
    """Train on ``train``, thresholds on ``valid``, F1 on each test set (``tests``: (label, split key))."""
    src_rows = load_rows(con, offers[0])
    tgt_rows = load_rows(con, offers[-1])
    rows: list[Row] = []
    todo = [(label, cfg, spec, False) for label, cfg, spec in variants(ctx, has)]
    matcher: Matcher | None = None
    train_s: float | None = None
    while todo:
        label, cfg, spec, scorer_off = todo.pop(0)
        if scorer_off:  # the same matcher with its pair scorer switched off (pair_top_m=0): stage 1 alone
            settings = context_of(con).settings
            pm.install(con, dataclasses.replace(settings, pair_top_m=0))
            try:
                assert matcher is not None
                rows += _pair_rows(con, ctx, part, offers, splits, tests, label, matcher, FusionConfig(),
                                   matcher.decision.accept_threshold, matcher.decision.review_threshold, train_s,
                                   src_rows, tgt_rows, "")
            finally:
                pm.install(con, settings)
            continue
        train_s = None
        if spec is None:
            matcher, use_cfg, accept, review = None, cfg, cfg.accept_threshold, cfg.review_threshold
        else:
            matcher, train_s, _ = train(con, ctx, part, label, offers if len(offers) > 1 else offers[0], spec,
                                        pairs=f"{_pt(part)}_train", valid_pairs=f"{_pt(part)}_valid")
            use_cfg, accept, review = FusionConfig(), matcher.decision.accept_threshold, matcher.decision.review_threshold
            if matcher.pair_decision is not None:  # the stacked model decides the pairs score_pairs is given
                accept, review = matcher.pair_decision.accept_threshold, matcher.pair_decision.review_threshold
                if label == MAIN:
                    todo.insert(0, ("trained fusion, pair scorer off (m=0, same matcher)", None, None, True))
        rows += _pair_rows(con, ctx, part, offers, splits, tests, label, matcher, use_cfg, accept, review, train_s,
                           src_rows, tgt_rows, reference)
    return rows


def _pair_rows(con: duckdb.DuckDBPyConnection, ctx: Ctx, part: str, offers: list[str],
               splits: dict[str, list[tuple[str, str, int]]], tests: list[tuple[str, str]], label: str,
               matcher: Matcher | None, use_cfg: FusionConfig, accept: float, review: float, train_s: float | None,
               src_rows: OfferVectors, tgt_rows: OfferVectors, reference: str) -> list[Row]:
    """Score ``valid`` and each test split with one matcher (or fusion); one row per test split. F1 @accept is
    that of the pairs ``score_pairs`` decides ``accept`` where it scores them (its decisions follow each re-read
    pair's model and keep stage 1's accepts, see matching._decide), else of those scoring ≥ ``accept``."""
    rows: list[Row] = []
    decisions: dict[str, list[str]] = {}  # pairs table -> score_pairs' decision column

    def scored(key: str, matcher: Matcher | None = matcher, use_cfg: FusionConfig = use_cfg
               ) -> tuple[np.ndarray, np.ndarray]:
        # the public path (score_pairs in SQL) wherever it applies: trained matchers and the default
        # zero-shot fusion; other fusion weights (ablation) only exist in Python
        if matcher is not None or use_cfg == ZERO_SHOT:
            return sql_score_pairs(con, offers[0], offers[-1], f"{_pt(part)}_{key}", splits[key],
                                   matcher.bundle.manifest["name"] if matcher is not None else None, decisions)
        return score_pairs(src_rows, tgt_rows, splits[key], use_cfg, matcher)

    def dump(key: str, got: tuple[np.ndarray, np.ndarray]) -> None:
        if ctx.dump_scores is not None:
            d = ctx.dump_scores / part / _slug(label)
            d.mkdir(parents=True, exist_ok=True)
            np.savez(d / f"{key}.npz", score=got[0], label=got[1],
                     pair_id=np.array([f"{a}|{b}" for a, b, _ in splits[key]]))

    valid = scored("valid")
    dump("valid", valid)
    for test_label, key in tests:
        test = scored(key)
        dump(key, test)
        dec = decisions.get(f"{_pt(part)}_{key}")
        m = labelled_metrics(valid, test, accept, dec)
        sub = f"{part}{test_label}"
        no_accept = "accept" not in dec if dec is not None else np.isinf(accept)
        note = "; ".join(x for x in (reference if label == MAIN else "", "no pair accepted" if no_accept else "") if x)
        rows.append(Row(sub, label, f1_accept=m["f1_accept"], f1_valid=m["f1_valid"], best_f1=m["best_f1"],
                        r_p99=m["r_p99"], train_s=train_s, reference=note, extra=m))
        log(f"  {sub} | {label}: F1@accept({'decisions' if dec is not None else f'{accept:.3f}'}) {m['f1_accept']:.3f}, "
            f"F1@valid-best({m['valid_threshold']:.3f}) {m['f1_valid']:.3f}, best test F1 {m['best_f1']:.3f}, "
            f"R@P.99 {m['r_p99']:.3f}")
        if label == MAIN:
            save_plots(ctx.plots, part if len(tests) == 1 else f"{part}-{key}", test[0], test[1],
                       int(test[1].sum()), accept, review, f"{sub} test (trained)")
        for sub_label, mask in ctx.subsets.get(f"{_pt(part)}_{key}", []):  # the same scores and thresholds
            ms = labelled_metrics(valid, (test[0][mask], test[1][mask]), accept,
                                  None if dec is None else [d for d, keep in zip(dec, mask, strict=True) if keep])
            rows.append(Row(f"{sub}: {sub_label}", label, f1_accept=ms["f1_accept"], f1_valid=ms["f1_valid"],
                            best_f1=ms["best_f1"], r_p99=ms["r_p99"], train_s=train_s,
                            reference=f"{int(mask.sum())} of its pairs ({int(test[1][mask].sum())} matches)",
                            extra=ms))
            log(f"    {sub_label}: {int(mask.sum())} pairs, F1@valid-best {ms['f1_valid']:.3f}, best test F1 "
                f"{ms['best_f1']:.3f}")
    return rows


def _slug(label: str) -> str:
    """A variant label as a folder name."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def _pt(part: str) -> str:
    return "wdc" if part.startswith("wdc") else "mag"


def part_magellan(ctx: Ctx, part: str) -> list[Row]:
    """Abt-Buy / Amazon-Google Magellan splits."""
    folder = ctx.data / part.removesuffix("-magellan") / "magellan"
    con = open_db(ctx, part, matcher_name(part, MAIN))
    try:
        splits = load_magellan(con, folder)
        idx_s = index_tables(con, ["mag_left", "mag_right"])
        log(f"  indexing (embedding) {idx_s:.1f}s")
        rows = run_pair_part(con, ctx, part, ["mag_left", "mag_right"], splits, [("", "test")], {"text"},
                             PUBLISHED[part])
        for r in rows:
            r.extra["index_seconds"] = idx_s
        return rows
    finally:
        con.close()


WDC_FILES = {"train": "wdcproducts80cc20rnd000un_train_medium.json.gz",
             "valid": "wdcproducts80cc20rnd000un_valid_medium.json.gz",
             "gs000": "wdcproducts80cc20rnd000un_gs.json.gz",
             "gs050": "wdcproducts80cc20rnd050un_gs.json.gz"}


def read_wdc(folder: Path) -> tuple[dict[str, dict[str, Any]], dict[str, list[tuple[str, str, int]]], int]:
    """WDC Products' offers (id ``W<id>`` → record; the first record of an id wins), each split's (left id,
    right id, label) pairs in file order, and how many id reuses came with another title."""
    offers: dict[str, dict[str, Any]] = {}
    splits: dict[str, list[tuple[str, str, int]]] = {}
    conflicts = 0
    for key, fname in WDC_FILES.items():
        pairs = []
        with gzip.open(folder / fname, "rt", encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                ids = []
                for side in ("left", "right"):
                    oid = f"W{r['id_' + side]}"
                    rec = {"id": oid, "title": _blank(r.get(f"title_{side}")),
                           "description": _blank(r.get(f"description_{side}")), "brand": _blank(r.get(f"brand_{side}")),
                           "price": parse_price(r.get(f"price_{side}")), "currency": _blank(r.get(f"priceCurrency_{side}"))}
                    if oid in offers and offers[oid]["title"] != rec["title"]:
                        conflicts += 1
                    offers.setdefault(oid, rec)
                    ids.append(oid)
                pairs.append((ids[0], ids[1], int(r["label"])))
        splits[key] = pairs
    return offers, splits, conflicts


def load_wdc(con: duckdb.DuckDBPyConnection, folder: Path) -> dict[str, list[tuple[str, str, int]]]:
    """One offer table ``wdc_offers`` (one row per distinct offer id) and the pairs tables."""
    offers, splits, conflicts = read_wdc(folder)
    for key, pairs in splits.items():
        create_table(con, f"wdc_{key}", pairs_table(pairs))
    create_table(con, "wdc_offers", offers_table(list(offers.values())))
    log(f"  {len(offers)} distinct offers ({conflicts} id reuses with another title); pairs " +
        ", ".join(f"{s} {len(p)} ({sum(x[2] for x in p)} matches)" for s, p in splits.items()))
    return splits


def wdc_seen_sides(folder: Path, key: str) -> np.ndarray:
    """For each pair of split ``key``, in file order: how many of its two products (cluster ids) have an offer in
    ``train_medium`` (0, 1 or 2). The 50 % unseen gold standard's pairs of two unseen products are where
    known products cannot help and the scorer has to generalise."""
    def clusters(fname: str) -> list[tuple[Any, Any]]:
        with gzip.open(folder / fname, "rt", encoding="utf-8") as fh:
            return [(r["cluster_id_left"], r["cluster_id_right"]) for r in map(json.loads, fh)]

    seen = {c for pair in clusters(WDC_FILES["train"]) for c in pair}
    return np.array([(a in seen) + (b in seen) for a, b in clusters(WDC_FILES[key])])


def part_wdc(ctx: Ctx, part: str) -> list[Row]:
    """WDC Products: train_medium / valid_medium / gold standards 0 % and 50 % unseen; the 50 % one also split
    into its pairs of two products seen in training and of two unseen ones."""
    con = open_db(ctx, part, matcher_name(part, MAIN))
    try:
        splits = load_wdc(con, ctx.data / "wdc-products")
        sides = wdc_seen_sides(ctx.data / "wdc-products", "gs050")
        ctx.subsets[f"{_pt(part)}_gs050"] = [("both products seen", sides == 2), ("neither product seen", sides == 0)]
        idx_s = index_tables(con, ["wdc_offers"])
        log(f"  indexing (embedding) {idx_s:.1f}s")
        rows = run_pair_part(con, ctx, part, ["wdc_offers"], splits,
                             [(" 0% unseen", "gs000"), (" 50% unseen", "gs050")], {"text"}, "")
        for r in rows:
            r.extra["index_seconds"] = idx_s
        return rows
    finally:
        con.close()


# ------------------------------------------------------------------------------------- full tables


def components(nodes: list[str], edges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Node → smallest node id of its connected component (pmatch's own union-find)."""
    ds = DisjointSet()
    for n in nodes:
        ds.find(n)
    for a, b in edges:
        ds.union(a, b)
    return {n: ds.find(n) for n in list(ds.parent)}


def full_split(src_ids: list[str], gt: set[tuple[str, str]], seed: int) -> tuple[set[str], set[tuple[str, str]]]:
    """Test source ids and test gt pairs: components (gt graph over all sources) with crc32 hash % 100 < 30."""
    comp = components(src_ids, gt)
    in_test = {n: zlib.crc32(f"{seed}:{c}".encode()) % 100 < TEST_SHARE for n, c in comp.items()}
    test_src = {s for s in src_ids if in_test[s]}
    return test_src, {(a, b) for a, b in gt if in_test[a]}


def part_full(ctx: Ctx, part: str) -> list[Row]:
    """Abt-Buy / Amazon-Google full tables: train split → test sources against the full target table."""
    real = bench_match_real
    spec = real.DATASETS[part.removesuffix("-full")]
    main = matcher_name(part, MAIN)
    con = open_db(ctx, part, main)
    try:
        raw_gt = real.load_dataset(con, ctx.data, spec)
        gt = {(f"L{a}", f"R{b}") for a, b in raw_gt}
        src_ids = [f"L{r[0]}" for r in con.execute(f"SELECT id FROM {spec.source}").fetchall()]
        test_src, test_gt = full_split(src_ids, gt, ctx.seed)
        train_gt = gt - test_gt
        create_table(con, "split", pa.table({"id": pa.array(src_ids, pa.string()),
                                             "part": pa.array(["test" if s in test_src else "train" for s in src_ids])}))
        create_table(con, "gt_train", pairs_table([(a, b, 1) for a, b in sorted(train_gt)]))
        create_table(con, "gt_test", pairs_table([(a, b, 1) for a, b in sorted(test_gt)]))
        cols = "title, description, brand, price, currency"
        src_tr, src_te, tgt = f"{spec.source}_train", f"{spec.source}_test", f"{spec.target}_all"
        for view, part_name in ((src_tr, "train"), (src_te, "test")):
            con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT 'L' || id AS id, {cols} FROM {spec.source} "
                        f"WHERE 'L' || id IN (SELECT id FROM split WHERE part = '{part_name}')").fetchall()
        con.execute(f"CREATE OR REPLACE VIEW {tgt} AS SELECT 'R' || id AS id, {cols} FROM {spec.target}").fetchall()
        log(f"  split: {len(src_ids) - len(test_src)} train / {len(test_src)} test sources, "
            f"{len(train_gt)} train / {len(test_gt)} test gt pairs; target {tgt}")
        idx_s = index_tables(con, [tgt, src_tr, src_te])
        log(f"  indexing (embedding) {idx_s:.1f}s")
        truth: dict[str, set[str]] = {s: set() for s in test_src}
        for a, b in test_gt:
            truth[a].add(b)
        te_rows, tgt_rows = load_rows(con, src_te), load_rows(con, tgt)
        rows: list[Row] = []
        for label, cfg, spec_ in variants(ctx, {"text"}):
            if spec_ is None:
                ranked = retrieve(te_rows, tgt_rows, cfg, None)
                m = retrieval_metrics(ranked, truth)
                rows.append(retrieval_row(part, label, m))
            else:
                matcher, train_s, _ = train(con, ctx, part, label, [src_tr, tgt], spec_, pairs="gt_train")
                ranked = retrieve(te_rows, tgt_rows, FusionConfig(), matcher)
                m = retrieval_metrics(ranked, truth)
                if ctx.dump_scores is not None:
                    dump_ranked(ctx.dump_scores / part / _slug(label) / "test_candidates.tsv", ranked, truth, te_rows,
                                tgt_rows)
                if label == MAIN and matcher.pair is not None:
                    rows += pair_cost(con, part, src_te, tgt, matcher, te_rows, tgt_rows, truth, train_s,
                                      ctx.pair_top_m_extra)
                if label == MAIN:
                    sql_ranked, secs = sql_match(con, src_te, tgt)
                    diff = sum(sql_ranked.get(s, [("",)])[0][0] != lst[0][0] for s, lst in ranked.items())
                    if diff:
                        log(f"  WARNING: SQL match_products and the Python re-run differ at rank 1 for {diff} sources")
                    m = retrieval_metrics(sql_ranked, truth)
                    m["match_seconds"] = secs
                    save_plots(ctx.plots, part, m["scores"], m["labels"], m["n_true"],
                               matcher.decision.accept_threshold, matcher.decision.review_threshold,
                               f"{part} test split (trained, match_products)")
                note = "; ".join(x for x in ("match_products (SQL)" if label == MAIN else "",
                                              "accept = inf" if np.isinf(matcher.decision.accept_threshold) else "") if x)
                rows.append(retrieval_row(part, label, m, train_s, reference=note))
            _log_retrieval(part, label, m)
        rows += run_splink(ctx, part, con, spec, src_tr, src_te, tgt, train_gt, truth)
        for r in rows:
            r.extra["index_seconds"] = idx_s
        return rows
    finally:
        con.close()


def dump_ranked(path: Path, ranked: Ranked, truth: dict[str, set[str]], src_rows: OfferVectors,
                tgt_rows: OfferVectors) -> None:
    """Every test candidate, best score first: source, target, score, decision, rank, is-match and both titles
    (to read what sits above a precision line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    st = dict(zip(src_rows.ids, src_rows.titles, strict=True))
    tt = dict(zip(tgt_rows.ids, tgt_rows.titles, strict=True))
    out = [(sc, s, t, dec, r + 1) for s, lst in ranked.items() for r, (t, sc, dec) in enumerate(lst)]
    out.sort(key=lambda x: -x[0])
    with path.open("w", encoding="utf-8") as fh:
        fh.write("score\tsource_id\ttarget_id\tdecision\trank\tis_match\tsource_title\ttarget_title\n")
        for sc, s, t, dec, r in out:
            fh.write(f"{sc:.6f}\t{s}\t{t}\t{dec}\t{r}\t{int(t in truth.get(s, ()))}\t{st.get(s, '')}\t"
                     f"{tt.get(t, '')}\n")


def _log_retrieval(part: str, label: str, m: dict) -> None:
    mu = m["mutual"]
    log(f"  {part} | {label}: R@1 {m['recall@1']:.3f} R@10 {m['recall@10']:.3f} best F1 {m.get('best_f1', 0):.3f} "
        f"R@P.99 {m['recall_at_precision_0.99']:.3f} | 1:1 best F1 {mu.get('best_f1', 0):.3f} "
        f"R@P.99 {mu.get('recall_at_precision_0.99', 0):.3f} | accept P/R/F1 {m.get('accept_precision', 0):.3f}/"
        f"{m.get('accept_recall', 0):.3f}/{m.get('accept_f1', 0):.3f}, review band {m.get('review_band')}")


def pair_cost(con: duckdb.DuckDBPyConnection, part: str, src: str, tgt: str, matcher: Matcher,
              src_rows: OfferVectors, tgt_rows: OfferVectors, truth: dict[str, set[str]],
              train_s: float | None, extra_m: Sequence[int] = ()) -> list[Row]:
    """The pair scorer's cost: items/s of the cross-encoder alone, and match_products wall time with the
    scorer off (``pair_top_m=0``) and on, measured side by side (off, on, off; the first run warms caches);
    then the quality of the same matcher at each ``extra_m`` (``--pair-top-m-extra``)."""
    settings = context_of(con).settings
    times: dict[str, list[float]] = {"off": [], "on": []}
    out: list[Row] = []
    try:
        for mode in ("off", "on", "off", "on"):
            pm.install(con, dataclasses.replace(settings, pair_top_m=0 if mode == "off" else None))
            _cold(matcher)
            ranked, secs = sql_match(con, src, tgt)
            times[mode].append(secs)
            if mode == "off" and len(times["off"]) == 1:
                m = retrieval_metrics(ranked, truth)
                out.append(retrieval_row(part, "trained fusion, pair scorer off at match time (m=0)", m, train_s,
                                         reference="match_products (SQL)"))
                _log_retrieval(part, out[-1].method, m)
        for top_m in extra_m:  # the same matcher re-reading another number of candidates per source
            pm.install(con, dataclasses.replace(settings, pair_top_m=top_m))
            ranked, secs = sql_match(con, src, tgt)
            m = retrieval_metrics(ranked, truth)
            out.append(retrieval_row(part, f"trained fusion, pair scorer at m={top_m} (same matcher)", m, train_s,
                                     reference=f"match_products (SQL) {secs:.1f}s"))
            _log_retrieval(part, out[-1].method, m)
    finally:
        pm.install(con, settings)
    off, on = min(times["off"][1:] or times["off"]), min(times["on"])
    # cross-encoder alone: each test source with its 3 best candidates (what m = 3 re-reads)
    sv = with_fused(src_rows, FusionConfig(), matcher)
    view = TargetView.from_vectors(with_fused(tgt_rows, FusionConfig(), matcher), FusionConfig(), matcher)
    cand = match(sv, view, 3, pair_top_m=0)
    _cold(matcher)
    with Timer() as t:
        matcher.pair.pair_features(sv, view.rows, cand.source, cand.target)
    rate = len(cand.source) / max(t.wall, 1e-9)
    log(f"  pair scorer: {rate:.1f} pairs/s ({len(cand.source)} pairs in {t.wall:.1f}s wall, {t.cpu:.1f}s CPU); "
        f"match_products {len(src_rows.ids)} sources: scorer on {on:.1f}s vs off {off:.1f}s -> ratio {on / off:.2f} "
        f"(runs: off {times['off']}, on {times['on']})")
    for r in out:
        r.extra.update({"pair_items_per_s": rate, "match_s_on": on, "match_s_off": off, "match_ratio": on / off})
        r.reference += f"; match_products {on:.0f}s with / {off:.0f}s without pair scorer (x{on / off:.2f}); " \
                       f"scorer {rate:.0f} pairs/s"
    return out


def _cold(matcher: Matcher) -> None:
    """Empty a siamese scorer's embedding cache, so a timed run pays for every offer it re-reads (the Python
    re-run and earlier SQL runs of this part have filled it; the cross-encoder keeps nothing)."""
    clear = getattr(matcher.pair, "clear_cache", None)
    if clear is not None:
        clear()


def sql_match(con: duckdb.DuckDBPyConnection, source: str, target: str) -> tuple[Ranked, float]:
    """``match_products`` in SQL with the connection's active matcher → (ranked, wall seconds)."""
    with Timer() as t:
        con.execute(f"CREATE OR REPLACE TABLE m_{source} AS SELECT * FROM match_products('{source}', '{target}', "
                    f"k := {K})").fetchall()
    rows = con.execute(f"SELECT CAST(source_id AS VARCHAR), CAST(target_id AS VARCHAR), score, decision "
                       f"FROM m_{source} ORDER BY source_id, rank").fetchall()
    out: Ranked = {}
    for s, tg, sc, d in rows:
        out.setdefault(s, []).append((tg, float(sc), d))
    return out, t.wall


# ------------------------------------------------------------------------------------------ Splink


def run_splink(ctx: Ctx, part: str, con: duckdb.DuckDBPyConnection, spec: Any, src_tr: str, src_te: str,
               tgt: str, train_gt: set[tuple[str, str]], truth: dict[str, set[str]]) -> list[Row]:
    """Splink 5 link-only model on the full tables, m from the train split's labels; test sources evaluated."""
    try:
        import splink  # noqa: F401
    except ImportError:
        log("  splink not installed: Splink rows skipped (pip install splink)")
        return []
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    from pmatch_duckdb.features.lexical import identifiers, normalize
    from pmatch_duckdb.offer_vectors import lexical_input

    with Timer() as t:
        sdb = duckdb.connect()
        n_src = 0
        for name, tables in (("l", [src_tr, src_te]), ("r", [tgt])):
            recs = [o for tb in tables for o in read_offers(con, tb)]
            n_src = n_src or len(recs)
            texts = [normalize(lexical_input(o)) for o in recs]
            toks = [x.split() for x in texts]
            ids = [max(identifiers(lexical_input(o)), key=len, default=None) for o in recs]
            create_table(sdb, name, pa.table({
                "unique_id": pa.array([o.id for o in recs], pa.string()),
                "title": pa.array(texts, pa.string()),
                "tokens": pa.array([sorted(set(x)) for x in toks], pa.list_(pa.string())),
                "first_tok": pa.array([x[0] if x else None for x in toks], pa.string()),
                "last_tok": pa.array([x[-1] if x else None for x in toks], pa.string()),
                "prefix6": pa.array([x[:6] or None for x in texts], pa.string()),
                "model": pa.array(ids, pa.string()),
                "price": pa.array([o.price for o in recs], pa.float64())}))
        n_tgt = sdb.execute("SELECT count(*) FROM r").fetchall()[0][0]
        create_table(sdb, "labels", pa.table({
            "source_dataset_l": pa.array(["l"] * len(train_gt)), "unique_id_l": pa.array([a for a, _ in train_gt]),
            "source_dataset_r": pa.array(["r"] * len(train_gt)), "unique_id_r": pa.array([b for _, b in train_gt])}))
        price = cl.CustomComparison(output_column_name="price", comparison_levels=[
            cll.NullLevel("price"),
            cll.PercentageDifferenceLevel("price", 0.05),
            cll.PercentageDifferenceLevel("price", 0.25),
            cll.PercentageDifferenceLevel("price", 0.6),
            cll.ElseLevel()])
        settings = SettingsCreator(
            link_type="link_only", unique_id_column_name="unique_id",
            probability_two_random_records_match=len(train_gt) / max(1, (n_src - len(truth)) * n_tgt),
            comparisons=[cl.JaroWinklerAtThresholds("title", [0.95, 0.88, 0.75]),
                         cl.ArrayIntersectAtSizes("tokens", [5, 3, 2, 1]),
                         cl.ExactMatch("model"), price],
            blocking_rules_to_generate_predictions=[block_on("first_tok"), block_on("model"), block_on("last_tok"),
                                                    block_on("prefix6")],
            retain_intermediate_calculation_columns=False, retain_matching_columns=False)
        db = DuckDBAPI(sdb)
        linker = Linker([db.register("l", dataset_display_name="l"), db.register("r", dataset_display_name="r")],
                        settings, log_level="WARNING")
        linker.training.estimate_u_using_random_sampling(max_pairs=2e6, seed=ctx.seed + 1)
        linker.training.estimate_m_from_pairwise_labels("labels")
        pred = linker.inference.predict().as_duckdbpyrelation()
        rows = pred.select("unique_id_l, unique_id_r, match_probability").fetchall()
    test = set(truth)
    ranked: Ranked = {}
    for a, b, p in rows:
        if a in test:
            ranked.setdefault(a, []).append((b, float(p), ""))
    for s in ranked:
        ranked[s] = sorted(ranked[s], key=lambda x: (-x[1], x[0]))[:K]
    m = retrieval_metrics(ranked, truth)
    m.pop("accept_f1", None)
    log(f"  Splink: {len(rows)} blocked pairs scored, {t.wall:.1f}s")
    _log_retrieval(part, "Splink 5", m)
    row = retrieval_row(part, "Splink 5 (m from train labels)", m, reference=f"peer; {t.wall:.0f}s")
    row.f1_accept = None
    return [row]


# ------------------------------------------------------------------------------------------ grocery


def part_grocery(ctx: Ctx, part: str) -> list[Row]:
    """Store photo → catalog product (81 classes), zero-shot vs trained."""
    folder = ctx.data / "grocery"
    con = open_db(ctx, part, matcher_name(part, MAIN), image_roots=[folder])
    try:
        catalog = []
        with open(folder / "classes.csv", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                desc_path = folder / r["Product Description Path (str)"].lstrip("/")
                catalog.append({"id": f"C{int(r['Class ID (int)'])}",
                                "title": r["Class Name (str)"].replace("-", " ").replace("_", " "),
                                "description": desc_path.read_text(encoding="utf-8", errors="replace").strip()
                                if desc_path.is_file() else None,
                                "images": [r["Iconic Image Path (str)"].lstrip("/")]})
        create_table(con, "catalog", offers_table(catalog))

        def photos(list_file: str, prefix: str, per_class: int | None) -> list[tuple[str, str, str]]:
            by_class: dict[int, list[str]] = {}
            for line in (folder / list_file).read_text(encoding="utf-8").splitlines():
                if line.strip():
                    path, cls, _ = (x.strip() for x in line.split(","))
                    by_class.setdefault(int(cls), []).append(path)
            out = []
            for cls, paths in sorted(by_class.items()):
                paths = sorted(paths)
                if per_class is not None and len(paths) > per_class:
                    paths = [paths[i] for i in sorted(set(np.linspace(0, len(paths) - 1, per_class).round()
                                                          .astype(int).tolist()))]
                out += [(p, f"C{cls}") for p in paths]
            return [(f"{prefix}{i}", p, c) for i, (p, c) in enumerate(out)]

        per_class = 3 if ctx.quick else ctx.grocery_per_class
        tr = photos("train.txt", "T", per_class)
        va = photos("val.txt", "V", None)
        for name, lst in (("photos_train", tr), ("photos_val", va)):
            create_table(con, name, offers_table([{"id": i, "title": None, "images": [p]} for i, p, _ in lst]))
        create_table(con, "grocery_pairs", pairs_table([(i, c, 1) for i, _, c in tr]))
        log(f"  catalog {len(catalog)} offers; {len(tr)} train photos (≤ {per_class} per class), {len(va)} val photos")
        idx_s = index_tables(con, ["catalog", "photos_train", "photos_val"])
        log(f"  indexing (embedding) {idx_s:.1f}s")
        truth = {i: {c} for i, _, c in va}
        va_rows, cat_rows = load_rows(con, "photos_val"), load_rows(con, "catalog")
        rows: list[Row] = []
        for label, cfg, spec in variants(ctx, {"image"}):
            train_s = None
            if spec is None:
                ranked = retrieve(va_rows, cat_rows, cfg, None)
            else:
                matcher, train_s, _ = train(con, ctx, part, label, ["photos_train", "catalog"], spec,
                                            pairs="grocery_pairs")
                if label == MAIN:
                    ranked, _ = sql_match(con, "photos_val", "catalog")
                else:
                    ranked = retrieve(va_rows, cat_rows, FusionConfig(), matcher)
            m = retrieval_metrics(ranked, truth)
            _log_retrieval(part, label, m)
            rows.append(retrieval_row(part, label, m, train_s, reference="accuracy@1 = R@1" if label == MAIN else ""))
            if label == MAIN:
                save_plots(ctx.plots, part, m["scores"], m["labels"], m["n_true"], matcher.decision.accept_threshold,
                           matcher.decision.review_threshold, "grocery val photos (trained)")
        for r in rows:
            r.extra["index_seconds"] = idx_s
        return rows
    finally:
        con.close()


# ------------------------------------------------------------------------------------------ laptops


def part_laptops(ctx: Ctx, part: str) -> list[Row]:
    """10 laptops, two shops, several photos each: zero-shot match_products, rank-1 hits out of 10."""
    folder = ctx.data / "laptops-10"
    con = open_db(ctx, part, matcher_name(part, MAIN), image_roots=[folder])
    try:
        for side in ("a", "b"):
            with open(folder / "names" / f"10_products_{side}.csv", encoding="utf-8") as fh:
                names = [r[1] for r in list(csv.reader(fh))[1:] if len(r) > 1]
            offers = []
            for i, title in enumerate(names):
                imgs = sorted(p.relative_to(folder).as_posix()
                              for p in (folder / "images").glob(f"{i + 1:02d}{side}_*.jpg"))
                offers.append({"id": f"{side}{i + 1:02d}", "title": title, "images": imgs})
            create_table(con, f"lap_{side}", offers_table(offers))
        idx_s = index_tables(con, ["lap_a", "lap_b"])
        log(f"  indexing (embedding) {idx_s:.1f}s")
        truth = {f"a{i:02d}": {f"b{i:02d}"} for i in range(1, 11)}
        a_rows, b_rows = load_rows(con, "lap_a"), load_rows(con, "lap_b")
        rows = []
        for label, cfg, spec in variants(ctx, {"text", "image"}):
            if spec is not None:
                continue  # zero-shot only: 10 pairs are too few to train on
            if label == "zero-shot fusion":
                ranked, _ = sql_match(con, "lap_a", "lap_b")
            else:
                ranked = retrieve(a_rows, b_rows, cfg, None)
            m = retrieval_metrics(ranked, truth)
            hits = sum(bool(ranked.get(s)) and ranked[s][0][0] in t for s, t in truth.items())
            _log_retrieval(part, label, m)
            rows.append(retrieval_row(part, label, m, reference=f"{hits}/10 at rank 1"))
            if label == "zero-shot fusion":
                save_plots(ctx.plots, part, m["scores"], m["labels"], m["n_true"], ZERO_SHOT.accept_threshold,
                           ZERO_SHOT.review_threshold, "laptops-10 (zero-shot match_products)")
        for r in rows:
            r.extra["index_seconds"] = idx_s
        return rows
    finally:
        con.close()


# --------------------------------------------------------------------------------------------- main

RUNNERS: dict[str, Callable[[Ctx, str], list[Row]]] = {
    "abt-buy-magellan": part_magellan, "amazon-google-magellan": part_magellan, "abt-buy-full": part_full,
    "amazon-google-full": part_full, "wdc-products": part_wdc, "grocery": part_grocery, "laptops-10": part_laptops}


def main(argv: list[str] | None = None) -> int:
    """Run the requested parts and print one table."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ",".join(PARTS))
    ap.add_argument("--quick", action="store_true",
                    help="no ablation (zero-shot fusion + trained fusion only), grocery 3 train photos per class")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="databases and indexes (default: a temporary folder, removed after)")
    ap.add_argument("--plots", type=str, default=str(DEFAULT_PLOTS), help="where PNG plots go ('' = none)")
    ap.add_argument("--home", default=None, help="pmatch home (default $PMATCH_HOME)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="train_matcher epochs (default: its own)")
    ap.add_argument("--grocery-per-class", type=int, default=10, help="train photos per class (evenly spaced)")
    ap.add_argument("--json", type=Path, default=None, help="also write all rows and details as JSON here")
    ap.add_argument("--dump-scores", type=Path, default=None,
                    help="pair parts: write each variant's valid/test scores here (DIR/PART/VARIANT/SPLIT.npz)")
    ap.add_argument("--variants", default="", help="comma-separated substrings (a comma followed by a space is part of a label; "
                         "'=label': exactly that label): run only variants whose label contains one "
                         "(e.g. 'cross-fit,gbdt' or '=trained, no pair model'); Splink rows are not filtered")
    ap.add_argument("--pair-max-len", type=int, default=None, help="pair scorer: word pieces per pair")
    ap.add_argument("--pair-epochs", type=int, default=None, help="pair scorer: fine-tuning epochs")
    ap.add_argument("--pair-freeze-layers", type=int, default=None, help="pair scorer: frozen lower layers")
    ap.add_argument("--pair-threads", type=int, default=None, help="pair scorer: torch threads while training")
    ap.add_argument("--pair-device", default=None, help="pair scorer: torch device (auto, cpu, cuda, cuda:N)")
    ap.add_argument("--pair-patience", type=int, default=None,
                    help="pair scorer: epochs without a validation gain before stopping (0: none)")
    ap.add_argument("--pair-lr", type=float, default=None, help="pair scorer: learning rate")
    ap.add_argument("--pair-max-train-pairs", type=int, default=None,
                    help="pair scorer: fine-tune on at most this many pairs (0: all; default: the recipe's, cpu 3000)")
    ap.add_argument("--pair-recipe", default="auto", choices=["auto", "cpu", "gpu"],
                    help="pair scorer: fine-tuning recipe (auto: gpu where torch sees a CUDA GPU); --pair-* override it")
    ap.add_argument("--pair-kind", default=None, choices=["cross", "siamese", "known"],
                    help="pair scorer: cross-encoder (default), siamese bi-encoder (its own training on the recipe) "
                         "or known (known products by stage 1's vectors, no transformer)")
    ap.add_argument("--no-pair-known-products", action="store_true",
                    help="without known products (the labelled training offers in the bundle; no known fallback)")
    ap.add_argument("--pair-hard-negatives", type=int, default=None,
                    help="pair scorer: mined hard negatives per labelled source (default: train_matcher's rule)")
    ap.add_argument("--pair-max-seconds", type=float, default=None,
                    help="pair scorer: stop fine-tuning after this many seconds (cost-only runs: the scorer's "
                         "speed does not depend on its weights)")
    ap.add_argument("--pair-top-m-extra", default="",
                    help="full-table parts: also match with the trained pair scorer re-reading each of these "
                         "comma-separated numbers of candidates per source (same matcher; default m is the bundle's)")
    ap.add_argument("--pair-base", default=None,
                    help="siamese pair scorer: a local model folder to fine-tune instead of MiniLM-L6 (with "
                         "--pair-kind siamese)")
    ap.add_argument("--text-model", default=None,
                    help="text encoder bundle to index and match with (default: minilm-l6-v2; e.g. one written by "
                         "`pmatch models export-text`)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"unknown part(s) {bad}; choose from {list(PARTS)}")
    tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="pmatch-bench-quality-")) if tmp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(data=args.data.resolve(), workdir=workdir, plots=Path(args.plots) if args.plots else None,  # Path("") is "."
              home=args.home, seed=args.seed, quick=args.quick, grocery_per_class=args.grocery_per_class,
              epochs=args.epochs, variants=[v.strip() for v in re.split(r",(?! )", args.variants) if v.strip()],
              pair={k: v for k, v in (("max_len", args.pair_max_len), ("epochs", args.pair_epochs),
                                      ("freeze_layers", args.pair_freeze_layers), ("threads", args.pair_threads),
                                      ("max_seconds", args.pair_max_seconds), ("device", args.pair_device),
                                      ("patience", args.pair_patience), ("lr", args.pair_lr),
                                      ("kind", args.pair_kind), ("base", args.pair_base),
                                      ("known_products", False if args.no_pair_known_products else None))
                    if v is not None})
    ctx.pair_max_train_pairs = args.pair_max_train_pairs
    ctx.pair_recipe = args.pair_recipe
    ctx.text_model = args.text_model
    ctx.pair_hard_negatives = args.pair_hard_negatives
    ctx.dump_scores = args.dump_scores
    try:
        ctx.pair_top_m_extra = [int(x) for x in args.pair_top_m_extra.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--pair-top-m-extra takes comma-separated integers, got {args.pair_top_m_extra!r}")
    if any(x < 0 for x in ctx.pair_top_m_extra):
        ap.error("--pair-top-m-extra values must be ≥ 0")
    if ctx.pair.get("patience") == 0:  # 0: every epoch runs
        ctx.pair["patience"] = None
    threads = duckdb.connect().execute("SELECT current_setting('threads')").fetchall()[0][0]
    head = (f"# {_dt.datetime.now().isoformat(timespec='seconds')}  python {platform.python_version()}  duckdb "
            f"{duckdb.__version__}  threads={threads}  cpus={len(os.sched_getaffinity(0))}  load avg "
            f"{os.getloadavg()[0]:.1f}  parts={','.join(parts)}{'  --quick' if args.quick else ''}"
            f"{'  --variants ' + args.variants if args.variants else ''}")
    print(head, flush=True)
    rows: list[Row] = []
    timings: dict[str, float] = {}
    try:
        for part in parts:
            log(f"== {part}")
            t0 = time.perf_counter()
            rows += RUNNERS[part](ctx, part)
            timings[part] = time.perf_counter() - t0
            log(f"== {part} done in {timings[part]:.0f}s")
    finally:
        if rows:
            print()
            print(fmt_table(HEADER, [_cells(r) for r in rows]))
            idx = {r.part.split(" ")[0]: r.extra.get("index_seconds") for r in rows}
            print()
            print("Indexing (embedding) wall seconds per part: " + ", ".join(
                f"{p} {s:.0f}" for p, s in idx.items() if s is not None) + "; part wall seconds: " +
                ", ".join(f"{p} {s:.0f}" for p, s in timings.items()))
        if args.json:
            args.json.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1, default=_json_default))
        if tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _json_default(o: object) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    raise SystemExit(main())
