"""Scoring reviewed or queued pairs again by one stage of the active matcher.

A matcher with a pair scorer shows two scales in one ``match_products`` result: the pairs its scorer re-read
carry the stacked model's score, the others stage 1's. The result's ``scored_by`` column says which, but a result
saved before that column existed does not; and ``pmatch calibrate`` needs each model's own score of every
reviewed pair (each model's thresholds from its own scores), not only the one shown. Those callers score the
pairs again with ``score_pairs``' code (``udfs.matching.score_table_pairs``, which also runs inside the queue's
UDF, where the ``score_pairs`` macro does not exist), with the scorer off or on.
"""

from __future__ import annotations

import duckdb
import numpy as np

from ..errors import PmatchError


def score_again(con: duckdb.DuckDBPyConnection, ctx, pairs: list[tuple[str, str, str, str]],  # noqa: ANN001
                top_m: int | None, why: str) -> np.ndarray:
    """``score_pairs``' score of each ``(source table, source id, target table, target id)`` with ``pair_top_m``
    ``top_m`` (0: stage 1 alone; None: every pair re-read; the connection's setting is left alone); NaN where it
    gives none. ``con``: a connection or cursor to read the source tables with. A table that cannot be read is an
    error naming it and ``why`` the pairs had to be scored again."""
    return _scores(con, ctx, pairs, top_m, why)[0]


def score_again_both(con: duckdb.DuckDBPyConnection, ctx, pairs: list[tuple[str, str, str, str]],  # noqa: ANN001
                     why: str) -> tuple[np.ndarray, np.ndarray]:
    """(stage 1's score, the stacked model's score) of each pair, every pair re-read by the pair scorer: one pass
    gives both (stage 1's is what the re-read starts from). Errors as :func:`score_again`."""
    score, stage1 = _scores(con, ctx, pairs, None, why)
    return stage1, score


def _scores(con: duckdb.DuckDBPyConnection, ctx, pairs: list[tuple[str, str, str, str]],  # noqa: ANN001
            top_m: int | None, why: str) -> tuple[np.ndarray, np.ndarray]:
    from ..udfs.matching import score_table_pairs  # (the UDF layer imports the review package)

    score, stage1 = np.full(len(pairs), np.nan), np.full(len(pairs), np.nan)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (st, _, tt, _) in enumerate(pairs):
        groups.setdefault((st, tt), []).append(i)
    for (st, tt), idx in groups.items():
        try:
            got = score_table_pairs(ctx, con, st, tt, [(pairs[i][1], pairs[i][3]) for i in idx], top_m)
        except (duckdb.Error, PmatchError) as e:
            raise PmatchError(f"{why}: scoring {len(idx)} pairs of {st} -> {tt} again failed: {e}") from None
        score[idx] = [np.nan if a is None else a for a, _ in got]
        stage1[idx] = [np.nan if b is None else b for _, b in got]
    return score, stage1


def result_pairs(con: duckdb.DuckDBPyConnection, matches: str
                 ) -> list[tuple[str, str, str, str, float, str | None]]:
    """The scored pairs of a saved ``match_products`` result: (source table, source id, target table, target id,
    score, scored_by — None in a result saved before ``match_products`` had that column)."""
    from ..sqlident import quote_qualified

    q = quote_qualified(matches)
    cols = {d[0].lower() for d in con.execute(f"SELECT * FROM {q} LIMIT 0").description}
    by = "scored_by" if "scored_by" in cols else "NULL"
    return con.execute(f"SELECT source_table, CAST(source_id AS VARCHAR), target_table, CAST(target_id AS VARCHAR), "
                       f"CAST(score AS DOUBLE), {by} FROM {q} WHERE score IS NOT NULL").fetchall()


def reread_in_result(con: duckdb.DuckDBPyConnection, ctx, rows: list[tuple], top_m: int,  # noqa: ANN001
                     why: str) -> set[tuple[str, str, str, str]]:
    """The pairs of ``rows`` (:func:`result_pairs`: all of a result) that the pair scorer re-read: as the result's
    ``scored_by`` says, or, in a result saved without it, found by :func:`reread_pairs`."""
    if rows and all(r[5] is not None for r in rows):
        return {tuple(r[:4]) for r in rows if r[5] == "pair_scorer"}
    return reread_pairs(con, ctx, [r[:4] for r in rows], top_m, why)


def reread_pairs(con: duckdb.DuckDBPyConnection, ctx, rows: list[tuple[str, str, str, str]], top_m: int,  # noqa: ANN001
                 why: str) -> set[tuple[str, str, str, str]]:
    """The pairs of a ``match_products`` result (``rows``: all of it, as (source table, source id, target table,
    target id)) that its pair scorer re-read: each source's ``top_m`` best by stage 1's score, which
    ``match_products`` keeps first (so with ``m <= k`` they are all in the result)."""
    from ..pair_scorer import top_m_mask

    if not rows or top_m <= 0:
        return set()
    stage1 = score_again(con, ctx, rows, 0, why)
    src_of: dict[tuple[str, str], int] = {}
    s = np.array([src_of.setdefault((r[0], r[1]), len(src_of)) for r in rows], dtype=np.int64)
    mask = top_m_mask(s, np.nan_to_num(stage1, nan=-1.0), top_m)
    return {tuple(r) for r, f in zip(rows, mask.tolist(), strict=True) if f}

