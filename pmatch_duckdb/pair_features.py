"""Cheap pairwise features for the decision model (numpy only)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .features.lexical import normalize

PAIR_FEATURES = ("fused", "text", "text_missing", "image", "image_missing", "lexical", "id_shared",
                 "id_conflict", "id_partial", "number_jaccard", "brand_agree", "brand_conflict",
                 "log_price_ratio", "price_missing", "token_jaccard", "rank", "gap_to_best",
                 # description-aware (index format 2): identifiers of title + description, and the char
                 # TF-IDF cosine of title + start of description
                 "full_id_shared", "full_id_strong", "full_id_conflict", "full_text", "description_missing",
                 # near-identical identifiers (variant suffixes, typos): prefix+suffix similarity, digits
                 "id_similarity", "id_digits_agree", "id_digits_differ",
                 # the offer tables' gtin columns (index format 3): equal / different valid GTINs
                 "gtin_equal", "gtin_conflict",
                 # colour words of the titles (brand + title): a named colour in common / both name colours,
                 # none in common (a colour variant is another product: another SKU, another GTIN)
                 "colour_agree", "colour_conflict",
                 # quantities with a unit in the titles (16 GB, 1600 MHz, 3-pack, 5.6 cu ft): a unit both name with a
                 # value in common / a unit both name, no value in common (another capacity, speed or pack size)
                 "unit_agree", "unit_conflict")
# Relative to the same source's other pairs (at match time: its other candidates): this pair's value minus the
# best value among them, 0 where the source has no other pair. A candidate that a sibling beats on identifiers
# or words (DVPNS57PB beside an exact DVPNS57PS) is rarely the match, however high its own score; the top
# candidate's margin says by how much it leads. Computed by :func:`source_margins` from the columns named. The
# identifier-agreement margins (id_shared, full_id_strong) are −1 for a sibling whose source has another candidate
# carrying the exact model number: Abt-Buy full R@P≥0.99 0.802 → 0.861 over five splits (benchmarks/README.md,
# "Identifier-agreement margins"). Bundles store their features by name, so older matchers keep their own list.
MARGIN_FEATURES: dict[str, str] = {"id_similarity_margin": "id_similarity", "lexical_margin": "lexical",
                                   "token_jaccard_margin": "token_jaccard", "full_text_margin": "full_text",
                                   "number_jaccard_margin": "number_jaccard", "id_shared_margin": "id_shared",
                                   "full_id_strong_margin": "full_id_strong"}
FULL_TEXT_CHARS = 300  # description characters in the ``full_text`` cosine
_NUM = re.compile(r"\d+(?:\.\d+)?")
# colour and finish words (normalised title tokens) → one name per colour; what a colour variant differs by
COLOURS: dict[str, str] = {
    **{c: c for c in (
        "black", "white", "silver", "red", "blue", "green", "yellow", "orange", "pink", "purple", "violet",
        "brown", "gold", "beige", "bronze", "copper", "titanium", "graphite", "charcoal", "plum", "navy",
        "cherry", "ivory", "cream", "champagne", "burgundy", "maroon", "teal", "turquoise", "aqua", "lavender",
        "magenta", "khaki", "olive", "lime", "chrome", "platinum", "stainless", "bisque", "crimson", "indigo")},
    "grey": "grey", "gray": "grey", "golden": "gold", "blk": "black", "wht": "white",
}


# a number and its unit, in the raw lower-cased title (normalize would split 2.5 into 2 and 5)
_QUANTITY = re.compile(
    r"(?<![\w.,])(\d+(?:[.,]\d+)?)\s*-?\s*(gb|tb|mb|mhz|ghz|mm|cm|oz|mah|watts?|w|va|mp|megapixels?|hours?|hrs?|ml|kg|"
    r"lbs?|v|cu\s*\.?\s*ft|pack|pk|pcs|speed|inch(?:es)?|in(?!\s*\d))(?![a-z])")
_UNIT = {"watt": "w", "watts": "w", "megapixel": "mp", "megapixels": "mp", "hour": "h", "hours": "h", "hrs": "h",
         "hr": "h", "lb": "lbs", "pk": "pack", "pcs": "pack", "in": "inch", "inches": "inch"}
_SCALE = {"tb": ("gb", 1000.0), "ghz": ("mhz", 1000.0)}  # one unit per quantity: 2 TB = 2000 GB


def quantities(title: str | None) -> set[tuple[str, float]]:
    """``(unit, value)`` of each number-with-unit in a title: ``"4GB DDR3 1.6GHz, 2-pack"`` →
    ``{("gb", 4.0), ("mhz", 1600.0), ("pack", 2.0)}``."""
    out = set()
    for v, u in _QUANTITY.findall((title or "").lower()):
        u = re.sub(r"[\s.]", "", u)
        u = _UNIT.get(u, u)
        unit, scale = _SCALE.get(u, (u, 1.0))
        out.add((unit, round(float(v.replace(",", ".")) * scale, 3)))
    return out


def id_similarity(a: str, b: str) -> float:
    """(common prefix + common suffix) / longer length, at most 1: ``du1100ss``/``du1100xtps`` 0.7."""
    n = min(len(a), len(b))
    p = 0
    while p < n and a[p] == b[p]:
        p += 1
    q = 0
    while q < n - p and a[-1 - q] == b[-1 - q]:
        q += 1
    return (p + q) / max(len(a), len(b), 1)


def _digits(t: str) -> str:
    return "".join(c for c in t if c.isdigit())


def best_id_pair(a: set[str] | list[str], b: set[str] | list[str]) -> tuple[float, bool, bool]:
    """Over all identifier pairs: best similarity, whether any pair has the same ≥ 3 digits, and whether
    the most similar pair's digits differ (``msmt1g``/``msmt2g``: a different capacity, not a variant)."""
    best, agree, differ = 0.0, False, False
    for x in a:
        dx = _digits(x)
        for y in b:
            dy = _digits(y)
            sim = id_similarity(x, y)
            if len(dx) >= 3 and dx == dy:
                agree = True
            if sim > best:
                best, differ = sim, dx != dy
    return best, agree, differ


@dataclass
class PairTexts:
    """The text fields of offers that pair features read, one entry per offer (lists indexed by position)."""

    idents: list[list[str]]  # identifiers of brand + title
    titles: list[str | None]
    brands: list[str | None]
    desc_idents: list[list[str]] | None = None  # identifiers found only in the description


def pair_feature_matrix(fused: np.ndarray, text: np.ndarray, image: np.ndarray, lexical: np.ndarray,
                        src_idents: list[list[str]], tgt_idents: list[list[str]],
                        src_text: list[str], tgt_text: list[str], src_brand: list[str | None],
                        tgt_brand: list[str | None], src_price: np.ndarray, tgt_price: np.ndarray,
                        rank: np.ndarray, gap: np.ndarray, src_desc_idents: list[list[str]] | None = None,
                        tgt_desc_idents: list[list[str]] | None = None, full_text: np.ndarray | None = None,
                        desc_missing: np.ndarray | None = None, gtin: np.ndarray | None = None) -> np.ndarray:
    """float32[n_pairs, len(PAIR_FEATURES)]; ``text``/``image`` are NaN where a side lacks the modality.

    The text fields are given per pair (``src_*[i]``, ``tgt_*[i]`` are pair i's); :func:`pair_features_at`
    takes them per offer plus the pairs' positions (each offer's text tokenised once).
    ``*_desc_idents``: identifiers found only in the description; ``full_text``: cosine of title +
    description; ``desc_missing``: a side has no description (the description features are 0 then);
    ``gtin``: 1 equal valid GTINs, -1 different ones, 0 a side has none.
    """
    both = src_desc_idents is not None and tgt_desc_idents is not None
    at = np.arange(len(fused), dtype=np.int64)
    return pair_features_at(
        PairTexts(src_idents, src_text, src_brand, src_desc_idents if both else None),
        PairTexts(tgt_idents, tgt_text, tgt_brand, tgt_desc_idents if both else None), at, at,
        fused, text, image, lexical, src_price, tgt_price, rank, gap, full_text, desc_missing, gtin)


def pair_features_at(src: PairTexts, tgt: PairTexts, s: np.ndarray, t: np.ndarray, fused: np.ndarray,
                     text: np.ndarray, image: np.ndarray, lexical: np.ndarray, src_price: np.ndarray,
                     tgt_price: np.ndarray, rank: np.ndarray, gap: np.ndarray, full_text: np.ndarray | None = None,
                     desc_missing: np.ndarray | None = None, gtin: np.ndarray | None = None) -> np.ndarray:
    """:func:`pair_feature_matrix` of the pairs ``(src offer s[i], tgt offer t[i])``, the text fields given per
    offer. Linear in the pairs with numpy set operations over integer token codes: each offer's text is
    tokenised once (not once per pair), and only identifier pairs that can be similar are compared.
    The description features (17-19, 22-24) are computed when both sides have ``desc_idents``."""
    s, t = np.asarray(s, dtype=np.int64), np.asarray(t, dtype=np.int64)
    n = len(s)
    out = np.zeros((n, len(PAIR_FEATURES)), dtype=np.float32)
    out[:, 0] = fused
    out[:, 1] = np.nan_to_num(text)
    out[:, 2] = np.isnan(text)
    out[:, 3] = np.nan_to_num(image)
    out[:, 4] = np.isnan(image)
    out[:, 5] = lexical
    with_desc = src.desc_idents is not None and tgt.desc_idents is not None
    vocab = _Vocab()
    a, b = _Tokens(src, s, vocab, with_desc), _Tokens(tgt, t, vocab, with_desc)
    for c in range(0, n, _CHUNK):  # bounded memory: the per-pair code expansions of one chunk at a time
        sl = slice(c, c + _CHUNK)
        _text_features(out[sl], a, b, a.row[s[sl]], b.row[t[sl]], vocab)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (src_price > 0) & (tgt_price > 0)
        out[:, 12] = np.where(ok, np.abs(np.log(np.where(ok, src_price, 1) / np.where(ok, tgt_price, 1))), 0.0)
    out[:, 13] = ~ok
    out[:, 15] = np.log(rank)
    out[:, 16] = gap
    if full_text is not None:
        out[:, 20] = full_text
    if desc_missing is not None:
        out[:, 21] = desc_missing
    if gtin is not None:
        out[:, 25] = gtin > 0
        out[:, 26] = gtin < 0
    return out


_CHUNK = 65_536  # pairs whose token codes are expanded at once
_WIDTH = 1 << 40  # codes < 2^40 and pairs per chunk < 2^23: a (pair, code) key fits an int64


class _Codes:
    """Sets of integer codes, one per offer, flattened (CSR: ``codes[ptr[i]:ptr[i + 1]]``, distinct)."""

    def __init__(self, sets: list) -> None:
        self.len = np.fromiter((len(x) for x in sets), dtype=np.int64, count=len(sets))
        self.ptr = np.r_[0, np.cumsum(self.len)].astype(np.int64)
        self.codes = np.fromiter((c for x in sets for c in x), dtype=np.int64, count=int(self.ptr[-1]))

    @classmethod
    def sparse(cls, n: int, entries: dict[int, set[int]]) -> _Codes:
        """``n`` sets, those not in ``entries`` empty (built without a Python step per empty set)."""
        out = cls.__new__(cls)
        out.len = np.zeros(n, dtype=np.int64)
        rows = sorted(entries)
        out.len[rows] = [len(entries[r]) for r in rows]
        out.ptr = np.r_[0, np.cumsum(out.len)].astype(np.int64)
        out.codes = np.fromiter((c for r in rows for c in entries[r]), dtype=np.int64, count=int(out.ptr[-1]))
        return out

    def expand(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pair number, code) of every code of ``rows[i]``'s set, pairs ascending."""
        lens = self.len[rows]
        pair = np.repeat(np.arange(len(rows), dtype=np.int64), lens)
        return pair, self.codes[_ranges(self.ptr[rows], lens)]


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(starts[i], starts[i] + lens[i])``."""
    total = int(lens.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(total, dtype=np.int64)


class _Vocab:
    """Integer codes of tokens (shared by both sides of the pairs); identifiers have their own code space
    (``ids``: code → string, for the identifier-similarity features)."""

    def __init__(self) -> None:
        self.words: dict[tuple[str, str], int] = {}
        self.unit_of: dict[int, int] = {}
        self.id_code: dict[str, int] = {}
        self.ids: list[str] = []

    def word(self, kind: str, w: str) -> int:
        return self.words.setdefault((kind, w), len(self.words))

    def unit_value(self, unit: str, value: float) -> int:
        """Code of a quantity; ``unit_of[code]`` is its unit's code."""
        code = self.word("q", (unit, value))
        self.unit_of[code] = self.word("u", unit)
        return code

    def idents(self, xs: list[str]) -> list[int]:
        """The code of each identifier of ``xs`` (``ids[code]`` is the identifier)."""
        code, ids, out = self.id_code, self.ids, []
        for x in xs:
            c = code.get(x)
            if c is None:
                c = code[x] = len(ids)
                ids.append(x)
            out.append(c)
        return out


class _EvidenceSets:
    """What :func:`conflict_kinds` reads of one side's offers (those at ``positions``), as code sets: identifiers
    (of brand + title, and with the description's in ``full``), colours and quantities; ``row[p]``: offer ``p``'s
    row in them. (Coding every word too, as :class:`_Tokens` does, made the conflict evidence run at 0.7x the speed
    of the rest of ``match_products`` against a 100,000-offer index.)"""

    def __init__(self, texts: PairTexts, positions: np.ndarray, vocab: _Vocab, with_desc: bool) -> None:
        self.uniq = uniq = np.unique(positions).tolist()
        self.row = np.zeros(uniq[-1] + 1 if uniq else 0, dtype=np.int64)
        self.row[uniq] = np.arange(len(uniq))
        n = len(uniq)
        ids = {k: set(vocab.idents(texts.idents[i])) for k, i in enumerate(uniq) if texts.idents[i]}
        self.ids = _Codes.sparse(n, ids)
        self.full = None
        if with_desc:
            self.full = _Codes.sparse(n, {**ids, **{k: ids.get(k, set()) | set(vocab.idents(texts.desc_idents[i]))
                                                    for k, i in enumerate(uniq) if texts.desc_idents[i]}})
        self.colours, self.units, self.quantities = _title_sets([texts.titles[i] or "" for i in uniq],
                                                                [texts.brands[i] for i in uniq], vocab)


class _Tokens(_EvidenceSets):
    """One side's offers as the pair features read them: :class:`_EvidenceSets`' identifier, colour and quantity
    sets, and every word, number and brand of the titles."""

    def __init__(self, texts: PairTexts, positions: np.ndarray, vocab: _Vocab, with_desc: bool) -> None:
        super().__init__(texts, positions, vocab, with_desc)
        titles = [texts.titles[i] or "" for i in self.uniq]
        brands = [normalize(texts.brands[i] or "") for i in self.uniq]
        self.tokens = _Codes([{vocab.word("w", w) for w in normalize(x).split()} for x in titles])
        self.numbers = _Codes([{vocab.word("n", w) for w in _NUM.findall(x)} for x in titles])
        self.brand = np.array([vocab.word("b", x) if x else -1 for x in brands], dtype=np.int64)
        self.brand_tokens = _Codes([{vocab.word("w", w) for w in x.split()} for x in brands])


_COLOUR_VALUES = pa.array(sorted(COLOURS), pa.string())
# a superset of the titles ``_QUANTITY`` finds something in (RE2 has no look-arounds; Python's \d and \s are Unicode's
# digits and spaces): a number before a unit
_SPACE = r"[\s\p{Z}\x{1c}-\x{1f}\x{85}]*"
_MAYBE_QUANTITY = (rf"\p{{Nd}}{_SPACE}-?{_SPACE}(gb|tb|mb|mhz|ghz|mm|cm|oz|mah|watt|w|va|mp|megapixel|hour|hr|ml|kg|"
                   r"lb|v|cu|pack|pk|pcs|speed|in)")


def _title_sets(titles: list[str], brands: list[str | None], vocab: _Vocab) -> tuple[_Codes, _Codes, _Codes]:
    """Per title: its colours (the colour words among its normalised words that are not its brand's: Black &
    Decker, Orange), the units it names a quantity in and those quantities (:func:`quantities`), as code sets.

    The words are found by Arrow over all the titles at once (NFKD, non-ASCII dropped, lower-cased, split on what is
    not a letter or digit: :func:`normalize`), and only the titles that may name a quantity are read by the
    Python regex; per-title Python was 0.47 s of 2.8 s for 1,000 sources against a 100,000-offer index."""
    n = len(titles)
    if not n:
        return _Codes([]), _Codes([]), _Codes([])
    raw = pa.array(titles, pa.string())
    folded = pc.ascii_lower(pc.replace_substring_regex(pc.utf8_normalize(raw, form="NFKD"), r"[^\x00-\x7f]", ""))
    words = pc.split_pattern_regex(folded, r"[^0-9a-z]+")
    flat = pc.list_flatten(words)
    hit = np.flatnonzero(pc.is_in(flat, value_set=_COLOUR_VALUES).to_numpy(zero_copy_only=False))
    named: dict[int, set[str]] = {}
    if len(hit):
        parent = pc.list_parent_indices(words).to_numpy()[hit].tolist()
        for k, w in zip(parent, flat.take(pa.array(hit)).to_pylist(), strict=True):
            named.setdefault(k, set()).add(w)
    colours: dict[int, set[int]] = {}
    for k, ws in named.items():
        if brands[k]:
            ws = ws.difference(_brand_words(brands[k]))
        colours[k] = {vocab.word("c", COLOURS[w]) for w in ws}
    units: dict[int, set[int]] = {}
    qtys: dict[int, set[int]] = {}
    maybe = pc.match_substring_regex(pc.utf8_lower(raw), _MAYBE_QUANTITY).to_numpy(zero_copy_only=False)
    for k in np.flatnonzero(maybe).tolist():
        q = _title_quantities(titles[k])
        units[k] = {vocab.word("u", u) for u, _ in q}
        qtys[k] = {vocab.unit_value(u, v) for u, v in q}
    return _Codes.sparse(n, colours), _Codes.sparse(n, units), _Codes.sparse(n, qtys)


@lru_cache(maxsize=1 << 16)
def _title_quantities(title: str) -> frozenset[tuple[str, float]]:
    """:func:`quantities` of a title, remembered: a catalog's offers come back as candidates of source after source
    and call after call, and the regex is most of what their titles cost."""
    return frozenset(quantities(title))


_BRAND_WORDS: dict[str, frozenset[str]] = {}


def _brand_words(brand: str) -> frozenset[str]:
    """A brand's normalised words (memoised: a catalog has few brands; bounded all the same)."""
    got = _BRAND_WORDS.get(brand)
    if got is None:
        if len(_BRAND_WORDS) > 100_000:
            _BRAND_WORDS.clear()
        got = _BRAND_WORDS[brand] = frozenset(normalize(brand).split())
    return got


def _common(a: _Codes, b: _Codes, ra: np.ndarray, rb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair ``i``: |a[ra[i]] ∩ b[rb[i]]|; and every common code with its pair number (pair, code)."""
    pa_, ca = a.expand(ra)
    pb, cb = b.expand(rb)
    if not len(ca) or not len(cb):
        return np.zeros(len(ra), dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    hit = _member(pa_ * _WIDTH + ca, pb * _WIDTH + cb)
    return np.bincount(pa_[hit], minlength=len(ra)), pa_[hit], ca[hit]


def _member(keys: np.ndarray, of: np.ndarray) -> np.ndarray:
    """``np.isin(keys, of)`` by binary search in the sorted ``of`` (np.isin's hashing was 10x slower here)."""
    if not len(of):
        return np.zeros(len(keys), dtype=bool)
    srt = np.sort(of)
    at = np.minimum(np.searchsorted(srt, keys), len(srt) - 1)
    return srt[at] == keys


def _jaccard(inter: np.ndarray, la: np.ndarray, lb: np.ndarray) -> np.ndarray:
    union = la + lb - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _text_features(out: np.ndarray, a: _Tokens, b: _Tokens, ra: np.ndarray, rb: np.ndarray, vocab: _Vocab) -> None:
    """Fill the identifier, number, brand and token columns of ``out`` (one row per pair ``(ra[i], rb[i])``)."""
    la, lb = a.ids.len[ra], b.ids.len[rb]
    shared = _common(a.ids, b.ids, ra, rb)[0] > 0
    out[:, 6] = shared
    out[:, 7] = (la > 0) & (lb > 0) & ~shared
    out[:, 8] = _any_partial(a.ids, b.ids, ra, rb, (la > 0) & (lb > 0) & ~shared, vocab.ids)
    out[:, 9] = _jaccard(_common(a.numbers, b.numbers, ra, rb)[0], a.numbers.len[ra], b.numbers.len[rb])
    out[:, 14] = _jaccard(_common(a.tokens, b.tokens, ra, rb)[0], a.tokens.len[ra], b.tokens.len[rb])
    ba, bb = a.brand[ra], b.brand[rb]
    both = (ba >= 0) & (bb >= 0)
    # one side names a brand: it agrees when all the brand's words are words of the other side's title
    in_b = _common(a.brand_tokens, b.tokens, ra, rb)[0] == a.brand_tokens.len[ra]
    in_a = _common(b.brand_tokens, a.tokens, rb, ra)[0] == b.brand_tokens.len[rb]
    out[:, 10] = np.where(both, ba == bb, np.where(ba >= 0, in_b, (bb >= 0) & in_a))
    out[:, 11] = both & (ba != bb)
    out[:, 27], out[:, 28], out[:, 29], out[:, 30] = _colour_and_unit_agreement(a, b, ra, rb, vocab)
    if a.full is None or b.full is None:
        return
    n_both, pair, code = _common(a.full, b.full, ra, rb)
    out[:, 17] = n_both > 0
    id_len = np.fromiter((len(x) for x in vocab.ids), dtype=np.int64, count=len(vocab.ids))
    out[:, 18] = np.bincount(pair[id_len[code] >= 6], minlength=len(ra)) > 0  # a shared identifier of ≥ 6 chars
    # both sides name identifiers in their titles, and neither title id occurs anywhere on the other side
    a_in_b = _common(a.ids, b.full, ra, rb)[0] > 0
    b_in_a = _common(b.ids, a.full, rb, ra)[0] > 0
    out[:, 19] = (la > 0) & (lb > 0) & ~a_in_b & ~b_in_a
    out[:, 22], out[:, 23], out[:, 24] = _best_id_pairs(a.full, b.full, ra, rb, vocab.ids)


def conflict_evidence(src: PairTexts, tgt: PairTexts, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per pair ``(src offer s[i], tgt offer t[i])``: whether the titles say they are two products, any of
    :func:`conflict_kinds`' evidence. The zero-shot score subtracts ``FusionConfig.conflict_penalty`` where this is
    true (:func:`pmatch_duckdb.fusion.pair_score`)."""
    kinds = conflict_kinds(src, tgt, s, t)
    return kinds["model number"] | kinds["colour"] | kinds["quantity"]


CONFLICT_KINDS = ("model number", "colour", "quantity")


def conflict_kinds(src: PairTexts, tgt: PairTexts, s: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """Per pair ``(src offer s[i], tgt offer t[i])`` and kind of evidence (:data:`CONFLICT_KINDS`): whether the
    titles say they are two products by it:

    * model number: both titles (brand + title, MPN) name identifiers, none of either side's occurs anywhere on the
      other side (title or description), and no two of ≥ 5 characters contain one another (``KXTG9341T`` /
      ``KXTG9342T`` is another model; ``DSCW150`` / ``DSCW150B`` a variant spelling);
    * colour: both titles name colours, none in common (a colour variant is another SKU);
    * quantity: a unit both titles name with no value in common (another capacity, size or pack), values a
      rounding apart (:data:`QUANTITY_ROUNDING`) counting as one.

    The trained decision model reads these as separate features (``full_id_conflict``, ``id_partial``,
    ``colour_conflict``, ``unit_conflict`` without the rounding); the review page names them."""
    s, t = np.asarray(s, dtype=np.int64), np.asarray(t, dtype=np.int64)
    n = len(s)
    out = {k: np.zeros(n, dtype=bool) for k in CONFLICT_KINDS}
    if not n:
        return out
    with_desc = src.desc_idents is not None and tgt.desc_idents is not None
    vocab = _Vocab()
    a, b = _EvidenceSets(src, s, vocab, with_desc), _EvidenceSets(tgt, t, vocab, with_desc)
    ra, rb = a.row[s], b.row[t]
    a_full = a.full if a.full is not None else a.ids  # title identifiers + the description's
    b_full = b.full if b.full is not None else b.ids
    for c in range(0, n, _CHUNK):
        x, y = ra[c:c + _CHUNK], rb[c:c + _CHUNK]
        la, lb = a.ids.len[x], b.ids.len[y]
        ids = ((la > 0) & (lb > 0) & (_common(a.ids, b_full, x, y)[0] == 0) & (_common(b.ids, a_full, y, x)[0] == 0))
        ids &= ~_any_partial(a.ids, b.ids, x, y, ids, vocab.ids)
        _, colours, _, units = _colour_and_unit_agreement(a, b, x, y, vocab)
        for i in np.flatnonzero(units):  # few pairs: values a rounding apart agree after all
            units[i] = _quantities_differ(src.titles[s[c + i]], tgt.titles[t[c + i]])
        for k, v in zip(CONFLICT_KINDS, (ids, colours, units), strict=True):
            out[k][c:c + _CHUNK] = v
    return out


QUANTITY_ROUNDING = 0.06  # values this close (relative) agree: listings round (14.7 / 14 megapixels, 24.7 / 25 cu. ft.)


def _quantities_differ(a: str | None, b: str | None) -> bool:
    """A unit both titles name with no two values within :data:`QUANTITY_ROUNDING` of each other."""
    qa, qb = _title_quantities(a or ""), _title_quantities(b or "")  # read already by _title_sets
    for unit in {u for u, _ in qa} & {u for u, _ in qb}:
        va, vb = [v for u, v in qa if u == unit], [v for u, v in qb if u == unit]
        if not any(abs(x - y) <= QUANTITY_ROUNDING * max(abs(x), abs(y)) for x in va for y in vb):
            return True
    return False


def _colour_and_unit_agreement(a: _Tokens | _EvidenceSets, b: _Tokens | _EvidenceSets, ra: np.ndarray,
                               rb: np.ndarray, vocab: _Vocab) -> tuple[np.ndarray, ...]:
    """Per pair ``(ra[i], rb[i])``: a colour in common; both name colours, none in common; a unit both name with a
    value in common; a unit both name with no value in common."""
    same_colour = _common(a.colours, b.colours, ra, rb)[0] > 0
    colour_conflict = (a.colours.len[ra] > 0) & (b.colours.len[rb] > 0) & ~same_colour
    n_units = _common(a.units, b.units, ra, rb)[0]  # units both titles name
    _, pair, code = _common(a.quantities, b.quantities, ra, rb)
    unit = np.array([vocab.unit_of[c] for c in code.tolist()], dtype=np.int64)
    agreeing = np.unique(pair * _WIDTH + unit) // _WIDTH  # one entry per (pair, unit with a value in common)
    n_agree = np.bincount(agreeing, minlength=len(ra))
    return same_colour, colour_conflict, n_agree > 0, n_units > n_agree


def _cross(a: _Codes, b: _Codes, ra: np.ndarray, rb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (code of a[ra[i]], code of b[rb[i]]) combination: (pair number, code x, code y), pairs ascending."""
    la, lb = a.len[ra], b.len[rb]
    m = la * lb
    pair = np.repeat(np.arange(len(ra), dtype=np.int64), m)
    k = np.arange(int(m.sum()), dtype=np.int64) - np.repeat(np.cumsum(m) - m, m)  # 0 .. la*lb-1 within a pair
    lbp = np.repeat(lb, m)
    x = a.codes[np.repeat(a.ptr[ra], m) + k // np.maximum(lbp, 1)]
    y = b.codes[np.repeat(b.ptr[rb], m) + k % np.maximum(lbp, 1)]
    return pair, x, y


def _any_partial(a: _Codes, b: _Codes, ra: np.ndarray, rb: np.ndarray, todo: np.ndarray, ids: list[str]
                 ) -> np.ndarray:
    """Per pair (where ``todo``): two different identifiers of ≥ 5 characters, one inside the other."""
    out = np.zeros(len(ra), dtype=bool)
    at = np.flatnonzero(todo)
    if not len(at):
        return out
    pair, x, y = _cross(a, b, ra[at], rb[at])
    id_len = np.fromiter((len(v) for v in ids), dtype=np.int64, count=len(ids))
    keep = (x != y) & (np.minimum(id_len[x], id_len[y]) >= 5)
    pair, x, y = pair[keep], x[keep], y[keep]
    if not len(pair):
        return out
    xy, inv = np.unique(np.stack([x, y], axis=1), axis=0, return_inverse=True)  # each identifier pair tested once
    inside = np.array([ids[u] in ids[v] or ids[v] in ids[u] for u, v in xy.tolist()], dtype=bool)
    out[at[pair[inside[inv.ravel()]]]] = True
    return out


def _best_id_pairs(a: _Codes, b: _Codes, ra: np.ndarray, rb: np.ndarray, ids: list[str]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`best_id_pair` of every pair's identifier sets, in numpy: the common prefix and suffix of every
    identifier combination from fixed-width code-point rows. Where several combinations share the best
    similarity, the digits differ only if they differ for all of them (the per-pair loop took the first in set
    order, which varies with Python's string hash seed)."""
    n = len(ra)
    best, agree, differ = np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    pair, x, y = _cross(a, b, ra, rb)
    if not len(pair):
        return best, agree, differ
    used, inv = np.unique(np.r_[x, y], return_inverse=True)
    strs = [ids[u] for u in used.tolist()]
    xi, yi = inv[:len(x)], inv[len(x):]
    width = max(1, max(len(v) for v in strs))
    fwd = np.array(strs, dtype=f"<U{width}").view(np.uint32).reshape(len(strs), width)
    rev = np.array([v[::-1] for v in strs], dtype=f"<U{width}").view(np.uint32).reshape(len(strs), width)
    lens = np.fromiter((len(v) for v in strs), dtype=np.int64, count=len(strs))
    digit_code: dict[str, int] = {}
    digits = np.array([digit_code.setdefault(_digits(v), len(digit_code)) for v in strs], dtype=np.int64)
    n_digits = np.fromiter((sum(c.isdigit() for c in v) for v in strs), dtype=np.int64, count=len(strs))
    col = np.arange(width + 1)
    sim = np.zeros(len(pair))
    for c in range(0, len(pair), _CHUNK):
        sx, sy = xi[c:c + _CHUNK], yi[c:c + _CHUNK]
        lo = np.minimum(lens[sx], lens[sy])
        stop = np.c_[fwd[sx] != fwd[sy], np.ones(len(sx), dtype=bool)] | (col >= lo[:, None])
        p = stop.argmax(axis=1)  # common prefix (at most the shorter length)
        stop = np.c_[rev[sx] != rev[sy], np.ones(len(sx), dtype=bool)] | (col >= (lo - p)[:, None])
        q = stop.argmax(axis=1)  # common suffix of what the prefix leaves
        sim[c:c + _CHUNK] = (p + q) / np.maximum(np.maximum(lens[sx], lens[sy]), 1)
    same_digits = digits[xi] == digits[yi]
    agree[np.unique(pair[same_digits & (n_digits[xi] >= 3)])] = True
    starts = np.r_[0, np.flatnonzero(np.diff(pair)) + 1]
    owners = pair[starts]
    best[owners] = np.maximum.reduceat(sim, starts)
    at_best = sim == best[pair]
    agreeing_best = np.zeros(n, dtype=bool)
    agreeing_best[pair[at_best & same_digits]] = True
    differ[owners] = (best[owners] > 0) & ~agreeing_best[owners]
    return best, agree, differ


def source_margins(src_pos: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per pair: ``values[i]`` minus the largest value among the other pairs of the same source
    (``src_pos[i]``); 0 where the source has a single pair. NaN counts as 0."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64))
    out = np.zeros(len(v), dtype=np.float64)
    if len(v) < 2:
        return out
    order = np.lexsort((-v, src_pos))
    s_sorted, v_sorted = np.asarray(src_pos)[order], v[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
    counts = np.diff(np.r_[starts, len(order)])
    first = np.repeat(v_sorted[starts], counts)  # the source's best value
    # its second best (the best among the others of the leader); a single pair has no other: margin 0
    second = np.repeat(np.where(counts > 1, v_sorted[np.minimum(starts + 1, len(order) - 1)], v_sorted[starts]),
                       counts)
    lead = np.zeros(len(order), dtype=bool)
    lead[starts] = True
    out[order] = v_sorted - np.where(lead, second, first)
    return out

