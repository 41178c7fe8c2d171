"""SQL macro files installed by ``pmatch_duckdb.install``; read them to see what each function does."""

from __future__ import annotations

from importlib import resources

SQL_FILES = ("embed.sql", "match.sql", "review.sql", "codes.sql")


def read_sql(name: str) -> str:
    """Text of one of the packaged SQL files."""
    return resources.files(__package__).joinpath(name).read_text()
