"""``pm_gtin`` / ``pm_gtin_error``: the GTIN check of the offer convention's ``gtin`` column, as SQL functions
(backed by ``_pm_gtin`` / ``_pm_gtin_error``; the macros in ``sql/codes.sql`` restore the leading zeros an
integer column lost)."""

from __future__ import annotations

import pyarrow as pa
from duckdb import sqltypes as T

from pmatch_duckdb.features.codes import gtin_problem, normalize_gtin

from .arrow_util import Registrar


def register_code_udfs(reg: Registrar) -> None:
    """Register ``_pm_gtin(VARCHAR)`` and ``_pm_gtin_error(VARCHAR)``."""

    def gtin(values: pa.Array) -> pa.Array:
        return pa.array([normalize_gtin(v) for v in values.to_pylist()], pa.string())

    def gtin_error(values: pa.Array) -> pa.Array:
        return pa.array([gtin_problem(v) for v in values.to_pylist()], pa.string())

    reg.add("_pm_gtin", gtin, [T.VARCHAR], T.VARCHAR, null_handling="special")
    reg.add("_pm_gtin_error", gtin_error, [T.VARCHAR], T.VARCHAR, null_handling="special")
