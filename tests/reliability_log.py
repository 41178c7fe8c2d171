"""Evidence for docs/reliability.md: tests record each input kind / fault, what the product did, and the test.

``record(area, kind, outcome)`` is a fixture; ``outcome`` is built from what the test observed (the row count,
the reason string, the first line of the error), never typed by hand. With ``PMATCH_RELIABILITY_LOG=path``
the records of the run are written there as JSON at the end of the session;
``python tests/render_reliability.py path docs/reliability.md`` turns them into the table
(``make reliability-report`` does both).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest

_RECORDS: list[dict] = []
_FAILED: set[str] = set()


def note_report(report: pytest.TestReport) -> None:
    """Remember failed tests (called from conftest's ``pytest_runtest_logreport``)."""
    if report.failed:
        _FAILED.add(report.nodeid)


def first_line(err: BaseException | str, limit: int = 160) -> str:
    """The user-facing part of an error message (DuckDB's UDF wrapper prefix removed), shortened."""
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    for noise in ("Invalid Input Error: Python exception occurred while executing the UDF: ", "Invalid Input Error: "):
        msg = msg.replace(noise, "")
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


@pytest.fixture()
def record(request: pytest.FixtureRequest) -> Callable[[str, str, str], None]:
    """``record(area, kind, outcome)``: remember one case for the reliability table (node id of this test)."""

    def add(area: str, kind: str, outcome: str) -> None:
        _RECORDS.append({"area": area, "kind": kind, "outcome": outcome, "test": request.node.nodeid})

    return add


def write_log(session: pytest.Session) -> None:
    """Write the records (with each test's outcome) where ``PMATCH_RELIABILITY_LOG`` says."""
    path = os.environ.get("PMATCH_RELIABILITY_LOG")
    if not path:
        return
    failed = set(_FAILED)
    for rec in _RECORDS:
        rec["passed"] = rec["test"] not in failed
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"records": _RECORDS, "failed_tests": sorted(failed),
                   "tests_run": getattr(session, "testscollected", 0)}, f, indent=1, ensure_ascii=False)
