"""Small helpers to build the Arrow arrays our UDFs return."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import duckdb
import numpy as np
import pyarrow as pa

from pmatch_duckdb.errors import PmatchError

# UDF name -> the public SQL name users call (errors name the public function, not `_pm_match_3`)
PUBLIC_NAMES = {"_pm_match": "match_products", "_pm_clusters": "product_clusters", "_pm_models_list": "pm_models",
                "_pm_check_offers": "match_products", "_pm_score_pairs": "score_pairs",
                "_pm_check_pairs": "score_pairs"}


def public_name(udf: str) -> str:
    """``_pm_embed_image_path_named`` -> ``pm_embed_image``: the SQL macro a user called."""
    if udf in PUBLIC_NAMES:
        return PUBLIC_NAMES[udf]
    name = udf[1:] if udf.startswith("_") else udf
    for tail in ("_named", "_path", "_blob", "_list"):
        name = name.removesuffix(tail)
    return name


def with_public_errors(fn: Callable, public: str) -> Callable:
    """Errors leave a UDF prefixed with the public function name; a Python bug becomes a clear error."""

    @functools.wraps(fn)
    def udf(*args: object) -> object:
        try:
            return fn(*args)
        except PmatchError as e:
            msg = str(e)
            if msg.startswith(public + ":") or msg.startswith(public + " "):
                raise
            try:
                err = type(e)(f"{public}: {msg}")
            except TypeError:  # an error class with another constructor
                raise e from None
            raise err from None
        except (MemoryError, KeyboardInterrupt):
            raise
        except duckdb.Error as e:  # e.g. a table that does not exist: DuckDB's message is clear, name the function
            raise PmatchError(f"{public}: {str(e).splitlines()[0]}") from None
        except Exception as e:  # a bug: still say which public function failed and on what
            raise PmatchError(f"{public}: internal error ({type(e).__name__}: {e}); please report it") from e

    return udf


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
        self.con.create_function(full, with_public_errors(fn, public_name(name)), params, returns, type="arrow",
                                 **kwargs)
        self.names.append(full)

    def remove_all(self) -> None:
        """Unregister everything this registrar added (on re-install)."""
        for full in self.names:
            with contextlib.suppress(duckdb.Error):
                self.con.remove_function(full)
        self.names.clear()
