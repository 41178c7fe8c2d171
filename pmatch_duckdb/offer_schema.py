"""Column types of the offer-table convention, checked before any row is read.

A wrong column type gets one clear error naming the function, the column, its type and what is
expected (with the cast that fixes it) instead of a Python exception from deep inside a UDF or a
column silently ignored. Used by ``pm_index`` (through :func:`pmatch_duckdb.offers.read_offers`) and by
``match_products`` (its macro passes ``typeof`` of the source rows to ``_pm_check_offers``).
"""

from __future__ import annotations

import duckdb

from .errors import PmatchError

_INTEGERS = {"tinyint", "smallint", "integer", "bigint", "hugeint", "utinyint", "usmallint", "uinteger",
             "ubigint", "uhugeint"}
_NUMBERS = _INTEGERS | {"float", "double", "decimal"}
_TEXT = {"varchar", "enum"}
# ids are compared as text (CAST(id AS VARCHAR)) in SQL and in Python: only types whose text form is
# exact and the same on both sides (no floats: 0.1 vs 0.10000000149; no BOOLEAN: true vs True)
_ID = _INTEGERS | _TEXT | {"uuid", "date", "timestamp"}

# column -> (accepted type ids, what to tell the user it expects, how to fix it)
RULES: dict[str, tuple[set[str], str, str]] = {
    "id": (_ID, "an integer, VARCHAR, UUID, DATE or TIMESTAMP (unique, non-NULL)", "CAST(id AS VARCHAR) AS id"),
    "title": (_TEXT, "VARCHAR", "CAST(title AS VARCHAR) AS title"),
    "description": (_TEXT, "VARCHAR", "CAST(description AS VARCHAR) AS description"),
    "brand": (_TEXT, "VARCHAR", "CAST(brand AS VARCHAR) AS brand"),
    "currency": (_TEXT, "VARCHAR", "CAST(currency AS VARCHAR) AS currency"),
    "images": (_TEXT | {"list", "array"}, "VARCHAR[] (image paths) or VARCHAR (one path)",
               "[CAST(image AS VARCHAR)] AS images"),
    "price": (_NUMBERS, "a number (DOUBLE, DECIMAL or an integer type)", "TRY_CAST(price AS DOUBLE) AS price"),
    "gtin": (_TEXT | _NUMBERS, "VARCHAR or an integer type (GTIN-8/12/13/14)", "CAST(gtin AS VARCHAR) AS gtin"),
    "mpn": (_TEXT | _INTEGERS, "VARCHAR", "CAST(mpn AS VARCHAR) AS mpn"),
}


class OfferTypeError(PmatchError):
    """A column of an offer table has a type the offer convention does not accept."""


def _accepted(column: str, t: object) -> bool:
    ids, _, _ = RULES[column]
    if t.id == "null":  # an all-NULL column (e.g. `NULL AS brand` in a view): nothing to read
        return column != "id"
    if t.id not in ids:
        return False
    if t.id in ("list", "array"):
        return _element(t).id in _TEXT
    return True


def _element(t: object) -> object:
    """The element type of a LIST or ARRAY type."""
    text = str(t)
    return duckdb.sqltype(text[: text.rindex("[")])


def check_offer_types(columns: dict[str, object], table: str) -> None:
    """Raise :class:`OfferTypeError` for the first convention column whose type is not accepted.

    ``columns`` maps (lower-case) column names to DuckDB types or their names; other columns are ignored.
    """
    for name, typ in columns.items():
        col = name.lower()
        if col not in RULES:
            continue
        t = duckdb.sqltype(typ) if isinstance(typ, str) else typ
        if not _accepted(col, t):
            _, expected, fix = RULES[col]
            raise OfferTypeError(
                f"column {col!r} of {table!r} is {t}; expected {expected}. Map it with a view, e.g. "
                f"CREATE VIEW v AS SELECT * REPLACE ({fix}) FROM {table}")


def struct_columns(row_type: str) -> dict[str, object]:
    """``typeof`` of a row (``STRUCT(id INTEGER, title VARCHAR, ...)``) → column name → type."""
    t = duckdb.sqltype(row_type)
    if t.id != "struct":
        raise OfferTypeError(f"expected the row type of a table, got {row_type!r}")
    return {name.lower(): child for name, child in t.children}
