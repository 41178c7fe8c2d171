"""The offer index: a LanceDB table per indexed offer table. Where vectors are stored (read and written).

What goes into a row is computed by ``offer_vectors``; this module only persists and reads it.

Per offer it holds: id, content hash, per-modality embeddings (text, pooled image), numeric
features, the fused offer vector, and the fields lexical matching needs. The table's schema
metadata records which encoder bundles (name + sha256) and fusion settings built it; an index is
never mixed with vectors of other encoders.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from .errors import PmatchError
from .fusion import FusionConfig
from .locks import write_lock
from .matchers import Matcher
from .offer_vectors import (  # DESC_CHARS: re-exported (the description cut is part of the index format)
    DESC_CHARS,  # noqa: F401
    DESC_COLUMNS,  # noqa: F401
    OfferVectors,
    _fsl,
    _insert_description_columns,
    code_columns,
    content_salt,
    description_columns,
    embed_offer_slices,
    embed_offers,
    encoder_identity,
    fuse_vectors,
)
from .offers import Offer
from .settings import Settings
from .sqlident import check_index_name


def lance_compute_threads(cpus: int | None) -> int:
    """Lance's compute pool (vector search, decoding) for a machine of ``cpus`` cores: Lance's own default keeps two
    cores for I/O (``cpus - 2``, at least 1), so on 2 cores every search ran on one thread however many callers
    (``match`` on two threads: vector search 1.1x; with 2 compute threads 1.8x, benchmarks/README.md). Small
    machines get ``min(cpus, 2)``; from 4 cores Lance's default stands."""
    cpus = cpus or 1
    return max(cpus - 2, min(cpus, 2))


# read by Lance when its compute pool starts (its first search or decode, not its import); a value the user set
# stands
os.environ.setdefault("LANCE_CPU_THREADS", str(lance_compute_threads(os.cpu_count())))

# 2: + description (first DESC_CHARS characters) and desc_identifiers, for the decision model
# 3: + gtin (14-digit form) and mpn, the offer table's catalog identifier columns
FORMAT = 3
META_KEY = b"pmatch"
ANN_MIN_ROWS = 100_000  # below this, exact search beats an ANN index (measured: benchmarks/README.md)


Embedder = Callable[[list[str], FusionConfig], "pa.Table | pa.RecordBatchReader | None"]


def _conform(rows: pa.Table | pa.RecordBatchReader | list | None, schema: pa.Schema
             ) -> pa.Table | pa.RecordBatchReader:
    """Index rows (a table, a reader, or a list of them) cast to the table's schema; a reader stays streamed."""
    if rows is None:
        return schema.empty_table()
    if isinstance(rows, pa.Table):
        return rows.select(schema.names).cast(schema)
    parts = rows if isinstance(rows, list) else [rows]

    def batches():
        for part in parts:
            for b in (part.to_batches() if isinstance(part, pa.Table) else part):
                yield from pa.Table.from_batches([b]).select(schema.names).cast(schema).to_batches()

    return pa.RecordBatchReader.from_batches(schema, batches())


class OfferIndexError(PmatchError):
    """The index is missing, incompatible with the current encoders, or otherwise unusable."""


@dataclass
class RefreshStats:
    """What a refresh did."""

    index: str
    inserted: int
    updated: int
    deleted: int
    unchanged: int
    total: int
    version: int
    ann_index: bool
    seconds: float
    reprojected: int = 0

    def as_row(self) -> dict[str, Any]:
        """As a dict (one SQL row)."""
        return dict(self.__dict__)


class OfferIndex:
    """A named LanceDB offer table under an index root (``shop.duckdb`` → ``shop.pmatch/``)."""

    _locks: dict[str, threading.Lock] = {}

    def __init__(self, root: Path, name: str) -> None:
        self.root = Path(root)
        self.name = check_index_name(name)
        self.db = lancedb.connect(str(self.root / "lancedb"))
        lock_key = str(self.root / name)
        self.lock = OfferIndex._locks.setdefault(lock_key, threading.Lock())

    def exists(self) -> bool:
        """Whether the LanceDB table exists (with a committed version)."""
        if self.name not in self.db.list_tables().tables:
            return False
        try:  # a process killed during the first build can leave the folder without any committed version
            self.db.open_table(self.name)
        except (ValueError, OSError, RuntimeError):
            return False
        return True

    def table(self) -> lancedb.table.Table:
        """The LanceDB table (clear error when missing)."""
        if not self.exists():
            raise OfferIndexError(f"no index named {self.name!r} under {self.root}; build it with "
                              f"SELECT * FROM pm_index('<table>') or: pmatch index <db> <table>")
        return self.db.open_table(self.name)

    def metadata(self) -> dict[str, Any]:
        """The pmatch metadata stored in the table schema."""
        raw = (self.table().schema.metadata or {}).get(META_KEY)
        return json.loads(raw) if raw else {}

    def fusion(self) -> FusionConfig:
        """The fusion/decision settings recorded with the index."""
        return FusionConfig.from_dict(self.metadata().get("fusion", {}))

    def check_encoders(self, settings: Settings) -> None:
        """Refuse to use an index built with other encoder bundles than the connection's."""
        have = {k: v for k, v in self.metadata().get("encoders", {}).items()}
        want = encoder_identity(settings)
        if have != want:
            diff = [k for k in want if have.get(k) != want[k]]
            raise OfferIndexError(
                f"index {self.name!r} was built with other encoders ({', '.join(diff)} differ); "
                f"vectors of different encoders cannot be mixed. Rebuild it: pmatch index <db> <table> --rebuild"
            )

    def matcher_identity(self) -> dict | None:
        """The trained matcher whose projection made the ``vector`` column (None: zero-shot)."""
        return self.metadata().get("matcher")

    def refresh(self, offers: list[Offer], settings: Settings, cfg: FusionConfig | None = None,
                source_table: str = "", rebuild: bool = False, progress: bool = True,
                ann_min_rows: int = ANN_MIN_ROWS, matcher: Matcher | None = None) -> RefreshStats:
        """Make the index mirror ``offers``: embed new/changed rows, delete removed ones.

        Incremental: rows with an unchanged content hash are not re-embedded; a run with no changes
        writes nothing (the LanceDB version stays the same). When the active matcher differs from the
        one that made the index's offer vectors, every vector is re-projected from the cached
        per-modality vectors (the encoders are not run again).
        """
        salt = content_salt(settings)
        by_id = {o.id: o for o in offers}
        hashes = {o.id: o.content_hash(salt) for o in offers}

        def embed(ids: list[str], cfg: FusionConfig) -> pa.Table | pa.RecordBatchReader | None:
            # a slice at a time, streamed into the one write: memory bounded by a slice, not by the table
            return embed_offer_slices([by_id[i] for i in ids], settings, cfg, [hashes[i] for i in ids],
                                      progress=progress, matcher=matcher)

        return self.refresh_hashes(hashes, embed, settings, cfg=cfg, source_table=source_table, rebuild=rebuild,
                                   ann_min_rows=ann_min_rows, matcher=matcher, migrate_offers=offers,
                                   codes={o.id: (o.gtin, o.mpn) for o in offers})

    def refresh_hashes(self, hashes: dict[str, str], embed: Embedder, settings: Settings,
                       cfg: FusionConfig | None = None, source_table: str = "", rebuild: bool = False,
                       ann_min_rows: int = ANN_MIN_ROWS, matcher: Matcher | None = None,
                       codes: dict[str, tuple[str | None, str | None]] | None = None,
                       migrate_offers: list[Offer] | None = None) -> RefreshStats:
        """The refresh itself, given every offer's content hash (see :func:`content_salt`) and an embedder.

        ``embed(ids, cfg)`` returns the index rows of the offers ``ids`` (new or changed), as an Arrow
        table or a ``RecordBatchReader`` (streamed into one write, e.g. from a Ray dataset), or None when
        ``ids`` is empty. ``codes``: id → (gtin, mpn) of every offer (they feed no embedding: a row whose only
        change is its codes is rewritten without embedding). Both ``refresh`` (in process) and the Ray path (``pmatch_duckdb.distributed``)
        write through here: one index format, one incremental logic, one commit per refresh.
        """
        t0 = time.perf_counter()
        with self.lock, write_lock(self.root, self.name):  # one writer per index, across processes too
            enc = encoder_identity(settings)
            if matcher is not None and matcher.bundle.manifest.get("encoders") != enc:
                raise OfferIndexError(
                    f"matcher {matcher.identity['name']} {matcher.identity['version']} was trained on other encoders "
                    f"than this connection uses; retrain it or deactivate it (pmatch models rollback)")
            reprojected = 0
            want = matcher.identity if matcher is not None else None
            if self.exists() and not rebuild and self.metadata().get("format", 1) < FORMAT:
                self.check_encoders(settings)
                if migrate_offers is None:
                    raise OfferIndexError(f"index {self.name!r} has an older format; refresh it once with "
                                          f"pm_index (or pmatch index without --ray), or rebuild it")
                self._migrate(migrate_offers)
            if self.exists() and not rebuild and self.matcher_identity() != want:
                self.check_encoders(settings)
                reprojected = self._reproject(cfg or self.fusion(), matcher)
            exists = self.exists() and not rebuild
            if exists:
                self.check_encoders(settings)
                cfg = cfg or self.fusion()
                tbl = self.table()
                old = (tbl.to_lance().to_table(columns=["id", "content_hash", "gtin", "mpn"]) if tbl.count_rows()
                       else None)
                old_map = dict(zip(old["id"].to_pylist(), old["content_hash"].to_pylist(), strict=True)) if old else {}
                old_codes = dict(zip(old["id"].to_pylist(), zip(old["gtin"].to_pylist(), old["mpn"].to_pylist(),
                                                                 strict=True), strict=True)) if old else {}
            else:
                cfg = cfg or FusionConfig()
                old_map, old_codes = {}, {}
            todo = [i for i, h in hashes.items() if old_map.get(i) != h]
            # GTIN/MPN feed no embedding: a row whose only change is its codes is rewritten, not re-embedded
            codes = codes or {}
            recoded = [i for i, h in hashes.items() if i in old_map and old_map[i] == h
                       and old_codes[i] != codes.get(i, (None, None))]
            updated = sum(i in old_map for i in todo) + len(recoded)
            deleted = [i for i in old_map if i not in hashes]
            rows = embed(todo, cfg)  # None when nothing is to be embedded
            meta = {"format": FORMAT, "encoders": enc, "fusion": cfg.to_dict(), "source_table": source_table,
                    "matcher": want}
            if not exists:
                schema = rows.schema if rows is not None else self._row_schema(settings, cfg, matcher)
                schema = schema.with_metadata({META_KEY: json.dumps(meta).encode()})
                tbl = self.db.create_table(self.name, _conform(rows, schema), mode="overwrite", on_bad_vectors="null")
            else:
                if recoded:
                    recoded_rows = self._recode_rows(
                        tbl, [Offer(id=i, title=None, gtin=codes[i][0], mpn=codes[i][1]) for i in recoded], None)
                    rows = recoded_rows if rows is None else [rows, recoded_rows]
                if rows is not None:
                    (tbl.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
                     .execute(_conform(rows, tbl.schema), on_bad_vectors="null"))
                if deleted:
                    for s in range(0, len(deleted), 1000):
                        ids = ", ".join("'" + i.replace("'", "''") + "'" for i in deleted[s:s + 1000])
                        tbl.delete(f"id IN ({ids})")
            total = tbl.count_rows()
            ann = self._ensure_ann(tbl, total, ann_min_rows, changed=len(todo) + len(deleted))
            return RefreshStats(index=self.name, inserted=len(todo) + len(recoded) - updated, updated=updated,
                                deleted=len(deleted), unchanged=len(hashes) - len(todo) - len(recoded), total=total,
                                version=int(tbl.version), ann_index=ann, seconds=round(time.perf_counter() - t0, 3),
                                reprojected=reprojected)

    @staticmethod
    def _row_schema(settings: Settings, cfg: FusionConfig, matcher: Matcher | None) -> pa.Schema:
        """The Arrow schema of index rows for these encoders (embedding one placeholder offer)."""
        return embed_offers([Offer(id="__schema__", title="x")], settings, cfg, ["x"], progress=False,
                            matcher=matcher).schema

    @staticmethod
    def _recode_rows(tbl: Any, offers: list[Offer], rows: Any) -> Any:
        """The stored rows of ``offers`` with their new gtin/mpn (no embedding), appended to ``rows``."""
        data = tbl.to_arrow()
        data = data.filter(pc.is_in(data["id"], pa.array([o.id for o in offers], pa.string())))
        by_id = {o.id: o for o in offers}
        codes = code_columns([by_id[i] for i in data["id"].to_pylist()])
        for c, arr in codes.items():
            data = data.set_column(data.schema.get_field_index(c), c, arr)
        if rows is None or not len(rows):
            return data
        return pa.concat_tables([rows.select(data.column_names).cast(data.schema), data])

    def _migrate(self, offers: list[Offer]) -> None:
        """To the current format from ``offers``, without embedding; one atomic overwrite. Format 1 → 2: the
        description columns; 2 → 3: the gtin/mpn columns.

        Rows whose id is not among ``offers`` get NULLs (they are deleted by the refresh that follows).
        """
        data = self.table().to_arrow()
        by_id = {o.id: o for o in offers}
        present = [by_id.get(i) or Offer(id=i, title=None) for i in data["id"].to_pylist()]
        if "description" not in data.column_names:
            title_idents = [x or [] for x in data["identifiers"].to_pylist()]
            data = _insert_description_columns(data, description_columns(present, title_idents))
        for c, arr in code_columns(present).items():
            if c not in data.column_names:
                data = data.append_column(c, arr)
        meta = {**self.metadata(), "format": FORMAT}
        data = data.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
        self.db.create_table(self.name, data, mode="overwrite", on_bad_vectors="null")

    def _reproject(self, cfg: FusionConfig, matcher: Matcher | None) -> int:
        """Recompute every offer vector from the cached per-modality vectors; one atomic overwrite."""
        data = self.table().to_arrow()
        meta = {**self.metadata(), "matcher": matcher.identity if matcher is not None else None}
        if len(data):
            v = OfferVectors.from_arrow(data)
            fused = fuse_vectors(v.text, v.text_ok, v.image, v.image_ok, v.price, v.lexical, cfg, matcher)
            data = data.set_column(data.schema.get_field_index("vector"), "vector", _fsl(fused))
        data = data.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
        self.db.create_table(self.name, data, mode="overwrite", on_bad_vectors="null")
        return len(data)

    @staticmethod
    def _ensure_ann(tbl: Any, total: int, ann_min_rows: int, changed: int) -> bool:
        has = any("vector" in (ix.columns or []) for ix in tbl.list_indices())
        if total >= ann_min_rows and not has:
            from lancedb.index import IvfRq

            # 4-bit RaBitQ codes: 1-bit codes gave recall@10 0.785 at 1M rows (benchmarks/README.md)
            tbl.create_index("vector", config=IvfRq(distance_type="cosine", num_bits=4))
            return True
        if has and changed:
            tbl.optimize()  # folds new rows into the ANN index
        return has
