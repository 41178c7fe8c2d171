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


class Registrar:
    """Registers Arrow UDFs under install-unique names (``<name><suffix>``) and remembers them.

    DuckDB keeps Python UDFs in the catalog of the whole database, shared by every connection and
    cursor of it, while each connection may have its own settings (image roots, models). So each
    ``install`` registers its own suffixed UDFs, and the public names are per-connection TEMP
    macros (sql/*.sql) bound to that suffix.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, suffix: str) -> None:
        self.con = con
        self.suffix = suffix
        self.names: list[str] = []

    def add(self, name: str, fn: Callable, params: list, returns: duckdb.sqltype, **kwargs: object) -> None:
        """Register ``fn`` as ``name + suffix`` (an Arrow UDF)."""
        full = name + self.suffix
        self.con.create_function(full, fn, params, returns, type="arrow", **kwargs)
        self.names.append(full)

    def remove_all(self) -> None:
        """Unregister everything this registrar added (on re-install)."""
        for full in self.names:
            with contextlib.suppress(duckdb.Error):
                self.con.remove_function(full)
        self.names.clear()
