"""Checks the table macros run once, before any row reaches a matching UDF.

``match_products`` and ``score_pairs`` bind their tables with DuckDB's ``query_table``; a missing ``id``
would otherwise be a binder error naming nothing the user wrote, and a duplicate id could only be seen
per 2,048-row chunk. The macros pass the row types of the tables (``typeof`` of a row, also for an empty
table) and the duplicated ids of the whole source; these UDFs turn them into one clear error naming the
public function, the table and the column.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
from duckdb import sqltypes as T

from pmatch_duckdb.errors import PmatchError
from pmatch_duckdb.offer_schema import check_offer_types, struct_columns
from pmatch_duckdb.offers import REQUIRED, OfferTableError

from .arrow_util import Registrar, as_pylist

_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                  "UBIGINT", "UHUGEINT"}
_SHOW_DUPLICATES = 10  # the macros pass at most this many + 1 duplicated ids


def require_columns(function: str, role: str, table: str, row_type: str, required: tuple[str, ...]) -> dict:
    """Column name → type of a table from ``typeof`` of its row; a clear error when a required column is missing."""
    cols = {name.lower(): t for name, t in struct_columns(row_type).items()}
    missing = [c for c in required if c not in cols]
    if missing:
        raise OfferTableError(
            f"{function}: {role} {table!r} lacks required column(s) {', '.join(missing)} (needs "
            f"{', '.join(required)}); it has {', '.join(cols) or 'no columns'}. Map your columns with a view, "
            f"e.g. CREATE VIEW v AS SELECT sku AS {missing[0]}, ... FROM {table}")
    return cols


def check_unique(function: str, table: str, duplicated: list[str] | None) -> None:
    """A clear error when the source's ids (as text) are not unique."""
    if duplicated:
        shown = ", ".join(repr(d) for d in duplicated[:_SHOW_DUPLICATES])
        more = " and more" if len(duplicated) > _SHOW_DUPLICATES else ""
        raise OfferTableError(f"{function}: source {table!r} has duplicate id {shown}{more}; ids must be unique")


def register_check_udfs(reg: Registrar) -> None:
    """Register ``_pm_check_offers`` (match_products) and ``_pm_check_pairs`` (score_pairs)."""

    def check_offers(sources: pa.ChunkedArray, row_types: pa.ChunkedArray, k_types: pa.ChunkedArray,
                     targets: pa.ChunkedArray, target_types: pa.ChunkedArray, duplicated: pa.ChunkedArray) -> pa.Array:
        args = zip(as_pylist(sources), as_pylist(row_types), as_pylist(k_types), as_pylist(targets),
                   as_pylist(target_types), as_pylist(duplicated), strict=True)
        seen = set()
        n = 0
        for src, rt, kt, tgt, tt, dup in args:
            n += 1
            key = (src, rt, kt, tgt, tt, tuple(dup or ()))
            if key in seen:
                continue
            seen.add(key)
            if kt not in _INTEGER_TYPES:
                raise PmatchError(f"k must be a positive integer, got a {kt} value")
            check_offer_types(require_columns("match_products", "source", src, rt, REQUIRED), f"source {src}")
            check_offer_types(require_columns("match_products", "target", tgt, tt, REQUIRED), f"target {tgt}")
            check_unique("match_products", src, dup)
        return pa.array([True] * n, type=pa.bool_())

    def check_pairs(sources: pa.ChunkedArray, row_types: pa.ChunkedArray, targets: pa.ChunkedArray,
                    target_types: pa.ChunkedArray, pairs: pa.ChunkedArray, pair_types: pa.ChunkedArray) -> pa.Array:
        args = list(zip(as_pylist(sources), as_pylist(row_types), as_pylist(targets), as_pylist(target_types),
                        as_pylist(pairs), as_pylist(pair_types), strict=True))
        for src, rt, tgt, tt, prs, pt in set(args):
            check_offer_types(require_columns("score_pairs", "source", src, rt, REQUIRED), f"source {src}")
            check_offer_types(require_columns("score_pairs", "target", tgt, tt, REQUIRED), f"target {tgt}")
            require_columns("score_pairs", "pairs table", prs, pt, ("source_id", "target_id"))
        return pa.array([True] * len(args), type=pa.bool_())

    reg.add("_pm_check_offers", check_offers, [T.VARCHAR, T.VARCHAR, T.VARCHAR, T.VARCHAR, T.VARCHAR,
                                               duckdb.list_type(T.VARCHAR)],
            T.BOOLEAN, null_handling="special")
    reg.add("_pm_check_pairs", check_pairs, [T.VARCHAR] * 6, T.BOOLEAN, null_handling="special")
