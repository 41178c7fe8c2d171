"""Small helpers to build the Arrow arrays our UDFs return."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import duckdb
import numpy as np
import pyarrow as pa


def vectors_to_arrow(vectors: np.ndarray, valid: np.ndarray) -> pa.FixedSizeListArray:
    """``float32[n, dim]`` + validity mask → Arrow fixed-size list (``FLOAT[dim]`` in DuckDB), NULL where invalid."""
    n, dim = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~valid))


def as_pylist(arr: pa.ChunkedArray | pa.Array) -> list:
    """A UDF argument as a Python list (``None`` for NULL)."""
    return arr.to_pylist()


def replace_function(con: duckdb.DuckDBPyConnection, name: str, fn: Callable, params: list,
                     returns: duckdb.sqltype, **kwargs: object) -> None:
    """Register an Arrow UDF, replacing an earlier registration of the same name (re-install is safe)."""
    with contextlib.suppress(duckdb.Error):  # "function not found": nothing to replace
        con.remove_function(name)
    con.create_function(name, fn, params, returns, type="arrow", **kwargs)
