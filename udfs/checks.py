"""``_pm_check_offers``: the column-type check ``match_products`` runs on its source before any row."""

from __future__ import annotations

import pyarrow as pa
from duckdb import sqltypes as T

from pmatch_duckdb.errors import PmatchError
from pmatch_duckdb.offer_schema import check_offer_types, struct_columns

from .arrow_util import Registrar, as_pylist

_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                  "UBIGINT", "UHUGEINT"}


def register_check_udfs(reg: Registrar) -> None:
    """Register ``_pm_check_offers(source, typeof(row), typeof(k)) -> BOOLEAN`` (true, or a clear error)."""

    def check_offers(sources: pa.ChunkedArray, row_types: pa.ChunkedArray, k_types: pa.ChunkedArray) -> pa.Array:
        srcs, rts, kts = as_pylist(sources), as_pylist(row_types), as_pylist(k_types)
        for src, rt, kt in {(s, r, k) for s, r, k in zip(srcs, rts, kts, strict=True)}:
            if kt not in _INTEGER_TYPES:
                raise PmatchError(f"k must be a positive integer, got a {kt} value")
            check_offer_types(struct_columns(rt), f"source {src}")
        return pa.array([True] * len(srcs), type=pa.bool_())

    reg.add("_pm_check_offers", check_offers, [T.VARCHAR, T.VARCHAR, T.VARCHAR], T.BOOLEAN, null_handling="special")
