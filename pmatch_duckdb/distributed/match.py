"""Matching a large source against an offer index on Ray: the source partitioned across Ray Data actors,
each scoring its partition with :func:`pmatch_duckdb.matching.match_offers` — the function
``match_products`` calls — and the candidates written as one Parquet file DuckDB loads in one statement.

Only the global, per-target parts of ``match_products`` (``mutual_best``, and the one-direction rule of
dedup mode) need every source at once; they run at the end as one DuckDB query over the candidates.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import PmatchError
from ..matchers import active_matcher
from ..matching import match_offers, target_view
from ..review.labels import PairKey
from ..review.overrides import override_decisions
from ..settings import Settings
from ..sqlident import check_index_name
from ..store import OfferIndex, OfferIndexError
from .cluster import cluster_cpus, ensure_ray, reraise_user_error
from .sources import OfferSource, normalize_offers, offers_of, read_offer_dataset

MATCH_BATCH = 512  # source offers per scoring call (match_products gets DuckDB chunks of up to 2048)

CANDIDATE_SCHEMA = [  # the columns of match_products, in its order (mutual_best is added at the end)
    ("source_table", pa.string()), ("target_table", pa.string()), ("target_id", pa.string()),
    ("rank", pa.int32()), ("score", pa.float64()), ("text_score", pa.float64()), ("image_score", pa.float64()),
    ("lexical_score", pa.float64()), ("identifier_match", pa.bool_()), ("price_ratio", pa.float64()),
    ("decision", pa.string()), ("human_verdict", pa.string()),
]


@dataclass
class MatchOutput:
    """Where the candidates went and how many there are."""

    path: Path
    rows: int
    sources: int
    seconds: float

    def load_sql(self, table: str = "matches") -> str:
        """The one SQL statement that loads the result into a DuckDB table."""
        return f"CREATE TABLE {table} AS FROM read_parquet('{self.path.as_posix()}')"


class OfferScorer:
    """Ray Data actor: holds one target view (loaded once) and the encoders; scores source partitions."""

    def __init__(self, index_root: str, name: str, settings: Settings, k: int, exclude_self: bool, threads: int,
                 source_table: str, verdicts: dict | None = None) -> None:
        os.environ["PMATCH_ORT_THREADS"] = str(threads)
        self.view = target_view(OfferIndex(Path(index_root), name), settings.home)
        self.settings, self.k, self.exclude_self = settings, k, exclude_self
        self.source_table, self.target_table = source_table, name
        self.verdicts = verdicts or {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        id_col = next(c for c in batch.column_names if c.lower() == "id")
        offers = offers_of(normalize_offers(batch, salt=""))
        cand = match_offers(offers, self.view, self.settings, self.k, exclude_self=self.exclude_self)
        n = len(cand.source)
        ids = self.view.target_ids(cand.target)  # one per candidate
        # human verdicts (pm_labels) override the model's decision, as in match_products
        keys = [PairKey.of(self.source_table, offers[int(cand.source[i])].id, self.target_table, ids[i])
                for i in range(n)]
        decisions, human = override_decisions(keys, cand.decision, self.verdicts)

        def f64(x: np.ndarray) -> pa.Array:
            x = np.asarray(x, dtype=np.float64)
            return pa.array(x, pa.float64(), mask=np.isnan(x))

        cols = {
            "source_table": pa.array([self.source_table] * n, pa.string()),
            "source_id": batch[id_col].take(pa.array(cand.source, pa.int64())),
            "target_table": pa.array([self.target_table] * n, pa.string()),
            "target_id": pa.array(ids, pa.string()),
            "rank": pa.array(cand.rank, pa.int32()), "score": f64(cand.score),
            "text_score": f64(cand.text_score), "image_score": f64(cand.image_score),
            "lexical_score": f64(cand.lexical_score), "identifier_match": pa.array(cand.id_match, pa.bool_()),
            "price_ratio": f64(cand.price_ratio), "decision": pa.array(decisions, pa.string()),
            "human_verdict": pa.array(human, pa.string()),
        }
        return pa.table(cols)


def match_dataset(source: OfferSource, index_root: str | os.PathLike, target: str, out: str | os.PathLike, *,
                  k: int = 10, settings: Settings | None = None, home: str | None = None,
                  image_roots: list | None = None, address: str | None = None, workers: int | None = None,
                  threads_per_worker: int = 1, batch_size: int = MATCH_BATCH, dedup: bool = False,
                  source_table: str | None = None, verdicts: dict | None = None,
                  progress: bool = True) -> MatchOutput:
    """Match an offer dataset against the index ``target`` under ``index_root`` on Ray; write Parquet to ``out``.

    The result has ``match_products``' columns (``target_id`` as stored in the index, i.e. VARCHAR) and is
    loaded with ``CREATE TABLE m AS FROM 'out.parquet'``. ``dedup=True`` is ``match_products('t', 't')``
    (``source`` the offers of the indexed table): no self-pairs, one direction of each pair. The index must
    be current for the active matcher (``pmatch index ... [--ray]``). ``verdicts``: human verdicts that override
    decisions, as ``pmatch_duckdb.review.labels.current_verdicts(con)`` returns them from ``pm_labels`` (the CLI
    passes the database's own).
    """
    if not isinstance(k, int) or k <= 0:
        raise PmatchError(f"k must be a positive integer, got {k!r}")
    settings = settings or Settings.create(home=home, image_roots=image_roots)
    t0 = time.perf_counter()
    index = OfferIndex(Path(index_root), check_index_name(target))
    index.check_encoders(settings)  # also: a clear error when the index does not exist
    matcher = active_matcher(settings.matcher, settings.home)
    if index.matcher_identity() != (matcher.identity if matcher is not None else None):
        raise OfferIndexError(f"index {target!r} was made for another matcher than the active one; refresh it "
                              f"first (pm_index, or pmatch index ... --ray)")
    ray = ensure_ray(address, progress=progress)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = out.with_name(out.name + ".parts.parquet")
    src_name = source_table or (target if dedup else Path(str(source)).stem if isinstance(source, str | os.PathLike)
                                else "source")
    n_workers = workers or max(1, cluster_cpus() // max(1, threads_per_worker))
    # materialised first: the scoring actors then take every CPU without starving the read tasks
    ds = read_offer_dataset(source).repartition(target_num_rows_per_block=batch_size).materialize().map_batches(
        OfferScorer, batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=n_workers), num_cpus=threads_per_worker,
        fn_constructor_kwargs={"index_root": str(Path(index_root)), "name": target, "settings": settings, "k": k,
                               "exclude_self": dedup, "threads": threads_per_worker, "source_table": src_name,
                               "verdicts": verdicts})
    writer = None
    try:
        for t in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            if writer is None:
                writer = pq.ParquetWriter(str(parts), t.schema)
            if t.num_rows:
                writer.write_table(t.cast(writer.schema))
    except PmatchError:
        raise
    except Exception as e:
        reraise_user_error(e)
        raise
    finally:
        if writer is not None:
            writer.close()
    try:
        rows, sources = _finish(parts if writer is not None else None, out, dedup)
    finally:
        parts.unlink(missing_ok=True)
    return MatchOutput(path=out, rows=rows, sources=sources, seconds=round(time.perf_counter() - t0, 3))


def _finish(parts: Path | None, out: Path, dedup: bool) -> tuple[int, int]:
    """mutual_best and dedup mode's one-direction rule over all candidates (as sql/match.sql), ordered; → out."""
    con = duckdb.connect()
    try:
        con.execute("SET memory_limit = '2GB'")
        con.execute("SET preserve_insertion_order = false")
        if parts is None:  # no source offers: an empty result with the right columns
            cols = ", ".join(f"CAST(NULL AS {_sql_type(t)}) AS {c}" for c, t in
                             [("source_table", pa.string()), ("source_id", pa.string())] + CANDIDATE_SCHEMA[1:-1])
            cols += ", NULL::BOOLEAN AS mutual_best, NULL::VARCHAR AS human_verdict"
            con.execute(f"COPY (SELECT {cols} LIMIT 0) TO ? (FORMAT parquet)",
                        [str(out)])
            return 0, 0
        con.execute(f"""
            COPY (
              SELECT source_table, source_id, target_table, target_id, rank, score, text_score, image_score,
                     lexical_score, identifier_match, price_ratio, decision,
                     (rank = 1 AND score = max(score) OVER (PARTITION BY target_id)) AS mutual_best,
                     human_verdict
              FROM read_parquet(?)
              QUALIFY {'false' if dedup else 'true'} = true OR row_number() OVER (
                  PARTITION BY least(CAST(source_id AS VARCHAR), target_id),
                               greatest(CAST(source_id AS VARCHAR), target_id)
                  ORDER BY score DESC, rank) = 1
              ORDER BY source_id, rank
            ) TO ? (FORMAT parquet)""", [str(parts), str(out)])
        rows, sources = con.execute("SELECT count(*), count(DISTINCT source_id) FROM read_parquet(?)",
                                    [str(out)]).fetchall()[0]
        return int(rows), int(sources)
    finally:
        con.close()


def _sql_type(t: pa.DataType) -> str:
    return {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}[t]
