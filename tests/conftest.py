"""Shared fixtures. Model bundles are built once under the pmatch home (cached across runs)."""

from __future__ import annotations

from dataclasses import dataclass
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


@pytest.fixture(scope="session")
def linked_home(home: Path):
    """``linked_home(root)``: a fresh pmatch home ``root / "home"`` whose models folder links the default encoder
    bundles of ``home`` (nothing rebuilt), so a test's trained matchers stay out of the shared home."""
    def make(root: Path) -> Path:
        thome = root / "home"
        (thome / "models").mkdir(parents=True)
        for b in ("minilm-l6-v2", "efficientnet-lite0"):
            (thome / "models" / b).symlink_to(home / "models" / b)
        return thome

    return make


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


@pytest.fixture(scope="session")
def _review_demo_master(tmp_path_factory: pytest.TempPathFactory, home: Path) -> Path:
    """A generated shop (demo generator, 20 products) matched once: ``shop.duckdb`` with catalog,
    supplier_feed, truth and matches, its index folder and images. Tests copy it (review_demo)."""
    from pmatch_duckdb.demo.synthetic import generate, write_parquet

    root = tmp_path_factory.mktemp("review_demo")
    data = generate(root / "data", n_products=20, seed=0)
    paths = write_parquet(data, root / "data")
    con = pm.connect(root / "shop.duckdb", home=home, image_roots=[root / "data"])
    for name, path in zip(("catalog", "supplier_feed", "truth"), paths, strict=True):
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet(?)", [str(path)])
    con.execute("CREATE TABLE matches AS SELECT * FROM match_products('supplier_feed', 'catalog', k := 5)")
    con.close()
    return root


@dataclass
class ReviewDemo:
    """A private copy of the matched demo shop: the database file and the image root its paths use."""

    db: Path
    images: Path


@pytest.fixture()
def review_demo(_review_demo_master: Path, tmp_path: Path) -> ReviewDemo:
    """Copy of shop.duckdb + shop.pmatch/ per test; images stay in the (read-only) master's data/."""
    import shutil

    dst = tmp_path / "shop"
    dst.mkdir()
    shutil.copy(_review_demo_master / "shop.duckdb", dst / "shop.duckdb")
    shutil.copytree(_review_demo_master / "shop.pmatch", dst / "shop.pmatch")
    return ReviewDemo(dst / "shop.duckdb", _review_demo_master / "data")


# --------------------------------------------------------------------------------------------- reliability evidence
# tests/reliability_log.py: the `record` fixture and the JSON log behind docs/reliability.md
from reliability_log import note_report, record, write_log  # noqa: E402,F401


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    note_report(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    write_log(session)
