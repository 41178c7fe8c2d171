"""``connect()`` and ``install()``: the one way every entry point (Python, CLI, dbt, tests) sets up DuckDB."""

from __future__ import annotations

import os
from typing import Any

import duckdb

from .api import register_context
from .context import PmatchContext, index_root_for
from .settings import Settings
from .sql import SQL_FILES, read_sql
from .udfs import register_embedding_udfs, register_matching_udfs, register_model_udfs


def install(con: duckdb.DuckDBPyConnection, settings: Settings | None = None, *,
            home: str | os.PathLike[str] | None = None,
            image_roots: list[str | os.PathLike[str]] | str | None = None, **options: Any) -> Settings:
    """Register pmatch's UDFs and SQL macros on ``con`` and return the settings they use.

    Safe to call again (functions are replaced). Call it on each ``con.cursor()`` you use too:
    the macros are TEMP and so per connection.
    """
    if settings is None:
        settings = Settings.create(home=home, image_roots=image_roots, **options)
    threads = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    register_embedding_udfs(con, settings, threads)
    register_model_udfs(con, settings)
    ctx = PmatchContext(con=con, settings=settings, index_root=index_root_for(con, settings), duckdb_threads=threads)
    register_matching_udfs(con, ctx)
    register_context(ctx)
    install_macros(con)
    return settings


def install_macros(con: duckdb.DuckDBPyConnection) -> None:
    """Create the SQL macros (``sql/*.sql``) on ``con``: enough for a cursor of an installed connection.

    The UDFs behind the macros are registered database-wide by :func:`install` and visible from
    cursors; the macros are TEMP and belong to one connection (or cursor).
    """
    for name in SQL_FILES:
        con.execute(read_sql(name))


def connect(database: str | os.PathLike[str] = ":memory:", *, read_only: bool = False,
            config: dict[str, Any] | None = None, home: str | os.PathLike[str] | None = None,
            image_roots: list[str | os.PathLike[str]] | str | None = None,
            **options: Any) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB database (file or ``":memory:"``) with all pmatch functions registered.

    ``home``: pmatch home (model bundles); default ``$PMATCH_HOME`` or a per-user data dir.
    ``image_roots``: directories image paths must lie under (default: the current directory).
    Other keyword options are :class:`Settings` fields (``max_image_pixels``, ``text_model``, ...).
    """
    settings = Settings.create(home=home, image_roots=image_roots, **options)
    con = duckdb.connect(str(database), read_only=read_only, config=config or {})
    install(con, settings)
    return con
