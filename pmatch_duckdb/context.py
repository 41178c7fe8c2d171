"""What one installed connection knows: its settings, its index root and (weakly) the connection itself.

Lifetime: the UDFs an ``install`` registers hold the context; DuckDB drops them when the connection is
closed or garbage-collected, and with them the context. The context holds the connection only through
a weak reference (a strong one would form a cycle through DuckDB's C++ catalog that Python's collector
cannot see, keeping every connection and its database alive until process exit). When the last context
of a temporary index folder goes, the folder is removed (:class:`TempIndexRoot`).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from .errors import PmatchError
from .settings import Settings


class TempIndexRoot:
    """A temporary index folder for an in-memory database, removed when no context uses it any more
    (the connection was closed or collected) or at process exit, whichever comes first."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="pmatch-memory-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), ignore_errors=True)


def index_root_for(con: duckdb.DuckDBPyConnection, settings: Settings,
                   reuse: TempIndexRoot | None = None) -> tuple[Path, TempIndexRoot | None]:
    """``shop.duckdb`` → ``shop.pmatch/``; an in-memory database gets a temporary folder (or settings.index_dir).

    Returns the root and, for a temporary folder, the object that owns it (keep it alive while the root is
    used). ``reuse``: the temporary folder of an earlier install on the same connection (its index stays).
    """
    if settings.index_dir is not None:
        return settings.index_dir, None
    rows = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
    path = rows[0][0] if rows else None
    if path:
        p = Path(path).resolve()
        return p.with_name(p.stem + ".pmatch"), None
    tmp = reuse if reuse is not None else TempIndexRoot()
    return tmp.path, tmp


@dataclass(eq=False)
class PmatchContext:
    """Settings + index root of an installed connection (UDFs hold one; never run SQL on ``con`` inside a UDF, use a cursor)."""

    con_ref: Callable[[], duckdb.DuckDBPyConnection | None]  # a weakref.ref to the connection
    settings: Settings
    index_root: Path
    duckdb_threads: int
    suffix: str = ""  # appended to every UDF name this install registered (see udfs.arrow_util.Registrar)
    temp_root: TempIndexRoot | None = None  # owner of index_root when it is a temporary folder
    udf_names: list[str] = field(default_factory=list)  # what to unregister on a re-install

    @classmethod
    def for_connection(cls, con: duckdb.DuckDBPyConnection, **kwargs: object) -> PmatchContext:
        """A context that refers to ``con`` weakly."""
        return cls(con_ref=weakref.ref(con), **kwargs)  # type: ignore[arg-type]

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The installed connection (an error once it has been garbage-collected)."""
        con = self.con_ref()
        if con is None:
            raise PmatchError("the pmatch connection this function belongs to no longer exists")
        return con
