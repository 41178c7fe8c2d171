"""The lexical channel split into shards of the target: what lets no single process hold the whole target's
char TF-IDF (the Ray path: one actor per shard, see ``distributed/match.py``).

The shards are contiguous ranges of the index's rows in scan order — the positions ``TargetView`` gives them.
Document frequencies are additive: each shard counts its own (:func:`shard_df`), the counts summed give the
whole target's idf (:func:`global_weights`), and each shard weighs and searches its rows with that idf
(:class:`LexicalShard`): its rows are exactly the whole-target TF-IDF's rows, and the per-shard top-k lists
merged (``features.lexical.merge_top_k``) are the whole target's top-k — exact while a shard has fewer than
``APPROX_TOPK_MIN_ROWS`` rows; above, each shard's pruned approximate search is the single-machine one over
fewer rows (measured in benchmarks/README.md, "The lexical channel at scale").
"""

from __future__ import annotations

import numpy as np

from .features.lexical import CharTfidf, LexicalWeights, document_frequencies, merge_top_k
from .store import OfferIndex


def shard_ranges(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ``[start, stop)`` row ranges covering ``n`` rows, sizes differing by at most one."""
    if not isinstance(shards, int) or shards < 1:
        raise ValueError(f"lexical shards must be a positive integer, got {shards!r}")
    bounds = np.linspace(0, n, min(shards, max(n, 1)) + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def read_lexical_texts(index: OfferIndex, version: int, start: int, stop: int) -> list[str]:
    """``lexical_text`` of the index rows ``[start, stop)`` (scan order, as ``TargetView`` numbers them) at
    ``version`` — that column only."""
    ds = index.table().to_lance().checkout_version(version)
    t = ds.to_table(columns=["lexical_text"], offset=start, limit=stop - start, scan_in_order=True)
    return [x or "" for x in t["lexical_text"].to_pylist()]


def shard_df(index: OfferIndex, version: int, start: int, stop: int) -> np.ndarray:
    """Document frequencies (int32[``N_FEATURES``]) of the rows ``[start, stop)``."""
    return document_frequencies(read_lexical_texts(index, version, start, stop)).astype(np.int32)


def global_weights(dfs: list[np.ndarray], n_docs: int) -> LexicalWeights:
    """The whole target's TF-IDF weighting from its shards' document frequencies."""
    return LexicalWeights(np.sum([np.asarray(d, dtype=np.int64) for d in dfs], axis=0), n_docs)


class LexicalShard:
    """One shard's TF-IDF rows (the whole target's idf) and its top-k, in target positions."""

    def __init__(self, index: OfferIndex, version: int, start: int, stop: int, weights: LexicalWeights) -> None:
        self.start, self.stop = start, stop
        self.tfidf = CharTfidf(read_lexical_texts(index, version, start, stop), df=weights.df,
                               n_docs=weights.n_docs)

    def top_k(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """This shard's ``k`` best rows per text: ``(target positions int64[n, k] (-1 = none), scores)``."""
        idx, val = self.tfidf.top_k(texts, k)
        return np.where(idx >= 0, idx + self.start, -1), val

    def add_to(self, idx: np.ndarray, val: np.ndarray, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The lists so far (other shards') merged with this shard's: the best ``k`` of both."""
        i, v = self.top_k(texts, k)
        return merge_top_k(idx, val, i, v, k)

    def nbytes(self) -> int:
        """Bytes of the shard's TF-IDF arrays."""
        return self.tfidf.nbytes()


def sharded_top_k(index: OfferIndex, version: int, n: int, shards: int, texts: list[str], k: int
                  ) -> tuple[np.ndarray, np.ndarray, LexicalWeights]:
    """In one process, shard after shard (tests, benchmarks): the merged lexical top-k of ``texts`` over the
    index rows split into ``shards``, and the global weighting."""
    ranges = shard_ranges(n, shards)
    weights = global_weights([shard_df(index, version, a, b) for a, b in ranges], n)
    idx, val = np.full((len(texts), 0), -1, np.int64), np.zeros((len(texts), 0), np.float32)
    for a, b in ranges:
        idx, val = LexicalShard(index, version, a, b, weights).add_to(idx, val, texts, k)
    return idx, val, weights
