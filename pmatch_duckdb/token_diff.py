"""The word-difference model: a learnt score of the words one title has and the other lacks.

A decision feature (``token_diff``) that a trained matcher learns from its labelled pairs. The other pair
features see the words of two titles only as overlap counts; this one learns *which* differences matter:
``pro``/``plus``/``upgrade``/``5s`` on one side only means another product, a shop's filler words on one
side only mean nothing. Input per pair, from the normalised title words (``normalize``):

- each word in exactly one of the two titles (``d:<word>``; words with digits — model numbers, sizes —
  only through their shape: they name one product, not a kind of difference) and its shape, digit runs
  folded (``D:<shape>``: ``ml140`` → ``ml0``, so an unseen model number still counts as a model number);
  a word or shape seen in fewer than :data:`MIN_COUNT` training pairs, or never, weighs as its kind's
  bucket (:data:`UNKNOWN`);
- the shape of each word in both titles (``S:<shape>``);
- the share of differing words among all words of the pair (``frac``).

Logistic regression on those (scikit-learn at training time, the train extra); stored as JSON weights in
the matcher's ``decision.json``; scored in numpy (one sparse gather per pair's words, no per-pair loop).
Training pairs get out-of-fold scores (a model fitted on the other label components), so the decision
model learns how far to trust it on pairs it has not seen.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .features.lexical import normalize
from .pair_features import _CHUNK, _WIDTH, _Codes, _member

FEATURE = "token_diff"
MIN_COUNT = 2  # an input gets its own weight when seen in at least this many training pairs (else its bucket's)
MAX_PAIRS = 200_000  # training pairs the model is fitted on at most (seeded sample beyond)
MIN_LABELS = 30  # matches and non-matches needed in each fit (else no model: the feature is left out)
C = 1.0  # inverse L2 strength (scikit-learn's C); 0.3 was measured no better (benchmarks/README.md, token_diff)
_DIGITS = re.compile(r"\d+")
#: the inputs of words without a weight of their own (rare in training, or unseen): one bucket per kind, so the
#: model learns what an unknown differing word means (rare words stand in for unseen ones in training)
UNKNOWN = {"d": "d:?", "D": "D:?", "S": "S:?"}


def shape(word: str) -> str:
    """A word with each digit run folded to ``0``: ``ml140`` → ``ml0``, ``r8000`` → ``r0``."""
    return _DIGITS.sub("0", word)


@dataclass
class PairWords:
    """The word differences of pairs: per differing / shared word, its pair and its word code."""

    words: list[str]  # code → word
    diff_pair: np.ndarray
    diff_code: np.ndarray
    shared_pair: np.ndarray
    shared_code: np.ndarray
    frac: np.ndarray  # per pair: differing words / all distinct words of the pair (0 when both are empty)


def pair_words(src_titles: Sequence[str | None], tgt_titles: Sequence[str | None], s: np.ndarray,
               t: np.ndarray) -> PairWords:
    """:class:`PairWords` of the pairs ``(src_titles[s[i]], tgt_titles[t[i]])``; each title is split once."""
    s, t = np.asarray(s, dtype=np.int64), np.asarray(t, dtype=np.int64)
    code: dict[str, int] = {}

    def sets(titles: Sequence[str | None], pos: np.ndarray) -> tuple[_Codes, np.ndarray]:
        """Each offer's word codes and each pair's row in them."""
        uniq, at = np.unique(pos, return_inverse=True)
        return _Codes([{code.setdefault(w, len(code)) for w in normalize(titles[i]).split()}
                       for i in uniq.tolist()]), at.ravel()

    a, ra = sets(src_titles, s)
    b, rb = sets(tgt_titles, t)
    n = len(s)
    # pair numbers and word codes as int32 (half the memory: ~0.3 GB at 1.7M training pairs, part of the peak
    # of train_matcher at 50k offers); int64 where a pair number or _inputs' codes (up to 3 × the words) would
    # pass 2**31
    ix = np.int32 if max(n, 3 * len(code)) < 2 ** 31 else np.int64
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("dp", "dc", "sp", "sc")}
    frac = np.zeros(n, dtype=np.float64)
    for c0 in range(0, n, _CHUNK):
        sl = slice(c0, min(c0 + _CHUNK, n))
        pair_a, code_a = a.expand(ra[sl])
        pair_b, code_b = b.expand(rb[sl])
        key_a, key_b = pair_a * _WIDTH + code_a, pair_b * _WIDTH + code_b
        a_in_b, b_in_a = _member(key_a, key_b), _member(key_b, key_a)
        off = c0
        parts["dp"] += [(pair_a[~a_in_b] + off).astype(ix), (pair_b[~b_in_a] + off).astype(ix)]
        parts["dc"] += [code_a[~a_in_b].astype(ix), code_b[~b_in_a].astype(ix)]
        parts["sp"].append((pair_a[a_in_b] + off).astype(ix))
        parts["sc"].append(code_a[a_in_b].astype(ix))
        m = sl.stop - sl.start
        n_diff = np.bincount(pair_a[~a_in_b], minlength=m) + np.bincount(pair_b[~b_in_a], minlength=m)
        n_union = n_diff + np.bincount(pair_a[a_in_b], minlength=m)
        frac[sl] = np.where(n_union > 0, n_diff / np.maximum(n_union, 1), 0.0)
    cat = {k: np.concatenate(v) if v else np.zeros(0, dtype=ix) for k, v in parts.items()}
    words = [""] * len(code)
    for w, i in code.items():
        words[i] = w
    return PairWords(words, cat["dp"], cat["dc"], cat["sp"], cat["sc"], frac)


def _word_input(w: str) -> str:
    """The ``d:`` input of a differing word: its own, or the bucket for words with digits."""
    return UNKNOWN["d"] if any(c.isdigit() for c in w) else f"d:{w}"


def _inputs(pw: PairWords) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every (pair, input name) of the pairs, as two aligned arrays of pair numbers and input codes."""
    names = [_word_input(w) for w in pw.words] + [f"D:{shape(w)}" for w in pw.words] + \
        [f"S:{shape(w)}" for w in pw.words]
    nw = len(pw.words)
    pairs = np.concatenate([pw.diff_pair, pw.diff_pair, pw.shared_pair])
    codes = np.concatenate([pw.diff_code, pw.diff_code + nw, pw.shared_code + 2 * nw])
    return pairs, codes, names


@dataclass
class TokenDiffModel:
    """Weights of the word-difference inputs (absent inputs weigh 0), of ``frac``, and the intercept."""

    weights: dict[str, float]
    frac_weight: float
    intercept: float

    def score(self, src_titles: Sequence[str | None], tgt_titles: Sequence[str | None], s: np.ndarray,
              t: np.ndarray) -> np.ndarray:
        """Log-odds of a match for each pair ``(src_titles[s[i]], tgt_titles[t[i]])`` (float64[n])."""
        return self.score_words(pair_words(src_titles, tgt_titles, s, t))

    def score_words(self, pw: PairWords) -> np.ndarray:
        """:meth:`score` of pairs already split into :class:`PairWords`."""
        get, nw = self.weights.get, len(pw.words)
        shapes = [shape(w) for w in pw.words]
        ud, uD, uS = (get(UNKNOWN[k], 0.0) for k in "dDS")
        # per word code: its weight when it differs (word + shape) and when it is shared (shape)
        w_diff = np.fromiter((get(_word_input(w), ud) + get(f"D:{h}", uD) for w, h in zip(pw.words, shapes, strict=True)),
                             dtype=np.float64, count=nw)
        w_shared = np.fromiter((get(f"S:{h}", uS) for h in shapes), dtype=np.float64, count=nw)
        n = len(pw.frac)
        return (np.bincount(pw.diff_pair, weights=w_diff[pw.diff_code], minlength=n)
                + np.bincount(pw.shared_pair, weights=w_shared[pw.shared_code], minlength=n)
                + self.frac_weight * pw.frac + self.intercept)

    def strongest(self, n: int = 8) -> tuple[list[str], list[str]]:
        """The ``n`` differing words that most mean another product, and the ``n`` that most mean nothing
        (the training log shows them: what the model learnt, in words)."""
        words = sorted((w, k[2:]) for k, w in self.weights.items() if k.startswith("d:") and k != UNKNOWN["d"])
        return [x for _, x in words[:n]], [x for _, x in words[::-1][:n]]

    def to_dict(self) -> dict:
        """JSON form (weights rounded to 6 significant digits)."""
        return {"kind": "word-difference logistic regression", "weights": {k: float(f"{v:.6g}") for k, v in
                sorted(self.weights.items())}, "frac_weight": self.frac_weight, "intercept": self.intercept}

    @classmethod
    def from_dict(cls, d: dict) -> TokenDiffModel:
        """Inverse of :meth:`to_dict`."""
        return cls({str(k): float(v) for k, v in d["weights"].items()}, float(d["frac_weight"]),
                   float(d["intercept"]))


def _design(pw: PairWords, columns: dict[str, int] | None):
    """Sparse design matrix of the pairs (input counts as columns, ``frac`` last) and its column names.
    ``columns`` None: every input seen in at least :data:`MIN_COUNT` pairs becomes a column (the others count
    in their kind's :data:`UNKNOWN` bucket). Counting pairs of distinct label groups instead was measured and
    dropped (WDC 50 % unseen 0.622 → 0.503)."""
    from scipy import sparse

    pairs, codes, names = _inputs(pw)
    if columns is None:
        uniq, name_id = np.unique(np.array(names, dtype=object), return_inverse=True)  # codes → distinct names
        seen = np.unique(pairs.astype(np.int64) * len(uniq) + name_id.ravel()[codes]) % max(len(uniq), 1)  # distinct (pair, name)
        count = np.bincount(seen, minlength=len(uniq))
        keep = {str(uniq[c]) for c in np.flatnonzero(count >= MIN_COUNT).tolist()}
        columns = {x: i for i, x in enumerate(sorted(keep | set(UNKNOWN.values())))}
    # an input without a column of its own counts in its kind's bucket
    col_of = np.fromiter((columns.get(x, columns.get(UNKNOWN[x[0]], -1)) for x in names), dtype=np.int64,
                         count=len(names))
    col = col_of[codes]
    ok = col >= 0
    n = len(pw.frac)
    m = sparse.csr_matrix((np.ones(int(ok.sum())), (pairs[ok], col[ok])), shape=(n, len(columns)))
    m.sum_duplicates()  # a shape of two differing words counts 2, as score_words' bincount counts it
    return sparse.hstack([m, sparse.csr_matrix(pw.frac.reshape(-1, 1))], format="csr"), columns


def fit_token_diff(pw: PairWords, y: np.ndarray, seed: int = 0) -> TokenDiffModel | None:
    """Fit on labelled pairs (``y`` 1 = match); None when there are too few of either label."""
    y = np.asarray(y, dtype=np.float64)
    if y.sum() < MIN_LABELS or (1 - y).sum() < MIN_LABELS:
        return None
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as e:  # pragma: no cover - the train extra installs it
        raise ImportError("the word-difference model needs scikit-learn: pip install 'pmatch-duckdb[train]'") from e
    rows = np.arange(len(y))
    if len(y) > MAX_PAIRS:
        rows = np.sort(np.random.default_rng(seed).choice(len(y), MAX_PAIRS, replace=False))
        pw = take_pairs(pw, rows)
    x, columns = _design(pw, None)
    clf = LogisticRegression(C=C, max_iter=2000)
    clf.fit(x, y[rows].astype(np.int64))
    coef = clf.coef_.ravel()
    weights = {name: float(coef[i]) for name, i in columns.items()}  # every column: known = in the dict
    return TokenDiffModel(weights, float(coef[-1]), float(clf.intercept_[0]))


def take_pairs(pw: PairWords, rows: np.ndarray) -> PairWords:
    """The :class:`PairWords` of a subset of the pairs (renumbered ``0..len(rows)-1``, in ``rows``' order)."""
    rows = np.asarray(rows, dtype=np.int64)
    new = np.full(len(pw.frac), -1, dtype=pw.diff_pair.dtype)
    new[rows] = np.arange(len(rows))
    d, sh = new[pw.diff_pair] >= 0, new[pw.shared_pair] >= 0
    return PairWords(pw.words, new[pw.diff_pair[d]], pw.diff_code[d], new[pw.shared_pair[sh]], pw.shared_code[sh],
                     pw.frac[rows])


def fit_out_of_fold(pw: PairWords, y: np.ndarray, folds: np.ndarray, seed: int = 0
                    ) -> tuple[TokenDiffModel | None, np.ndarray | None]:
    """(model fitted on every pair, each pair's score from a model fitted on the other folds); (None, None)
    when any of the fits lacks labels."""
    y = np.asarray(y, dtype=np.float64)
    oof = np.zeros(len(y))
    for f in np.unique(folds).tolist():
        held = folds == f
        model = fit_token_diff(take_pairs(pw, np.flatnonzero(~held)), y[~held], seed)
        if model is None:
            return None, None
        oof[held] = model.score_words(take_pairs(pw, np.flatnonzero(held)))
    return fit_token_diff(pw, y, seed), oof
