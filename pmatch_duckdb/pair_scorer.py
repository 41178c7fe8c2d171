"""The pair scorer at match time (ONNX, onnxruntime only): by default a cross-encoder reading both offers at once.

A matcher bundle may hold ``pair_model.onnx`` + ``pair_tokenizer.json`` + ``pair_decision.json``
(trained by :mod:`pmatch_duckdb.training.pair_model`). Matching then runs in two stages:

1. the decision model (``decision.json``) scores every candidate pair from the cheap pair features;
2. the ``m`` best of each source by that score (``pair_top_m``, default :data:`DEFAULT_TOP_M`) are
   re-read by the pair scorer, and the stacked decision model (``pair_decision.json``: logistic
   regression over the stage-1 logit and the pair scorer's logit, isotonic-calibrated, thresholds from
   held-out scores like stage 1) gives their final ``score`` and ``decision``.

Pairs outside the top ``m`` keep their stage-1 score. Offers are serialised Ditto-style
(:func:`serialize_offer`): ``COL title VAL ... COL brand VAL ... COL price VAL ... COL id VAL ...
COL description VAL ...``; the pair is tokenised as a BERT sentence pair (``[CLS] a [SEP] b [SEP]``).

A bundle's pair scorer is of one of three kinds (``pair_model.kind`` in the manifest):

* ``"cross"`` (:class:`PairScorer`, the default): the cross-encoder above, one transformer pass per pair;
* ``"siamese"`` (:class:`SiameseScorer`): a MiniLM encoder fine-tuned with a supervised contrastive loss on the
  labelled match groups (R-SupCon, Peeters et al. 2022). ``pair_model.onnx`` embeds ONE serialised offer; the
  pair's logit is the cosine of the two embeddings divided by the training temperature. One pass per distinct
  offer among the re-scored pairs, not per pair, and a loaded scorer keeps the last :data:`SIAMESE_CACHE_SIZE`
  offers' embeddings for its next calls. Each offer gets the whole ``max_len``, so on a set of pairs with few
  shared offers it costs about 1.5x the cross-encoder per pair; in ``match_products``, where a source's ``m``
  candidates share the source and candidates recur across sources, it costs less, and ever less than the
  cross-encoder as ``m`` grows (benchmarks/README.md, "A siamese pair scorer" and "The siamese scorer, second
  pass").
* ``"known"`` (:class:`KnownProductsScorer`): no transformer; whether both offers resolve to the same labelled
  training product, judged by stage 1's own fused vectors (:class:`KnownProducts`). Trained in seconds; what
  ``pmatch train`` falls back to where a transformer scorer does not earn its place (benchmarks/README.md, "Known
  products by stage 1's vectors").
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .runs import rank_in_runs

DEFAULT_TOP_M = 3
#: offers whose siamese embedding a loaded scorer keeps between calls (384 floats + the text each: ~40 MB)
SIAMESE_CACHE_SIZE = 20_000
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)(?![\w.])")
_WORD = re.compile(r"[a-z0-9][a-z0-9\-./]*")
_STOP = frozenset(["a", "an", "and", "the", "of", "for", "with", "to", "in", "on", "by", "is", "are", "this", "that", "from", "your", "you", "it", "its", "or", "as", "at", "be"])


@dataclass(frozen=True)
class SerializeOptions:
    """How an offer becomes text (the Ditto levers; recorded in the bundle manifest).

    ``mark_ids``: product identifiers and numbers are marked (``COL id VAL`` attribute, and numbers in the
    title wrapped in ``#``), Ditto's domain-knowledge injection. ``summarize``: the description is cut to
    its ``desc_tokens`` highest-TF-IDF words (idf from the corpus given to :meth:`Summarizer.fit`) in their
    original order, instead of its first ``desc_tokens`` words.
    """

    mark_ids: bool = True
    summarize: bool = False
    desc_tokens: int = 24

    def to_dict(self) -> dict:
        return {"mark_ids": self.mark_ids, "summarize": self.summarize, "desc_tokens": self.desc_tokens}

    @classmethod
    def from_dict(cls, d: dict) -> SerializeOptions:
        return cls(bool(d.get("mark_ids", True)), bool(d.get("summarize", False)), int(d.get("desc_tokens", 24)))


@dataclass
class Summarizer:
    """Description → its highest-TF-IDF words (Ditto's summarisation), idf stored as JSON in the bundle."""

    idf: dict[str, float] = field(default_factory=dict)
    default_idf: float = 0.0

    @classmethod
    def fit(cls, texts: Sequence[str | None]) -> Summarizer:
        df: Counter[str] = Counter()
        n = 0
        for t in texts:
            if t:
                n += 1
                df.update(set(_WORD.findall(t.lower())))
        idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items() if c > 1}
        return cls(idf, math.log(1 + n) + 1.0)

    def summarize(self, text: str, n: int) -> str:
        words = text.split()
        if len(words) <= n:
            return text
        tf = Counter(w.lower() for w in words)
        def weight(w: str) -> float:
            k = w.lower()
            if k in _STOP or not _WORD.fullmatch(k.strip(",;:()")):
                return 0.0
            return tf[k] * self.idf.get(k.strip(",;:()"), self.default_idf)
        best = sorted(range(len(words)), key=lambda i: (-weight(words[i]), i))[:n]
        return " ".join(words[i] for i in sorted(best))


def _fmt_price(p: float | None) -> str | None:
    if p is None or not np.isfinite(p) or p <= 0:
        return None
    return f"{p:.2f}"


def serialize_offer(title: str | None, brand: str | None, price: float | None, idents: Sequence[str],
                    description: str | None, opts: SerializeOptions, summarizer: Summarizer | None = None) -> str:
    """One offer as Ditto-style text (attributes that are missing are left out)."""
    parts: list[str] = []
    t = (title or "").strip()
    if opts.mark_ids:
        t = _NUMBER.sub(r"# \1 #", t)
    parts.append(f"COL title VAL {t}")
    if brand:
        parts.append(f"COL brand VAL {brand.strip()}")
    pr = _fmt_price(price)
    if pr:
        parts.append(f"COL price VAL {pr}")
    if opts.mark_ids and idents:
        parts.append("COL id VAL " + " ".join(list(dict.fromkeys(idents))[:4]))
    d = (description or "").strip()
    if d and opts.desc_tokens > 0:
        if opts.summarize and summarizer is not None:
            d = summarizer.summarize(d, opts.desc_tokens)
        else:
            d = " ".join(d.split()[:opts.desc_tokens])
        parts.append(f"COL description VAL {d}")
    return " ".join(parts)


def serialize_rows(rows, positions: Sequence[int], opts: SerializeOptions,
                   summarizer: Summarizer | None = None) -> list[str]:
    """Serialised text of ``rows`` (an :class:`~pmatch_duckdb.offer_vectors.OfferVectors`) at ``positions``."""
    out = []
    for i in positions:
        i = int(i)
        ids = list(rows.idents[i]) + [x for x in rows.desc_idents[i] if x not in rows.idents[i]]
        out.append(serialize_offer(rows.titles[i], rows.brands[i], float(rows.price[i]), ids,
                                   rows.descriptions[i], opts, summarizer))
    return out


class PairTokenizer:
    """Sentence-pair WordPiece tokenisation with longest-first truncation to ``max_len`` (``tokenizers``)."""

    def __init__(self, tokenizer_json: Path | str, max_len: int) -> None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_json))
        tok.no_padding()
        tok.enable_truncation(max_len, strategy="longest_first")
        self.tok = tok
        self.max_len = max_len

    def __call__(self, a: Sequence[str], b: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, attention_mask, token_type_ids) int64[n, width], padded with 0."""
        encs = self.tok.encode_batch(list(zip(a, b, strict=True)), add_special_tokens=True)
        width = max((len(e.ids) for e in encs), default=1)
        ids = np.zeros((len(encs), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for r, e in enumerate(encs):
            n = len(e.ids)
            ids[r, :n], mask[r, :n], types[r, :n] = e.ids, 1, e.type_ids
        return ids, mask, types


#: known products: a pair's offers are compared with the labelled training offers by their embeddings; each
#: offer's KNOWN_NEIGHBOURS nearest, weighted by exp((cos - best cos) / KNOWN_TEMPERATURE), give it a distribution over
#: the training match groups. Measured on WDC Products (benchmarks/README.md, "Known products").
KNOWN_NEIGHBOURS = 10
KNOWN_TEMPERATURE = 0.05
SELF_COSINE = 0.9999  # a known offer this close is the offer itself (float16-stored embeddings: self ≥ 0.99999)
KNOWN_CHUNK = 4096  # offers compared with the known ones at once (4,096 x 20,000 known: 330 MB of similarities)


class KnownProducts:
    """The labelled training offers of a pair stage (their embeddings — by a siamese scorer, or stage 1's fused vectors
    for the ``known`` kind — and their match groups), kept in the bundle (``pair_known_products.json``):
    ``same_product`` says how likely two offers resolve to the same known
    product — the probability that both offers' nearest labelled offers name the same group. Where the products
    matched were labelled (a catalog whose products have labelled offers, WDC's seen products) that is strong
    evidence a pair score alone does not see; for products never labelled it is noise, and the stacked model,
    fitted on held-out pairs, weighs it accordingly."""

    def __init__(self, embeddings: np.ndarray, groups: np.ndarray, neighbours: int = KNOWN_NEIGHBOURS,
                 temperature: float = KNOWN_TEMPERATURE) -> None:
        e = np.asarray(embeddings, dtype=np.float32)
        self.embeddings = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        self.groups = np.asarray(groups, dtype=np.int64)
        if len(self.groups) != len(self.embeddings):
            raise ValueError(f"{len(self.embeddings)} known offers against {len(self.groups)} group ids")
        self.neighbours, self.temperature = int(neighbours), float(temperature)

    def group_weights(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(groups int64[n, k], weights float64[n, k] summing to 1 per row): each offer's nearest known offers.

        A known offer with the offer's own embedding (cosine ≥ :data:`SELF_COSINE`: the offer itself, when the
        table matched is the one labelled) is not its neighbour: the stacked model learnt the feature on
        validation offers, which are never among the known ones, and an offer's own group says nothing about
        another offer (an offer in no labelled match is a group of its own)."""
        k = min(self.neighbours, len(self.groups))
        if not len(emb) or not k:
            return np.zeros((len(emb), 0), np.int64), np.zeros((len(emb), 0))
        emb = np.asarray(emb, dtype=np.float32)
        top = np.zeros((len(emb), k), dtype=np.int64)
        st = np.zeros((len(emb), k))
        for a in range(0, len(emb), KNOWN_CHUNK):  # bounded memory: KNOWN_CHUNK rows of similarities at a time
            sims = emb[a:a + KNOWN_CHUNK] @ self.embeddings.T
            sims[sims >= SELF_COSINE] = -np.inf
            top[a:a + KNOWN_CHUNK] = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            st[a:a + KNOWN_CHUNK] = np.take_along_axis(sims, top[a:a + KNOWN_CHUNK], axis=1)
        best = st.max(axis=1, keepdims=True)
        w = np.exp((st - np.where(np.isfinite(best), best, 0.0)) / self.temperature)  # exp(-inf) = 0: self
        total = w.sum(axis=1, keepdims=True)
        return self.groups[top], np.divide(w, total, out=np.zeros_like(w), where=total > 0)

    def same_product(self, ea: np.ndarray, eb: np.ndarray, ia: np.ndarray | None = None,
                     ib: np.ndarray | None = None) -> np.ndarray:
        """float64[n]: for offer embeddings ``ea[i]``, ``eb[i]`` (or, given the index arrays, ``ea[ia[i]]``,
        ``eb[ib[i]]``: each distinct offer compared with the known ones once), the probability that both name the
        same group."""
        ga, wa = self.group_weights(ea)
        gb, wb = self.group_weights(eb)
        if ia is not None:
            ga, wa = ga[ia], wa[ia]
        if ib is not None:
            gb, wb = gb[ib], wb[ib]
        same = ga[:, :, None] == gb[:, None, :]
        return np.einsum("ni,nj,nij->n", wa, wb, same)

    def to_json(self) -> dict:
        """The bundle file's content: embeddings as base64 float16 (row-major), groups, the two parameters."""
        import base64

        return {"format": "pmatch-known-products-1", "shape": list(self.embeddings.shape),
                "embeddings_f16_base64": base64.b64encode(self.embeddings.astype("<f2").tobytes()).decode("ascii"),
                "groups": self.groups.tolist(), "neighbours": self.neighbours, "temperature": self.temperature}

    @classmethod
    def from_json(cls, d: dict) -> KnownProducts:
        import base64

        if d.get("format") != "pmatch-known-products-1":
            raise ValueError(f"known products: unknown format {d.get('format')!r} (a newer pmatch wrote this bundle?)")
        n, dim = (int(x) for x in d["shape"])
        e = np.frombuffer(base64.b64decode(d["embeddings_f16_base64"]), dtype="<f2")
        if e.size != n * dim:
            raise ValueError(f"known products: {e.size} values for shape {n} x {dim}")
        return cls(e.reshape(n, dim).astype(np.float32), np.asarray(d["groups"], dtype=np.int64),
                   int(d["neighbours"]), float(d["temperature"]))


class _BundleScorer:
    """What both pair-scorer kinds read from the bundle's ``pair_model`` entry, and their onnxruntime session."""

    def __init__(self, onnx_path: Path, sha256: str, config: dict, summarizer: Summarizer | None,
                 threads: int | None, batch_size: int) -> None:
        from .encoders.sessions import get_session, intra_op_threads

        self.config = config
        self.opts = SerializeOptions.from_dict(config.get("serialize", {}))
        self.summarizer = summarizer
        self.max_len = int(config["max_len"])
        self.top_m = int(config.get("top_m", DEFAULT_TOP_M))
        self.session = get_session(onnx_path, sha256, threads or intra_op_threads())
        self.batch_size = batch_size


class PairScorer(_BundleScorer):
    """The cross-encoder of a matcher bundle, run with onnxruntime: logit that two offers match."""

    def __init__(self, onnx_path: Path, sha256: str, tokenizer_json: Path, config: dict,
                 summarizer: Summarizer | None = None, threads: int | None = None, batch_size: int = 32) -> None:
        super().__init__(onnx_path, sha256, config, summarizer, threads, batch_size)
        self.tokenize = PairTokenizer(tokenizer_json, self.max_len)

    def logits(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """float32[n] logits for the text pairs (batched; sorted by length to keep padding small)."""
        n = len(a)
        out = np.zeros(n, dtype=np.float32)
        if not n:
            return out
        order = np.argsort([len(x) + len(y) for x, y in zip(a, b, strict=True)], kind="stable")
        for s in range(0, n, self.batch_size):
            idx = order[s:s + self.batch_size]
            ids, mask, types = self.tokenize([a[i] for i in idx], [b[i] for i in idx])
            out[idx] = self.session.run(["logit"], {"input_ids": ids, "attention_mask": mask,
                                                     "token_type_ids": types})[0].reshape(-1)
        return out

    def pair_logits(self, src, tgt, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Logits of (source position, target position) pairs of two :class:`OfferVectors`."""
        us, inv_s = np.unique(s, return_inverse=True)
        ut, inv_t = np.unique(t, return_inverse=True)
        ta = serialize_rows(src, us, self.opts, self.summarizer)
        tb = serialize_rows(tgt, ut, self.opts, self.summarizer)
        return self.logits([ta[i] for i in inv_s], [tb[j] for j in inv_t])

    def features(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """float64[n, 1]: what the stacked model reads from this scorer (its logit)."""
        return self.logits(a, b).astype(np.float64)[:, None]

    def pair_features(self, src, tgt, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        """:meth:`features` of (source position, target position) pairs of two :class:`OfferVectors`."""
        return self.pair_logits(src, tgt, s, t).astype(np.float64)[:, None]


class SiameseScorer(_BundleScorer):
    """The fine-tuned bi-encoder of a matcher bundle (``pair_model.kind == "siamese"``), run with onnxruntime:
    ``logit = cos(embed(a), embed(b)) / temperature``. Same interface as :class:`PairScorer`."""

    def __init__(self, onnx_path: Path, sha256: str, tokenizer_json: Path, config: dict,
                 summarizer: Summarizer | None = None, threads: int | None = None, batch_size: int = 64,
                 cache_size: int = SIAMESE_CACHE_SIZE, known: KnownProducts | None = None) -> None:
        from tokenizers import Tokenizer

        super().__init__(onnx_path, sha256, config, summarizer, threads, batch_size)
        self.known = known  # the labelled training offers, when the bundle keeps them
        # the same offers by stage 1's fused vectors (pair_known_stage1.json), when the bundle keeps them: a second
        # memory that errs elsewhere (benchmarks/README.md, "Known products by stage 1's vectors": both spaces)
        self.known_stage1: KnownProductsScorer | None = None
        self.temperature = float(config["temperature"])
        # a base other than MiniLM (pair_base.py): its own padding id, and no token_type_ids for RoBERTa-style models
        self.pad_id = int(config.get("pad_id", 0))
        self.inputs = {i.name for i in self.session.get_inputs()}
        tok = Tokenizer.from_file(str(tokenizer_json))
        tok.no_padding()
        tok.enable_truncation(self.max_len)
        self.tok = tok
        # An offer's embedding depends on its serialised text only, so it is kept for the next call: the same
        # catalog offers are candidates again in each source batch of one match_products and in each later call
        # (least recently used dropped first; match_products may call from several threads).
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.computed = 0  # offers embedded by the model (not from the cache), for tests and benchmarks

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32[n, d] L2-normalised embeddings of serialised offers; each distinct text not in the cache goes
        through the model once (batched, in length order)."""
        texts = list(texts)
        distinct = list(dict.fromkeys(texts))
        with self._lock:
            hit = {t: self._cache[t] for t in distinct if t in self._cache}
            for t in hit:
                self._cache.move_to_end(t)
        missing = [t for t in distinct if t not in hit]
        fresh = self._embed_texts(missing)
        if missing and self.cache_size > 0:
            with self._lock:
                for t, v in zip(missing, fresh, strict=True):
                    self._cache[t] = v.copy()  # a row of its own, not a view keeping the whole batch alive
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        found = {**hit, **dict(zip(missing, fresh, strict=True))}
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)

    def clear_cache(self) -> None:
        """Forget the kept embeddings (benchmarks measure a first call with it)."""
        with self._lock:
            self._cache.clear()

    def _embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """The model's embeddings of ``texts`` (no cache)."""
        n = len(texts)
        with self._lock:
            self.computed += n
        encs = self.tok.encode_batch(list(texts)) if n else []
        out: np.ndarray | None = None
        order = np.argsort([len(e.ids) for e in encs], kind="stable")
        for s in range(0, n, self.batch_size):
            idx = order[s:s + self.batch_size]
            width = max(len(encs[i].ids) for i in idx)
            ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros_like(ids)
            for r, i in enumerate(idx):
                ids[r, :len(encs[i].ids)], mask[r, :len(encs[i].ids)] = encs[i].ids, 1
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            v = self.session.run(["embedding"], {k: a for k, a in feed.items() if k in self.inputs})[0]
            if out is None:
                out = np.zeros((n, v.shape[1]), dtype=np.float32)
            out[idx] = v
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)

    def logits(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """float32[n] logits of the text pairs (each distinct text embedded once)."""
        if len(a) != len(b):
            raise ValueError(f"{len(a)} left texts against {len(b)} right texts")
        if not len(a):
            return np.zeros(0, dtype=np.float32)
        uniq = list(dict.fromkeys([*a, *b]))
        pos = {t: i for i, t in enumerate(uniq)}
        e = self.embed(uniq)
        ia = np.fromiter((pos[t] for t in a), np.int64, len(a))
        ib = np.fromiter((pos[t] for t in b), np.int64, len(b))
        return (np.einsum("ij,ij->i", e[ia], e[ib]) / self.temperature).astype(np.float32)

    def pair_logits(self, src, tgt, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Logits of (source position, target position) pairs of two :class:`OfferVectors`."""
        us, inv_s = np.unique(s, return_inverse=True)
        ut, inv_t = np.unique(t, return_inverse=True)
        ea = self.embed(serialize_rows(src, us, self.opts, self.summarizer))
        eb = self.embed(serialize_rows(tgt, ut, self.opts, self.summarizer))
        if not len(s):
            return np.zeros(0, dtype=np.float32)
        return (np.einsum("ij,ij->i", ea[inv_s], eb[inv_t]) / self.temperature).astype(np.float32)

    def _features(self, ea: np.ndarray, ia: np.ndarray, eb: np.ndarray, ib: np.ndarray) -> np.ndarray:
        """Pair i is (``ea[ia[i]]``, ``eb[ib[i]]``)."""
        cos = np.einsum("ij,ij->i", ea[ia], eb[ib]).astype(np.float64) / self.temperature
        if self.known is None:
            return cos[:, None]
        return np.stack([cos, known_logit(self.known.same_product(ea, eb, ia, ib))], axis=1)

    def features(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """float64[n, 1 or 2]: what the stacked model reads from this scorer — its logit, and with known products
        the logit of :meth:`KnownProducts.same_product`."""
        if len(a) != len(b):
            raise ValueError(f"{len(a)} left texts against {len(b)} right texts")
        if not len(a):
            return np.zeros((0, 1 if self.known is None else 2))
        uniq = list(dict.fromkeys([*a, *b]))
        pos = {t: i for i, t in enumerate(uniq)}
        e = self.embed(uniq)
        return self._features(e, np.array([pos[t] for t in a]), e, np.array([pos[t] for t in b]))

    def pair_features(self, src, tgt, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        """:meth:`features` of (source position, target position) pairs of two :class:`OfferVectors`, and with
        ``known_stage1`` (known products by stage 1's fused vectors too) its column after them."""
        n_cols = (1 if self.known is None else 2) + (self.known_stage1 is not None)
        if not len(s):
            return np.zeros((0, n_cols))
        us, inv_s = np.unique(s, return_inverse=True)
        ut, inv_t = np.unique(t, return_inverse=True)
        ea = self.embed(serialize_rows(src, us, self.opts, self.summarizer))
        eb = self.embed(serialize_rows(tgt, ut, self.opts, self.summarizer))
        out = self._features(ea, inv_s, eb, inv_t)
        if self.known_stage1 is not None:
            out = np.hstack([out, self.known_stage1.pair_features(src, tgt, s, t)])
        return out


class KnownProductsScorer:
    """The pair stage without a transformer (``pair_model.kind == "known"``): whether a pair's two offers resolve to
    the same known product (:class:`KnownProducts`), the known offers embedded by stage 1 itself — the matcher's
    fused vectors (its trained projection), which every trained matcher has. Nothing to fine-tune and no ONNX model
    of its own: the bundle keeps the labelled training offers' fused vectors and match groups
    (``pair_known_products.json``) and the stacked model reads [stage-1 logit, known-product logit]. Same
    interface as :class:`PairScorer` where match time reads it (``top_m``, ``pair_features``)."""

    def __init__(self, config: dict, known: KnownProducts) -> None:
        self.config = config
        self.known = known
        self.top_m = int(config.get("top_m", DEFAULT_TOP_M))
        self.max_len = 0  # reads no text

    def clear_cache(self) -> None:
        """Nothing is cached (a fused vector comes with its offer); here for the scorers' common interface."""

    def vector_features(self, ea: np.ndarray, eb: np.ndarray, ia: np.ndarray | None = None,
                        ib: np.ndarray | None = None) -> np.ndarray:
        """float64[n, 1]: the logit of :meth:`KnownProducts.same_product` for fused vectors (pair i is ``ea[i]``,
        ``eb[i]``, or ``ea[ia[i]]``, ``eb[ib[i]]`` given the index arrays); an offer without a vector (NaN) has
        no neighbours' vote: probability 0 clipped, as for "no shared group"."""
        ea, ok_a = _unit_rows(ea)
        eb, ok_b = _unit_rows(eb)
        same = self.known.same_product(ea, eb, ia, ib)
        same[~(ok_a if ia is None else ok_a[ia]) | ~(ok_b if ib is None else ok_b[ib])] = 0.0
        return known_logit(same)[:, None]

    def pair_features(self, src, tgt, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        """:meth:`vector_features` of (source position, target position) pairs of two :class:`OfferVectors` (their
        ``fused`` vectors: stage 1's)."""
        if not len(s):
            return np.zeros((0, 1))
        us, inv_s = np.unique(s, return_inverse=True)
        ut, inv_t = np.unique(t, return_inverse=True)
        return self.vector_features(src.fused[us], tgt.fused[ut], inv_s, inv_t)


def _unit_rows(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows scaled to unit length, whether a row had a vector: finite and not zero; the others become zeros)."""
    e = np.asarray(e, dtype=np.float32)
    norm = np.linalg.norm(e, axis=1) if e.ndim == 2 and len(e) else np.zeros(len(e), dtype=np.float32)
    ok = np.isfinite(norm) & (norm > 0)
    out = np.zeros_like(e)
    out[ok] = e[ok] / norm[ok, None]
    return out, ok


#: the pair-scorer kinds a bundle may hold (``pair_model.kind``): two transformers, and known products alone
PAIR_KINDS = ("cross", "siamese", "known")


def load_pair_scorer(onnx_path: Path, sha256: str, tokenizer_json: Path, config: dict,
                     summarizer: Summarizer | None = None, known: KnownProducts | None = None
                     ) -> PairScorer | SiameseScorer:
    """The scorer of ``config["kind"]`` (``"cross"`` when absent: bundles written before the siamese kind);
    ``known``: a siamese scorer's known products."""
    kind = config.get("kind", "cross")
    if kind not in PAIR_KINDS or kind == "known":  # "known" has no ONNX model: matchers._load_pair_stage builds it
        raise ValueError(f"pair model kind {kind!r} is not one of {PAIR_KINDS[:2]} (a newer pmatch wrote this bundle?)")
    if kind == "siamese":
        return SiameseScorer(onnx_path, sha256, tokenizer_json, config, summarizer, known=known)
    if known is not None:
        raise ValueError("known products need a siamese pair scorer")
    return PairScorer(onnx_path, sha256, tokenizer_json, config, summarizer)


def known_logit(same: np.ndarray) -> np.ndarray:
    """The stacked input of a same-known-product probability (every kind's): clipped to [1e-4, 1 - 1e-4] first, so
    "no shared group among the nearest" is a bounded vote, not -16."""
    return logit(np.clip(same, 1e-4, 1 - 1e-4))


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), clipped away from 0 and 1."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def stacked_features(stage1_raw: np.ndarray, pair: np.ndarray) -> np.ndarray:
    """The stacked decision model's input: [stage-1 logit, the pair scorer's features] (``pair``: its logits, or
    the columns its ``features`` give: the logit, and with known products their logit)."""
    pair = np.asarray(pair, dtype=np.float64)
    return np.column_stack([logit(stage1_raw), pair[:, None] if pair.ndim == 1 else pair])


STACKED_FEATURES = ("stage1_logit", "pair_model_logit")
#: the stacked model's inputs with known products (a siamese scorer's labelled training offers)
STACKED_FEATURES_KNOWN = (*STACKED_FEATURES, "known_product_logit")
#: the stacked model's inputs of the ``known`` kind (known products by stage 1's fused vectors, no transformer)
STACKED_FEATURES_KNOWN_ONLY = ("stage1_logit", "known_product_logit")
#: the siamese kind's with known products in both spaces (its own embeddings, then stage 1's fused vectors)
STACKED_FEATURES_KNOWN_BOTH = (*STACKED_FEATURES_KNOWN, "known_product_stage1_logit")


def top_m_mask(s: np.ndarray, score: np.ndarray, m: int) -> np.ndarray:
    """True for each source's ``m`` best pairs by ``score``."""
    mask = np.zeros(len(s), dtype=bool)
    if not len(s) or m <= 0:
        return mask
    order = np.lexsort((-score, s))
    mask[order[rank_in_runs(s[order]) < m]] = True
    return mask
