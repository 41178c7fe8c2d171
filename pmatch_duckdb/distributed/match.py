"""Matching a large source against an offer index on Ray: the source partitioned across Ray Data actors,
each scoring its partition with :func:`pmatch_duckdb.matching.match_offers` — the function
``match_products`` calls — and the candidates written as one Parquet file DuckDB loads in one statement.

Only the global, per-target parts of ``match_products`` (``mutual_best``, and the one-direction rule of
dedup mode) need every source at once; they run at the end as one DuckDB query over the candidates.

The lexical channel (char TF-IDF, most of a large view's memory) is sharded: the target's rows split into S
ranges, their document frequencies counted by S Ray tasks and summed (the global idf, 8 MB), each range's
TF-IDF held by ONE actor of a chain of S ``map_batches`` stages (every source batch passes each stage, which
merges its top-k into the lists the batch carries), and the scoring actors hold the idf alone: they get the
merged lexical candidates as columns and score them with the same code as ``match_products``
(``matching.match_offers(..., lexical=...)``), lexical scores computed from the candidates' texts.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..decision import SCORED_BY
from ..errors import PmatchError
from ..features.lexical import LexicalWeights
from ..lexical_shards import LexicalShard, global_weights, shard_df, shard_ranges
from ..matchers import active_matcher
from ..matching import ON_DISK_MIN_ROWS, TargetView, lexical_width, match_offers, target_view
from ..offer_vectors import lexical_input
from ..review.labels import PairKey
from ..review.overrides import override_decisions
from ..settings import Settings
from ..sqlident import check_index_name
from ..store import OfferIndex, OfferIndexError
from .cluster import cluster_cpus, ensure_ray, reraise_user_error
from .sources import OfferSource, normalize_offers, offers_of, read_offer_dataset

MATCH_BATCH = 512  # source offers per scoring call (match_products gets DuckDB chunks of up to 2048)
# lexical_shards=None: no sharding below ON_DISK_MIN_ROWS target rows (each scoring actor holds the small TF-IDF,
# as match_products does), from there one shard per LEXICAL_SHARD_ROWS rows (≈ 0.45 GB of TF-IDF each for
# ~6-word titles; benchmarks/README.md, "The lexical channel at scale")
LEXICAL_SHARD_ROWS = 250_000
# a shard actor's CPU reservation (at most; the shards together take at most half the cluster): its top-k of a
# batch is cheap beside embedding the batch. Every actor of the chain must fit at once, or the stream stalls.
LEXICAL_SHARD_CPUS = 0.5
_LEX_POS, _LEX_SCORE, _LEX_TEXT = "__pm_lex_pos", "__pm_lex_score", "__pm_lex_text"  # columns between stages

CANDIDATE_SCHEMA = [  # the columns of match_products, in its order (mutual_best is added before human_verdict)
    ("source_table", pa.string()), ("target_table", pa.string()), ("target_id", pa.string()),
    ("rank", pa.int32()), ("score", pa.float64()), ("text_score", pa.float64()), ("image_score", pa.float64()),
    ("lexical_score", pa.float64()), ("identifier_match", pa.bool_()), ("price_ratio", pa.float64()),
    ("decision", pa.string()), ("human_verdict", pa.string()), ("scored_by", pa.string()),
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


def auto_lexical_shards(n: int) -> int:
    """Lexical shards for a target of ``n`` rows when none are asked for (see ``LEXICAL_SHARD_ROWS``)."""
    return 0 if n < ON_DISK_MIN_ROWS else math.ceil(n / LEXICAL_SHARD_ROWS)


def _source_lexical(batch: pa.Table) -> list[str]:
    """What the lexical channel sees of each source offer (``lexical_input``, as ``source_vectors`` makes it)."""
    if _LEX_TEXT in batch.column_names:
        return batch[_LEX_TEXT].to_pylist()
    return [lexical_input(o) for o in offers_of(normalize_offers(batch, salt=""))]


def _lists(batch: pa.Table, name: str, width: int, dtype: type) -> np.ndarray:
    """A fixed-size list column → numpy [rows, width]."""
    col = batch[name].combine_chunks()
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=dtype).reshape(len(col), width)


class LexicalShardStage:
    """Ray Data actor holding one lexical shard (its rows' TF-IDF, the global idf): adds its top-k to the lists
    each source batch carries, keeping the best ``width`` (``features.lexical.merge_top_k``)."""

    def __init__(self, index_root: str, name: str, version: int, start: int, stop: int, weights: LexicalWeights,
                 width: int) -> None:
        self.shard = LexicalShard(OfferIndex(Path(index_root), name), version, start, stop, weights)
        self.width = width

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = _source_lexical(batch)
        n, w = batch.num_rows, self.width
        if _LEX_POS in batch.column_names:
            idx, val = _lists(batch, _LEX_POS, w, np.int64), _lists(batch, _LEX_SCORE, w, np.float32)
            batch = batch.drop_columns([_LEX_POS, _LEX_SCORE])
        else:
            idx, val = np.full((n, 0), -1, np.int64), np.zeros((n, 0), np.float32)
            batch = batch.append_column(_LEX_TEXT, pa.array(texts, pa.string()))
        idx, val = self.shard.add_to(idx, val, texts, w)
        batch = batch.append_column(_LEX_POS, pa.FixedSizeListArray.from_arrays(pa.array(idx.ravel(), pa.int64()), w))
        return batch.append_column(_LEX_SCORE,
                                   pa.FixedSizeListArray.from_arrays(pa.array(val.ravel(), pa.float32()), w))


class OfferScorer:
    """Ray Data actor: holds one target view (loaded once) and the encoders; scores source partitions.

    With ``lexical`` (the global idf; lexical shards upstream) the view holds no TF-IDF rows and each batch
    brings its lexical candidates (target positions at index ``version``)."""

    def __init__(self, index_root: str, name: str, settings: Settings, k: int, exclude_self: bool, threads: int,
                 source_table: str, verdicts: dict | None = None, lexical: LexicalWeights | None = None,
                 version: int | None = None) -> None:
        os.environ["PMATCH_ORT_THREADS"] = str(threads)
        os.environ.setdefault("PMATCH_OVERLAP_DECODING", "0")  # the actor's CPUs are its model's threads
        index = OfferIndex(Path(index_root), name)
        self.view = target_view(index, settings.home) if lexical is None else TargetView(index, settings.home,
                                                                                          lexical=lexical)
        if version is not None and self.view.version != version:
            raise PmatchError(f"index {name!r} changed while matching (version {version} → {self.view.version}); "
                              f"run the match again")
        self.width = lexical_width(k, exclude_self) if lexical is not None else 0
        self.settings, self.k, self.exclude_self = settings, k, exclude_self
        self.source_table, self.target_table = source_table, name
        self.verdicts = verdicts or {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        id_col = next(c for c in batch.column_names if c.lower() == "id")
        offers = offers_of(normalize_offers(batch, salt=""))
        lexical = _lists(batch, _LEX_POS, self.width, np.int64) if self.width else None
        cand = match_offers(offers, self.view, self.settings, self.k, exclude_self=self.exclude_self, lexical=lexical)
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
            "scored_by": pa.array(SCORED_BY, pa.string()).take(pa.array(np.asarray(cand.scored_by, np.int64))),
        }
        return pa.table(cols)


def match_dataset(source: OfferSource, index_root: str | os.PathLike, target: str, out: str | os.PathLike, *,
                  k: int = 10, settings: Settings | None = None, home: str | None = None,
                  image_roots: list | None = None, address: str | None = None, workers: int | None = None,
                  threads_per_worker: int = 1, batch_size: int = MATCH_BATCH, dedup: bool = False,
                  source_table: str | None = None, verdicts: dict | None = None,
                  progress: bool = True, lexical_shards: int | None = None) -> MatchOutput:
    """Match an offer dataset against the index ``target`` under ``index_root`` on Ray; write Parquet to ``out``.

    The result has ``match_products``' columns (``target_id`` as stored in the index, i.e. VARCHAR) and is
    loaded with ``CREATE TABLE m AS FROM 'out.parquet'``. ``dedup=True`` is ``match_products('t', 't')``
    (``source`` the offers of the indexed table): no self-pairs, one direction of each pair. The index must
    be current for the active matcher (``pmatch index ... [--ray]``). ``verdicts``: human verdicts that override
    decisions, as ``pmatch_duckdb.review.labels.current_verdicts(con)`` returns them from ``pm_labels`` (the CLI
    passes the database's own).

    ``lexical_shards``: S ≥ 1 splits the target's char TF-IDF across S actors (one shard each, the global idf;
    the scoring actors then hold the idf alone, see the module docstring); 0: every scoring actor holds the
    whole target's TF-IDF, as ``match_products`` does; None (default): 0 below ``ON_DISK_MIN_ROWS`` (100k)
    target rows, else one shard per ``LEXICAL_SHARD_ROWS`` (250k) rows. Results are ``match_products``' while
    each shard has fewer than ``APPROX_TOPK_MIN_ROWS`` (100k) rows and the whole target too; from 100k rows
    the lexical top-k is approximate on both paths and the merged shard lists can differ from the whole
    target's approximate list (recall measured in benchmarks/README.md).
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
    if lexical_shards is not None and (not isinstance(lexical_shards, int) or isinstance(lexical_shards, bool)
                                       or lexical_shards < 0):
        raise PmatchError(f"lexical_shards must be a non-negative integer or None, got {lexical_shards!r}")
    ray = ensure_ray(address, progress=progress)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = out.with_name(out.name + ".parts.parquet")
    src_name = source_table or (target if dedup else Path(str(source)).stem if isinstance(source, str | os.PathLike)
                                else "source")
    tbl = index.table()
    version, n_target = int(tbl.version), tbl.count_rows()
    shards = auto_lexical_shards(n_target) if lexical_shards is None else lexical_shards
    ranges = shard_ranges(n_target, shards) if shards else []
    cpus = cluster_cpus()
    shard_cpus = min(LEXICAL_SHARD_CPUS, cpus / (2 * len(ranges))) if ranges else 0.0
    n_workers = workers or max(1, int((cpus - len(ranges) * shard_cpus) // max(1, threads_per_worker)))
    # materialised first: the scoring actors then take every CPU without starving the read tasks
    ds = read_offer_dataset(source).repartition(target_num_rows_per_block=batch_size).materialize()
    weights = _global_weights(ray, index, version, ranges, n_target) if ranges else None
    if ranges:
        ds = lexical_stages(ds, index_root, target, version, ranges, weights, lexical_width(k, dedup), batch_size,
                            shard_cpus)
    ds = ds.map_batches(
        OfferScorer, batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=n_workers), num_cpus=threads_per_worker,
        fn_constructor_kwargs={"index_root": str(Path(index_root)), "name": target, "settings": settings, "k": k,
                               "exclude_self": dedup, "threads": threads_per_worker, "source_table": src_name,
                               "verdicts": verdicts, "lexical": weights, "version": version if ranges else None})
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


def lexical_stages(ds, index_root: str | os.PathLike, target: str, version: int,  # noqa: ANN001, ANN201
                   ranges: list[tuple[int, int]], weights: LexicalWeights, width: int, batch_size: int = MATCH_BATCH,
                   cpus: float = LEXICAL_SHARD_CPUS):
    """``ds`` (offer rows) through one :class:`LexicalShardStage` per range (one actor each): every row leaves
    with its merged lexical top-``width`` (target positions at ``version``, -1 = none; scores) in the columns
    ``__pm_lex_pos`` / ``__pm_lex_score`` (and its lexical text in ``__pm_lex_text``). ``cpus``: each actor's
    CPU reservation."""
    import ray

    for a, b in ranges:
        ds = ds.map_batches(
            LexicalShardStage, batch_size=batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=cpus,
            fn_constructor_kwargs={"index_root": str(Path(index_root)), "name": target, "version": version,
                                   "start": a, "stop": b, "weights": weights, "width": width})
    return ds


def _global_weights(ray, index: OfferIndex, version: int, ranges: list[tuple[int, int]],  # noqa: ANN001
                    n: int) -> LexicalWeights:
    """The target's idf: each shard's document frequencies counted by a Ray task, summed here (4 MB each)."""
    task = ray.remote(num_cpus=1)(_shard_df)
    refs = [task.remote(str(index.root), index.name, version, a, b) for a, b in ranges]
    try:
        return global_weights(ray.get(refs), n)
    except Exception as e:
        reraise_user_error(e)
        raise


def _shard_df(index_root: str, name: str, version: int, start: int, stop: int) -> np.ndarray:
    return shard_df(OfferIndex(Path(index_root), name), version, start, stop)


def _finish(parts: Path | None, out: Path, dedup: bool) -> tuple[int, int]:
    """mutual_best and dedup mode's one-direction rule over all candidates (as sql/match.sql), ordered; → out."""
    con = duckdb.connect()
    try:
        con.execute("SET memory_limit = '2GB'")
        con.execute("SET preserve_insertion_order = false")
        if parts is None:  # no source offers: an empty result with the right columns
            cols = ", ".join(f"CAST(NULL AS {_sql_type(t)}) AS {c}" for c, t in
                             [("source_table", pa.string()), ("source_id", pa.string())] + CANDIDATE_SCHEMA[1:-2])
            cols += ", NULL::BOOLEAN AS mutual_best, NULL::VARCHAR AS human_verdict, NULL::VARCHAR AS scored_by"
            con.execute(f"COPY (SELECT {cols} LIMIT 0) TO ? (FORMAT parquet)",
                        [str(out)])
            return 0, 0
        con.execute(f"""
            COPY (
              SELECT source_table, source_id, target_table, target_id, rank, score, text_score, image_score,
                     lexical_score, identifier_match, price_ratio, decision,
                     (rank = 1 AND score = max(score) OVER (PARTITION BY target_id)) AS mutual_best,
                     human_verdict, scored_by
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
