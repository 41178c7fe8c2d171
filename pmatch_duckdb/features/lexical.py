"""Lexical matching: character n-gram TF-IDF and product-identifier tokens.

Product identifiers (model numbers, part numbers, GTIN/EAN) decide many matches that embeddings
miss: on Abt-Buy, char n-gram TF-IDF finds the true match at rank 1 far more often than a zero-shot
sentence embedding. Hashing uses crc32 (Python's ``hash()`` is salted per process).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib

import numpy as np
import scipy.sparse as sp

from ..runs import rank_in_runs

N_FEATURES = 1 << 20
PAIR_CHUNK = 16384  # pairs per sparse row-gather in pair scoring
NGRAMS = (2, 3, 4, 5)
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_ID_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[-/.][A-Za-z0-9]+)*")
# The same tokens, those without a digit (most words of a description) matched by the first branch and left out
# of the group: findall gives '' for them. The lookahead makes that branch end only where the token ends, so it
# fails on a token holding a digit, and the second branch (``_ID_TOKEN``) takes the whole token from the same
# start. Linear in the text (a lookahead scanning ahead for a digit would be quadratic in a long run of letters).
_DIGIT_ID_TOKEN = re.compile(r"[A-Za-z]+(?:[-/.][A-Za-z]+)*(?![-/.]?[A-Za-z0-9])|([A-Za-z0-9]+(?:[-/.][A-Za-z0-9]+)*)")


def normalize(text: str | None) -> str:
    """Lower-case, strip accents, keep letters and digits separated by single spaces."""
    if not text:
        return ""
    t = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return _NON_ALNUM.sub(" ", t).strip()


def identifiers(text: str | None) -> list[str]:
    """Identifier-like tokens (letters+digits, or ≥ 6 digits), separators removed, lower-cased.

    ``"Sony KDL-40V4100 40in"`` → ``["kdl40v4100"]``; GTIN ``"0027242755"`` is kept; plain words,
    sizes like ``"40in"`` and short numbers are not identifiers.
    """
    if not text:
        return []
    out = []
    # tokens are ASCII letters and digits (and separators, removed), and those findall gives have a digit:
    # ``isdigit`` on the whole token says whether it has a letter, without a Python loop per character
    for tok in _DIGIT_ID_TOKEN.findall(unicodedata.normalize("NFKC", text)):
        if not tok:  # a token without a digit
            continue
        t = tok.translate(_SEPARATORS).lower()
        if t.isdigit():
            if len(t) >= 6:
                out.append(t)
        elif len(t) >= 4 and len(t) - len(t.translate(_DIGITS)) >= 2 and not _is_measure(t):
            out.append(t)
    return list(dict.fromkeys(out))


_SEPARATORS = str.maketrans("", "", "-/.")
_DIGITS = str.maketrans("", "", "0123456789")
_MEASURE = re.compile(r"^\d+(?:in|inch|mm|cm|gb|tb|mb|mhz|ghz|hz|w|v|mp|x|k|lb|lbs|oz|ft|m|g|kg|ml|l|p|"
                      r"st|nd|rd|th|user|users|pk|pack|pc|pcs|yr|yrs|year|years|bit|cd|dvd)$")
_NOT_IDENTIFIER = re.compile(r"^(?:win|windows|x|r|v|ver|version)\d{1,2}$|^\d+(?:st|nd|rd|th)\d+(?:st|nd|rd|th)$")


def _is_measure(t: str) -> bool:
    return bool(_MEASURE.match(t) or _NOT_IDENTIFIER.match(t))


def _grams(text: str) -> list[int]:
    """Hashed n-grams of one text, one at a time (the reference :func:`_counts` vectorises)."""
    feats = []
    for word in normalize(text).split():
        w = f" {word} "
        for n in NGRAMS:
            if len(w) < n:
                continue
            for i in range(len(w) - n + 1):
                feats.append(zlib.crc32(w[i:i + n].encode()) & (N_FEATURES - 1))
    return feats


def _crc_table() -> np.ndarray:
    """zlib's CRC-32 lookup table (reflected polynomial 0xEDB88320)."""
    c = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        c = np.where(c & 1, np.uint32(0xEDB88320) ^ (c >> 1), c >> 1).astype(np.uint32)
    return c


_CRC = _crc_table()


def _counts(texts: list[str]) -> sp.csr_matrix:
    """Hashed n-gram counts (float32 data, int32 indices: 8 bytes per non-zero): what :func:`_grams` gives per
    text, hashed in numpy — ``zlib.crc32`` of every n-gram at once, table-driven over its bytes (the per-gram
    Python call was most of training's lexical time)."""
    words = [normalize(t).split() for t in texts]
    n_words = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(texts))
    flat = [f" {w} " for ws in words for w in ws]  # ASCII: normalize keeps a-z, 0-9 and spaces
    buf = np.frombuffer("".join(flat).encode("ascii"), dtype=np.uint8)
    size = np.fromiter((len(w) for w in flat), dtype=np.int64, count=len(flat))
    start = np.cumsum(size) - size
    doc = np.repeat(np.arange(len(texts), dtype=np.int32), n_words)
    rows, cols = [], []
    for n in NGRAMS:
        per = np.maximum(size - n + 1, 0)  # windows of this n in each padded word
        total = int(per.sum())
        at = np.repeat(start - np.cumsum(per) + per, per) + np.arange(total, dtype=np.int64)
        crc = np.full(total, 0xFFFFFFFF, dtype=np.uint32)
        for j in range(n):
            crc = _CRC[(crc ^ buf[at + j]) & 0xFF] ^ (crc >> 8)
        cols.append(((crc ^ np.uint32(0xFFFFFFFF)) & np.uint32(N_FEATURES - 1)).astype(np.int32))
        rows.append(np.repeat(doc, per))
    r, c = np.concatenate(rows), np.concatenate(cols)
    m = sp.csr_matrix((np.ones(len(c), dtype=np.float32), (r, c)), shape=(len(texts), N_FEATURES))
    m.sum_duplicates()
    if m.indices.dtype != np.int32:  # as the per-text build made them (8 bytes per non-zero)
        m.indices, m.indptr = m.indices.astype(np.int32), m.indptr.astype(np.int32)
    return m


FIT_CHUNK = 50_000  # corpus rows tokenised at a time (the Python gram lists of one chunk only)
# From this many corpus rows top_k is approximate, as the vector channel is (ANN) from the same size: the n-grams
# of a text found in more than PRUNE_DF rows (plus all but its PRUNE_KEEP rarest) do not select candidates, the
# best POOL rows by the remaining n-grams are re-scored exactly, the top k of those returned. Measured against the
# exact channel in benchmarks/README.md (Pipeline speed); the char 2-grams otherwise touch most of the corpus.
APPROX_TOPK_MIN_ROWS = 100_000
PRUNE_DF = 5_000  # candidate-union recall unchanged at 100k and 1M (bench_match_recall.py)
PRUNE_KEEP = 4
POOL = 100
DENSE_TOPK_CELLS = 1 << 24  # dense top_k: at most this many scores per query chunk (64 MB)


def document_frequencies(texts: list[str]) -> np.ndarray:
    """Document frequency of every hashed n-gram over ``texts`` (int64[``N_FEATURES``]), chunk by chunk.

    Additive: the df of a corpus is the sum of the df of its shards, so the idf of a target split across
    machines is computed without any of them holding the whole target (see :class:`CharTfidf`'s ``df``).
    """
    df = np.zeros(N_FEATURES, dtype=np.int64)
    for s in range(0, len(texts), FIT_CHUNK):
        df += np.bincount(_counts(texts[s:s + FIT_CHUNK]).indices, minlength=N_FEATURES)
    return df


class LexicalWeights:
    """The TF-IDF weighting alone (sublinear tf, smoothed idf, L2 rows): the idf of a corpus, no corpus rows.

    Built from document frequencies (``df``: int[``N_FEATURES``], summed over shards if need be) and the corpus
    size ``n_docs``; 8 MB whatever the corpus size. ``transform`` gives exactly the rows a :class:`CharTfidf`
    fitted on the whole corpus holds, so :meth:`pair_scores_texts` (both texts weighed on the fly) equals
    ``CharTfidf.pair_scores`` (the target row read from the fitted matrix).
    """

    def __init__(self, df: np.ndarray, n_docs: int) -> None:
        df = np.asarray(df)
        if df.shape != (N_FEATURES,):
            raise ValueError(f"LexicalWeights: df must have {N_FEATURES} entries, got shape {df.shape}")
        n = max(1, int(n_docs))
        self.idf = np.log((1.0 + n) / (1.0 + df.astype(np.int64))).astype(np.float32) + 1.0
        self.df = df.astype(np.int32)
        self.n_docs = int(n_docs)

    def _weigh(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        m = counts.copy()
        m.data = ((1.0 + np.log(m.data)) * self.idf[m.indices]).astype(np.float32)
        per_row = np.diff(m.indptr)
        norms = np.sqrt(np.bincount(np.repeat(np.arange(m.shape[0]), per_row), weights=m.data.astype(np.float64) ** 2,
                                    minlength=m.shape[0]))
        norms[norms == 0] = 1.0
        m.data /= np.repeat(norms.astype(np.float32), per_row)
        return m

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        """TF-IDF rows of new texts, with the corpus idf."""
        return self._weigh(_counts(texts))

    def _pair_dot(self, texts: list[str], rows_of: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
        """Cosine between each text and row ``rows[i]`` of ``rows_of`` (weighted rows); each distinct text is
        tokenised once. The one pair-scoring computation of both forms."""
        uniq = list(dict.fromkeys(texts))
        pos = {t: i for i, t in enumerate(uniq)}
        q_uniq = self.transform(uniq)
        which = np.array([pos[t] for t in texts], dtype=np.int64)
        sims = np.zeros(len(texts), dtype=np.float32)
        for s in range(0, len(texts), PAIR_CHUNK):  # bounded memory: row-gathered sparse copies per chunk
            q = q_uniq[which[s:s + PAIR_CHUNK]]
            sims[s:s + PAIR_CHUNK] = np.asarray(q.multiply(rows_of[rows[s:s + PAIR_CHUNK]]).sum(axis=1)).ravel()
        return np.clip(sims, 0.0, 1.0)  # float32 rounding can exceed 1

    def pair_scores_texts(self, texts: list[str], others: list[str]) -> np.ndarray:
        """Cosine between ``texts[i]`` and ``others[i]`` (each weighed with this idf; each distinct one once):
        what ``CharTfidf.pair_scores`` gives when ``others[i]`` is the corpus row it is given."""
        if len(texts) != len(others):
            raise ValueError(f"pair_scores_texts: {len(texts)} texts but {len(others)} others")
        uniq = list(dict.fromkeys(others))
        pos = {t: i for i, t in enumerate(uniq)}
        return self._pair_dot(texts, self.transform(uniq), np.array([pos[t] for t in others], dtype=np.int64))

    def nbytes(self) -> int:
        """Bytes of the arrays held (idf and df)."""
        return self.idf.nbytes + self.df.nbytes


class CharTfidf(LexicalWeights):
    """Hashed char n-gram TF-IDF (sublinear tf, smoothed idf, L2 rows) fitted on the target corpus.

    Held: ``matrix_t`` (features × rows, the inverted index ``top_k`` searches) and, with ``keep_rows``,
    ``matrix`` (rows × features, what ``pair_scores`` gathers); float32 values and int32 indices, built chunk
    by chunk (the inverted index is filled in place from the per-chunk rows, never transposed as a whole).

    A shard: ``df`` and ``n_docs`` of the whole corpus given (:func:`document_frequencies` summed over the
    shards), ``corpus`` the shard's texts; its rows are then exactly the whole corpus model's rows, and the
    per-shard ``top_k`` lists merged with :func:`merge_top_k` are the whole model's (exact below
    ``APPROX_TOPK_MIN_ROWS`` rows per shard; the pruning uses the whole corpus's df).
    """

    def __init__(self, corpus: list[str], keep_rows: bool = True, df: np.ndarray | None = None,
                 n_docs: int | None = None) -> None:
        if (df is None) != (n_docs is None):
            raise ValueError("CharTfidf: give both df and n_docs (the whole corpus's), or neither")
        parts = [_counts(corpus[s:s + FIT_CHUNK]) for s in range(0, len(corpus), FIT_CHUNK)]
        local_df = np.zeros(N_FEATURES, dtype=np.int64)  # the postings per n-gram of these rows
        for c in parts:
            local_df += np.bincount(c.indices, minlength=N_FEATURES)
        if df is None:
            super().__init__(local_df, len(corpus))
        else:
            if int(n_docs) < len(corpus) or np.any(np.asarray(df) < local_df):
                raise ValueError("CharTfidf: df/n_docs must cover the shard (the whole corpus's, summed over shards)")
            super().__init__(df, n_docs)
        df = local_df
        nnz = int(df.sum())
        idx_t = np.int32 if nnz < 2**31 else np.int64
        indptr = np.zeros(N_FEATURES + 1, dtype=idx_t)
        np.cumsum(df, out=indptr[1:])
        indices = np.empty(nnz, dtype=np.int32)
        data = np.empty(nnz, dtype=np.float32)
        if keep_rows:  # the row-major copy, filled chunk by chunk too (no vstack of the chunks)
            r_indptr = np.zeros(len(corpus) + 1, dtype=idx_t)
            r_indices = np.empty(nnz, dtype=np.int32)
            r_data = np.empty(nnz, dtype=np.float32)
        fill = indptr[:-1].astype(np.int64)
        row0, at = 0, 0
        for j, c in enumerate(parts):
            w = self._weigh(c)
            parts[j] = None  # the counts of a chunk are dropped once weighed
            if keep_rows:
                r_indices[at:at + w.nnz], r_data[at:at + w.nnz] = w.indices, w.data
                r_indptr[row0 + 1:row0 + w.shape[0] + 1] = w.indptr[1:] + at
                at += w.nnz
            order = np.argsort(w.indices, kind="stable")  # by feature; rows stay ascending within one
            f = w.indices[order]
            rank = np.arange(len(f)) - np.searchsorted(f, f, side="left")
            dest = fill[f] + rank
            rows = np.repeat(np.arange(row0, row0 + w.shape[0], dtype=np.int32), np.diff(w.indptr))
            indices[dest] = rows[order]
            data[dest] = w.data[order]
            fill += np.bincount(w.indices, minlength=N_FEATURES)
            row0 += w.shape[0]
        self.matrix_t = sp.csr_matrix((data, indices, indptr), shape=(N_FEATURES, len(corpus)))
        self.matrix = (sp.csr_matrix((r_data, r_indices, r_indptr), shape=(len(corpus), N_FEATURES))
                       if keep_rows else None)
        self.n = len(corpus)

    def top_k(self, texts: list[str], k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """For each text, the ``k`` most similar corpus rows: ``(indices int64[n,k], scores float32[n,k])``.

        Missing slots (corpus smaller than k) have index -1 and score 0. Below ``APPROX_TOPK_MIN_ROWS`` corpus
        rows: exact (the scores of a query chunk made dense; zero-score rows can fill a short list); from there
        approximate (see ``APPROX_TOPK_MIN_ROWS``; only rows sharing a selective n-gram, a list may be short).
        """
        q = self.transform(texts)
        n, size = q.shape[0], self.matrix_t.shape[1]
        kk = min(k, size)
        idx = np.full((n, k), -1, dtype=np.int64)
        val = np.zeros((n, k), dtype=np.float32)
        if kk == 0:
            return idx, val
        if size >= APPROX_TOPK_MIN_ROWS and self.matrix is not None:
            return self._top_k_pruned(q, kk, idx, val)
        step = max(1, min(chunk, DENSE_TOPK_CELLS // max(size, 1)))
        for s in range(0, n, step):
            dense = (q[s:s + step] @ self.matrix_t).toarray().astype(np.float32, copy=False)
            _dense_top_k(dense, kk, idx[s:s + step], val[s:s + step])
        return idx, val

    def self_top_k(self, k: int, block: int = 4096, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """``top_k(corpus, k)`` — every corpus row's ``k`` most similar rows — bit for bit, from the rows held
        (no re-tokenising) and, below ``APPROX_TOPK_MIN_ROWS`` rows, with half the products: the scores are
        symmetric (``q_i · d_j`` and ``q_j · d_i`` are the same float32 products summed in the same n-gram
        order), so each pair of column blocks is multiplied once and its transpose feeds the other side's
        lists (:func:`merge_top_k`). Training's dedup lexical channel: every offer against every offer."""
        if self.matrix is None:
            raise ValueError("self_top_k needs the corpus rows (CharTfidf(keep_rows=True))")
        n = self.n
        kk = min(k, n)
        idx = np.full((n, k), -1, dtype=np.int64)
        val = np.zeros((n, k), dtype=np.float32)
        if kk == 0:
            return idx, val
        if n >= APPROX_TOPK_MIN_ROWS:
            return self._top_k_pruned(self.matrix, kk, idx, val)
        # the n-grams the corpus uses, renumbered in order (the products sum in the same n-gram order)
        used = np.flatnonzero(np.diff(self.matrix_t.indptr))
        rows = self.matrix.copy()
        rows.indices = np.searchsorted(used, rows.indices).astype(rows.indices.dtype)
        rows._shape = (n, max(len(used), 1))
        starts = list(range(0, n, block))
        chunk = max(64, min(chunk, DENSE_TOPK_CELLS // n))  # a chunk's strip: at most ~64 MB of scores
        cols = {}  # column block start -> its features x docs matrix (made on first use, kept for later rows)
        run_i, run_v = np.full((n, kk), -1, dtype=np.int64), np.zeros((n, kk), dtype=np.float32)
        for b0 in starts:
            for r0 in range(b0, min(b0 + block, n), chunk):
                r1 = min(r0 + chunk, n, b0 + block)
                q = rows[r0:r1]
                strip = np.empty((r1 - r0, n - b0), dtype=np.float32)  # this chunk against columns b0..n
                for c0 in starts[starts.index(b0):]:
                    c1 = min(c0 + block, n)
                    if c0 not in cols:
                        cols[c0] = rows[c0:c1].T.tocsr()
                    prod = _dense_product(q, cols[c0])
                    strip[:, c0 - b0:c1 - b0] = prod
                    if c0 > b0:  # the transpose: these rows against columns c0.., seen from the columns' side
                        kb = min(kk, r1 - r0)
                        ti = np.full((c1 - c0, kk), -1, dtype=np.int64)
                        tv = np.zeros((c1 - c0, kk), dtype=np.float32)
                        _dense_top_k(np.ascontiguousarray(prod.T), kb, ti, tv)
                        ti = np.where(ti >= 0, ti + r0, -1)
                        run_i[c0:c1], run_v[c0:c1] = merge_top_k(run_i[c0:c1], run_v[c0:c1], ti, tv, kk)
                si = np.full((r1 - r0, kk), -1, dtype=np.int64)
                sv = np.zeros((r1 - r0, kk), dtype=np.float32)
                _dense_top_k(strip, min(kk, n - b0), si, sv)
                si = np.where(si >= 0, si + b0, -1)
                # columns before b0 came from earlier blocks' transposes (complete: those rows are done)
                idx[r0:r1, :kk], val[r0:r1, :kk] = merge_top_k(run_i[r0:r1], run_v[r0:r1], si, sv, kk)
            for c0 in [c for c in cols if c <= b0]:  # no later row block multiplies these columns
                del cols[c0]
        return idx, val

    def _top_k_pruned(self, q: sp.csr_matrix, kk: int, idx: np.ndarray, val: np.ndarray, chunk: int = 256
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top_k for large corpora (see ``APPROX_TOPK_MIN_ROWS``); scores are exact cosines."""
        per_row = np.diff(q.indptr)
        owner = np.repeat(np.arange(q.shape[0]), per_row)
        df = self.df[q.indices]
        order = np.lexsort((df, owner))  # each row's n-grams, rarest first
        rarity = np.empty(len(order), dtype=np.int64)
        rarity[order] = np.arange(len(order)) - np.repeat(q.indptr[:-1], per_row)
        sel = q.copy()
        sel.data = np.where((df <= PRUNE_DF) | (rarity < PRUNE_KEEP), sel.data, 0).astype(np.float32)
        sel.eliminate_zeros()
        pool = max(POOL, 4 * kk)
        for s, r in _product_blocks(sel, self.matrix_t, chunk):
            qs, ts = [], []
            for i in range(r.shape[0]):
                a, b = r.indptr[i], r.indptr[i + 1]
                if b - a > pool:
                    ts.append(r.indices[a:b][np.argpartition(-r.data[a:b], pool - 1)[:pool]])
                else:
                    ts.append(r.indices[a:b])
                qs.append(np.full(len(ts[-1]), s + i, dtype=np.int64))
            if not qs:
                continue
            qa, ta = np.concatenate(qs), np.concatenate(ts).astype(np.int64)
            exact = np.asarray(q[qa].multiply(self.matrix[ta]).sum(axis=1)).ravel().astype(np.float32)
            o = np.lexsort((ta, -exact, qa))
            qa, ta, exact = qa[o], ta[o], exact[o]
            rank = rank_in_runs(qa)
            keep = rank < kk
            idx[qa[keep], rank[keep]] = ta[keep]
            val[qa[keep], rank[keep]] = exact[keep]
        return idx, val

    def pair_scores(self, texts: list[str], rows: np.ndarray) -> np.ndarray:
        """Cosine between each text and one given corpus row (``rows[i]``); each distinct text is tokenised once."""
        return self._pair_dot(texts, self.matrix, np.asarray(rows, dtype=np.int64))

    def nbytes(self) -> int:
        """Bytes of the arrays held (the inverted index, the rows if kept, idf and df)."""
        ms = [m for m in (self.matrix_t, self.matrix) if m is not None]
        return sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in ms) + super().nbytes()


def _matmat(kernel, a: sp.csr_matrix, b: sp.csr_matrix, cells: int, dtype: np.dtype) -> sp.csr_matrix:  # noqa: ANN001
    """``a @ b`` by scipy's kernel ``csr_matmat`` into output arrays sized ``cells`` (an upper bound on the product's
    non-zeros), skipping the pass that counts them first; the same kernel as ``a @ b``, so the same entries in the
    same order, bit for bit."""
    m, n = a.shape[0], b.shape[1]
    it = np.int32 if max(cells, a.nnz, b.nnz, n) < 2**31 - 1 else np.int64
    indptr, indices, data = np.empty(m + 1, dtype=it), np.empty(cells, dtype=it), np.empty(cells, dtype=dtype)
    kernel(m, n, a.indptr.astype(it, copy=False), a.indices.astype(it, copy=False), a.data.astype(dtype, copy=False),
           b.indptr.astype(it, copy=False), b.indices.astype(it, copy=False), b.data.astype(dtype, copy=False),
           indptr, indices, data)
    nnz = int(indptr[-1])
    return sp.csr_matrix((data[:nnz], indices[:nnz], indptr), shape=(m, n))


def _dense_product(a: sp.csr_matrix, b: sp.csr_matrix) -> np.ndarray:
    """``(a @ b).toarray()`` (float32) for a product that is nearly dense: scipy's own kernel (``csr_matmat``)
    with the output sized rows × columns up front, skipping the pass that counts its non-zeros first (~40 % of
    the product's time). The same kernel, so the same sums bit for bit; ``a @ b`` where the private kernel is
    not there (another scipy)."""
    try:
        from scipy.sparse._sparsetools import csr_matmat
    except ImportError:  # pragma: no cover
        return (a @ b).toarray().astype(np.float32, copy=False)
    return _matmat(csr_matmat, a, b, a.shape[0] * b.shape[1], np.dtype(np.float32)).toarray()


PRODUCT_CELLS = 1 << 23  # _product_blocks: bound on the non-zeros of one block's product (64 MB of output)


def _product_blocks(a: sp.csr_matrix, b: sp.csr_matrix, chunk: int):  # noqa: ANN201 (generator)
    """``(first row, a[rows] @ b)`` for blocks of at most ``chunk`` rows of ``a``: scipy's own kernel
    (``csr_matmat``, so each row's entries are ``a @ b``'s, values and order), without the pass that counts the
    product's non-zeros first (``csr_matmat_maxnnz``, ~30 % of the product): the output is sized by an upper bound
    (per row: the summed lengths of the ``b`` rows its non-zeros select, at most ``b``'s width), and a block is cut
    where that bound passes ``PRODUCT_CELLS`` (a row alone may pass it). ``a @ b`` per block where the private
    kernel is not there (another scipy)."""
    try:
        from scipy.sparse._sparsetools import csr_matmat
    except ImportError:  # pragma: no cover
        for s in range(0, a.shape[0], chunk):
            yield s, a[s:s + chunk] @ b
        return
    n_cols = b.shape[1]
    lens = np.diff(b.indptr).astype(np.int64)
    owner = np.repeat(np.arange(a.shape[0]), np.diff(a.indptr))
    bound = np.minimum(np.bincount(owner, weights=lens[a.indices], minlength=a.shape[0]).astype(np.int64), n_cols)
    ends = np.cumsum(bound)
    s = 0
    while s < a.shape[0]:
        base = ends[s - 1] if s else 0
        e = int(np.searchsorted(ends, base + PRODUCT_CELLS, side="right"))
        e = min(max(e, s + 1), s + chunk, a.shape[0])
        blk = a[s:e]
        yield s, _matmat(csr_matmat, blk, b, int(ends[e - 1] - base), np.result_type(blk.data, b.data))
        s = e


def _dense_top_k(dense: np.ndarray, kk: int, idx: np.ndarray, val: np.ndarray) -> None:
    """Each row's ``kk`` best columns of ``dense`` (scores ≥ 0) into ``idx``/``val``: by score, then the lower
    column (ties at the cut decided as :func:`merge_top_k` decides them across shards). The k-th best score
    comes from a float32 partition of each row; only the cells at or above it (about ``kk`` a row) are sorted
    (an int64 key per cell and its argpartition cost 4x as much, the most of top_k's time after the product)."""
    size = dense.shape[1]
    kth = np.partition(dense, size - kk, axis=1)[:, size - kk]
    r, c = np.nonzero(dense >= kth[:, None])  # row-major: columns ascending within a row
    sc = dense[r, c]
    order = np.lexsort((c, -sc, r))
    r, c, sc = r[order], c[order], sc[order]
    rank = rank_in_runs(r)
    keep = rank < kk
    idx[r[keep], rank[keep]] = c[keep]
    val[r[keep], rank[keep]] = sc[keep]


def merge_top_k(idx_a: np.ndarray, val_a: np.ndarray, idx_b: np.ndarray, val_b: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of two top-k lists per query (``(indices, scores)`` as ``CharTfidf.top_k`` returns them,
    indices global, -1 = empty slot): higher score first, then lower index (``top_k``'s tie order), so merging
    the lists of disjoint shards gives the whole corpus's exact top-k. Output width ``k`` (padded with -1 / 0).
    """
    idx = np.concatenate([idx_a, idx_b], axis=1).astype(np.int64)
    val = np.concatenate([val_a, val_b], axis=1).astype(np.float32)
    n = idx.shape[0]
    empty = idx < 0
    # sort key per row: empty slots last, then -score, then index
    order = np.lexsort((idx, -val, empty), axis=-1) if n else np.zeros((0, idx.shape[1]), np.int64)
    idx, val = np.take_along_axis(idx, order, axis=1), np.take_along_axis(val, order, axis=1)
    out_i = np.full((n, k), -1, dtype=np.int64)
    out_v = np.zeros((n, k), dtype=np.float32)
    w = min(k, idx.shape[1])
    out_i[:, :w], out_v[:, :w] = idx[:, :w], np.where(idx[:, :w] >= 0, val[:, :w], 0.0)
    return out_i, out_v


def _token_hashes(tokens: list[str]) -> np.ndarray:
    """Stable 64-bit hashes of tokens (blake2b; Python's ``hash()`` is salted per process)."""
    return np.array([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little", signed=True)
                     for t in tokens], dtype=np.int64)


class IdentifierIndex:
    """Inverted index identifier token → corpus rows (tokens shared by too many rows are ignored).

    Held as two sorted numpy arrays (64-bit token hash, int32 row): 12 bytes per posting, no Python objects.
    """

    def __init__(self, token_lists: list[list[str]], max_df: int = 50) -> None:
        toks = [t for ts in token_lists for t in ts]
        rows = np.repeat(np.arange(len(token_lists), dtype=np.int32),
                         np.fromiter((len(ts) for ts in token_lists), dtype=np.int64, count=len(token_lists)))
        h = _token_hashes(toks)
        order = np.lexsort((rows, h))
        h, rows = h[order], rows[order]
        _, first, counts = np.unique(h, return_index=True, return_counts=True)
        keep = np.repeat(counts <= max_df, counts)
        self.keys, self.rows = h[keep], rows[keep]

    def lookup(self, tokens: list[str]) -> list[int]:
        """Corpus rows sharing at least one identifier token."""
        out: list[int] = []
        for h in _token_hashes(tokens):
            a, b = np.searchsorted(self.keys, h, "left"), np.searchsorted(self.keys, h, "right")
            out.extend(self.rows[a:b].tolist())
        return list(dict.fromkeys(out))

    def lookup_many(self, token_lists: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Every (list number, corpus row) sharing a token, vectorised; a pair may repeat."""
        toks = [t for ts in token_lists for t in ts]
        owner = np.repeat(np.arange(len(token_lists), dtype=np.int64),
                          np.fromiter((len(ts) for ts in token_lists), dtype=np.int64, count=len(token_lists)))
        h = _token_hashes(toks)
        a, b = np.searchsorted(self.keys, h, "left"), np.searchsorted(self.keys, h, "right")
        counts = b - a
        total = int(counts.sum())
        starts = np.repeat(a - (np.cumsum(counts) - counts), counts)
        return np.repeat(owner, counts), self.rows[starts + np.arange(total)].astype(np.int64)

    def nbytes(self) -> int:
        """Bytes of the arrays held."""
        return self.keys.nbytes + self.rows.nbytes
