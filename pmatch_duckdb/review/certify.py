"""The certification sample: how many random pairs above a score people must review to certify a precision.

``pmatch calibrate`` certifies an accept threshold where the reviewed pairs above it have a one-sided 95% Wilson
lower bound on precision >= the target. The boundary queue rarely reaches the top of the review band (it asks about
the pairs nearest the boundary first), and where nothing is auto-accepted there is no accept sample either: so at
0.99 calibrate usually finds too few reviewed pairs up there (the bound needs 268 matches without an error). The
certification sample fills that gap by design: a uniform random sample of the result's pairs scoring at least
``above``, sized so that the bound reaches the target with at most ``errors`` no-matches among them, queued first in
random order (any reviewed prefix is itself a uniform sample). Its verdicts are ordinary reviewed pairs to
``calibrate`` (``pm_labels.reason = 'certify_sample'``), which also reports how far the sample has got.

``above`` by default: for a trained matcher (scores are calibrated probabilities) the lowest score at which the
result's pairs above it average at least :func:`expected_precision_goal` of the target; zero-shot similarities are no
probabilities, so there it is the accept threshold in force, or must be given.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import duckdb
import numpy as np

from ..decision import wilson_lower
from ..errors import PmatchError
from .labels import has_column, has_labels, matcher_in, table_key

#: the share of the allowed error rate (1 - target) the default ``above`` expects: 1/5, e.g. an expected precision of
#: 0.998 for a 0.99 target, so a sample sized for one error usually holds at most one
EXPECTED_ERROR_SHARE = 0.2


def check_target(target: float) -> float:
    """``target`` as a float in (0.5, 1), or a clear error."""
    try:
        t = float(target)
    except (TypeError, ValueError):
        raise PmatchError(f"certify: the target precision must be a number in (0.5, 1), got {target!r}") from None
    if not 0.5 < t < 1:
        raise PmatchError(f"certify: the target precision must be in (0.5, 1), got {t}")
    return t


def reviews_needed(target: float, errors: int = 1) -> int:
    """The fewest reviewed pairs whose 95% Wilson lower bound on precision reaches ``target`` with ``errors``
    no-matches among them (0.99: 268 without an error, 446 with one)."""
    target = check_target(target)
    lo, hi = errors + 1, errors + 2
    while wilson_lower(np.array([hi - errors]), np.array([hi]))[0] < target:
        lo, hi = hi, hi * 2
    while lo < hi:  # the bound with a fixed number of errors rises with n
        mid = (lo + hi) // 2
        if wilson_lower(np.array([mid - errors]), np.array([mid]))[0] >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def expected_precision_goal(target: float) -> float:
    """The precision the default ``above`` expects of the pairs above it (see :data:`EXPECTED_ERROR_SHARE`)."""
    return 1 - (1 - check_target(target)) * EXPECTED_ERROR_SHARE


def calibrated_threshold(scores: np.ndarray, goal: float) -> float | None:
    """The lowest score at which the ``scores`` at or above it average at least ``goal`` (scores read as
    calibrated probabilities of a match), cutting only between distinct scores; None where even the top does not."""
    s = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])[::-1]
    if not len(s):
        return None
    mean = np.cumsum(s) / np.arange(1, len(s) + 1)
    last_of_value = np.r_[s[1:] != s[:-1], True]
    ok = np.flatnonzero((mean >= goal) & last_of_value)
    return float(s[ok[-1]]) if len(ok) else None


def default_floor(scores: np.ndarray, zero_shot: bool, accept_threshold: float, target: float) -> float:
    """The default ``above`` of a sample from a result's ``scores`` (see the module docstring): for a trained matcher's
    calibrated probabilities :func:`calibrated_threshold` at :func:`expected_precision_goal`; for zero-shot
    similarities the ``accept_threshold`` in force. A clear error where there is none."""
    if zero_shot:
        if math.isfinite(accept_threshold):
            return float(accept_threshold)
        raise PmatchError("pm_queue_review: zero-shot scores are similarities, not probabilities, and no accept "
                          "threshold is set: give certify_above (the score to sample above)")
    goal = expected_precision_goal(target)
    floor = calibrated_threshold(scores, goal)
    if floor is None:
        raise PmatchError(
            f"pm_queue_review: no pairs of this result score high enough for the model to expect precision {goal:.4f} "
            f"above them (the default floor for certify := {target}): the model does not expect to reach {target} "
            "anywhere here. Give certify_above (the score to sample above) or a lower certify")
    return floor


@dataclass
class CertifyStatus:
    """How far the certification sample of one matcher and target has got (what ``pmatch calibrate`` reports)."""

    above: float  # the sample's score floor (the lowest of its queues')
    target: float | None  # the precision it was sized to certify (the highest of its queues'; None: not recorded)
    queued: int  # sampled pairs, over all queues
    reviewed: int  # match + no_match verdicts on them
    matches: int
    unsure: int
    lower_bound: float | None  # one-sided 95% Wilson lower bound of the precision above ``above``

    def as_dict(self) -> dict:
        return asdict(self)


def certify_status(con: duckdb.DuckDBPyConnection, matcher: str | tuple[str, ...], target: str
                   ) -> CertifyStatus | None:
    """The certification samples queued for ``matcher``'s scores against ``target`` (any queue) and their current
    verdicts given on that matcher's scores (None where none was queued). ``matcher``: a name, or the names whose
    scores are the same (``ModelState.verdicts_from``: a calibrated copy scores as the version it copies)."""
    key = table_key(target)
    by_queue, names = matcher_in("q.matcher", matcher)
    return _status(con, f"{by_queue} AND (q.target_table = ? OR q.source_table = ?)", [*names, key, key],
                   verdict_on=matcher_in("l.matcher", matcher))


def queue_certify_status(con: duckdb.DuckDBPyConnection, queue: str) -> CertifyStatus | None:
    """The certification sample of review queue ``queue`` and its current verdicts given on the scores of the
    matcher that queued it (None where the queue holds none)."""
    return _status(con, "q.queue = ?", [queue])


def _status(con: duckdb.DuckDBPyConnection, where: str, params: list,
            verdict_on: tuple[str, list] = ("q.matcher = l.matcher", [])) -> CertifyStatus | None:
    """``verdict_on``: (condition, its parameters) that a verdict ``l`` was given on the right scores."""
    if not has_column(con, "pm_review_queue", "certify_above"):
        return None
    target = "max(q.certify_target)" if has_column(con, "pm_review_queue", "certify_target") else "NULL"
    sample = f"FROM pm_review_queue q WHERE q.reason = 'certify_sample' AND {where}"
    above, goal, queued = con.execute(
        f"SELECT min(q.certify_above), {target}, count(DISTINCT (q.source_table, q.source_id, q.target_table, "
        f"q.target_id)) {sample}", params).fetchall()[0]
    if not queued:
        return None
    m = n = u = 0
    if has_labels(con):
        m, n, u = con.execute(
            "SELECT count(*) FILTER (WHERE verdict = 'match'), count(*) FILTER (WHERE verdict IN ('match', "
            "'no_match')), count(*) FILTER (WHERE verdict = 'unsure') FROM pm_labels_current l WHERE EXISTS ("
            f"SELECT 1 {sample} AND q.source_table = l.source_table AND q.source_id = l.source_id AND "
            f"q.target_table = l.target_table AND q.target_id = l.target_id AND {verdict_on[0]})",
            [*params, *verdict_on[1]]).fetchall()[0]
    lb = float(wilson_lower(np.array([m]), np.array([n]))[0]) if n else None
    return CertifyStatus(float(above), None if goal is None else float(goal), int(queued), int(n), int(m), int(u), lb)


def describe(st: CertifyStatus, target: float) -> str:
    """One line on a certification sample: reviewed so far, its bound, and what is left."""
    done = f"{st.reviewed} of {st.queued} sampled pairs above {st.above:.4f} reviewed ({st.matches} matches"
    done += f", {st.unsure} unsure)" if st.unsure else ")"
    if not st.reviewed:
        return f"certification sample: {done}"
    verdict = "reaches" if st.lower_bound >= target else "is below"
    left = st.queued - st.reviewed - st.unsure
    more = f"; {left} sampled pairs left to review" if left > 0 and st.lower_bound < target else ""
    return (f"certification sample: {done}: precision {st.matches / st.reviewed:.3f}, 95% lower bound "
            f"{st.lower_bound:.3f} {verdict} {target}{more}")
