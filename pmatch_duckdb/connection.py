"""``connect()`` and ``install()``: the one way every entry point (Python, CLI, dbt, tests) sets up DuckDB."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from typing import Any

import duckdb

from .api import context_of, installed_context, register_context
from .context import PmatchContext, index_root_for
from .settings import Settings
from .sql import SQL_FILES, read_sql
from .udfs import (
    register_code_udfs,
    register_embedding_udfs,
    register_matching_udfs,
    register_model_udfs,
    register_review_udfs,
)
from .udfs.arrow_util import Registrar

_install_counter = itertools.count(1)


def install(con: duckdb.DuckDBPyConnection, settings: Settings | None = None, *,
            home: str | os.PathLike[str] | None = None,
            image_roots: list[str | os.PathLike[str]] | str | None = None, **options: Any) -> Settings:
    """Register pmatch's UDFs and SQL macros on ``con`` and return the settings they use.

    Safe to call again (this connection's functions are replaced). Python UDFs are shared by every
    connection to the same database, so each install registers its own, suffixed, UDFs and binds the
    public names (TEMP macros) to them: two connections with different image roots do not interfere.
    For a ``con.cursor()``, call :func:`install_macros(cur, con) <install_macros>`.
    """
    if settings is None:
        settings = Settings.create(home=home, image_roots=image_roots, **options)
    old = installed_context(con)
    if old is not None:  # re-install: replace this connection's functions, keep its temporary index folder
        for name in old.udf_names:
            with contextlib.suppress(duckdb.Error):
                con.remove_function(name)
    reg = Registrar(con, f"_{next(_install_counter)}")
    threads = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    root, temp_root = index_root_for(con, settings, reuse=old.temp_root if old is not None else None)
    ctx = PmatchContext.for_connection(con, settings=settings, index_root=root, duckdb_threads=threads,
                                       suffix=reg.suffix, temp_root=temp_root)
    register_embedding_udfs(reg, settings, threads)
    register_model_udfs(reg, settings)
    register_matching_udfs(reg, ctx)
    register_review_udfs(reg, ctx)
    register_code_udfs(reg)
    ctx.udf_names = list(reg.names)
    register_context(ctx)  # held weakly: the UDFs just registered keep ctx alive as long as the connection
    install_macros(con, suffix=reg.suffix)
    return settings


_UDF_NAME = re.compile(r"\b(_pm_[a-z_]+)\(")


def install_macros(con: duckdb.DuckDBPyConnection, parent: duckdb.DuckDBPyConnection | None = None, *,
                   suffix: str | None = None) -> None:
    """Create the SQL macros (``sql/*.sql``) on ``con``, bound to the UDFs of an installed connection.

    Use it on a cursor: ``pm.install_macros(cur, con)`` (the macros are TEMP, so per connection or
    cursor; the UDFs they call were registered by ``install(con)`` and are visible to its cursors).
    """
    if suffix is None:
        suffix = context_of(parent if parent is not None else con).suffix
    for name in SQL_FILES:
        con.execute(_UDF_NAME.sub(lambda m: f"{m.group(1)}{suffix}(", read_sql(name)))


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
