"""Candidate generation and scoring: where a match decision is made.

For each source offer, candidates come from three channels, merged:
1. vectors: nearest neighbours of the fused offer vector (exact below ``ANN_MIN_ROWS`` rows,
   LanceDB IVF-RQ index with refinement above);
2. lexical: char n-gram TF-IDF over brand + title;
3. identifiers: exact shared model/part numbers (titles, ``mpn`` columns) or GTINs (titles, ``gtin`` columns).
Each candidate pair gets per-modality similarities, a fused ``score`` and a ``decision``.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from .features.codes import gtin_evidence
from .features.lexical import CharTfidf, IdentifierIndex, normalize
from .fusion import FusionConfig, apply_gtin_evidence, decide, pair_score
from .matchers import Matcher, load_matcher
from .offer_vectors import (
    OfferVectors,
    code_columns,
    content_salt,
    embed_offers,
    fuse_vectors,
    with_description_columns,
)
from .offers import Offer
from .pair_features import FULL_TEXT_CHARS, PAIR_FEATURES, pair_feature_matrix
from .pair_scorer import stacked_features, top_m_mask
from .settings import Settings
from .store import ANN_MIN_ROWS, OfferIndex


class TargetView:
    """Everything matching needs from one version of an index, loaded once and cached."""

    def __init__(self, index: OfferIndex, home: Path | None = None) -> None:
        tbl = index.table()
        self.version = tbl.version
        self.index = index
        self.table = tbl
        self.fusion = index.fusion()
        ident = index.matcher_identity()
        self.matcher: Matcher | None = load_matcher(ident["name"], ident["version"], home) if ident else None
        data = tbl.to_arrow()
        self.data = data
        self.n = len(data)
        self.rows = OfferVectors.from_arrow(data)
        self.pos = {i: p for p, i in enumerate(self.rows.ids)}
        self.tfidf = CharTfidf(self.rows.lexical)
        self.ident = IdentifierIndex(self.rows.idents)
        self.gtin = IdentifierIndex([[g] if g else [] for g in self.rows.gtins])
        self.use_ann = any("vector" in (ix.columns or []) for ix in tbl.list_indices()) and self.n >= ANN_MIN_ROWS

    @classmethod
    def from_vectors(cls, rows: OfferVectors, fusion: FusionConfig, matcher: Matcher | None = None) -> TargetView:
        """A view over offers held in memory (training and evaluation; exact search)."""
        view = cls.__new__(cls)
        view.version, view.index, view.table, view.data = -1, None, None, None
        view.fusion, view.matcher, view.rows, view.n = fusion, matcher, rows, len(rows.ids)
        view.pos = {i: p for p, i in enumerate(rows.ids)}
        view.tfidf = CharTfidf(rows.lexical)
        view.ident = IdentifierIndex(rows.idents)
        view.gtin = IdentifierIndex([[g] if g else [] for g in rows.gtins])
        view.use_ann = False
        return view

    def with_fused(self, fused: np.ndarray) -> TargetView:
        """The same view with other offer vectors (another projection); the lexical and identifier
        indexes, which do not depend on the vectors, are shared rather than rebuilt."""
        view = copy.copy(self)
        view.rows = dataclasses.replace(self.rows, fused=fused)
        return view

    def vector_candidates(self, queries: np.ndarray, k: int, nprobes: int = 20, refine: int = 10
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by fused-vector cosine: ``(positions int64[n,k] (-1 = none), sims)``."""
        n = len(queries)
        kk = min(k, self.n)
        idx = np.full((n, k), -1, dtype=np.int64)
        sim = np.zeros((n, k), dtype=np.float32)
        if kk == 0 or n == 0:
            return idx, sim
        if not self.use_ann:
            # query chunks of ~4M scores (~64 MB with argpartition's temporaries), whatever the target size
            step = int(np.clip((1 << 22) // max(self.n, 1), 64, 1024))
            for s in range(0, n, step):
                d = queries[s:s + step] @ self.rows.fused.T
                part = np.argpartition(-d, kk - 1, axis=1)[:, :kk]
                sc = np.take_along_axis(d, part, axis=1)
                order = np.argsort(-sc, axis=1, kind="stable")
                idx[s:s + step, :kk] = np.take_along_axis(part, order, axis=1)
                sim[s:s + step, :kk] = np.take_along_axis(sc, order, axis=1)
            return idx, sim
        res = (self.table.search(queries, vector_column_name="vector").distance_type("cosine")
               .nprobes(nprobes).refine_factor(refine).limit(kk).select(["id", "_distance"]).to_arrow())
        qi = res["query_index"].to_numpy()
        ids = res["id"].to_pylist()
        dist = res["_distance"].to_numpy()
        fill = np.zeros(n, dtype=np.int64)
        for q, i, d in zip(qi, ids, dist, strict=True):
            if fill[q] < k:
                idx[q, fill[q]] = self.pos[i]
                sim[q, fill[q]] = 1.0 - d
                fill[q] += 1
        return idx, sim


_views: OrderedDict[tuple[str, int, str], TargetView] = OrderedDict()
_views_lock = threading.Lock()
_forgotten: deque[str] = deque()  # index roots whose views are to be dropped (see forget_views)


def forget_views(root: str) -> None:
    """Drop the cached views of every index under ``root`` (its connection is gone).

    Called from finalizers, which may run inside ``target_view`` on the same thread: so it only queues the
    root and drops what it can without waiting for the lock; the rest goes at the next ``target_view``.
    """
    _forgotten.append(root)
    if _views_lock.acquire(blocking=False):
        try:
            _drop_forgotten()
        finally:
            _views_lock.release()


def _drop_forgotten() -> None:
    """(with ``_views_lock`` held) remove the views under the queued roots."""
    while _forgotten:
        root = _forgotten.popleft()
        for key in [k for k in _views if k[0] == root or k[0].startswith(root.rstrip("/") + "/")]:
            del _views[key]


def target_view(index: OfferIndex, home: Path | None = None, max_cached: int = 4) -> TargetView:
    """Cached :class:`TargetView` for the index's current version."""
    tbl = index.table()
    key = (str(index.root / index.name), int(tbl.version), str(home))
    with _views_lock:
        _drop_forgotten()
        if key in _views:
            _views.move_to_end(key)
            return _views[key]
    view = TargetView(index, home)
    with _views_lock:
        _views[key] = view
        while len(_views) > max_cached:
            _views.popitem(last=False)
    return view


def source_vectors(offers: list[Offer], settings: Settings, cfg: FusionConfig,
                   reuse: TargetView | None = None, matcher: Matcher | None = None) -> OfferVectors:
    """Index rows for source offers: taken from an index where id and content hash match, else embedded.

    Offer vectors are recomputed with ``matcher`` (or the zero-shot fusion) from the per-modality
    vectors, so a reused index made with another matcher is still correct.
    """
    salt = content_salt(settings)
    hashes = [o.content_hash(salt) for o in offers]
    reused: dict[int, int] = {}  # source position -> row in reuse
    if reuse is not None:
        for i, (o, h) in enumerate(zip(offers, hashes, strict=True)):
            p = reuse.pos.get(o.id)
            if p is not None and reuse.rows.hashes[p] == h:
                reused[i] = p
    todo = [i for i in range(len(offers)) if i not in reused]
    parts = []
    if todo:
        parts.append(embed_offers([offers[i] for i in todo], settings, cfg, [hashes[i] for i in todo],
                                  progress=False, matcher=matcher))
    if reused:
        old = with_description_columns(reuse.data.take(list(reused.values())))
        parts.append(old.select(parts[0].column_names if parts else old.column_names))
    table = pa.concat_tables([p.cast(parts[0].schema) for p in parts])
    # rows are [todo..., reused...]; put them back in source order
    order = np.argsort(np.array(todo + list(reused), dtype=np.int64), kind="stable")
    table = table.take(order)
    for c, arr in code_columns(offers).items():  # the codes as they are now (a reused row may predate them)
        table = table.set_column(table.schema.get_field_index(c), c, arr)
    v = OfferVectors.from_arrow(table)
    if reused:
        v.fused = fuse_vectors(v.text, v.text_ok, v.image, v.image_ok, v.price, v.lexical, cfg, matcher)
    return v


@dataclass
class Candidates:
    """Scored candidate pairs for a batch of sources (flat arrays, one entry per pair)."""

    source: np.ndarray  # position in the source batch
    target: np.ndarray  # position in the target view
    rank: np.ndarray
    score: np.ndarray
    text_score: np.ndarray
    image_score: np.ndarray
    lexical_score: np.ndarray
    id_match: np.ndarray
    price_ratio: np.ndarray
    decision: list[str]


def candidate_pairs(src: OfferVectors, view: TargetView, k: int, exclude_self: bool = False,
                    vector_k: int | None = None, lexical_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Union of the three channels' candidates: (source positions, target positions)."""
    n = len(src.ids)
    vk = vector_k or max(3 * k, 30)
    lk = lexical_k or max(2 * k, 20)
    extra = 1 if exclude_self else 0
    vidx, _ = view.vector_candidates(src.fused, vk + extra)
    lidx, _ = view.tfidf.top_k(src.lexical, lk + extra)
    pairs_s: list[int] = []
    pairs_t: list[int] = []
    # an offer with no text, no usable image and no lexical content has nothing to match on
    has_signal = src.text_ok | src.image_ok | np.array([bool(normalize(x)) for x in src.lexical], dtype=bool)
    for i in range(n):
        if not has_signal[i]:
            continue
        cand = set(vidx[i][vidx[i] >= 0].tolist()) | set(lidx[i][lidx[i] >= 0].tolist())
        cand.update(view.ident.lookup(src.idents[i]))
        if src.gtins[i]:
            cand.update(view.gtin.lookup([src.gtins[i]]))
        if exclude_self:
            cand.discard(view.pos.get(src.ids[i], -1))
        pairs_s.extend([i] * len(cand))
        pairs_t.extend(sorted(cand))
    return np.asarray(pairs_s, dtype=np.int64), np.asarray(pairs_t, dtype=np.int64)


@dataclass
class PairSignals:
    """Per-pair similarities shared by the zero-shot score, the decision features and the output columns."""

    fused: np.ndarray
    text: np.ndarray  # NaN where a side lacks text
    image: np.ndarray  # NaN where a side lacks images
    lexical: np.ndarray
    id_match: np.ndarray
    price_ratio: np.ndarray
    src_price: np.ndarray
    tgt_price: np.ndarray
    gtin: np.ndarray | None = None  # 1 equal valid GTINs, -1 different, 0 a side has none


def pair_signals(src: OfferVectors, view: TargetView, s: np.ndarray, t: np.ndarray) -> PairSignals:
    """Similarities of the given (source, target) position pairs."""
    tr = view.rows
    lex = view.tfidf.pair_scores([src.lexical[i] for i in s], t) if len(s) else np.zeros(0, np.float32)
    text = np.where(src.text_ok[s] & tr.text_ok[t], np.einsum("ij,ij->i", src.text[s], tr.text[t]), np.nan)
    image = np.where(src.image_ok[s] & tr.image_ok[t], np.einsum("ij,ij->i", src.image[s], tr.image[t]), np.nan)
    gtin = np.array(gtin_evidence([src.gtins[a] for a in s], [tr.gtins[b] for b in t]), dtype=np.int8)
    idm = np.array([bool(set(src.idents[a]) & set(tr.idents[b])) for a, b in zip(s, t, strict=True)], dtype=bool)
    idm |= gtin > 0
    ps, pt = src.price[s], tr.price[t]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where((ps > 0) & (pt > 0), np.minimum(ps, pt) / np.maximum(ps, pt), np.nan)
    fused = np.einsum("ij,ij->i", src.fused[s], tr.fused[t]) if len(s) else np.zeros(0, np.float32)
    return PairSignals(fused, text, image, lex, idm, ratio, ps, pt, gtin)


def decision_features(src: OfferVectors, view: TargetView, s: np.ndarray, t: np.ndarray,
                      sig: PairSignals, features: tuple[str, ...] | None = None) -> np.ndarray:
    """The decision model's input for the pairs (rank/gap are relative to each source's pairs).

    ``features``: the columns to return, in that order (a decision model's own list; default all of
    :data:`PAIR_FEATURES`). The title + description cosine is only computed when asked for.
    """
    tr = view.rows
    want = PAIR_FEATURES if features is None else tuple(features)
    unknown = [f for f in want if f not in PAIR_FEATURES]
    if unknown:
        raise ValueError(f"unknown pair features {unknown}; known: {', '.join(PAIR_FEATURES)}")
    rank_f, gap = _rank_and_gap(s, sig.fused)
    full = _full_text_scores(src, view, s, t) if "full_text" in want else None
    desc_missing = np.array([not src.descriptions[i] or not tr.descriptions[j] for i, j in zip(s, t, strict=True)],
                            dtype=bool)
    x = pair_feature_matrix(
        sig.fused, sig.text, sig.image, sig.lexical, [src.idents[i] for i in s], [tr.idents[j] for j in t],
        [src.titles[i] for i in s], [tr.titles[j] for j in t], [src.brands[i] for i in s],
        [tr.brands[j] for j in t], sig.src_price, sig.tgt_price, rank_f, gap,
        src_desc_idents=[src.desc_idents[i] for i in s], tgt_desc_idents=[tr.desc_idents[j] for j in t],
        full_text=full, desc_missing=desc_missing, gtin=sig.gtin)
    if features is None:
        return x
    return x[:, [PAIR_FEATURES.index(f) for f in want]]


def full_text_input(title: str | None, description: str | None) -> str:
    """Brand-less title + the start of the description: what the ``full_text`` cosine compares."""
    return f"{title or ''} {(description or '')[:FULL_TEXT_CHARS]}".strip()


def _full_text_scores(src: OfferVectors, view: TargetView, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Char TF-IDF cosine (idf of the target's lexical corpus) of title + description, per pair."""
    if not len(s):
        return np.zeros(0, np.float32)
    us, ut = np.unique(s, return_inverse=True), np.unique(t, return_inverse=True)
    qs = view.tfidf.transform([full_text_input(src.titles[i], src.descriptions[i]) for i in us[0]])
    qt = view.tfidf.transform([full_text_input(view.rows.titles[j], view.rows.descriptions[j]) for j in ut[0]])
    sims = np.zeros(len(s), dtype=np.float32)
    for c in range(0, len(s), 16384):  # bounded memory: the row-gathered sparse copies are made per chunk
        part = slice(c, c + 16384)
        sims[part] = np.asarray(qs[us[1][part]].multiply(qt[ut[1][part]]).sum(axis=1)).ravel()
    return np.clip(sims, 0.0, 1.0)


def match(src: OfferVectors, view: TargetView, k: int, exclude_self: bool = False,
          vector_k: int | None = None, lexical_k: int | None = None, pair_top_m: int | None = None) -> Candidates:
    """Candidates from the three channels, scored and cut to the best ``k`` per source.

    ``pair_top_m``: pairs per source the matcher's pair scorer re-scores (None: the bundle's default)."""
    s, t = candidate_pairs(src, view, k, exclude_self, vector_k, lexical_k)
    sig = pair_signals(src, view, s, t)
    score, second = score_pairs_of(src, view, s, t, sig, pair_top_m)
    # keep the best k per source, ranked by score
    order = np.lexsort((-score, s))
    s, t, score, second = s[order], t[order], score[order], second[order]
    lex, text, image = sig.lexical[order], sig.text[order], sig.image[order]
    idm, ratio = sig.id_match[order], sig.price_ratio[order]
    rank = np.zeros(len(s), dtype=np.int64)
    if len(s):
        starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
        counts = np.diff(np.r_[starts, len(s)])
        rank = np.arange(len(s)) - np.repeat(starts, counts) + 1
    keep = rank <= k
    gtin = sig.gtin[order][keep] if sig.gtin is not None else None
    return Candidates(source=s[keep], target=t[keep], rank=rank[keep], score=score[keep],
                      text_score=text[keep], image_score=image[keep], lexical_score=lex[keep],
                      id_match=idm[keep], price_ratio=ratio[keep],
                      decision=_decide(view, score[keep], second[keep], gtin))


def score_pairs_of(src: OfferVectors, view: TargetView, s: np.ndarray, t: np.ndarray, sig: PairSignals,
                   pair_top_m: int | None = None, rescore: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(score, second_stage)`` of (source, target) position pairs: the one scoring path of
    ``match_products`` and ``score_pairs``.

    Zero-shot: the fusion score. Trained: the matcher's calibrated decision model; with a pair scorer in
    the bundle, each source's ``pair_top_m`` best pairs (bundle default when None; 0 = off) plus the pairs
    marked in ``rescore`` are re-scored by the cross-encoder + stacked decision model (``second_stage``
    marks them). Rank/gap features are relative to the pairs of the same source passed in together.
    """
    second = np.zeros(len(s), dtype=bool)
    m, cfg = view.matcher, view.fusion
    if m is None:
        return pair_score(sig.lexical, sig.text, sig.image, sig.id_match.astype(np.float64), cfg, sig.gtin), second
    dm = m.decision
    raw = dm.raw(decision_features(src, view, s, t, sig, dm.features))
    score = dm.calibrate(raw)
    if m.pair is not None and m.pair_decision is not None:
        second = top_m_mask(s, score, m.pair.top_m if pair_top_m is None else pair_top_m)
        if rescore is not None:
            second |= rescore
        if second.any():
            logits = m.pair.pair_logits(src, view.rows, s[second], t[second])
            score = score.copy()
            score[second] = m.pair_decision.score(stacked_features(raw[second], logits))
    if not dm.gtin_learnt() and sig.gtin is not None:  # the zero-shot GTIN rule on the trained model's scale (its thresholds may be near 1)
        floor = dm.accept_threshold if np.isfinite(dm.accept_threshold) else dm.review_threshold
        score = apply_gtin_evidence(score, sig.gtin, max(cfg.gtin_match_score, floor),
                                    min(cfg.gtin_conflict_score, np.nextafter(dm.review_threshold, 0.0)))
    return score, second


def _decide(view: TargetView, score: np.ndarray, second: np.ndarray | None = None,
            gtin: np.ndarray | None = None) -> list[str]:
    """accept/review/reject, each pair by the thresholds of the model that scored it; unless the matcher
    learnt GTIN evidence, equal valid GTINs accept and different ones reject."""
    m = view.matcher
    if m is None:
        out = decide(score, view.fusion)
    else:
        out = m.decision.decide(score)
        if second is not None and second.any() and m.pair_decision is not None:
            for i, d in zip(np.flatnonzero(second), m.pair_decision.decide(score[second]), strict=True):
                out[i] = d
    if (m is None or not m.decision.gtin_learnt()) and gtin is not None:
        out = [("accept" if g > 0 else "reject") if g else d for d, g in zip(out, gtin.tolist(), strict=True)]
    return out


def score_given(src: OfferVectors, view: TargetView, s: np.ndarray, t: np.ndarray, k: int = 10,
                exclude_self: bool = False, pair_top_m: int | None = None) -> Candidates:
    """Score exactly the given (source position, target position) pairs, as :func:`match` would.

    Each source's pair features (rank, gap to best) are computed over its ``match`` candidates plus
    its given pairs, so a given pair that ``match`` returns gets the same score. ``rank``: the pair's
    place among those by score. Output: one entry per given pair, in the given order. With a pair
    scorer, every given pair is re-scored by it (``match`` re-scores only each source's top ``m``).
    """
    s = np.asarray(s, dtype=np.int64)
    t = np.asarray(t, dtype=np.int64)
    n_src = len(src.ids)
    cs, ct = candidate_pairs(src, view, k, exclude_self) if n_src else (np.zeros(0, np.int64),) * 2
    key_all = np.r_[s * view.n + t, cs * view.n + ct]
    uniq = np.unique(key_all)
    us, ut = uniq // max(view.n, 1), uniq % max(view.n, 1)
    sig = pair_signals(src, view, us, ut)
    given = np.zeros(len(uniq), dtype=bool)
    at = np.searchsorted(uniq, s * view.n + t)
    given[at] = True
    score, second = score_pairs_of(src, view, us, ut, sig, pair_top_m, rescore=given)
    score = np.asarray(score, dtype=np.float64)
    order = np.lexsort((-score, us))
    rank = np.zeros(len(us), dtype=np.int64)
    if len(us):
        so = us[order]
        starts = np.r_[0, np.flatnonzero(np.diff(so)) + 1]
        counts = np.diff(np.r_[starts, len(so)])
        rank[order] = np.arange(len(so)) - np.repeat(starts, counts) + 1
    return Candidates(source=s, target=t, rank=rank[at], score=score[at], text_score=sig.text[at],
                      image_score=sig.image[at], lexical_score=sig.lexical[at], id_match=sig.id_match[at],
                      price_ratio=sig.price_ratio[at],
                      decision=_decide(view, score[at], second[at], sig.gtin[at] if sig.gtin is not None else None))


def match_offers(offers: list[Offer], view: TargetView, settings: Settings, k: int, exclude_self: bool = False,
                 reuse: TargetView | None = None) -> Candidates:
    """Source offers → scored candidates against ``view``: the one matching code path, called by
    ``match_products`` (per DuckDB chunk) and by the Ray path (per source partition)."""
    src = source_vectors(offers, settings, view.fusion, reuse=reuse, matcher=view.matcher)
    return match(src, view, k, exclude_self=exclude_self, pair_top_m=settings.pair_top_m)


def _rank_and_gap(src_pos: np.ndarray, fused: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: rank of the target among its source's candidates by fused cosine, and the gap to the best."""
    rank = np.ones(len(src_pos), dtype=np.float64)
    gap = np.zeros(len(src_pos), dtype=np.float32)
    if not len(src_pos):
        return rank, gap
    order = np.lexsort((-fused, src_pos))
    s_sorted = src_pos[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
    counts = np.diff(np.r_[starts, len(s_sorted)])
    rank[order] = np.arange(len(order)) - np.repeat(starts, counts) + 1
    best = np.repeat(fused[order][starts], counts)
    gap[order] = best - fused[order]
    return rank, gap
