"""Beyond one machine: indexing and matching on a Ray cluster, over the same LanceDB index.

Public surface::

    from pmatch_duckdb.distributed import index_dataset, match_dataset, duckdb_dataset, export_query
    index_dataset("s3://bucket/catalog/", "shop.pmatch", "catalog", address="ray://head:10001")
    match_dataset("feed.parquet", "shop.pmatch", "catalog", "matches.parquet")
    # DuckDB: CREATE TABLE matches AS FROM 'matches.parquet'

Needs the ``ray`` extra (``pip install 'pmatch-duckdb[ray]'``). DuckDB + LanceDB in one process stay the
default; this path writes and reads the same index format and scores with the same code.
"""

from __future__ import annotations

from .cluster import RayUnavailableError, ensure_ray
from .index import index_dataset
from .match import MatchOutput, match_dataset
from .sources import duckdb_dataset, export_query

__all__ = ["MatchOutput", "RayUnavailableError", "duckdb_dataset", "ensure_ray", "export_query", "index_dataset",
           "match_dataset"]
