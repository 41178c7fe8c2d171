"""Building and refreshing an offer index on Ray: the same LanceDB table ``pm_index`` writes.

Two passes over the offer dataset, both on the cluster: (1) normalise + content-hash every offer (the driver
keeps only ids and hashes); (2) embed the new and changed offers with Ray Data ``map_batches`` on an actor
pool, each actor holding the ONNX sessions once. The embedded rows stream back to the driver straight into
one LanceDB commit through :meth:`OfferIndex.refresh_hashes` — the code ``pm_index`` uses — so columns,
content hashes, encoder identity, format version, metadata, deletes and the ANN index are the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import PmatchError
from ..fusion import FusionConfig
from ..matchers import Matcher, active_matcher, load_matcher
from ..offer_vectors import content_salt, embed_offers
from ..offers import Offer, OfferTableError
from ..settings import Settings
from ..sqlident import check_index_name
from ..store import ANN_MIN_ROWS, OfferIndex, RefreshStats
from .cluster import cluster_cpus, ensure_ray, reraise_user_error
from .sources import (
    OfferSource,
    normalize_offers,
    offers_of,
    read_offer_dataset,
)

EMBED_BATCH = 64  # offers per map_batches call: large enough for batched ONNX runs, small enough to retry cheaply


class OfferEmbedder:
    """Ray Data actor: embeds normalised offers into index rows. The encoders (ONNX sessions) are created once,
    in the constructor; images are read with the same confined reader as the SQL functions."""

    def __init__(self, settings: Settings, fusion: dict, matcher: dict | None, todo: list | None,
                 threads: int) -> None:
        os.environ["PMATCH_ORT_THREADS"] = str(threads)  # one actor per ``threads`` CPUs: no oversubscription
        os.environ.setdefault("PMATCH_OVERLAP_DECODING", "0")  # nor a decode thread beside the model's threads
        from ..encoders.registry import get_image_encoder, get_text_encoder

        self.settings = settings
        self.cfg = FusionConfig.from_dict(fusion)
        self.matcher: Matcher | None = (load_matcher(matcher["name"], matcher["version"], settings.home)
                                        if matcher else None)
        get_text_encoder(settings)
        get_image_encoder(settings)
        self.schema = embed_offers([Offer(id="__schema__", title="x")], settings, self.cfg, ["x"], progress=False,
                                   matcher=self.matcher).schema
        if todo:
            import ray

            self.todo = ray.get(todo[0])  # ids to (re-)embed on an incremental refresh
        else:
            self.todo = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.todo is not None:
            batch = batch.filter(pc.is_in(batch["id"], value_set=self.todo))
        if batch.num_rows == 0:
            return self.schema.empty_table()
        rows = embed_offers(offers_of(batch), self.settings, self.cfg, batch["content_hash"].to_pylist(),
                            progress=False, matcher=self.matcher)
        return rows.select(self.schema.names).cast(self.schema)


def index_dataset(source: OfferSource, index_root: str | os.PathLike, name: str, *,
                  settings: Settings | None = None, home: str | None = None, image_roots: list | None = None,
                  rebuild: bool = False, address: str | None = None, workers: int | None = None,
                  threads_per_worker: int = 1, batch_size: int = EMBED_BATCH, progress: bool = True,
                  fusion: FusionConfig | None = None, ann_min_rows: int = ANN_MIN_ROWS,
                  source_table: str = "") -> RefreshStats:
    """Build or incrementally refresh the LanceDB index ``name`` under ``index_root`` from an offer dataset, on Ray.

    ``source``: Parquet file(s)/folder, a ``.lance`` dataset, or a ``ray.data.Dataset`` (see
    :func:`~pmatch_duckdb.distributed.duckdb_dataset` for DuckDB tables and queries). ``index_root`` is the
    folder ``pm_index`` uses (``shop.duckdb`` → ``shop.pmatch``), so ``match_products`` on a laptop queries the
    result, and vice versa. ``address``: a Ray cluster (None: a local one). ``workers``: embedding actors
    (default: the cluster's CPUs / ``threads_per_worker``). Returns the same :class:`RefreshStats` as ``pm_index``.
    """
    settings = settings or Settings.create(home=home, image_roots=image_roots)
    ray = ensure_ray(address, progress=progress)
    index = OfferIndex(Path(index_root), check_index_name(name))
    matcher = active_matcher(settings.matcher, settings.home)
    salt = content_salt(settings)
    offers = read_offer_dataset(source).map_batches(normalize_offers, fn_kwargs={"salt": salt},
                                                    batch_format="pyarrow", batch_size=None)
    # Materialised (in the object store, spilled to disk when large) before the actors start: both passes read
    # it, and the encoder actors then hold every CPU without starving Ray Data's tasks (read, list files,
    # repartition: on a 2-CPU node, actors holding both CPUs + a pending task deadlock).
    # blocks of one batch each, so every actor gets work (a small table is often a single block)
    offers = offers.repartition(target_num_rows_per_block=batch_size).materialize()
    n_workers = workers or max(1, cluster_cpus() // max(1, threads_per_worker))
    try:
        hashes, codes = _collect_hashes(offers)

        def embed(ids: list[str], cfg: FusionConfig) -> pa.RecordBatchReader | None:
            if not ids:
                return None
            todo = None if len(ids) == len(hashes) else [ray.put(pa.array(ids, pa.string()))]
            rows = offers.map_batches(
                OfferEmbedder, batch_size=batch_size, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=n_workers), num_cpus=threads_per_worker,
                fn_constructor_kwargs={"settings": settings, "fusion": cfg.to_dict(),
                                       "matcher": matcher.identity if matcher is not None else None,
                                       "todo": todo, "threads": threads_per_worker})
            streams.append(_Stream(rows))
            return streams[-1].reader()

        streams: list[_Stream] = []
        stats = index.refresh_hashes(hashes, embed, settings, cfg=fusion, source_table=source_table,
                                     rebuild=rebuild, ann_min_rows=ann_min_rows, matcher=matcher, codes=codes)
        for s in streams:
            s.close()
        return stats
    except PmatchError:
        raise
    except Exception as e:  # a Ray task failed: surface the pmatch error inside it, if any
        reraise_user_error(e)
        raise


def _collect_hashes(offers) -> tuple[dict[str, str], dict[str, tuple[str | None, str | None]]]:
    """Pass 1: id → content hash and id → (gtin, mpn) of every offer (only these columns reach the driver);
    ids must be unique."""
    cols = ["id", "content_hash", "gtin", "mpn"]
    parts = [pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b for b in
             offers.select_columns(cols).iter_batches(batch_format="pyarrow", batch_size=None)]
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return {}, {}
    t = pa.concat_tables(parts)
    if pc.count_distinct(t["id"]).as_py() != t.num_rows:
        counts = pc.value_counts(t["id"])
        dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
        raise OfferTableError(f"offer dataset has duplicate id {dup!r}; ids must be unique")
    ids = t["id"].to_pylist()
    return (dict(zip(ids, t["content_hash"].to_pylist(), strict=True)),
            dict(zip(ids, zip(t["gtin"].to_pylist(), t["mpn"].to_pylist(), strict=True), strict=True)))


class _Stream:
    """Embedded rows of a Ray dataset as one Arrow stream (consumed by a single LanceDB write).

    :meth:`close` drains the Ray iterator: Ray Data releases the actor pool (and its CPUs) only once its
    output is exhausted, and a writer need not read past the last batch it wants.
    """

    def __init__(self, rows) -> None:
        self.batches = iter(rows.iter_batches(batch_format="pyarrow", batch_size=None))

    def reader(self) -> pa.RecordBatchReader | None:
        first = next(self.batches, None)
        if first is None:
            return None

        def gen() -> Iterator[pa.RecordBatch]:
            yield from first.to_batches()
            for t in self.batches:
                yield from t.to_batches()

        return pa.RecordBatchReader.from_batches(first.schema, gen())

    def close(self) -> None:
        for _ in self.batches:
            pass
