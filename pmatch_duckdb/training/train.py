"""``pmatch train``: learn the projection and the decision model from labels in DuckDB tables.

Labels: a pairs table (``left_id``, ``right_id`` and optionally ``label`` 0/1), or a group column in
the offer tables (all offers of a group match). Inputs are the frozen per-modality vectors cached in
the offer indexes — the encoders never run per epoch.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from ..api import context_of, index_table
from ..bundles import write_manifest
from ..clusters import DisjointSet
from ..decision import train_decision
from ..errors import PmatchError
from ..evaluation import recall_at_k, summarize
from ..features.lexical import normalize
from ..features.offer_features import DEFAULT_SPEC, offer_features
from ..fusion import FusionConfig, pair_score
from ..matchers import activate as activate_version
from ..matchers import load_matcher, matcher_dir, next_version
from ..matching import (
    OfferVectors,
    TargetView,
    candidate_pairs,
    decision_features,
    full_text_rows,
    lexical_width,
    pair_signals,
    sparse_row_dots,
)
from ..offer_vectors import encoder_identity
from ..pair_features import MARGIN_FEATURES, PAIR_FEATURES
from ..sqlident import index_name_for, quote_ident, quote_qualified
from ..staging import new_staging_dir
from ..store import OfferIndex
from ..token_diff import FEATURE as TOKEN_DIFF
from ..token_diff import MIN_LABELS as TOKEN_DIFF_MIN_LABELS
from ..token_diff import fit_out_of_fold, pair_words
from .pair_model import PairOptions, too_few_matches
from .projection import export_projection_onnx, train_projection

#: the word-difference model is learnt only where at least this share of the training pairs have two titles
#: (store photos against a catalog have one: its "differences" would only be the catalog's words)
TITLED_PAIR_SHARE = 0.5


class TrainingError(PmatchError):
    """Labels or offers that cannot be trained on."""


@dataclass
class TrainResult:
    """Where the new matcher version lives and how it scored on validation data."""

    name: str
    version: str
    path: Path
    metrics: dict
    activated: bool
    seconds: float
    history: list[float] = field(default_factory=list)


def _load_offers(con, ctx, tables: list[str], progress: bool) -> tuple[OfferVectors, list[int]]:
    """The offers of all ``tables`` (index rows, concatenated) and the table number of each row. Ids need
    only be unique within a table: inside training an offer is (table number, id)."""
    parts, side = [], []
    for k, table in enumerate(tables):
        index_table(ctx, table, progress=progress)
        data = OfferIndex(ctx.index_root, index_name_for(table)).table().to_arrow()
        parts.append(data)
        side += [k] * len(data)
    data = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
    return OfferVectors.from_arrow(data), side


# A label names an offer by its id (a str), or by (table, id) when it says which table the id is in.
OfferRef = str | tuple[str, str]


class _OfferKeys:
    """Resolves the offers that labels name to row positions, offers being identified by (table, id).

    An id found in one table only is that table's offer. An id found in both tables (two tables both
    numbered 1..n) is the first table's offer on the left of a pair and the second table's on the right
    (``--offers feed --offers catalog``: ``left_id`` is a feed id, ``right_id`` a catalog id), unless the
    label names the table (``left_table`` / ``right_table`` columns)."""

    def __init__(self, ids: list[str], side: list[int], tables: list[str]) -> None:
        self.ids, self.side = ids, side
        self.pos = {(sd, i): p for p, (sd, i) in enumerate(zip(side, ids, strict=True))}
        self.sides: dict[str, list[int]] = {}
        for sd, i in self.pos:
            self.sides.setdefault(i, []).append(sd)
        self.names = {}
        for k, t in enumerate(tables):  # a label may name a table as given or by its unqualified name
            self.names.setdefault(t.lower(), k)
            self.names.setdefault(index_name_for(t), k)

    def resolve(self, ref: OfferRef, preferred_side: int) -> int | None:
        """Row position of the offer ``ref`` names (None: not among the offers trained on)."""
        if isinstance(ref, tuple):
            table, oid = ref
            sd = self.names.get(str(table).lower())
            if sd is None:
                try:
                    sd = self.names.get(index_name_for(str(table)))
                except PmatchError:
                    sd = None
            return None if sd is None else self.pos.get((sd, oid))
        sides = self.sides.get(ref)
        if not sides:
            return None
        return self.pos[(sides[0] if len(sides) == 1 else preferred_side, ref)]


def _label_columns(cur, table: str) -> set[str]:  # noqa: ANN001
    """The lower-cased column names of the labels table ``table``; a clear error where there is no such table."""
    from ..offers import OfferTableError, table_columns

    try:
        return set(table_columns(cur, table))
    except OfferTableError:  # (its message says "table or view"; this one says which table it was meant to be)
        raise TrainingError(f"labels table {table!r} not found in the database") from None


def _read_pairs(con, table: str) -> list[tuple[OfferRef, OfferRef, int]]:
    cur = con.cursor()
    try:
        cols = _label_columns(cur, table)
        if {"verdict", "source_id", "target_id"} <= cols:  # a pm_labels table: human verdicts (unsure ignored)
            from ..review.labels import labels_as_pairs

            return labels_as_pairs(cur, table)
        for c in ("left_id", "right_id"):
            if c not in cols:
                raise TrainingError(f"pairs table {table!r} needs columns left_id, right_id (and optionally label, "
                                    f"left_table, right_table); it has {sorted(cols)}")
        label = "CAST(label AS INTEGER)" if "label" in cols else "1"
        named = "left_table" in cols and "right_table" in cols
        tabs = ", CAST(left_table AS VARCHAR), CAST(right_table AS VARCHAR)" if named else ""
        rows = cur.execute(f"SELECT CAST(left_id AS VARCHAR), CAST(right_id AS VARCHAR), {label}{tabs} "
                           f"FROM {quote_qualified(table)}").fetchall()
    finally:
        cur.close()
    if named:  # a NULL table name: the id alone names the offer
        return [((ta, a) if ta is not None else a, (tb, b) if tb is not None else b, int(y))
                for a, b, y, ta, tb in rows if a is not None and b is not None and y is not None]
    return [(a, b, int(y)) for a, b, y in rows if a is not None and b is not None and y is not None]


def _group_pairs(con, tables: list[str], column: str) -> list[tuple[OfferRef, OfferRef, int]]:
    members: dict[str, list[OfferRef]] = {}
    cur = con.cursor()
    try:
        for t in tables:
            for oid, g in cur.execute(f"SELECT CAST(id AS VARCHAR), CAST({quote_ident(column)} AS VARCHAR) "
                                      f"FROM {quote_qualified(t)}").fetchall():
                if g is not None:
                    members.setdefault(g, []).append((t, oid) if len(tables) > 1 else oid)
    except duckdb.BinderException:
        raise TrainingError(f"group column {column!r} not found in {tables}") from None
    finally:
        cur.close()
    pairs = []
    for ms in members.values():
        for i in range(len(ms)):
            for j in range(i + 1, min(len(ms), i + 11)):  # at most 10 partners per offer
                pairs.append((ms[i], ms[j], 1))
    return pairs


def _stack_rows(parts: list[np.ndarray], extra_columns: int = 0) -> np.ndarray:
    """The rows of ``parts`` in one new matrix (with ``extra_columns`` unfilled columns at the end), releasing each
    part once it is copied (``parts`` is emptied). ``np.vstack`` holds every part and the whole result at once:
    at 50k training offers that moment (two folds' decision features, 0.22 GB each, and their stack) was
    training's memory peak; here the result's pages fill as the parts are freed."""
    if len(parts) == 1 and not extra_columns:
        return parts.pop()  # nothing to stack: no copy
    n = sum(len(p) for p in parts)
    out = np.empty((n, parts[0].shape[1] + extra_columns), dtype=np.result_type(*parts))
    at = 0
    while parts:
        part = parts.pop(0)
        out[at:at + len(part), :part.shape[1]] = part
        at += len(part)
    return out


def _components(n: int, pos: np.ndarray) -> np.ndarray:
    """Component label (smallest member) of each of ``n`` offers under the positive pairs."""
    ds = DisjointSet()
    for a, b in pos:
        ds.union(int(a), int(b))
    return np.array([ds.find(i) for i in range(n)])


def _index_pairs(pairs, keys: _OfferKeys, n_tables: int) -> tuple[np.ndarray, np.ndarray]:
    p, ng = [], []
    for a, b, y in pairs:
        i, j = keys.resolve(a, 0), keys.resolve(b, n_tables - 1)
        if i is not None and j is not None and i != j:
            (p if y else ng).append((i, j))
    return np.array(p, dtype=np.int64).reshape(-1, 2), np.array(ng, dtype=np.int64).reshape(-1, 2)


#: how train_matcher picks validation pairs without valid_pairs (see its docstring)
VALID_SPLITS = ("auto", "groups", "offers", "latest")


def _is_verdicts_table(con, table: str) -> bool:  # noqa: ANN001
    """Whether ``table`` holds review verdicts in ``pm_labels``' shape (their order: ``label_id``)."""
    cur = con.cursor()
    try:
        return {"verdict", "source_id", "target_id", "label_id"} <= _label_columns(cur, table)
    finally:
        cur.close()


def _new_offers_split(labels: list, keys: _OfferKeys, n_tables: int, fraction: float, by: str,
                      seed: int = 0) -> tuple[list, list]:
    """``labels`` → (training, validation) labels, validation holding every pair of some offers, so each validation
    pair has an offer that no training pair has — as a new offer at match time has — of a product labelled before
    (known) or not (new), in the mix the labels bring them.

    Each offer gets a time, a pair the later of its two offers' times, and the pairs of the latest times (about
    ``fraction`` of them) are held out. ``by="offers"``: an offer's time is a hash of its id and ``seed`` (a random
    sample of offers, whatever the labels' order); ``by="latest"``: its first label's position in ``labels`` (review
    verdicts, oldest first: the offers reviewed last). Linking two tables only source offers are held out (a
    target's time is -1): those are the new ones at match time, the targets an indexed catalog."""
    def hashed(o: int) -> int:
        return zlib.crc32(f"{seed}:offer:{keys.side[o]}:{keys.ids[o]}".encode())

    resolved = [(keys.resolve(a, 0), keys.resolve(b, n_tables - 1)) for a, b, _ in labels]
    time_of: dict[int | None, float] = {None: -1.0}  # an offer not trained on (its pair is dropped anyway)
    for n, pair in enumerate(resolved):
        for o in pair:
            if o not in time_of:
                # linking two tables, the sources are the new offers at match time (the targets: an indexed catalog)
                time_of[o] = -1.0 if n_tables == 2 and keys.side[o] == 1 else n if by == "latest" else hashed(o)
    times = np.array([max(time_of[i], time_of[j]) for i, j in resolved], dtype=np.float64)
    if not len(times):
        return labels, []
    cut = np.sort(times)[min(len(times) - 1, int(round((1 - fraction) * len(times))))]
    return ([lab for lab, t in zip(labels, times, strict=True) if t < cut],
            [lab for lab, t in zip(labels, times, strict=True) if t >= cut])


def train_matcher(con: duckdb.DuckDBPyConnection, offers: list[str] | str, pairs: str | None = None,
                  group_column: str | None = None, valid_pairs: str | None = None, name: str | None = None,
                  dim: int = 256, epochs: int | None = None, batch_size: int = 1024, seed: int = 0,
                  valid_fraction: float = 0.2, target_precision: float = 0.99, max_recall_loss: float = 0.02,
                  spec: dict | None = None, activate: bool = True, progress: bool = True,
                  decision_model: str = "logistic", cross_fit: bool = True, mine_negatives: int = 0,
                  pair_model: bool = True, pair_options: PairOptions | None = None, token_diff: bool = True,
                  source_margins: bool | None = None, valid_split: str = "auto",
                  log: Callable[[str], None] = print) -> TrainResult:
    """Train a matcher version (projection + decision model) and, by default, activate it.

    ``offers``: one table (dedup) or two (source, target); ids need only be unique within a table (both
    may number their rows 1..n). Labels from ``pairs`` (``left_id`` from the first table, ``right_id``
    from the second, unless ``left_table`` / ``right_table`` columns say otherwise; an id found in one
    table only is that table's) or ``group_column``. Validation: ``valid_pairs`` if given, else ``valid_fraction`` of the
    label groups (``valid_split="groups"``: never a pair across the split), or the pairs of some offers (about
    ``valid_fraction`` of the pairs; :func:`_new_offers_split`): ``"offers"`` a random sample of offers,
    ``"latest"`` the offers reviewed last (``pairs`` a ``pm_labels`` table). Their products may have been labelled
    before, as at match time, so the known-products stage can be judged. ``"auto"`` (default): ``offers`` for
    review verdicts (``pm_labels``) with enough matches for the pair stage (``pair_options.matches_needed()`` in
    the training split), else ``groups``. Deterministic for a seed.

    ``decision_model``: ``logistic``, ``gbdt`` (boosted trees; needs scikit-learn, the train extra) or
    ``auto`` (the better of the two by held-out average precision). ``cross_fit``: train the decision
    model on pair features from fold projections that did not see those pairs (3 projection fits instead
    of 1; see the comment in the code). ``mine_negatives``: per training anchor, this many of its best
    zero-shot candidates (vector, lexical and identifier channels) outside its label component join the
    projection's hard negatives (closed-world labels; the decision model still sees only its own pairs).
    ``pair_model``: also train the pair scorer (a cross-encoder re-reading each source's top candidates,
    stacked onto the decision model; ``training/pair_model.py``) where there are enough labelled matches
    (``pair_options.matches_needed()``: 400 for the cross-encoder and known products, 200 for the siamese kind),
    kept only where it beats stage 1 on held-out pairs; one that does not is
    replaced by the ``known`` kind (known products by stage 1's fused vectors, no transformer) where that does;
    ``pair_options`` holds its knobs. ``token_diff``: also learn the
    word-difference model (``token_diff.py``: which words one title has and the other lacks), a feature of
    the decision model, where each label fold has enough matches and non-matches. ``source_margins``: give
    the decision model the margin features (``pair_features.MARGIN_FEATURES``: how a pair's identifier and
    word agreement compare with the best of its source's other candidates), and featurise labelled pairs
    among their sources' match candidates (as ``score_pairs`` does). ``None`` (default): on when linking two
    tables, off for dedup of one table, where a source's other candidates include its other duplicates, so
    being beaten by one says little (measured: WDC Products, one table, 0.671 → 0.650 F1 with them on).
    """
    t0 = time.perf_counter()
    ctx = context_of(con)
    tables = [offers] if isinstance(offers, str) else list(offers)
    if not 1 <= len(tables) <= 2:
        raise TrainingError("train on one offer table (dedup) or two (source, target)")
    if (pairs is None) == (group_column is None):
        raise TrainingError("give exactly one of pairs=<table> or group_column=<column>")
    if valid_split not in VALID_SPLITS:
        raise TrainingError(f"valid_split must be one of {', '.join(map(repr, VALID_SPLITS))}, got {valid_split!r}")
    verdicts = bool(pairs) and not valid_pairs and _is_verdicts_table(con, pairs)
    if valid_split in ("offers", "latest") and valid_pairs:
        raise TrainingError(f"valid_split={valid_split!r} picks validation pairs out of the labels: give it or "
                            "valid_pairs, not both")
    if valid_split == "latest" and not verdicts:
        raise TrainingError("valid_split='latest' holds out the offers reviewed last: it needs pairs=<a table of "
                            "review verdicts> (pm_labels' columns, label_id giving their order)"
                            + (f"; {pairs!r} has no label_id / verdict column" if pairs else ""))
    if pair_model and pair_options is not None and pair_options.train.kind == "siamese":
        from .pair_base import PairBaseError, check_frozen_layers, read_pair_base

        try:  # before stage 1 trains: a wrong folder, or nothing left to fine-tune, fails now, not after minutes
            check_frozen_layers(read_pair_base(pair_options.train.base), pair_options.train.freeze_layers)
        except PairBaseError as e:
            raise TrainingError(str(e)) from None
    name = name or ctx.settings.matcher
    spec = {**DEFAULT_SPEC, **(spec or {})}
    rows, side = _load_offers(con, ctx, tables, progress)
    keys = _OfferKeys(rows.ids, side, tables)
    labels = _read_pairs(con, pairs) if pairs else _group_pairs(con, tables, group_column)
    pos, neg = _index_pairs(labels, keys, len(tables))
    if len(pos) < 10:
        raise TrainingError(f"only {len(pos)} positive pairs refer to offers in {tables}; need at least 10")
    valid_labels = None  # (labels: all of them, as the manifest's data hash covers them)
    # auto: review verdicts get new offers of known products in validation, so the pair stage's known products can
    # be judged, where that split leaves the pair stage the matches it needs; fewer (no pair stage) or other labels:
    # whole label groups, as before
    want = "offers" if valid_split == "auto" and verdicts and pair_model else valid_split
    if want in ("offers", "latest"):
        fit_labels, held = _new_offers_split(labels, keys, len(tables), valid_fraction, want, seed)
        fit_pos, fit_neg = _index_pairs(fit_labels, keys, len(tables))
        if valid_split != "auto" or len(fit_pos) >= (pair_options or PairOptions()).matches_needed():
            valid_split, valid_labels, pos, neg = want, held, fit_pos, fit_neg
            log(f"validation: the {len(valid_labels)} labelled pairs of "
                f"{'the offers reviewed last' if want == 'latest' else 'a random sample of offers'}, whose products "
                f"may also be in training (valid_split={want!r})")
    if valid_split == "auto":
        valid_split = "groups"
    comp = _components(len(rows.ids), pos)
    vpos_given = np.zeros((0, 2), dtype=np.int64)
    if valid_pairs or valid_labels is not None:
        vpos, vneg = _index_pairs(valid_labels if valid_labels is not None else _read_pairs(con, valid_pairs), keys,
                                  len(tables))
        tpos, tneg = pos, neg
        vpos_given = vpos
        comp = _components(len(rows.ids), np.vstack([pos, vpos]))  # one labelling for both splits
        valid_comp = set(comp[vpos[:, 0]].tolist()) if len(vpos) else set()
    else:
        in_valid = np.array([zlib.crc32(f"{seed}:{rows.ids[c]}".encode()) % 1000 < valid_fraction * 1000
                             for c in comp])
        tpos, vpos = pos[~in_valid[pos[:, 0]]], pos[in_valid[pos[:, 0]]]
        tneg = neg[~(in_valid[neg[:, 0]] | in_valid[neg[:, 1]])] if len(neg) else neg
        vneg = neg[in_valid[neg[:, 0]] | in_valid[neg[:, 1]]] if len(neg) else neg
        valid_comp = set(comp[in_valid].tolist())
    open_world = len(neg) > 0  # labelled negatives: judge only labelled pairs
    log(f"{len(rows.ids)} offers; train {len(tpos)} positive / {len(tneg)} negative pairs, "
        f"valid {len(vpos)} / {len(vneg)}; {'labelled pairs only' if open_world else 'closed world'}")

    x = offer_features(rows.text, rows.text_ok, rows.image, rows.image_ok, rows.price, rows.lexical, spec)
    steps_per_epoch = max(1, len(tpos) // batch_size)
    n_epochs = epochs or int(np.clip(300 // steps_per_epoch, 5, 200))  # about 300 optimiser steps
    # only the columns that are ever non-zero are trained (e.g. not the image block of text-only data);
    # keep just those (one copy, made once; chunked so no second full-size temporary is made)
    feature_dim = int(x.shape[1])
    live = np.flatnonzero(np.logical_or.reduce([(x[s:s + 8192] != 0).any(axis=0) for s in range(0, len(x), 8192)]
                                               + [np.zeros(feature_dim, bool)]))
    if len(live) < feature_dim:
        x = np.ascontiguousarray(x[:, live])

    def fit_projection(p: np.ndarray, ng: np.ndarray, label: str) -> tuple[np.ndarray, float, list[float]]:
        n_ep = n_epochs  # a fold has half the pairs: the same epochs are half the steps
        w_live, temp, hist = train_projection(
            x, p, comp, dim=dim, epochs=n_ep, batch_size=batch_size, seed=seed,
            hard_negatives=ng if len(ng) else None, threads=1,
            progress=(lambda e, loss: log(f"{label}: epoch {e + 1}/{n_ep} loss {loss:.4f}")
                      if progress and (e + 1) % max(1, n_ep // 5) == 0 else None))
        w_full = np.zeros((dim, feature_dim), dtype=np.float32)
        w_full[:, live] = w_live  # all-zero input columns get zero weights
        return w_full, temp, hist

    def project(w_: np.ndarray) -> OfferVectors:
        proj = x @ w_[:, live].T
        proj /= np.maximum(np.linalg.norm(proj, axis=1, keepdims=True), 1e-12)
        return dataclasses.replace(rows, fused=proj.astype(np.float32))

    tgt_mask = np.array([sd == (1 if len(tables) == 2 else 0) for sd in side])
    tgt_pos = np.flatnonzero(tgt_mask)
    # the target offers with their zero-shot vectors; lexical and identifier indexes built once, shared by
    # every projection's view (TargetView.with_fused)
    target_view = TargetView.from_vectors(rows.take(tgt_pos), FusionConfig())

    # hard negatives for the projection: labelled non-matches, plus (mine_negatives > 0) the best-scoring
    # zero-shot candidates of each training anchor that are not in its label component
    pneg = tneg
    if mine_negatives > 0:
        mined = _mine_negatives(rows, target_view, tgt_mask, comp, valid_comp, tpos, mine_negatives,
                                exclude_self=len(tables) == 1)
        pneg = np.vstack([tneg, mined]) if len(tneg) else mined
        log(f"mined {len(mined)} hard negatives from the zero-shot candidates ({mine_negatives} per anchor)")
    w, temperature, history = fit_projection(tpos, pneg, "projection")
    trained = project(w)

    # decision model data: candidate pairs (closed world) or the labelled pairs (open world)
    zero_shot = rows
    src_side = 0
    all_pos = np.vstack([pos, vpos_given]) if len(vpos_given) else pos
    truth_pairs = {(int(a), int(b)) for a, b in all_pos} | {(int(b), int(a)) for a, b in all_pos}

    last_pairs: dict[str, np.ndarray] = {}  # the (source, target) global positions of pair_data's last call
    # The lexical channel does not depend on the projection, but pair_data runs once per fold, for validation
    # and again for the pair stage: its top-k (every source against every target) is computed once, on first use.
    lexical_of: dict[str, np.ndarray] = {}

    def lexical_candidates(srcs: list[int]) -> np.ndarray:
        if "rows" not in lexical_of:
            everyone = np.array([i for i in range(len(rows.ids)) if side[i] == src_side], dtype=np.int64)
            width = lexical_width(10, exclude_self=len(tables) == 1)
            if len(tables) == 1:  # dedup: the sources are the target rows, in order (each pair multiplied once)
                top, _ = target_view.tfidf.self_top_k(width)
            else:
                top, _ = target_view.tfidf.top_k([rows.lexical[i] for i in everyone], width)
            lexical_of["rows"], lexical_of["at"] = top, np.full(len(rows.ids), -1, dtype=np.int64)
            lexical_of["at"][everyone] = np.arange(len(everyone))
        return lexical_of["rows"][lexical_of["at"][np.asarray(srcs, dtype=np.int64)]]

    # Nor does the title + description cosine: each offer's TF-IDF row (idf of the target corpus, as at match
    # time) is computed once, on first use, and every pass multiplies the rows of its pairs.
    full_text_of: dict[str, object] = {}

    def full_text_scores(src_global: np.ndarray, tgt_global: np.ndarray) -> np.ndarray:
        if "rows" not in full_text_of:
            full_text_of["rows"] = full_text_rows(target_view.tfidf, rows.titles, rows.descriptions)
        return sparse_row_dots(full_text_of["rows"], full_text_of["rows"], src_global, tgt_global)

    def pair_data(vectors: OfferVectors, split_pos: np.ndarray, split_neg: np.ndarray, split_comps: set[int] | None):
        view = target_view.with_fused(vectors.fused[tgt_pos])
        if open_world:
            lab = np.vstack([split_pos, split_neg]) if len(split_neg) else split_pos
            y = np.r_[np.ones(len(split_pos)), np.zeros(len(split_neg))]
            # orient pairs source → target
            src_idx = np.where(tgt_mask[lab[:, 0]] & ~tgt_mask[lab[:, 1]], lab[:, 1], lab[:, 0])
            tgt_idx = np.where(tgt_mask[lab[:, 0]] & ~tgt_mask[lab[:, 1]], lab[:, 0], lab[:, 1])
            t_local = np.array([view.pos[rows.ids[i]] for i in tgt_idx], dtype=np.int64)
            last_pairs.update(src=src_idx, tgt=tgt_idx)
            if source_margins:
                # as score_pairs scores them: each source's labelled pairs among its match candidates, so the
                # features relative to the source's other pairs (rank, gap, margins) see what they see there
                us, s_lab = np.unique(src_idx, return_inverse=True)
                src = vectors.take(us)
                cs, ct = candidate_pairs(src, view, 10, exclude_self=len(tables) == 1,
                                         lexical=lexical_candidates(us.tolist()))
                width = max(view.n, 1)
                key_lab = s_lab.ravel() * width + t_local
                uniq = np.unique(np.r_[key_lab, cs * width + ct])
                s_all, t_all = uniq // width, uniq % width
                at = np.searchsorted(uniq, key_lab)
                sig = pair_signals(src, view, s_all, t_all)
                full = full_text_scores(us[s_all], tgt_pos[t_all])
                return decision_features(src, view, s_all, t_all, sig, base_features, full_text=full)[at], y
            s_local = np.arange(len(src_idx))
            src = vectors.take(src_idx)
        else:
            srcs = [i for i in range(len(rows.ids)) if side[i] == src_side and comp[i] in split_comps] \
                if split_comps is not None else [i for i in range(len(rows.ids)) if side[i] == src_side]
            src = vectors.take(np.array(srcs, dtype=np.int64))
            s_local, t_local = candidate_pairs(src, view, 10, exclude_self=len(tables) == 1,
                                               lexical=lexical_candidates(srcs))
            y = np.array([(srcs[a], int(tgt_pos[b])) in truth_pairs for a, b in zip(s_local, t_local, strict=True)],
                         dtype=np.float64)
            last_pairs.update(src=np.asarray(srcs, dtype=np.int64)[s_local], tgt=tgt_pos[t_local])
        sig = pair_signals(src, view, s_local, t_local)
        full = full_text_scores(last_pairs["src"], last_pairs["tgt"])
        return decision_features(src, view, s_local, t_local, sig, base_features, full_text=full), y

    if source_margins is None:
        source_margins = len(tables) == 2
    base_features = (*PAIR_FEATURES, *MARGIN_FEATURES) if source_margins else PAIR_FEATURES
    train_comps = set(comp.tolist()) - valid_comp
    # Cross-fitting: the decision model must learn from pair features of offers the projection has NOT
    # been trained on (as at match time); in-sample fused cosines of training pairs are near-perfect and
    # taught it to trust the projection too much. Two folds by label component, a projection per fold
    # trained on the other fold; the final projection (all training pairs) serves validation and matching.
    fold = np.array([zlib.crc32(f"{seed}:fold:{rows.ids[c]}".encode()) % 2 for c in comp])
    use_folds = cross_fit and all((fold[tpos[:, 0]] == f).sum() >= 10 for f in (0, 1))
    tr_pairs: list[tuple[np.ndarray, np.ndarray]] = []  # (source, target) global positions of x_tr's rows
    if use_folds:
        parts_x, parts_y, parts_f = [], [], []
        for f in (0, 1):
            keep_pos = tpos[fold[tpos[:, 0]] != f]
            keep_neg = pneg[(fold[pneg[:, 0]] != f) & (fold[pneg[:, 1]] != f)] if len(pneg) else pneg
            w_f, _, _ = fit_projection(keep_pos, keep_neg, f"cross-fit projection {f + 1}/2")
            held_pos = tpos[fold[tpos[:, 0]] == f]
            held_neg = tneg[(fold[tneg[:, 0]] == f) | (fold[tneg[:, 1]] == f)] if len(tneg) else tneg
            xf, yf = pair_data(project(w_f), held_pos, held_neg,
                               None if open_world else {c for c in train_comps if fold[c] == f})
            tr_pairs.append((last_pairs["src"], last_pairs["tgt"]))
            parts_x.append(xf)
            parts_y.append(yf)
            parts_f.append(np.full(len(yf), f))
        del xf
        # a spare last column for the word-difference score, filled in place below (no copy to add it)
        x_tr = _stack_rows(parts_x, extra_columns=int(token_diff))
        y_tr, f_tr = np.concatenate(parts_y), np.concatenate(parts_f)
    else:
        xf, y_tr = pair_data(trained, tpos, tneg, None if open_world else train_comps)
        x_tr = _stack_rows([xf], extra_columns=int(token_diff))
        del xf
        tr_pairs.append((last_pairs["src"], last_pairs["tgt"]))
        f_tr = None
    # every projection is fitted: the offer feature matrix (0.28 GB at 50k offers) is not needed by the word
    # model and decision model that follow, where training peaks (fit_projection / project must not run after)
    x = None
    x_va, y_va = pair_data(trained, vpos, vneg, None if open_world else valid_comp)
    valid_pairs_pos = dict(last_pairs)
    if y_tr.sum() == 0 or y_va.sum() == 0:
        raise TrainingError("no positive pair among the decision model's training or validation candidates")
    features = base_features
    words = None

    def with_words(x_: np.ndarray, at: dict[str, np.ndarray]) -> np.ndarray:
        """``x_`` (decision features of the pairs at ``at``) + the word-difference model's column, if any."""
        if words is None:
            return x_
        return np.c_[x_, words.score(rows.titles, rows.titles, at["src"], at["tgt"]).astype(x_.dtype)]

    if token_diff:
        # the word-difference model: fitted on the training pairs; their own decision features get its
        # out-of-fold scores (folds by label component), validation and matching the full model's
        tr_src = np.concatenate([p[0] for p in tr_pairs])
        tr_tgt = np.concatenate([p[1] for p in tr_pairs])
        tw0 = time.perf_counter()
        titled = np.array([bool(normalize(t)) for t in rows.titles], dtype=bool)
        share = float(np.mean(titled[tr_src] & titled[tr_tgt])) if len(tr_src) else 0.0
        words, oof = (fit_out_of_fold(pair_words(rows.titles, rows.titles, tr_src, tr_tgt), y_tr, fold[tr_src], seed)
                      if share >= TITLED_PAIR_SHARE else (None, None))
        if share < TITLED_PAIR_SHARE:
            log(f"word-difference model skipped: {share:.0%} of the training pairs have a title on both sides "
                f"(needs {TITLED_PAIR_SHARE:.0%})")
        elif words is None:
            log(f"word-difference model skipped: fewer than {TOKEN_DIFF_MIN_LABELS} matches or non-matches "
                "in a fold of the training pairs")
        else:
            features = (*base_features, TOKEN_DIFF)
            x_tr[:, -1] = oof
            x_va = with_words(x_va, valid_pairs_pos)
            other, harmless = words.strongest()
            log(f"word-difference model: {len(words.weights)} weights from {len(y_tr)} training pairs "
                f"({time.perf_counter() - tw0:.1f}s); on one side only, these words most mean another product: "
                f"{', '.join(other) or '-'}; these least: {', '.join(harmless) or '-'}")
    if token_diff and words is None:  # the word model was skipped: drop its spare column
        x_tr = x_tr[:, :-1]
    decision = train_decision(x_tr, y_tr, x_va, y_va, target_precision, max_recall_loss, kind=decision_model,
                              folds=f_tr, seed=seed, features=features)
    decision.token_diff = words
    log(f"decision model ({decision.kind}{', cross-fitted' if use_folds else ''}): "
        f"accept ≥ {decision.accept_threshold:.4f}, review ≥ {decision.review_threshold:.4f}")
    n_matches = decision.info.get("validation_matches", int(y_va.sum()))
    if not np.isfinite(decision.accept_threshold):
        log(f"no score threshold certifies precision ≥ {target_precision} (95% Wilson lower bound) on "
            f"{n_matches} held-out matches (needs ≥ ~{int(np.ceil(2.7 * target_precision / (1 - target_precision)))} "
            "all-correct ones): nothing is auto-accepted; add labels or lower --target-precision")

    metrics = {"valid": summarize(decision.score(x_va), y_va, int(y_va.sum()), decision.decide(decision.score(x_va)))}
    if not open_world:
        metrics["valid"].update(_retrieval(trained, zero_shot, target_view, side, comp, valid_comp, tgt_pos,
                                               all_pos, len(tables)))
    metrics["epochs"] = n_epochs
    metrics["final_loss"] = history[-1] if history else None

    version = next_version(name, ctx.settings.home)
    final = matcher_dir(name, ctx.settings.home) / version
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_staging_dir(final.parent, f".{version}.")
    try:
        export_projection_onnx(w, tmp / "projection.onnx")
        pair_entry = None
        popts = pair_options or PairOptions.from_recipe()  # "auto": the gpu recipe where torch sees a GPU
        if pair_model and too_few_matches(popts, len(tpos)):
            log(too_few_matches(popts, len(tpos)))
        elif pair_model:
            from .pair_model import pair_stage

            # the training pairs as the decision model reads them at match time (the full word model's scores)
            xs, ys = pair_data(trained, tpos, tneg, None if open_world else train_comps)
            lp = dict(last_pairs)
            train_split = (with_words(xs, lp), ys, lp)

            pair_entry = pair_stage(
                tmp, popts, rows=trained, decision=decision, open_world=open_world,
                view=target_view.with_fused(trained.fused[tgt_pos]), tgt_pos=tgt_pos, comp=comp,
                truth_pairs=truth_pairs, exclude_self=len(tables) == 1,
                train_split=train_split,
                valid_split=(x_va, y_va, valid_pairs_pos), target_precision=target_precision,
                max_recall_loss=max_recall_loss, log=log,
                validation="pairs" if valid_pairs else "offers" if valid_labels is not None else "groups")
            if pair_entry is not None:
                # which kind the bundle keeps (the known kind may stand in for a transformer the gate dropped)
                metrics["valid_pair_model"] = {"kind": pair_entry["kind"],
                                               **({"instead_of": pair_entry["instead_of"]}
                                                  if "instead_of" in pair_entry else {}),
                                               **pair_entry["valid"]}
        (tmp / "decision.json").write_text(json.dumps(decision.to_dict(), indent=1))
        write_manifest(tmp, {
            "name": name, "version": version, "modality": "matcher", "dim": dim, "kind": "pmatch-matcher",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "encoders": encoder_identity(ctx.settings), "feature_spec": spec, "feature_dim": feature_dim,
            "temperature": temperature,
            "training": {"offers": tables, "pairs": pairs, "group_column": group_column, "valid_pairs": valid_pairs,
                         "valid_split": None if valid_pairs else valid_split,
                         "data_sha256": _data_hash(rows, labels), "positive_pairs": int(len(tpos)),
                         "negative_pairs": int(len(tneg)), "mined_negatives": int(len(pneg) - len(tneg)),
                         "seed": seed, "batch_size": batch_size,
                         "open_world": open_world, "cross_fit": bool(use_folds),
                         "decision_model": decision.kind,
                         "token_diff": None if words is None else {"weights": len(words.weights)},
                         "source_margins": bool(source_margins)},
            "thresholds": {"accept": decision.to_dict()["accept_threshold"], "review": decision.review_threshold},
            "metrics": metrics, "loss_history": history,
            **({"pair_model": pair_entry} if pair_entry else {}),
        })
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_matcher(name, version, ctx.settings.home)  # verifies the written bundle
    if activate:
        activate_version(name, version, ctx.settings.home)
    log(f"matcher {name} {version} saved in {final}{' and activated' if activate else ''}")
    return TrainResult(name, version, final, metrics, activate, round(time.perf_counter() - t0, 2), history)


def _mine_negatives(rows: OfferVectors, view: TargetView, tgt_mask: np.ndarray, comp: np.ndarray,
                    valid_comp: set[int], tpos: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """int[m, 2] (anchor, target) pairs: each training anchor's ``k`` best zero-shot candidates that are not
    in its label component (nor in a validation component). ``view``: the target offers (rows where
    ``tgt_mask``) with their zero-shot vectors."""
    tgt_pos = np.flatnonzero(tgt_mask)
    anchors = np.unique(np.where(tgt_mask[tpos[:, 0]] & ~tgt_mask[tpos[:, 1]], tpos[:, 1], tpos[:, 0]))
    cfg = FusionConfig()
    src = rows.take(anchors)
    s, t = candidate_pairs(src, view, k, exclude_self=exclude_self)
    if not len(s):
        return np.zeros((0, 2), dtype=np.int64)
    sig = pair_signals(src, view, s, t)
    score = pair_score(sig.lexical, sig.text, sig.image, sig.id_match.astype(np.float64), cfg, sig.gtin)
    a, b = anchors[s], tgt_pos[t]
    ok = (comp[a] != comp[b]) & ~np.isin(comp[b], list(valid_comp))
    a, b, score = a[ok], b[ok], score[ok]
    order = np.lexsort((-score, a))
    a, b = a[order], b[order]
    first = np.r_[True, a[1:] != a[:-1]]
    rank = np.arange(len(a)) - np.maximum.accumulate(np.where(first, np.arange(len(a)), 0))
    keep = rank < k
    return np.stack([a[keep], b[keep]], axis=1).astype(np.int64)


def _retrieval(trained: OfferVectors, zero_shot: OfferVectors, view: TargetView, side: list[int],
               comp: np.ndarray, valid_comp: set[int], tgt_pos: np.ndarray, labelled: np.ndarray,
               n_tables: int, k: int = 10) -> dict:
    """recall@k on validation sources, trained projection vs zero-shot fused vector (vector channel only).

    Linear in the sources and the labels: each source's top-k comes from the chunked exact search of
    ``view`` (the target offers; no sources × targets matrix is kept), and its true targets from the
    labelled pairs ``labelled`` (int[m, 2] offer positions; never a loop over all targets).
    """
    srcs = np.flatnonzero((np.asarray(side) == 0) & np.isin(comp, np.fromiter(valid_comp, np.int64)))
    is_target = np.zeros(len(side), dtype=bool)
    is_target[tgt_pos] = True
    truth: dict[str, set[str]] = {str(i): set() for i in srcs}
    for a, b in labelled.tolist():
        for s, t in ((a, b), (b, a)):
            if is_target[t] and str(s) in truth:
                truth[str(s)].add(str(t))
    extra = 1 if n_tables == 1 else 0  # dedup: the source itself is among the targets
    out = {}
    for label, v in (("trained", trained), ("zero_shot", zero_shot)):
        # columns that are zero in every offer add nothing to a cosine: the zero-shot vector of text-only offers
        # is 1,664-d with 1,280 image zeros (at 50k offers that search was 40 s of 47)
        live = np.flatnonzero(np.logical_or.reduce([(v.fused[a:a + 8192] != 0).any(axis=0)
                                                    for a in range(0, len(v.fused), 8192)]
                                                   + [np.zeros(v.fused.shape[1], bool)]))
        fused = v.fused if len(live) == v.fused.shape[1] else v.fused[:, live]
        top, _ = view.with_fused(fused[tgt_pos]).vector_candidates(np.ascontiguousarray(fused[srcs]), k + extra)
        ranked = {}
        for i, row in zip(srcs.tolist(), top.tolist(), strict=True):
            hits = [int(tgt_pos[j]) for j in row if j >= 0]
            ranked[str(i)] = [str(t) for t in hits if t != i][:k]
        for key, val in recall_at_k(ranked, truth).items():
            out[f"vector_{key}_{label}"] = val
    return out


def _data_hash(rows: OfferVectors, labels) -> str:
    h = hashlib.sha256()
    for oid, ch in sorted(zip(rows.ids, rows.hashes, strict=True)):
        h.update(f"{oid}\t{ch}\n".encode())
    for a, b, y in sorted(labels, key=lambda r: (str(r[0]), str(r[1]), r[2])):
        h.update(f"{a}\t{b}\t{y}\n".encode())
    return h.hexdigest()
