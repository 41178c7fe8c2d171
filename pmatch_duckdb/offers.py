"""The offer-table convention and reading offers out of DuckDB.

An offer table (or view) has ``id`` (any type, unique), ``title`` VARCHAR and optionally
``description``, ``brand``, ``images`` (VARCHAR[] of paths, or one VARCHAR), ``price`` DOUBLE,
``currency``, ``gtin`` (GTIN-8/12/13/14, EAN or UPC; VARCHAR, or an integer type) and ``mpn`` (the
manufacturer part number). Tables with other column names are mapped with a view.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import duckdb

from .errors import PmatchError
from .features.codes import normalize_gtin, normalize_mpn
from .offer_schema import check_offer_types
from .sqlident import quote_ident, quote_qualified

REQUIRED = ("id", "title")
OPTIONAL = ("description", "brand", "images", "price", "currency", "gtin", "mpn")


class OfferTableError(PmatchError):
    """The table does not exist or does not follow the offer-table convention."""


@dataclass
class Offer:
    """One offer, normalised: id as text, images as a list, price as float or None, GTIN in its 14-digit
    form (None when missing or invalid), MPN trimmed."""

    id: str
    title: str | None
    description: str | None = None
    brand: str | None = None
    images: list[str] | None = None
    price: float | None = None
    currency: str | None = None
    gtin: str | None = None
    mpn: str | None = None

    def content_hash(self, salt: str = "") -> str:
        """Stable hash of everything that feeds the embeddings (unchanged hash → not re-embedded). GTIN and
        MPN feed none, so they are not in it: a changed code rewrites the row without re-embedding."""
        payload = json.dumps([self.title, self.description, self.brand, self.images, self.price,
                              self.currency, salt], ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else str(v)


def _price(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f >= 0 else None


def _images(v: Any) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        return [v] if v.strip() else []
    return [x for x in v if isinstance(x, str) and x.strip()]


def offer_from_mapping(row: dict[str, Any]) -> Offer:
    """Normalise one row (dict with convention column names) into an :class:`Offer`."""
    if row.get("id") is None:
        raise OfferTableError("an offer has a NULL id; every offer needs a unique, non-NULL id")
    return Offer(id=_text(row["id"]), title=_text(row.get("title")), description=_text(row.get("description")),
                 brand=_text(row.get("brand")), images=_images(row.get("images")), price=_price(row.get("price")),
                 currency=_text(row.get("currency")), gtin=normalize_gtin(row.get("gtin")),
                 mpn=normalize_mpn(row.get("mpn")))


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """Column name (lower-case) → DuckDB type of a table or view; clear error when it does not exist."""
    q = quote_qualified(table)
    try:
        rel = con.execute(f"SELECT * FROM {q} LIMIT 0")
        desc = rel.description
        rel.fetchall()
    except duckdb.CatalogException:
        raise OfferTableError(f"table or view {table!r} does not exist") from None
    return {d[0].lower(): str(d[1]) for d in desc}


def read_offers(con: duckdb.DuckDBPyConnection, table: str) -> list[Offer]:
    """Read every row of an offer table; checks required columns and id uniqueness."""
    cols = table_columns(con, table)
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise OfferTableError(
            f"table {table!r} lacks required column(s) {', '.join(missing)}; it has {', '.join(cols)}. "
            "Map your columns with a view, e.g. CREATE VIEW offers AS SELECT sku AS id, name AS title, ... FROM t"
        )
    check_offer_types(cols, table)
    # ids as DuckDB writes them (match_products joins on CAST(id AS VARCHAR))
    select = [f"CAST({quote_ident(c)} AS VARCHAR)" if c == "id" else quote_ident(c)
              for c in REQUIRED + OPTIONAL if c in cols]
    rows = con.execute(f"SELECT {', '.join(select)} FROM {quote_qualified(table)}").fetchall()
    names = [c for c in REQUIRED + OPTIONAL if c in cols]
    try:
        offers = [offer_from_mapping(dict(zip(names, r, strict=True))) for r in rows]
    except OfferTableError as e:
        raise OfferTableError(f"table {table!r}: {e}") from None
    seen: set[str] = set()
    for o in offers:
        if o.id in seen:
            raise OfferTableError(f"table {table!r} has duplicate id {o.id!r}; ids must be unique")
        seen.add(o.id)
    return offers
