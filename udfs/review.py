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
        "rechecks": T.BIGINT, "skipped_labelled": T.BIGINT, "certify_samples": T.BIGINT, "certify_above": T.DOUBLE,
        "reject_samples": T.BIGINT, "accept_conflicts": T.BIGINT,
        "one_match_conflicts": T.BIGINT}
_ARROW = {T.VARCHAR: pa.string(), T.BIGINT: pa.int64(), T.DOUBLE: pa.float64()}
_ROW_ARROW = pa.struct([(k, _ARROW[t]) for k, t in _ROW.items()])


def register_review_udfs(reg: Registrar, ctx: PmatchContext) -> None:
    """Register ``_pm_queue_review`` bound to ``ctx``."""

    def pm_queue_review(matches: pa.ChunkedArray, queues: pa.ChunkedArray, samples: pa.ChunkedArray,
                        deltas: pa.ChunkedArray, seeds: pa.ChunkedArray, certify: pa.ChunkedArray,
                        above: pa.ChunkedArray, size: pa.ChunkedArray, audit: pa.ChunkedArray,
                        one_match: pa.ChunkedArray) -> pa.Array:
        out = []
        for m, q, s, d, sd, c, a, n, r, om in zip(as_pylist(matches), as_pylist(queues), as_pylist(samples),
                                                  as_pylist(deltas), as_pylist(seeds), as_pylist(certify),
                                                  as_pylist(above), as_pylist(size), as_pylist(audit),
                                                  as_pylist(one_match), strict=True):
            if m is None:
                raise PmatchError("pm_queue_review: the match result table name is NULL")
            cur = ctx.con.cursor()  # never run SQL on the calling connection inside a UDF
            try:
                stats = queue_review(cur, m, q or "default", accept_sample=0.05 if s is None else float(s),
                                     recheck_delta=0.3 if d is None else float(d), seed=int(sd or 0), certify=c,
                                     certify_above=a, certify_size=n, audit_rejects=int(r or 0),
                                     one_match=bool(om), ctx=ctx)
            finally:
                cur.close()
            out.append(stats.as_row())
        return pa.array(out, type=_ROW_ARROW)

    reg.add("_pm_queue_review", pm_queue_review,
            [T.VARCHAR, T.VARCHAR, T.DOUBLE, T.DOUBLE, T.BIGINT, T.DOUBLE, T.DOUBLE, T.BIGINT, T.BIGINT, T.BOOLEAN],
            duckdb.struct_type(_ROW), side_effects=True, null_handling="special")
