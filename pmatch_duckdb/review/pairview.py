"""What the review page shows for one queued pair: both offers, identifiers that agree or differ,
prices and their ratio, the model's scores. Pure data — the templates escape every string."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import duckdb

from ..encoders.image_io import ImagePolicy
from ..features.lexical import identifiers
from ..offers import OPTIONAL, offer_from_mapping, table_columns
from ..sqlident import quote_ident, quote_qualified

_ID_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[-/.][A-Za-z0-9]+)*")
DESCRIPTION_CHARS = 320


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
    """The offer row (convention columns) with this id, or None."""
    cols = table_columns(con, table)
    names = ["id", "title", *[c for c in OPTIONAL if c in cols]]
    names = [n for n in names if n in cols]
    rows = con.execute(f"SELECT {', '.join(quote_ident(n) for n in names)} FROM {quote_qualified(table)} "
                       "WHERE CAST(id AS VARCHAR) = ? LIMIT 1", [oid]).fetchall()
    return dict(zip(names, rows[0], strict=True)) if rows else None


def _segments(text: str | None, mine: set[str], theirs: set[str]) -> list[Segment]:
    """``text`` split so identifier tokens carry ``agree`` (both offers) or ``differ`` (only here while the
    other offer has identifiers of its own)."""
    if not text:
        return []
    out, pos = [], 0
    for m in _ID_TOKEN.finditer(text):
        key = re.sub(r"[-/.]", "", m.group(0)).lower()
        if key not in mine:
            continue
        mark = "agree" if key in theirs else ("differ" if theirs else None)
        if mark is None:
            continue
        if m.start() > pos:
            out.append(Segment(text[pos:m.start()]))
        out.append(Segment(m.group(0), mark))
        pos = m.end()
    if pos < len(text):
        out.append(Segment(text[pos:]))
    return out


def _ids(offer) -> set[str]:  # noqa: ANN001 - an Offer
    return set(identifiers(" ".join(x for x in (offer.title, (offer.description or "")[:DESCRIPTION_CHARS]) if x)))


def pair_view(con: duckdb.DuckDBPyConnection, entry: dict, policy: ImagePolicy) -> tuple[OfferView, OfferView]:
    """Both sides of a queue entry, ready for the template."""
    rows = [read_offer(con, entry["source_ref"], entry["source_id"]),
            read_offer(con, entry["target_ref"], entry["target_id"])]
    offers = [offer_from_mapping(r) if r else None for r in rows]
    ids = [_ids(o) if o else set() for o in offers]
    views = []
    for side, (o, ref, oid) in enumerate(zip(offers, (entry["source_table"], entry["target_table"]),
                                             (entry["source_id"], entry["target_id"]), strict=True)):
        if o is None:
            views.append(OfferView(ref, oid, found=False))
            continue
        mine, theirs = ids[side], ids[1 - side]
        desc = o.description or None
        imgs = []
        for i, p in enumerate(o.images or []):
            _, reason = policy.resolve(p)
            imgs.append(ImageRef(i, p.rsplit("/", 1)[-1], reason))
        views.append(OfferView(
            table=ref, id=oid, found=True, title=_segments(o.title, mine, theirs), brand=o.brand, price=o.price,
            currency=o.currency, description=_segments(desc[:DESCRIPTION_CHARS], mine, theirs) if desc else None,
            description_more=bool(desc and len(desc) > DESCRIPTION_CHARS), images=imgs,
            identifiers=sorted(((i, "agree" if i in theirs else "differ" if theirs else "only") for i in mine),
                               key=lambda t: (t[1] != "agree", t[0]))))
    return views[0], views[1]


def image_path(con: duckdb.DuckDBPyConnection, entry: dict, side: str, n: int) -> str | None:
    """The n-th image path of one side's offer (None if there is none)."""
    ref, oid = (entry["source_ref"], entry["source_id"]) if side == "s" else (entry["target_ref"], entry["target_id"])
    row = read_offer(con, ref, oid)
    if row is None:
        return None
    imgs = offer_from_mapping(row).images or []
    return imgs[n] if 0 <= n < len(imgs) else None
