"""Python entry points over the engine: index a table, match two tables, cluster accepted pairs."""

from __future__ import annotations

import weakref

import duckdb

from .clusters import assign_entities
from .context import PmatchContext
from .errors import ConfigError, PmatchError
from .fusion import FusionConfig
from .matchers import active_matcher
from .matching import forget_views
from .offers import read_offers
from .sqlident import check_index_name, index_name_for, quote_qualified
from .store import OfferIndex, RefreshStats

# Weak: the UDFs registered on a connection hold its context, so it lives exactly as long as they do
# (until the connection is closed or collected); a strong map kept every context and connection forever.
_contexts: weakref.WeakValueDictionary[int, PmatchContext] = weakref.WeakValueDictionary()


def register_context(ctx: PmatchContext) -> None:
    """Remember the context of an installed connection; when it goes, its cached index views go too."""
    _contexts[id(ctx.con)] = ctx
    weakref.finalize(ctx, forget_index_root, str(ctx.index_root))


def forget_index_root(root: str) -> None:
    """Drop cached index views under ``root`` unless another live connection still uses that root."""
    if any(str(c.index_root) == root for c in list(_contexts.values())):
        return
    forget_views(root)


def installed_context(con: duckdb.DuckDBPyConnection) -> PmatchContext | None:
    """The context of ``con`` if pmatch is installed on it, else None."""
    ctx = _contexts.get(id(con))
    return ctx if ctx is not None and ctx.con_ref() is con else None


def context_of(con: duckdb.DuckDBPyConnection) -> PmatchContext:
    """The context ``install`` made for ``con``."""
    ctx = installed_context(con)
    if ctx is None:
        raise PmatchError("this connection has no pmatch functions; use pmatch_duckdb.connect() or install(con)")
    return ctx


def index_table(ctx: PmatchContext, table: str, index_name: str | None = None, rebuild: bool = False,
                progress: bool = True, fusion: FusionConfig | None = None) -> RefreshStats:
    """Build or incrementally refresh the LanceDB index of an offer table (reads it through a cursor)."""
    name = check_index_name(index_name if index_name is not None else index_name_for(table))  # '' is no name
    cur = ctx.con.cursor()
    try:
        offers = read_offers(cur, table)
    finally:
        cur.close()
    return OfferIndex(ctx.index_root, name).refresh(offers, ctx.settings, cfg=fusion, source_table=table,
                                                     rebuild=rebuild, progress=progress,
                                                     matcher=active_matcher(ctx.settings.matcher, ctx.settings.home))


def index(con: duckdb.DuckDBPyConnection, table: str, name: str | None = None, rebuild: bool = False,
          progress: bool = True, fusion: FusionConfig | None = None) -> RefreshStats:
    """Build/refresh the index of ``table`` (default index name: the table's name). See :class:`RefreshStats`.

    ``fusion``: the zero-shot weights and thresholds the index is built with (default ``FusionConfig()``). An
    existing index keeps its own: its rows were fused with them, so other settings need ``rebuild=True``."""
    ctx = context_of(con)
    if fusion is not None and not rebuild:
        existing = OfferIndex(ctx.index_root, check_index_name(name if name is not None else index_name_for(table)))
        if existing.exists() and existing.fusion() != fusion:
            raise ConfigError(f"index {existing.name!r} was built with other fusion settings ({existing.fusion()}); "
                              f"pass rebuild=True to build it again with {fusion}")
    return index_table(ctx, table, name, rebuild=rebuild, progress=progress, fusion=fusion)


def match(con: duckdb.DuckDBPyConnection, source: str, target: str, k: int = 10) -> duckdb.DuckDBPyRelation:
    """``SELECT * FROM match_products(source, target, k := k)`` as a relation."""
    if not isinstance(k, int) or k <= 0:
        raise PmatchError(f"k must be a positive integer, got {k!r}")
    quote_qualified(source)
    quote_qualified(target)
    return con.sql("SELECT * FROM match_products(?, ?, k := ?)", params=[source, target, k])


def clusters(con: duckdb.DuckDBPyConnection, pairs: str, registry: str = "entities") -> duckdb.DuckDBPyRelation:
    """``SELECT * FROM product_clusters(pairs)``: a stable ``entity_id`` per offer from accepted pairs."""
    quote_qualified(pairs)
    check_index_name(registry)
    return con.sql("SELECT * FROM product_clusters(?, registry := ?)", params=[pairs, registry])


__all__ = ["assign_entities", "clusters", "context_of", "index", "index_table", "match", "register_context"]
