"""UDF behind ``pm_queue_review`` (see sql/review.sql)."""

from __future__ import annotations

import duckdb
import pyarrow as pa
from duckdb import sqltypes as T

from pmatch_duckdb.context import PmatchContext
from pmatch_duckdb.errors import PmatchError
from pmatch_duckdb.review.queue import queue_review

from .arrow_util import Registrar, as_pylist

_ROW = {"queue": T.VARCHAR, "queued": T.BIGINT, "boundary": T.BIGINT, "accept_samples": T.BIGINT,
        "rechecks": T.BIGINT, "skipped_labelled": T.BIGINT}
_ROW_ARROW = pa.struct([(k, pa.string() if k == "queue" else pa.int64()) for k in _ROW])


def register_review_udfs(reg: Registrar, ctx: PmatchContext) -> None:
    """Register ``_pm_queue_review`` bound to ``ctx``."""

    def pm_queue_review(matches: pa.ChunkedArray, queues: pa.ChunkedArray, samples: pa.ChunkedArray,
                        deltas: pa.ChunkedArray, seeds: pa.ChunkedArray) -> pa.Array:
        out = []
        for m, q, s, d, sd in zip(as_pylist(matches), as_pylist(queues), as_pylist(samples), as_pylist(deltas),
                                  as_pylist(seeds), strict=True):
            if m is None:
                raise PmatchError("pm_queue_review: the match result table name is NULL")
            cur = ctx.con.cursor()  # never run SQL on the calling connection inside a UDF
            try:
                stats = queue_review(cur, m, q or "default", accept_sample=0.05 if s is None else float(s),
                                     recheck_delta=0.3 if d is None else float(d), seed=int(sd or 0), ctx=ctx)
            finally:
                cur.close()
            out.append(stats.as_row())
        return pa.array(out, type=_ROW_ARROW)

    reg.add("_pm_queue_review", pm_queue_review, [T.VARCHAR, T.VARCHAR, T.DOUBLE, T.DOUBLE, T.BIGINT],
            duckdb.struct_type(_ROW), side_effects=True, null_handling="special")
