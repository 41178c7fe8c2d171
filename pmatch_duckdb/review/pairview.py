"""What the review page shows for one queued pair: both offers, identifiers that agree or differ,
prices and their ratio, the model's scores. Pure data — the templates escape every string."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import duckdb
import numpy as np

from ..encoders.image_io import ImagePolicy
from ..features.codes import mpn_identifiers
from ..features.lexical import identifiers
from ..offer_vectors import description_input, lexical_input
from ..offers import OPTIONAL, OfferTableError, offer_from_mapping, table_columns
from ..pair_features import CONFLICT_KINDS, PairTexts, conflict_kinds
from ..sqlident import quote_ident, quote_qualified
from .alternatives import recorded_context
from .labels import PairKey, has_labels, offer_verdicts

DESCRIPTION_CHARS = 320
PRICE_DIFFERS = 0.7  # the page marks a price ratio (min / max) below this, as it does the pair's own


@dataclass
class Segment:
    """A run of text, optionally marked ``agree`` / ``differ`` (an identifier)."""

    text: str
    mark: str | None = None


@dataclass
class ImageRef:
    """One image of an offer: shown (``ok``) or refused with the reason."""

    index: int
    name: str
    reason: str | None = None


@dataclass
class OfferView:
    """One side of the pair."""

    table: str
    id: str
    found: bool
    title: list[Segment] = field(default_factory=list)
    brand: str | None = None
    price: float | None = None
    currency: str | None = None
    description: str | None = None
    description_more: bool = False
    images: list[ImageRef] = field(default_factory=list)
    identifiers: list[tuple[str, str]] = field(default_factory=list)  # (identifier, agree|differ|only)


def read_offer(con: duckdb.DuckDBPyConnection, table: str, oid: str) -> dict | None:
    """The offer row (convention columns) with this id, or None (no such offer, or no such table: a match
    result made from a CTE or a since-dropped table)."""
    try:
        cols = table_columns(con, table)
    except OfferTableError:
        return None
    names = ["id", "title", *[c for c in OPTIONAL if c in cols]]
    names = [n for n in names if n in cols]
    rows = con.execute(f"SELECT {', '.join(quote_ident(n) for n in names)} FROM {quote_qualified(table)} "
                       "WHERE CAST(id AS VARCHAR) = ? LIMIT 1", [oid]).fetchall()
    return dict(zip(names, rows[0], strict=True)) if rows else None


def _fuzzy(ident: str) -> re.Pattern[str]:
    """``pm5988`` matches ``PM-5988``, ``pm 5988``, ``PM/59.88`` (separators between the characters)."""
    return re.compile(r"(?<![A-Za-z0-9])" + r"[\s\-/._]?".join(re.escape(c) for c in ident) + r"(?![A-Za-z0-9])",
                      re.IGNORECASE)


def _segments(text: str | None, marks: dict[str, str]) -> list[Segment]:
    """``text`` split so each occurrence of an identifier in ``marks`` (identifier -> agree / differ)
    carries its mark; spelling variants (separators, case) count as occurrences."""
    if not text:
        return []
    spans: list[tuple[int, int, str]] = []
    for ident, mark in sorted(marks.items(), key=lambda kv: -len(kv[0])):
        for m in _fuzzy(ident).finditer(text):
            if all(m.end() <= a or m.start() >= b for a, b, _ in spans):
                spans.append((m.start(), m.end(), mark))
    out, pos = [], 0
    for a, b, mark in sorted(spans):
        if a > pos:
            out.append(Segment(text[pos:a]))
        out.append(Segment(text[a:b], mark))
        pos = b
    if pos < len(text):
        out.append(Segment(text[pos:]))
    return out


def _ids(offer) -> set[str]:  # noqa: ANN001 - an Offer
    return set(identifiers(" ".join(x for x in (offer.title, (offer.description or "")[:DESCRIPTION_CHARS]) if x)))


def _text_of(offer) -> str:  # noqa: ANN001 - an Offer
    return " ".join(x for x in (offer.title, (offer.description or "")[:DESCRIPTION_CHARS]) if x)


def identifier_marks(a, b) -> tuple[dict[str, str], dict[str, str]]:  # noqa: ANN001 - two Offers
    """Per side: identifier -> ``agree`` (the other offer has it too, possibly spelled with other
    separators: ``PM 5988`` / ``PM-5988``), ``differ`` (the other offer has identifiers, not this one) or
    ``only`` (the other offer has none)."""
    ids = [_ids(a), _ids(b)]
    texts = [_text_of(a), _text_of(b)]
    out: list[dict[str, str]] = [{}, {}]
    for side in (0, 1):
        other = 1 - side
        for i in ids[side]:
            shared = i in ids[other] or bool(_fuzzy(i).search(texts[other]))
            out[side][i] = "agree" if shared else ("differ" if ids[other] else "only")
            if shared and i not in ids[other]:
                out[other][i] = "agree"  # spelled without the usual form there ("PM 5988")
    return out[0], out[1]


def two_products(a, b) -> list[str]:  # noqa: ANN001 - two Offers
    """What in the two offers' titles says they are two products (:data:`~pmatch_duckdb.pair_features.CONFLICT_KINDS`:
    another model number, colour or quantity), from what the index reads of them (brand + title and MPN, the start
    of the description): the evidence the zero-shot score is lowered for."""
    texts = []
    for o in (a, b):
        idents = list(dict.fromkeys(identifiers(lexical_input(o)) + mpn_identifiers(o.mpn)))
        desc = [x for x in identifiers(description_input(o)) if x not in idents]
        texts.append(PairTexts([idents], [o.title], [o.brand], [desc]))
    at = np.zeros(1, dtype=np.int64)
    kinds = conflict_kinds(texts[0], texts[1], at, at)
    return [k for k in CONFLICT_KINDS if kinds[k][0]]


def pair_view(con: duckdb.DuckDBPyConnection, entry: dict, policy: ImagePolicy
              ) -> tuple[OfferView, OfferView, list[str]]:
    """Both sides of a queue entry, ready for the template, and :func:`two_products` of them (empty where a side
    cannot be read)."""
    rows = [read_offer(con, entry["source_ref"], entry["source_id"]),
            read_offer(con, entry["target_ref"], entry["target_id"])]
    offers = [offer_from_mapping(r) if r else None for r in rows]
    marks = list(identifier_marks(*offers)) if all(offers) else [
        {i: "only" for i in _ids(o)} if o else {} for o in offers]
    views = []
    for side, (o, ref, oid) in enumerate(zip(offers, (entry["source_table"], entry["target_table"]),
                                             (entry["source_id"], entry["target_id"]), strict=True)):
        if o is None:
            views.append(OfferView(ref, oid, found=False))
            continue
        mk = marks[side]
        shown = {i: m for i, m in mk.items() if m != "only"}
        desc = o.description or None
        imgs = []
        for i, p in enumerate(o.images or []):
            _, reason = policy.resolve(p)
            imgs.append(ImageRef(i, p.rsplit("/", 1)[-1], reason))
        views.append(OfferView(
            table=ref, id=oid, found=True, title=_segments(o.title, shown), brand=o.brand, price=o.price,
            currency=o.currency, description=_segments(desc[:DESCRIPTION_CHARS], shown) if desc else None,
            description_more=bool(desc and len(desc) > DESCRIPTION_CHARS), images=imgs,
            identifiers=sorted(mk.items(), key=lambda t: (t[1] != "agree", t[0]))))
    return views[0], views[1], two_products(*offers) if all(offers) else []


def image_path(con: duckdb.DuckDBPyConnection, entry: dict, side: str, n: int) -> str | None:
    """The n-th image path of one side's offer (None if there is none). ``side``: ``s`` (the supplier offer),
    ``t`` (the catalog product) or ``c1`` … ``c4`` (the entry's k-th listed other candidate, as recorded when it
    was queued: the browser names a place in the list, never an id or a path)."""
    if side in ("s", "t"):
        ref, oid = ((entry["source_ref"], entry["source_id"]) if side == "s"
                    else (entry["target_ref"], entry["target_id"]))
    else:
        m = re.fullmatch(r"c([1-9][0-9]?)", side)
        listed = (recorded_context(entry.get("alternatives")) or {}).get("others", []) if m else []
        if not m or int(m.group(1)) > len(listed):
            return None
        ref, oid = entry["target_ref"], str(listed[int(m.group(1)) - 1]["id"])
    row = read_offer(con, ref, oid)
    if row is None:
        return None
    imgs = offer_from_mapping(row).images or []
    return imgs[n] if 0 <= n < len(imgs) else None


@dataclass
class Candidate:
    """Another candidate of the offer on screen: its title with the identifiers it shares with that offer (or not)
    marked, its brand, price and first image (for a pick judged at a glance), its score and decision in the
    result, and its current verdict with that offer (None: not labelled)."""

    id: str
    score: float
    decision: str | None
    found: bool
    title: list[Segment] = field(default_factory=list)
    verdict: str | None = None
    brand: str | None = None
    price: float | None = None
    currency: str | None = None
    image: ImageRef | None = None  # the first image, or None (no images); refused ones carry the reason
    price_differs: bool = False  # its price and the supplier offer's are further apart than the page's 0.7 ratio


@dataclass
class CandidateContext:
    """The pair on screen among its offer's candidates in the match result: ``rank`` of ``of`` (1 = the result's
    best), and the best other candidates."""

    rank: int
    of: int
    others: list[Candidate] = field(default_factory=list)


def _ratio(a: float | None, b: float | None) -> float:
    """min / max of two prices; 1.0 where either is missing or not positive (nothing to compare)."""
    if not a or not b or a <= 0 or b <= 0:
        return 1.0
    return min(a, b) / max(a, b)


def _first_image(offer, policy: ImagePolicy | None) -> ImageRef | None:  # noqa: ANN001 - an Offer
    """The offer's first image, checked against the image roots (None: no images, or no policy given)."""
    if policy is None or not offer.images:
        return None
    p = offer.images[0]
    return ImageRef(0, p.rsplit("/", 1)[-1], policy.resolve(p)[1])


def other_candidates(con: duckdb.DuckDBPyConnection, entry: dict, policy: ImagePolicy | None = None,
                     said: dict[PairKey, str] | None = None) -> CandidateContext | None:
    """The entry's place among its offer's candidates as recorded when it was queued (``alternatives.py``), each
    other candidate read from the target table now (with its first image checked against ``policy``'s roots when
    one is given). ``said``: the verdicts in force on the offer's pairs (:func:`labels.offer_verdicts`), where the
    caller has read them already. None for a queue written before that was recorded."""
    d = recorded_context(entry.get("alternatives"))
    if d is None:
        return None
    row = read_offer(con, entry["source_ref"], entry["source_id"])
    offer = offer_from_mapping(row) if row else None
    others = []
    for o in d.get("others", []):
        crow = read_offer(con, entry["target_ref"], str(o["id"]))
        cand = offer_from_mapping(crow) if crow else None
        marks = identifier_marks(offer, cand)[1] if offer and cand else {}
        if cand is None:
            others.append(Candidate(str(o["id"]), float(o["score"]), o.get("decision"), False))
            continue
        others.append(Candidate(str(o["id"]), float(o["score"]), o.get("decision"), True,
                                _segments(cand.title, {i: m for i, m in marks.items() if m != "only"}),
                                brand=cand.brand, price=cand.price, currency=cand.currency,
                                image=_first_image(cand, policy),
                                price_differs=_ratio(offer.price if offer else None, cand.price) < PRICE_DIFFERS))
    if others and (said is not None or has_labels(con)):
        if said is None:
            said = offer_verdicts(con, entry["source_table"], entry["target_table"], entry["source_id"])
        for c in others:
            c.verdict = said.get(PairKey.of(entry["source_table"], entry["source_id"], entry["target_table"], c.id))
    return CandidateContext(int(d["rank"]), int(d["of"]), others)
