"""Offer datasets for the Ray path: Parquet files, a Lance dataset, a DuckDB table or query, or a Ray
dataset you made yourself; each offer normalised exactly as ``read_offers`` does it and content-hashed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ..offers import OPTIONAL, REQUIRED, OfferTableError, offer_from_mapping
from ..sqlident import quote_ident, quote_qualified

OfferSource = str | os.PathLike | list | Any  # path(s), or a ray.data.Dataset

# the normalised offer rows every Ray stage exchanges
OFFER_SCHEMA = pa.schema([
    ("id", pa.string()), ("title", pa.string()), ("description", pa.string()), ("brand", pa.string()),
    ("images", pa.list_(pa.string())), ("price", pa.float64()), ("currency", pa.string()),
    ("gtin", pa.string()), ("mpn", pa.string()), ("content_hash", pa.string()),
])
ROWS_PER_BLOCK = 2048


def read_offer_dataset(source: OfferSource, columns: list[str] | None = None):
    """A Ray dataset of the offer columns of ``source``.

    ``source``: a ``ray.data.Dataset``; a ``.lance`` folder (Lance dataset); Parquet file(s) or a folder of
    them (local, or ``s3://...`` as Ray reads it). Only the offer-convention columns are read.
    """
    import ray.data

    if isinstance(source, ray.data.Dataset):
        return source
    paths = [str(p) for p in source] if isinstance(source, list | tuple) else [str(source)]
    if len(paths) == 1 and paths[0].rstrip("/").endswith(".lance"):
        return ray.data.read_lance(paths[0], columns=_offer_columns(_lance_schema(paths[0])))
    for p in paths:
        if "://" not in p and not Path(p).exists():
            raise OfferTableError(f"offer dataset {p!r} does not exist")
    return ray.data.read_parquet(paths if len(paths) > 1 else paths[0], columns=columns)


def _lance_schema(uri: str) -> pa.Schema:
    import lance

    return lance.dataset(uri).schema


def _offer_columns(schema: pa.Schema) -> list[str]:
    names = {n.lower(): n for n in schema.names}
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise OfferTableError(f"offer dataset lacks required column(s) {', '.join(missing)}; it has "
                              f"{', '.join(schema.names)}")
    return [names[c] for c in REQUIRED + OPTIONAL if c in names]


def duckdb_dataset(con: duckdb.DuckDBPyConnection, table_or_query: str, rows_per_block: int = ROWS_PER_BLOCK):
    """A DuckDB table/view (or a ``SELECT``) as a Ray dataset of its offer columns, moved through Ray's object
    store (so a remote cluster needs no shared file system). For catalogs far beyond the driver's memory,
    export to Parquet on shared storage (:func:`export_query`) and pass that path instead."""
    import ray.data

    rel = _relation(con, table_or_query)
    cols = _offer_columns(pa.schema([(c, pa.null()) for c in rel.columns]))
    reader = rel.select(*[quote_ident(c) for c in cols]).arrow(rows_per_block)
    blocks = [pa.Table.from_batches([b]) for b in reader]
    if not blocks:
        blocks = [pa.Table.from_batches([], schema=reader.schema)]
    return ray.data.from_arrow(blocks)


def export_query(con: duckdb.DuckDBPyConnection, table_or_query: str, path: str | os.PathLike) -> Path:
    """Write a DuckDB table/view or ``SELECT`` to one Parquet file (``COPY ... TO``) for the Ray path."""
    rel = _relation(con, table_or_query)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    rel.write_parquet(str(out))
    return out


def _relation(con: duckdb.DuckDBPyConnection, table_or_query: str) -> duckdb.DuckDBPyRelation:
    q = table_or_query.strip()
    if q.lower().startswith(("select", "with", "from")):
        return con.sql(q)
    try:
        return con.sql(f"SELECT * FROM {quote_qualified(q)}")
    except duckdb.CatalogException:
        raise OfferTableError(f"table or view {table_or_query!r} does not exist") from None


def normalize_offers(batch: pa.Table, salt: str) -> pa.Table:
    """Offer rows as ``read_offers`` makes them (ids as text, images as lists, prices checked) + content hash.

    A NULL id is an error naming the offer table convention (as on the DuckDB path).
    """
    names = {n.lower(): n for n in batch.column_names}
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise OfferTableError(f"offer dataset lacks required column(s) {', '.join(missing)}; it has "
                              f"{', '.join(batch.column_names)}")
    cols = [c for c in REQUIRED + OPTIONAL if c in names]
    data = {c: batch[names[c]].to_pylist() for c in cols}
    offers = [offer_from_mapping({c: data[c][i] for c in cols}) for i in range(batch.num_rows)]
    return pa.table({
        "id": [o.id for o in offers], "title": [o.title for o in offers],
        "description": [o.description for o in offers], "brand": [o.brand for o in offers],
        "images": [o.images for o in offers], "price": [o.price for o in offers],
        "currency": [o.currency for o in offers], "gtin": [o.gtin for o in offers], "mpn": [o.mpn for o in offers],
        "content_hash": [o.content_hash(salt) for o in offers],
    }, schema=OFFER_SCHEMA)


def offers_of(batch: pa.Table) -> list:
    """Normalised offer rows (:data:`OFFER_SCHEMA`) back into ``Offer`` objects."""
    from ..offers import Offer

    cols = {c: batch[c].to_pylist() for c in ("id", "title", "description", "brand", "images", "price", "currency",
                                               "gtin", "mpn")}
    return [Offer(**{c: cols[c][i] for c in cols}) for i in range(batch.num_rows)]
