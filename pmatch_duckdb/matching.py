"""Candidate generation and scoring: where a match decision is made.

For each source offer, candidates come from three channels, merged:
1. vectors: nearest neighbours of the fused offer vector (exact below ``ANN_MIN_ROWS`` rows, else the
   LanceDB IVF-RQ index, over-fetched (3k) and re-scored exactly from the fetched candidate rows);
2. lexical: char n-gram TF-IDF over brand + title (pruned, approximate top-k above ``APPROX_TOPK_MIN_ROWS``);
3. identifiers: exact shared model/part numbers (titles, ``mpn`` columns) or GTINs (titles, ``gtin`` columns).
Each candidate pair gets per-modality similarities, a fused ``score`` and a ``decision``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import threading
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .decision import SCORED_BY
from .errors import ConfigError
from .features.codes import gtin_evidence
from .features.lexical import CharTfidf, IdentifierIndex, LexicalWeights, normalize
from .fusion import FusionConfig, apply_gtin_evidence, decide, pair_score
from .matchers import Matcher, load_matcher
from .offer_vectors import (
    OfferVectors,
    _fsl,
    _matrix,
    code_columns,
    content_salt,
    embed_offers,
    fuse_vectors,
    identifier_lists,
    with_description_columns,
)
from .offers import Offer
from .pair_features import (
    FULL_TEXT_CHARS,
    MARGIN_FEATURES,
    PAIR_FEATURES,
    PairTexts,
    conflict_evidence,
    pair_features_at,
    source_margins,
)
from .pair_scorer import stacked_features, top_m_mask
from .runs import rank_in_runs
from .settings import Settings
from .store import ANN_MIN_ROWS, OfferIndex
from .token_diff import FEATURE as TOKEN_DIFF
from .token_diff import TokenDiffModel

ON_DISK_MIN_ROWS = ANN_MIN_ROWS  # from this many target rows the vectors stay on disk (fetched per candidate)
# IVF partitions the vector channel probes (None: this). 10 halves the search's CPU at 1M rows but changes ~0.4 % of
# the final top-10 pairs there (benchmarks/README.md, "Matching against 100k and 1M offers"): kept at 20
ANN_NPROBES = 20
SCORE_BATCH = 512  # source offers scored together against an on-disk target (bounds the fetched candidate rows)
# an on-disk view holds the text vectors (``text_vec``) in memory when they take at most this many bytes (1M rows of
# 384 floats: 1.5 GB): Lance ``take`` of a 384-float row costs 15-80 µs of CPU (a read per row), a quarter of the
# match at 1M rows, against 1 µs to copy it from memory (benchmarks/README.md, "Matching against 100k and 1M offers").
# $PMATCH_VIEW_TEXT_MAX_BYTES overrides it (0: never hold them), read when a view is built
TEXT_IN_MEMORY_MAX_BYTES = 2 << 30
# what scoring reads of a candidate row (OfferVectors.from_arrow); the other index columns are never fetched
SCORING_COLUMNS = ("id", "content_hash", "title", "brand", "lexical_text", "identifiers", "description",
                   "desc_identifiers", "price", "text_vec", "image_vec", "vector", "gtin", "mpn")
# what the zero-shot score reads of a candidate row (pair_signals + pair_score: vectors, identifiers, GTIN, price);
# the other scoring columns (descriptions, hashes) feed a trained matcher's decision features only
_ZERO_SHOT_COLUMNS = ("identifiers", "mpn", "gtin", "price", "text_vec", "image_vec")
# and, where the index's settings lower the score of titles that say two products (``zero_shot_score``), these
_CONFLICT_COLUMNS = ("title", "brand", "desc_identifiers")
_LOOKUP_COLUMNS = ("id", "lexical_text", "identifiers", "gtin", "mpn")  # what the candidate indexes are built from


def text_in_memory_max_bytes() -> int:
    """The text-vector budget of an on-disk view: ``$PMATCH_VIEW_TEXT_MAX_BYTES`` if set, else
    ``TEXT_IN_MEMORY_MAX_BYTES``."""
    raw = os.environ.get("PMATCH_VIEW_TEXT_MAX_BYTES")
    if raw is None or not raw.strip():
        return TEXT_IN_MEMORY_MAX_BYTES
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"PMATCH_VIEW_TEXT_MAX_BYTES must be a whole number of bytes >= 0 (0: keep the text vectors "
                          f"on disk), got {raw!r}")
    return value


class TargetView:
    """Everything matching needs from one version of an index, loaded once and cached.

    Below ``ON_DISK_MIN_ROWS`` rows the whole table is held in memory (``rows``, exact numpy search). From
    there on only what candidate generation needs is held — the ids, the Lance row ids, the char TF-IDF and
    the identifier/GTIN indexes; vector search runs in LanceDB (its ANN index) and returns Lance row ids,
    and the columns scoring reads are fetched for the candidate rows only (:meth:`candidates`).

    ``lexical``: the target's TF-IDF weighting alone (its idf, from document frequencies summed over shards),
    when the lexical candidates come from elsewhere (the Ray path's lexical shards): the view then holds no
    TF-IDF rows, ``candidate_pairs`` must be given the lexical candidates, and pair lexical scores are computed
    from the candidates' ``lexical_text`` with that idf (the same values as the fitted TF-IDF's).

    ``hold_text``: on disk, hold every row's text vector in memory (``text``) when they take at most
    :func:`text_in_memory_max_bytes`, instead of reading them per candidate row; None: unless ``lexical`` is given.
    """

    def __init__(self, index: OfferIndex, home: Path | None = None, on_disk: bool | None = None,
                 lexical: LexicalWeights | None = None, hold_text: bool | None = None) -> None:
        tbl = index.table()
        self.version = tbl.version
        self.index = index
        self.table = tbl
        self.fusion = index.fusion()
        ident = index.matcher_identity()
        self.matcher: Matcher | None = load_matcher(ident["name"], ident["version"], home) if ident else None
        self.n = tbl.count_rows()
        self.on_disk = self.n >= ON_DISK_MIN_ROWS if on_disk is None else on_disk
        has_ann = any("vector" in (ix.columns or []) for ix in tbl.list_indices())
        self.use_ann = has_ann and self.on_disk
        if not self.on_disk:
            self.dataset, self.row_ids, self.text = None, None, None
            self.data = tbl.to_arrow()
            self.rows: OfferVectors | None = OfferVectors.from_arrow(self.data)
            self.pos: dict[str, int] | None = {i: p for p, i in enumerate(self.rows.ids)}
            texts, idents, gtins = self.rows.lexical, self.rows.idents, self.rows.gtins
        else:
            self.dataset = tbl.to_lance()
            have = set(self.dataset.schema.names)
            wanted = [c for c in _LOOKUP_COLUMNS if c in have and (lexical is None or c != "lexical_text")]
            meta = with_description_columns(self.dataset.to_table(columns=wanted, with_row_id=True))
            self.data, self.rows, self.pos = None, None, None
            self._ids = meta["id"].combine_chunks()
            self._id_lookup: _IdLookup | None = None  # built on the first positions() call
            self.row_ids = meta["_rowid"].to_numpy().astype(np.int64)
            # the text vectors in memory where they fit (None: unless lexical= asks for a lean view, the Ray path's)
            hold = lexical is None if hold_text is None else hold_text
            self.text: tuple[np.ndarray, np.ndarray] | None = self._read_text_vectors(have) if hold else None
            self._rowid_order = None if np.all(np.diff(self.row_ids) > 0) else np.argsort(self.row_ids)
            texts = meta["lexical_text"].to_pylist() if lexical is None else None  # not read with lexical=
            idents = identifier_lists(meta["identifiers"].to_pylist(), meta["mpn"].to_pylist())
            gtins = meta["gtin"].to_pylist()
            del meta
        if lexical is None:
            self.tfidf: CharTfidf | LexicalWeights | _TextTfidf = CharTfidf(texts)
        elif lexical.n_docs != self.n:
            raise ValueError(f"TargetView: the lexical weights are of {lexical.n_docs} documents, the index has "
                             f"{self.n} rows (another version of the index?)")
        else:  # on disk the candidate views bind the rows' texts (candidates()); in memory they are here
            self.tfidf = lexical if self.rows is None else _TextTfidf(lexical, self.rows.lexical)
        del texts
        self.ident = IdentifierIndex(idents)
        self.gtin = IdentifierIndex([[g] if g else [] for g in gtins])

    @classmethod
    def from_vectors(cls, rows: OfferVectors, fusion: FusionConfig, matcher: Matcher | None = None) -> TargetView:
        """A view over offers held in memory (training and evaluation; exact search)."""
        view = cls.__new__(cls)
        view.version, view.index, view.table, view.data = -1, None, None, None
        view.dataset, view.row_ids, view.on_disk, view.text = None, None, False, None
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

    def target_ids(self, positions: np.ndarray) -> list[str]:
        """The ids of target rows (positions)."""
        if self.rows is not None:
            return [self.rows.ids[int(p)] for p in positions]
        return self._ids.take(pa.array(np.asarray(positions, dtype=np.int64))).to_pylist()

    def positions(self, ids: list[str]) -> np.ndarray:
        """Positions of target ids (int64; -1 where an id is not in the index; a repeated id: its first row)."""
        if self.pos is not None:
            return np.array([self.pos.get(i, -1) for i in ids], dtype=np.int64)
        if self._id_lookup is None:
            with _lookup_lock:  # built once, also when source batches run on threads (match)
                if self._id_lookup is None:
                    self._id_lookup = _IdLookup(self._ids)
        return self._id_lookup.positions(pa.array(ids, pa.string()))

    def row_table(self, positions: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """Index rows at ``positions`` (in that order); on disk, read with Lance ``take`` (those rows only)."""
        pos = np.asarray(positions, dtype=np.int64)
        if self.data is not None:
            t = self.data.take(pa.array(pos))
            return t if columns is None else t.select(columns)
        uniq, inv = np.unique(pos, return_inverse=True)
        cols = None if columns is None else [c for c in columns if c in self.dataset.schema.names]
        t = self.dataset.take(pa.array(uniq), columns=cols) if len(uniq) else self.dataset.schema.empty_table()
        t = t if cols is None else t.select(cols)
        return t if len(uniq) == len(pos) and np.array_equal(uniq, pos) else t.take(pa.array(inv))

    def candidates(self, t: np.ndarray) -> tuple[TargetView, np.ndarray]:
        """A view to score pairs with target positions ``t``: ``(view, positions in it)``.

        In memory: this view and ``t``. On disk: a view whose ``rows`` are the distinct targets of ``t``, read
        from the index now (the scoring columns only), and ``t`` as positions among them.
        """
        if self.rows is not None:
            return self, t
        uniq, inv = np.unique(t, return_inverse=True)
        view = copy.copy(self)
        names = self.dataset.schema.names
        if self.matcher is not None:
            cols = list(SCORING_COLUMNS)
        else:  # zero-shot: neither the offer vector (pair_signals derives its cosine) nor the descriptions are read
            cols = list(_ZERO_SHOT_COLUMNS) + ([] if isinstance(self.tfidf, CharTfidf) else ["lexical_text"])
            if self.fusion.conflict_penalty:
                cols += [c for c in _CONFLICT_COLUMNS if c in names]
        if self.text is not None:  # held in memory (_read_text_vectors)
            cols.remove("text_vec")
        if "n_images_ok" not in names or "image_vec" not in names:  # an index without the photo count
            tbl, image = self.row_table(uniq, cols), None
        else:  # image vectors only of the rows with a usable photo (image_vec is NULL where n_images_ok = 0)
            tbl = self.row_table(uniq, [c for c in cols if c != "image_vec"] + ["n_images_ok"])
            image = self._image_rows(uniq, tbl["n_images_ok"])
            tbl = tbl.drop_columns(["n_images_ok"])
        for c in SCORING_COLUMNS:  # columns not read: NULL (the zero-shot score never looks at them)
            if (c not in tbl.column_names and c != "vector" and (c != "image_vec" or image is None)
                    and (c != "text_vec" or self.text is None)):
                kind = (self.dataset.schema.field(c).type if c in names
                        else pa.list_(pa.string()) if c.endswith("identifiers") else pa.string())
                tbl = tbl.append_column(c, pa.nulls(len(tbl), kind))
        text = None if self.text is None else (self.text[0][uniq], self.text[1][uniq])
        view.rows = rows = OfferVectors.from_arrow(tbl, image=image, text=text)
        if isinstance(self.tfidf, CharTfidf):
            view.tfidf = _RowSubsetTfidf(self.tfidf, uniq)
        else:  # no TF-IDF rows held: weigh the candidates' own lexical text (the rows just read)
            view.tfidf = _TextTfidf(self.tfidf, rows.lexical)
        return view, inv.astype(np.int64)

    def _read_text_vectors(self, have: set[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """``(text matrix, validity)`` of every row, in the view's row order, when ``text_vec`` fits in
        ``TEXT_IN_MEMORY_MAX_BYTES`` (else None: :meth:`candidates` reads it per candidate row). Read batch by
        batch into one preallocated matrix, so loading never holds a second copy."""
        if "text_vec" not in have:
            return None
        dim = self.dataset.schema.field("text_vec").type.list_size
        if self.n * dim * 4 > text_in_memory_max_bytes():
            return None
        text = np.zeros((self.n, dim), dtype=np.float32)
        ok = np.zeros(self.n, dtype=bool)
        at = 0
        for batch in self.dataset.to_batches(columns=["text_vec"]):
            m, v = _matrix(batch.column(0))
            if at + len(m) > self.n:  # more rows than the view counted (another version?): read per candidate
                return None
            text[at:at + len(m)], ok[at:at + len(m)] = m, v
            at += len(m)
        if at != self.n:  # fewer rows than counted: as above
            return None
        return text, ok

    def _image_rows(self, uniq: np.ndarray, n_images_ok: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """``(image matrix, validity)`` of target rows ``uniq``: ``image_vec`` is read (Lance ``take``) for the
        rows with ``n_images_ok`` > 0 (or NULL) only; the others have no image vector (``embed_offers`` writes
        both columns together: a row's vector is valid only if one of its photos was embedded). Offers without
        photos cost one int32 read instead of a 1,280-float row of NULLs materialised as zeros."""
        dim = self.dataset.schema.field("image_vec").type.list_size
        image = np.zeros((len(uniq), dim), dtype=np.float32)
        ok = np.zeros(len(uniq), dtype=bool)
        with_photo = np.flatnonzero(n_images_ok.fill_null(1).to_numpy() > 0)
        if len(with_photo):
            m, v = _matrix(self.row_table(uniq[with_photo], ["image_vec"])["image_vec"])
            image[with_photo], ok[with_photo] = m, v
        return image, ok

    def _rowid_positions(self, rowids: np.ndarray) -> np.ndarray:
        """Lance row ids (as vector search returns them) → positions (numpy, no per-result Python)."""
        if self._rowid_order is None:
            return np.searchsorted(self.row_ids, rowids)
        return self._rowid_order[np.searchsorted(self.row_ids[self._rowid_order], rowids)]

    def vector_candidates(self, queries: np.ndarray, k: int, nprobes: int | None = None, refine: int | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by fused-vector cosine: ``(positions int64[n,k] (-1 = none), sims)``.

        With an ANN index the sims are its estimates unless ``refine`` (LanceDB's refine_factor: re-rank
        ``refine × k`` rows by their stored vectors). Off by default: matching computes the exact cosine of
        every candidate from the fetched rows, and on a 100k index (1,664-d) the unrefined top-31 held all of
        the refined top-10 at ~1/10 of the CPU (benchmarks/README.md, Pipeline speed).
        """
        n = len(queries)
        kk = min(k, self.n)
        idx = np.full((n, k), -1, dtype=np.int64)
        sim = np.zeros((n, k), dtype=np.float32)
        if kk == 0 or n == 0:
            return idx, sim
        if not self.on_disk:
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
        # one batched LanceDB query (its ANN index when there is one, else a flat scan read from disk);
        # results carry Lance row ids, mapped to positions with numpy
        nprobes = ANN_NPROBES if nprobes is None else nprobes
        res = _batched_search(self.table, np.ascontiguousarray(queries, dtype=np.float32), kk,
                              nprobes if self.use_ann else None, refine if self.use_ann else None)
        qi = res["query_index"].to_numpy() if "query_index" in res.column_names else np.zeros(len(res), np.int64)
        dist = res["_distance"].to_numpy()
        pos = self._rowid_positions(res["_rowid"].to_numpy().astype(np.int64))
        order = np.lexsort((pos, dist, qi))
        qi, dist, pos = qi[order], dist[order], pos[order]
        rank = rank_in_runs(qi)
        keep = rank < k
        idx[qi[keep], rank[keep]] = pos[keep]
        sim[qi[keep], rank[keep]] = 1.0 - dist[keep]
        return idx, sim

    def nbytes(self) -> dict[str, int]:
        """Bytes held by the view's arrays, per part (the regression test and the benchmark read this)."""
        out = {"tfidf": self.tfidf.nbytes(), "identifiers": self.ident.nbytes() + self.gtin.nbytes()}
        if self.rows is not None:
            out["rows"] = sum(v.nbytes for v in self.rows.__dict__.values() if isinstance(v, np.ndarray))
        else:
            out["ids"] = self._ids.nbytes + self.row_ids.nbytes
            if self.text is not None:
                out["text vectors"] = self.text[0].nbytes + self.text[1].nbytes
        return out


def _fixed_width_bytes(strings: pa.Array, width: int) -> np.ndarray:
    """UTF-8 strings as a numpy ``S{width}`` array (NUL-padded; a longer string is cut to ``width`` bytes)."""
    strings = pc.cast(strings, pa.large_string()) if not pa.types.is_large_string(strings.type) else strings
    strings = strings.fill_null("") if strings.null_count else strings
    n = len(strings)
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64, count=n + 1, offset=strings.offset * 8)
    data = np.frombuffer(strings.buffers()[2], dtype=np.uint8) if strings.buffers()[2] is not None else \
        np.zeros(0, np.uint8)
    lens = np.minimum(np.diff(offsets), width)
    out = np.zeros((n, max(width, 1)), dtype=np.uint8)
    rows = np.repeat(np.arange(n), lens)
    cols = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    out[rows, cols] = data[np.repeat(offsets[:-1], lens) + cols]
    return out.view(f"S{max(width, 1)}").ravel()


class _IdLookup:
    """Target ids → positions with a binary search over the sorted ids (fixed-width bytes, ~width × rows bytes),
    built once per view: ``pc.index_in`` hashed the whole id column again at every call (0.4 s CPU at 1M rows,
    paid per source batch). Exactly ``index_in``'s answer (first occurrence); ids that are not plain byte strings
    comparable this way (a NUL byte, or longer than ``MAX_WIDTH`` bytes) fall back to ``index_in``."""

    MAX_WIDTH = 64

    def __init__(self, ids: pa.Array) -> None:
        self.ids = ids
        lengths = pc.binary_length(ids).fill_null(0)
        self.width = int(pc.max(lengths).as_py() or 0) if len(ids) else 0
        data = ids.buffers()[2]
        has_nul = data is not None and bool((np.frombuffer(data, dtype=np.uint8) == 0).any())
        self.keys = None
        if self.width <= self.MAX_WIDTH and not has_nul and not ids.null_count:
            keys = _fixed_width_bytes(ids, self.width)
            self.order = np.argsort(keys, kind="stable")
            self.keys = keys[self.order]

    def _index_in(self, q: pa.Array) -> np.ndarray:
        """Arrow's hash lookup (the fallback): positions, -1 where absent."""
        at = pc.index_in(q, value_set=self.ids)
        return np.asarray(at.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)

    def positions(self, q: pa.Array) -> np.ndarray:
        if self.keys is None or q.null_count:
            return self._index_in(q)
        if not len(self.keys) or not len(q):
            return np.full(len(q), -1, dtype=np.int64)
        fits = np.asarray(pc.binary_length(q).to_numpy(zero_copy_only=False)) <= self.width
        qk = _fixed_width_bytes(q, self.width)
        at = np.minimum(np.searchsorted(self.keys, qk), len(self.keys) - 1)
        qd = q.buffers()[2]
        plain = qd is None or not (np.frombuffer(qd, dtype=np.uint8) == 0).any()
        if not plain:  # a NUL byte in a query id: the padded comparison cannot tell it apart
            return self._index_in(q)
        hit = fits & (self.keys[at] == qk)
        return np.where(hit, self.order[at], -1).astype(np.int64)


def _batched_search(table, queries: np.ndarray, limit: int, nprobes: int | None,  # noqa: ANN001 (LanceTable)
                    refine: int | None) -> pa.Table:
    """LanceDB's batched nearest-neighbour query (cosine; ``query_index``, ``_distance``, ``_rowid`` columns).

    Built on the table's async query API with each query vector handed over as an Arrow array: the synchronous
    ``table.search(matrix)`` turns the matrix into Python float lists (``ndarray.tolist``) and validates them
    with pydantic before Rust reads them back — ~0.3 ms CPU per query of 1,664 floats, ~20 % of the search at
    100k rows. The same query, the same rows (tests/test_target_view_scale.py compares the two). Falls back to
    ``table.search`` where the async table is not reachable (another LanceDB)."""
    inner = getattr(table, "_table", None)
    try:
        from lancedb.background_loop import LOOP
    except ImportError:  # pragma: no cover
        inner = None
    if inner is None or not hasattr(inner, "query"):
        q = table.search(queries, vector_column_name="vector").distance_type("cosine")
        if nprobes is not None:
            q = q.nprobes(nprobes)
            if refine:
                q = q.refine_factor(refine)
        return q.limit(limit).with_row_id(True).select(["_distance"]).to_arrow()
    flat = pa.array(queries.ravel())
    dim = queries.shape[1]
    vectors = [flat.slice(i * dim, dim) for i in range(len(queries))]

    async def run() -> pa.Table:
        q = inner.query().nearest_to(vectors if len(vectors) > 1 else vectors[0]).column("vector")
        q = q.distance_type("cosine")
        if nprobes is not None:
            q = q.nprobes(nprobes)
            if refine:
                q = q.refine_factor(refine)
        return await q.limit(limit).with_row_id().select(["_distance"]).to_arrow()

    return LOOP.run(run())


class _TextTfidf:
    """Pair lexical scores from the target rows' texts (``texts[j]`` is row ``j``'s ``lexical_text``), weighed with
    the target's idf on the fly: what the fitted TF-IDF gives, without holding its rows."""

    def __init__(self, weights: LexicalWeights, texts: list[str]) -> None:
        self.weights, self.texts = weights, texts

    def transform(self, texts: list[str]):  # noqa: ANN201 (scipy sparse)
        return self.weights.transform(texts)

    def pair_scores(self, texts: list[str], rows: np.ndarray) -> np.ndarray:
        return self.weights.pair_scores_texts(texts, [self.texts[int(r)] for r in rows])

    def nbytes(self) -> int:
        return self.weights.nbytes()


class _RowSubsetTfidf:
    """The target TF-IDF seen from a candidate view: its row ``j`` is the target's row ``rows[j]``."""

    def __init__(self, tfidf: CharTfidf, rows: np.ndarray) -> None:
        self.tfidf, self.rows = tfidf, rows

    def transform(self, texts: list[str]):  # noqa: ANN201 (scipy sparse)
        return self.tfidf.transform(texts)

    def pair_scores(self, texts: list[str], rows: np.ndarray) -> np.ndarray:
        return self.tfidf.pair_scores(texts, self.rows[rows])


_views: OrderedDict[tuple[str, int, str], TargetView] = OrderedDict()
_views_lock = threading.Lock()
_lookup_lock = threading.Lock()
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
    if reuse is not None and offers:
        pos = reuse.positions([o.id for o in offers])
        found = np.flatnonzero(pos >= 0)
        old_hashes = (reuse.row_table(pos[found], ["content_hash"])["content_hash"].to_pylist() if len(found) else [])
        reused = {int(i): int(pos[i]) for i, h in zip(found, old_hashes, strict=True) if h == hashes[i]}
    todo = [i for i in range(len(offers)) if i not in reused]
    parts = []
    if todo:
        parts.append(embed_offers([offers[i] for i in todo], settings, cfg, [hashes[i] for i in todo],
                                  progress=False, matcher=matcher))
    if reused:  # every row's offer vector is fused again below: the stored one (1,664 floats here) is not read
        names = reuse.dataset.schema.names if reuse.data is None else reuse.data.column_names
        parts = [p.drop_columns(["vector"]) if "vector" in p.column_names else p for p in parts]
        rows = np.array(list(reused.values()), dtype=np.int64)
        apart = {}  # vector columns not read with the others: (matrix, validity)
        if reuse.text is not None and "text_vec" in names:  # the view holds them (TargetView.text)
            apart["text_vec"] = reuse.text[0][rows], reuse.text[1][rows]
        photos = reuse.dataset is not None and {"n_images_ok", "image_vec"} <= set(names)
        old = reuse.row_table(rows, [c for c in names if c != "vector" and c not in apart
                                     and not (photos and c == "image_vec")])
        if photos:  # image vectors of the rows with a usable photo only (as TargetView.candidates reads them)
            apart["image_vec"] = reuse._image_rows(rows, old["n_images_ok"])
        for c, (m, ok) in apart.items():
            old = old.append_column(pa.field(c, reuse.dataset.schema.field(c).type), _fsl(m, ok))
        old = with_description_columns(old)
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
    scored_by: np.ndarray  # int8 index into decision.SCORED_BY: the model whose score this is
    #: stage 1's own score of each pair (``score_given`` only; ``score`` where the pair scorer did not re-read it):
    #: ``pmatch calibrate`` needs both models' scores of every reviewed pair
    stage1_score: np.ndarray | None = None


def lexical_width(k: int, exclude_self: bool = False, lexical_k: int | None = None) -> int:
    """How many lexical candidates per source ``candidate_pairs`` takes (what lexical shards must supply)."""
    return (lexical_k or max(2 * k, 20)) + (1 if exclude_self else 0)


def candidate_pairs(src: OfferVectors, view: TargetView, k: int, exclude_self: bool = False,
                    vector_k: int | None = None, lexical_k: int | None = None,
                    lexical: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Union of the three channels' candidates: (source positions, target positions), sorted, no duplicates.

    ``lexical``: the lexical channel's top-k computed elsewhere (target positions int64[n, w], -1 = none; the
    Ray path's merged shard lists), used instead of ``view.tfidf.top_k``; required when the view holds no
    TF-IDF rows (built with ``lexical=``)."""
    n = len(src.ids)
    vk = vector_k or max(3 * k, 30)
    extra = 1 if exclude_self else 0
    vidx, _ = view.vector_candidates(src.fused, vk + extra)
    if lexical is not None:
        lidx = np.asarray(lexical, dtype=np.int64).reshape(n, -1)
    elif isinstance(view.tfidf, CharTfidf):
        lidx, _ = view.tfidf.top_k(src.lexical, lexical_width(k, exclude_self, lexical_k))
    else:
        raise ValueError("candidate_pairs: this TargetView holds no TF-IDF rows (built with lexical=...); pass the "
                         "lexical candidates (lexical=)")
    i_s, i_t = view.ident.lookup_many(src.idents)
    g_s, g_t = view.gtin.lookup_many([[g] if g else [] for g in src.gtins])
    s = np.concatenate([np.repeat(np.arange(n, dtype=np.int64), vidx.shape[1]),
                        np.repeat(np.arange(n, dtype=np.int64), lidx.shape[1]), i_s, g_s])
    t = np.concatenate([vidx.ravel(), lidx.ravel(), i_t, g_t])
    # an offer with no text, no usable image and no lexical content has nothing to match on
    has_signal = src.text_ok | src.image_ok | np.array([bool(normalize(x)) for x in src.lexical], dtype=bool)
    keep = (t >= 0) & has_signal[s] if n else np.zeros(0, dtype=bool)
    if exclude_self:
        keep &= t != view.positions(src.ids)[s]
    width = max(view.n, 1)
    key = np.unique(s[keep] * width + t[keep])
    return key // width, key % width


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
    text = _pair_dots(src.text, tr.text, s, t, src.text_ok[s] & tr.text_ok[t])
    image = _pair_dots(src.image, tr.image, s, t, src.image_ok[s] & tr.image_ok[t])
    gtin = np.array(gtin_evidence([src.gtins[a] for a in s], [tr.gtins[b] for b in t]), dtype=np.int8)
    idm = _shared_token(src.idents, tr.idents, s, t) | (gtin > 0)
    ps, pt = src.price[s], tr.price[t]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where((ps > 0) & (pt > 0), np.minimum(ps, pt) / np.maximum(ps, pt), np.nan)
    if not len(s):
        fused = np.zeros(0, np.float32)
    elif tr.fused.shape[1] == 0:  # zero-shot rows read without their offer vector (TargetView.candidates)
        fused = _zero_shot_fused_cosine(src, tr, s, t, text, image, view.fusion)
    else:
        fused = _pair_dots(src.fused, tr.fused, s, t).astype(np.float32)
    return PairSignals(fused, text, image, lex, idm, ratio, ps, pt, gtin)


PAIR_CHUNK = 32_768  # pairs whose vectors are gathered at once (training scores ~10^6 pairs: 1,280-d image rows)


def _pair_dots(a: np.ndarray, b: np.ndarray, s: np.ndarray, t: np.ndarray, ok: np.ndarray | None = None) -> np.ndarray:
    """``a[s[i]] · b[t[i]]`` per pair (float64; NaN where ``ok`` is False), gathering rows in chunks: the
    vectorised one-shot gather copied every pair's rows (2 × pairs × dim floats — GBs for training's pairs) and
    paid it even where a side has no vector."""
    out = np.full(len(s), np.nan)
    idx = np.arange(len(s)) if ok is None else np.flatnonzero(ok)
    for c in range(0, len(idx), PAIR_CHUNK):
        j = idx[c:c + PAIR_CHUNK]
        out[j] = np.einsum("ij,ij->i", a[s[j]], b[t[j]])
    return out


def _shared_token(a: list[list[str]], b: list[list[str]], s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per pair: whether ``a[s[i]]`` and ``b[t[i]]`` share a token (numpy over token codes, no per-pair sets)."""
    if not len(s):
        return np.zeros(0, dtype=bool)
    vocab: dict[str, int] = {}
    codes_a = [[vocab.setdefault(x, len(vocab)) for x in dict.fromkeys(toks)] for toks in a]
    codes_b = [[vocab.setdefault(x, len(vocab)) for x in dict.fromkeys(toks)] for toks in b]

    def flat(codes: list[list[int]], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lens = np.array([len(c) for c in codes], dtype=np.int64)
        starts = np.r_[0, np.cumsum(lens)[:-1]]
        allc = np.array([x for c in codes for x in c], dtype=np.int64)
        n = lens[rows]
        pair = np.repeat(np.arange(len(rows)), n)
        at = np.repeat(starts[rows], n) + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        return pair, allc[at] if len(at) else np.zeros(0, np.int64)

    pa_, ca = flat(codes_a, s)
    pb, cb = flat(codes_b, t)
    width = max(len(vocab), 1)
    hit = np.isin(pa_ * width + ca, pb * width + cb)
    out = np.zeros(len(s), dtype=bool)
    out[pa_[hit]] = True
    return out


def _zero_shot_fused_cosine(src: OfferVectors, tr: OfferVectors, s: np.ndarray, t: np.ndarray, text: np.ndarray,
                            image: np.ndarray, cfg: FusionConfig) -> np.ndarray:
    """Cosine of the zero-shot offer vectors (``fuse``: normalised [w_t·text, w_i·image]) from the text and
    image cosines and the vectors' norms — what ``einsum`` of the fused rows gives, without building them."""
    def norm2(v: OfferVectors, rows: np.ndarray) -> np.ndarray:
        ut, ui = np.einsum("ij,ij->i", v.text, v.text) * v.text_ok, np.zeros(len(v.image_ok), np.float32)
        has = np.flatnonzero(v.image_ok)  # rows without an image vector add 0 (their zero rows are not read)
        ui[has] = np.einsum("ij,ij->i", v.image[has], v.image[has])
        return (cfg.text_weight ** 2 * ut + cfg.image_weight ** 2 * ui)[rows]

    num = (cfg.text_weight ** 2 * np.nan_to_num(text, nan=0.0) + cfg.image_weight ** 2 * np.nan_to_num(image, nan=0.0))
    den = np.sqrt(norm2(src, s) * norm2(tr, t))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, 0.0).astype(np.float32)


def decision_features(src: OfferVectors, view: TargetView, s: np.ndarray, t: np.ndarray,
                      sig: PairSignals, features: tuple[str, ...] | None = None,
                      full_text: np.ndarray | None = None, token_diff: TokenDiffModel | None = None) -> np.ndarray:
    """The decision model's input for the pairs (rank/gap are relative to each source's pairs).

    ``features``: the columns to return, in that order (a decision model's own list; default all of
    :data:`PAIR_FEATURES`). The title + description cosine is only computed when asked for, unless given
    (``full_text``: the pairs' :func:`_full_text_scores`, e.g. from rows computed once per offer).
    ``token_diff``: the decision model's word-difference model, needed when ``features`` names
    ``token_diff`` (a learnt feature: its score of the two titles). The :data:`MARGIN_FEATURES`, like
    rank/gap, compare each pair with the other pairs of its source passed in the same call.
    """
    tr = view.rows
    want = PAIR_FEATURES if features is None else tuple(features)
    unknown = [f for f in want if f not in PAIR_FEATURES and f not in MARGIN_FEATURES and f != TOKEN_DIFF]
    if unknown:
        raise ValueError(f"unknown pair features {unknown}; known: {', '.join(PAIR_FEATURES)}, "
                         f"{', '.join(MARGIN_FEATURES)}, {TOKEN_DIFF}")
    if TOKEN_DIFF in want and token_diff is None:
        raise ValueError(f"the {TOKEN_DIFF} feature needs the decision model's word-difference model")
    rank_f, gap = _rank_and_gap(s, sig.fused)
    need_full = "full_text" in want or "full_text_margin" in want
    full = full_text if full_text is not None or not need_full else _full_text_scores(src, view, s, t)
    us, s_at = np.unique(s, return_inverse=True)
    ut, t_at = np.unique(t, return_inverse=True)
    no_desc_s = np.array([not src.descriptions[i] for i in us.tolist()], dtype=bool)
    no_desc_t = np.array([not tr.descriptions[j] for j in ut.tolist()], dtype=bool)
    x = pair_features_at(
        PairTexts(src.idents, src.titles, src.brands, src.desc_idents),
        PairTexts(tr.idents, tr.titles, tr.brands, tr.desc_idents), s, t,
        sig.fused, sig.text, sig.image, sig.lexical, sig.src_price, sig.tgt_price, rank_f, gap,
        full_text=full, desc_missing=no_desc_s[s_at.ravel()] | no_desc_t[t_at.ravel()], gtin=sig.gtin)
    if features is None:
        return x
    out = np.empty((len(s), len(want)), dtype=x.dtype)
    for j, f in enumerate(want):
        if f == TOKEN_DIFF:
            out[:, j] = token_diff.score(src.titles, tr.titles, s, t)
        elif f in MARGIN_FEATURES:
            out[:, j] = source_margins(s, x[:, PAIR_FEATURES.index(MARGIN_FEATURES[f])])
        else:
            out[:, j] = x[:, PAIR_FEATURES.index(f)]
    return out


def full_text_input(title: str | None, description: str | None) -> str:
    """Brand-less title + the start of the description: what the ``full_text`` cosine compares."""
    return f"{title or ''} {(description or '')[:FULL_TEXT_CHARS]}".strip()


def full_text_rows(tfidf, titles: list[str | None], descriptions: list[str | None]):  # noqa: ANN001, ANN201
    """Char TF-IDF rows (``tfidf``: the target's lexical weighting) of offers' :func:`full_text_input`; what
    :func:`_full_text_scores` multiplies (training computes them once per offer and reuses them)."""
    return tfidf.transform([full_text_input(a, b) for a, b in zip(titles, descriptions, strict=True)])


def sparse_row_dots(qs, qt, s: np.ndarray, t: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """``qs[s[i]] · qt[t[i]]`` per pair (sparse rows), clipped to [0, 1]; the row gathers are made per chunk."""
    sims = np.zeros(len(s), dtype=np.float32)
    for c in range(0, len(s), 16384):  # bounded memory: the row-gathered sparse copies are made per chunk
        part = slice(c, c + 16384)
        sims[part] = np.asarray(qs[s[part]].multiply(qt[t[part]]).sum(axis=1)).ravel()
    return np.clip(sims, 0.0, 1.0)


def _full_text_scores(src: OfferVectors, view: TargetView, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Char TF-IDF cosine (idf of the target's lexical corpus) of title + description, per pair."""
    if not len(s):
        return np.zeros(0, np.float32)
    us, ut = np.unique(s, return_inverse=True), np.unique(t, return_inverse=True)
    qs = full_text_rows(view.tfidf, [src.titles[i] for i in us[0]], [src.descriptions[i] for i in us[0]])
    qt = full_text_rows(view.tfidf, [view.rows.titles[j] for j in ut[0]], [view.rows.descriptions[j] for j in ut[0]])
    return sparse_row_dots(qs, qt, us[1].ravel(), ut[1].ravel())


def match(src: OfferVectors, view: TargetView, k: int, exclude_self: bool = False,
          vector_k: int | None = None, lexical_k: int | None = None, pair_top_m: int | None = None,
          lexical: np.ndarray | None = None, threads: int = 1) -> Candidates:
    """Candidates from the three channels, scored and cut to the best ``k`` per source.

    ``pair_top_m``: pairs per source the matcher's pair scorer re-scores (None: the bundle's default).
    ``lexical``: the lexical candidates computed elsewhere (see :func:`candidate_pairs`).
    ``threads``: against an on-disk target, source batches of ``SCORE_BATCH`` scored on up to this many threads
    (LanceDB's search and take, numpy and scipy release the GIL); the result does not depend on it."""
    if view.on_disk and len(src.ids) > SCORE_BATCH:  # bounded memory: the candidates of one batch at a time
        def one(a: int) -> Candidates:
            return match(src.take(np.arange(a, min(a + SCORE_BATCH, len(src.ids)))), view, k, exclude_self,
                         vector_k, lexical_k, pair_top_m, None if lexical is None else lexical[a:a + SCORE_BATCH])

        starts = range(0, len(src.ids), SCORE_BATCH)
        if threads > 1:  # results in batch order
            slots = _batch_slots(threads)

            def slotted(a: int) -> Candidates:
                with slots:
                    return one(a)

            with ThreadPoolExecutor(min(threads, len(starts)), thread_name_prefix="pmatch-match") as pool:
                parts = list(pool.map(slotted, starts))
        else:
            parts = [one(a) for a in starts]
        return _concat_candidates(parts, SCORE_BATCH)
    s, t = candidate_pairs(src, view, k, exclude_self, vector_k, lexical_k, lexical)
    cview, tc = view.candidates(t)
    sig = pair_signals(src, cview, s, tc)
    score, second, stage1 = score_pairs_of(src, cview, s, tc, sig, pair_top_m)
    # keep k per source (the re-scored pairs first, see best_k), ranked by score
    keep = np.flatnonzero(best_k(s, score, second, k))
    order = keep[np.lexsort((-score[keep], s[keep]))]
    s, t, score, second, stage1 = s[order], t[order], score[order], second[order], stage1[order]
    rank = rank_in_runs(s) + 1 if len(s) else np.zeros(0, dtype=np.int64)
    gtin = sig.gtin[order] if sig.gtin is not None else None
    return Candidates(source=s, target=t, rank=rank, score=score, text_score=sig.text[order],
                      image_score=sig.image[order], lexical_score=sig.lexical[order], id_match=sig.id_match[order],
                      price_ratio=sig.price_ratio[order], decision=_decide(view, score, second, gtin, stage1),
                      scored_by=scored_by_codes(view, second))


def scored_by_codes(view: TargetView, second: np.ndarray) -> np.ndarray:
    """Per pair, which model's score it carries (an index into ``decision.SCORED_BY``): the zero-shot fusion, the
    trained matcher's first stage, or (``second``: re-read) its pair scorer's stacked model."""
    if view.matcher is None:
        return np.full(len(second), SCORED_BY.index("zero-shot"), dtype=np.int8)
    return np.where(second, SCORED_BY.index("pair_scorer"), SCORED_BY.index("stage1")).astype(np.int8)


def best_k(s: np.ndarray, score: np.ndarray, second: np.ndarray, k: int) -> np.ndarray:
    """True for the ``k`` pairs of each source that ``match`` returns: its pairs re-scored by the pair scorer
    (``second``: the ``m`` best by the first-stage score) come first, by their stacked score, then the rest by
    their first-stage score. So the pair scorer re-orders the candidates it read and never evicts one for an
    unread candidate: the two scores are different models' probabilities, and a re-read true match scored
    below candidates 11, 12, ... that kept their first-stage score used to fall out of the top k (Abt-Buy full
    tables: R@10 0.997 -> 0.977 at m = 10; benchmarks/README.md, "Pair scorer: re-order, never evict"). With
    ``m <= k`` the returned set is the first stage's top k; without re-scored pairs, the top k by score."""
    keep = np.zeros(len(s), dtype=bool)
    if len(s):
        order = np.lexsort((-score, ~second, s))
        keep[order[rank_in_runs(s[order]) < k]] = True
    return keep


_slots_by_threads: dict[int, threading.BoundedSemaphore] = {}


def _batch_slots(threads: int) -> threading.BoundedSemaphore:
    """One semaphore per thread count, shared by every ``match`` call in the process: DuckDB already calls
    ``_pm_match`` on several 2,048-row chunks at once (on its own threads), and each call's pool would add
    ``threads`` more; with the slots at most ``threads`` batches are scored (and their candidates held) at once
    — a lone call (a source of one chunk) still gets them all. Measured in benchmarks/README.md ("Third pass")."""
    with _lookup_lock:
        return _slots_by_threads.setdefault(threads, threading.BoundedSemaphore(threads))


def _concat_candidates(parts: list[Candidates], batch: int) -> Candidates:
    """Candidates of consecutive source batches of ``batch`` offers, as one (source positions offset)."""
    out = {}
    for f in dataclasses.fields(Candidates):
        vals = [getattr(c, f.name) for c in parts]
        if f.name == "source":
            vals = [v + i * batch for i, v in enumerate(vals)]
        if any(v is None for v in vals):  # an optional field (stage1_score: score_given's only) no batch has
            out[f.name] = None
            continue
        out[f.name] = sum(vals, []) if f.name == "decision" else np.concatenate(vals)
    return Candidates(**out)


def zero_shot_score(src: OfferVectors, view: TargetView, s: np.ndarray, t: np.ndarray, sig: PairSignals) -> np.ndarray:
    """The zero-shot score of (source, target) position pairs: ``fusion.pair_score`` with the target index's
    settings, lowered where the titles say two products (``conflict_evidence``; an index recorded before the
    penalty has ``conflict_penalty`` 0 and keeps its scores)."""
    cfg = view.fusion
    conflict = None
    if cfg.conflict_penalty and len(s):
        tr = view.rows
        conflict = conflict_evidence(PairTexts(src.idents, src.titles, src.brands, src.desc_idents),
                                     PairTexts(tr.idents, tr.titles, tr.brands, tr.desc_idents), s, t)
    return pair_score(sig.lexical, sig.text, sig.image, sig.id_match.astype(np.float64), cfg, sig.gtin, conflict)


def score_pairs_of(src: OfferVectors, view: TargetView, s: np.ndarray, t: np.ndarray, sig: PairSignals,
                   pair_top_m: int | None = None, rescore: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(score, second_stage, stage1)`` of (source, target) position pairs: the one scoring path of
    ``match_products`` and ``score_pairs``.

    Zero-shot: the fusion score. Trained: the matcher's calibrated decision model; with a pair scorer in
    the bundle, each source's ``pair_top_m`` best pairs (bundle default when None; 0 = off) plus the pairs
    marked in ``rescore`` are re-scored by the pair scorer + stacked decision model (``second_stage``
    marks them). ``stage1``: the first-stage score alone (after the GTIN rule; what the top ``m`` are chosen by and
    what :func:`_decide` reads for re-scored pairs; equal to ``score`` where nothing was re-scored). Rank/gap
    features are relative to the pairs of the same source passed in together.
    """
    second = np.zeros(len(s), dtype=bool)
    m, cfg = view.matcher, view.fusion
    if m is None:
        score = zero_shot_score(src, view, s, t, sig)
        return score, second, score
    dm = m.decision
    raw = dm.raw(decision_features(src, view, s, t, sig, dm.features, token_diff=dm.token_diff))

    def gtin_rule(x: np.ndarray) -> np.ndarray:
        """The zero-shot GTIN rule on the trained model's scale (its thresholds may be near 1), unless learnt."""
        if dm.gtin_learnt() or sig.gtin is None:
            return x
        floor = dm.accept_threshold if np.isfinite(dm.accept_threshold) else dm.review_threshold
        return apply_gtin_evidence(x, sig.gtin, max(cfg.gtin_match_score, floor),
                                   min(cfg.gtin_conflict_score, np.nextafter(dm.review_threshold, 0.0)))

    # the top m are chosen after the GTIN rule: an equal-GTIN pair is among the pairs match keeps for any k
    stage1 = score = gtin_rule(dm.calibrate(raw))
    if m.pair is not None and m.pair_decision is not None:
        second = top_m_mask(s, score, m.pair.top_m if pair_top_m is None else pair_top_m)
        if rescore is not None:
            second |= rescore
        if second.any():
            feats = m.pair.pair_features(src, view.rows, s[second], t[second])
            score = score.copy()
            score[second] = m.pair_decision.score(stacked_features(raw[second], feats))
            score = gtin_rule(score)
    return score, second, stage1


def _decide(view: TargetView, score: np.ndarray, second: np.ndarray | None = None,
            gtin: np.ndarray | None = None, stage1: np.ndarray | None = None) -> list[str]:
    """accept/review/reject, each pair by the thresholds of the model that scored it; unless the matcher
    learnt GTIN evidence, equal valid GTINs accept and different ones reject.

    A re-scored pair (``second``) that the first stage alone accepts (its score ``stage1``) stays accepted unless
    the stacked model rejects it: the first stage's accept threshold is certified on thousands of held-out
    pairs, the stacked model's only on the pair stage's few hundred, where a 0.99 lower bound is out of reach
    (it needs ≥ 268 matches above the threshold without an error; every stacked model measured so far has
    certified none), so without this rule a pair scorer in the bundle ended auto-accept altogether."""
    m = view.matcher
    if m is None:
        out = decide(score, view.fusion)
    else:
        out = m.decision.decide(score)
        if second is not None and second.any() and m.pair_decision is not None:
            kept = np.zeros(len(score), dtype=bool) if stage1 is None else stage1 >= m.decision.accept_threshold
            for i, d in zip(np.flatnonzero(second), m.pair_decision.decide(score[second]), strict=True):
                out[i] = "accept" if kept[i] and d != "reject" else d
    if (m is None or not m.decision.gtin_learnt()) and gtin is not None:
        out = [("accept" if g > 0 else "reject") if g else d for d, g in zip(out, gtin.tolist(), strict=True)]
    return out


def score_given(src: OfferVectors, view: TargetView, s: np.ndarray, t: np.ndarray, k: int = 10,
                exclude_self: bool = False, pair_top_m: int | None = None) -> Candidates:
    """Score exactly the given (source position, target position) pairs, as :func:`match` would.

    Each source's pair features (rank, gap to best) are computed over its ``match`` candidates plus
    its given pairs, so a given pair that ``match`` returns gets the same score. ``rank``: the pair's
    place in ``match``'s order: first the ``k`` pairs it would keep (:func:`best_k`: the pairs its pair scorer
    re-reads first), by score, then the others by score — so ``rank <= k`` says ``match`` would return it.
    Output: one entry per given pair, in the given order. With a pair scorer, every given pair is re-scored
    by it (``match`` re-scores only each source's top ``m``) and ONLY the given pairs (their scores are what is
    returned; re-reading each source's other top-``m`` candidates would only move ``rank`` and cost as much
    again). ``pair_top_m=0`` switches it off.
    """
    s = np.asarray(s, dtype=np.int64)
    t = np.asarray(t, dtype=np.int64)
    n_src = len(src.ids)
    cs, ct = candidate_pairs(src, view, k, exclude_self) if n_src else (np.zeros(0, np.int64),) * 2
    key_all = np.r_[s * view.n + t, cs * view.n + ct]
    uniq = np.unique(key_all)
    us, ut = uniq // max(view.n, 1), uniq % max(view.n, 1)
    cview, utc = view.candidates(ut)
    sig = pair_signals(src, cview, us, utc)
    given = np.zeros(len(uniq), dtype=bool)
    at = np.searchsorted(uniq, s * view.n + t)
    given[at] = True
    off = pair_top_m == 0
    score, second, stage1 = score_pairs_of(src, cview, us, utc, sig, 0, rescore=None if off else given)
    score = np.asarray(score, dtype=np.float64)
    head = np.zeros(len(us), dtype=bool)  # the pairs match re-reads: each source's top m by the first stage
    m = view.matcher
    if not off and m is not None and m.pair is not None and m.pair_decision is not None:
        head = top_m_mask(us, stage1, m.pair.top_m if pair_top_m is None else pair_top_m)
    order = np.lexsort((-score, ~best_k(us, score, head, k), us))
    rank = np.zeros(len(us), dtype=np.int64)
    if len(us):
        rank[order] = rank_in_runs(us[order]) + 1
    return Candidates(source=s, target=t, rank=rank[at], score=score[at], text_score=sig.text[at],
                      image_score=sig.image[at], lexical_score=sig.lexical[at], id_match=sig.id_match[at],
                      price_ratio=sig.price_ratio[at],
                      decision=_decide(view, score[at], second[at], sig.gtin[at] if sig.gtin is not None else None,
                                       stage1[at]),
                      scored_by=scored_by_codes(view, second[at]), stage1_score=np.asarray(stage1, np.float64)[at])


def match_offers(offers: list[Offer], view: TargetView, settings: Settings, k: int, exclude_self: bool = False,
                 reuse: TargetView | None = None, lexical: np.ndarray | None = None, threads: int = 1) -> Candidates:
    """Source offers → scored candidates against ``view``: the one matching code path, called by
    ``match_products`` (per DuckDB chunk; ``threads``: the connection's DuckDB threads) and by the Ray path (per
    source partition, one thread per task; ``lexical``: the candidates of its lexical shards, see
    :func:`candidate_pairs`)."""
    src = source_vectors(offers, settings, view.fusion, reuse=reuse, matcher=view.matcher)
    return match(src, view, k, exclude_self=exclude_self, pair_top_m=settings.pair_top_m, lexical=lexical,
                 threads=threads)


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
