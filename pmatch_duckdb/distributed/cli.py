"""What ``pmatch index ... --ray`` and ``pmatch match ... --ray`` run (a DuckDB table in, the usual index/result out)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from ..api import context_of
from ..review.labels import current_verdicts, table_key
from ..sqlident import check_index_name, index_name_for, quote_qualified
from ..store import RefreshStats
from .index import index_dataset
from .match import MatchOutput, match_dataset
from .sources import duckdb_dataset


def index_on_ray(con: duckdb.DuckDBPyConnection, table: str, name: str | None = None, rebuild: bool = False,
                 address: str | None = None, workers: int | None = None) -> RefreshStats:
    """``pm_index(table)`` computed on Ray: the table's offers go through Ray's object store to the encoder actors;
    the index is written where ``pm_index`` writes it (beside the database)."""
    ctx = context_of(con)
    name = check_index_name(name or index_name_for(table))
    return index_dataset(duckdb_dataset(_ensure_started(address, con), table), ctx.index_root, name,
                         settings=ctx.settings, rebuild=rebuild, address=address, workers=workers,
                         source_table=table)


def match_on_ray(con: duckdb.DuckDBPyConnection, source: str, target: str, k: int = 10, out: str | None = None,
                 into: str | None = None, address: str | None = None, workers: int | None = None,
                 lexical_shards: int | None = None) -> MatchOutput:
    """``match_products(source, target, k)`` computed on Ray; candidates written to Parquet (and to table ``into``)."""
    ctx = context_of(con)
    name = check_index_name(index_name_for(target))
    dedup = source.lower() == target.lower()
    out_path = Path(out) if out else Path(f"{index_name_for(source)}_matches.parquet")
    cur = con.cursor()
    try:
        verdicts = current_verdicts(cur, {table_key(source), table_key(target)})
    finally:
        cur.close()
    res = match_dataset(duckdb_dataset(_ensure_started(address, con), source), ctx.index_root, name, out_path, k=k,
                        settings=ctx.settings, address=address, workers=workers, dedup=dedup, source_table=source,
                        verdicts=verdicts, lexical_shards=lexical_shards)
    if into:
        con.execute(f"CREATE OR REPLACE TABLE {quote_qualified(into)} AS FROM read_parquet(?)", [str(res.path)])
    return res


def _ensure_started(address: str | None, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    from .cluster import ensure_ray

    ensure_ray(address)
    return con
