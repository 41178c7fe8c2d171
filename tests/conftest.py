"""Shared fixtures. Model bundles are built once under the pmatch home (cached across runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

import pmatch_duckdb as pm
from pmatch_duckdb.bundles import find_bundle
from pmatch_duckdb.errors import PmatchError
from pmatch_duckdb.home import pmatch_home


@pytest.fixture(scope="session")
def home() -> Path:
    """The pmatch home holding the default bundles; builds them if missing (needs the build extra)."""
    h = pmatch_home()
    try:
        find_bundle("minilm-l6-v2", h).verify()
        find_bundle("efficientnet-lite0", h).verify()
    except PmatchError:
        from pmatch_duckdb.build import build_defaults

        build_defaults(home=h)
    return h


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    """An empty directory to use as the only allowed image root."""
    d = tmp_path / "images"
    d.mkdir()
    return d


@pytest.fixture()
def images(image_dir: Path) -> Path:
    """Alias of ``image_dir`` used by the index/match tests."""
    return image_dir


@pytest.fixture()
def con(home: Path, image_dir: Path):
    """An in-memory connection with pmatch installed, images confined to ``image_dir``."""
    c = pm.connect(home=home, image_roots=[image_dir])
    yield c
    c.close()


# --------------------------------------------------------------------------------------------- reliability evidence
# tests/reliability_log.py: the `record` fixture and the JSON log behind docs/reliability.md
from reliability_log import note_report, record, write_log  # noqa: E402,F401


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    note_report(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    write_log(session)
