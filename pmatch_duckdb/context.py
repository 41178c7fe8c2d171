"""What one installed connection knows: its settings, its index root and the connection itself."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb

from .settings import Settings

_temp_roots: list[Path] = []


def _cleanup() -> None:
    for p in _temp_roots:
        shutil.rmtree(p, ignore_errors=True)


atexit.register(_cleanup)


def index_root_for(con: duckdb.DuckDBPyConnection, settings: Settings) -> Path:
    """``shop.duckdb`` → ``shop.pmatch/``; an in-memory database gets a temporary folder (or settings.index_dir)."""
    if settings.index_dir is not None:
        return settings.index_dir
    rows = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
    path = rows[0][0] if rows else None
    if path:
        p = Path(path).resolve()
        return p.with_name(p.stem + ".pmatch")
    tmp = Path(tempfile.mkdtemp(prefix="pmatch-memory-"))
    _temp_roots.append(tmp)
    return tmp


@dataclass
class PmatchContext:
    """Settings + index root of an installed connection (UDFs hold one; never run SQL on ``con`` inside a UDF, use a cursor)."""

    con: duckdb.DuckDBPyConnection
    settings: Settings
    index_root: Path
    duckdb_threads: int
    suffix: str = ""  # appended to every UDF name this install registered (see udfs.arrow_util.Registrar)
