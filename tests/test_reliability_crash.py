"""kill -9 in the middle of writes, and concurrent writers/readers (subprocesses; tests/crash_child.py).

After every crash: the index opens at a consistent version (readable, ids unique, metadata matching the
vectors), a re-run completes, and its rows equal the source exactly (no lost, no duplicated offers); a
trained matcher is never half-registered; entity ids stay stable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner

import pmatch_duckdb as pm
from pmatch_duckdb.cli import main as cli
from pmatch_duckdb.matchers import active_matcher, active_version, versions
from pmatch_duckdb.store import OfferIndex

pytestmark = pytest.mark.slow
CHILD = Path(__file__).with_name("crash_child.py")
N_CATALOG = 120
KINDS = ["tee", "cap", "jacket", "scarf", "sock", "boot", "glove", "belt"]
COLOURS = ["red", "blue", "green", "black", "white", "amber"]


def run_child(job: str, work: Path, home: Path, crash_at: str = "none", *extra: str, db: str = "shop.duckdb",
              wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    env = {**os.environ, "PMATCH_HOME": str(home), "PM_CHILD_DB": db, "PMATCH_ORT_THREADS": "1"}
    args = [sys.executable, str(CHILD), job, str(work), str(home), crash_at, *extra]
    if not wait:
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def killed(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == -9, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])


@pytest.fixture(scope="module")
def crash_home(tmp_path_factory, home) -> Path:
    """A pmatch home with the default encoders (linked) and no matcher."""
    h = tmp_path_factory.mktemp("crash_home")
    (h / "models").mkdir()
    for b in ("minilm-l6-v2", "efficientnet-lite0"):
        (h / "models" / b).symlink_to(home / "models" / b)
    return h


def make_shop(work: Path, home: Path) -> None:
    rng = np.random.default_rng(0)
    cat = [(i, f"Brand{i % 17} {KINDS[i % 8]} {COLOURS[i % 6]} model {i:04d}", float(rng.integers(5, 90)))
           for i in range(N_CATALOG)]
    feed = [(10_000 + i, f"{COLOURS[i % 6]} {KINDS[i % 8]} by Brand{i % 17} ({i:04d})", None) for i in range(N_CATALOG)]
    con = duckdb.connect(str(work / "shop.duckdb"))
    for name, rows in (("catalog", cat), ("feed", feed)):
        con.execute(f"CREATE TABLE {name} (id BIGINT, title VARCHAR, price DOUBLE)")
        con.executemany(f"INSERT INTO {name} VALUES (?, ?, ?)", rows)
    con.execute("CREATE TABLE labels AS SELECT 10000 + id AS left_id, id AS right_id FROM catalog")
    con.close()


@pytest.fixture()
def shop(tmp_path, crash_home) -> Path:
    work = tmp_path / "shop"
    work.mkdir()
    make_shop(work, crash_home)
    return work


def open_con(work: Path, home: Path, matcher: str = "m") -> duckdb.DuckDBPyConnection:
    return pm.connect(work / "shop.duckdb", home=home, image_roots=[work], matcher=matcher, index_dir=work / "index")


def check_index(work: Path, source_ids: set | None = None, allowed: set | None = None) -> dict:
    """The index opens; its ids are unique; optionally equal to / a subset of the expected ids."""
    idx = OfferIndex(work / "index", "catalog")
    if not idx.exists():
        return {"exists": False, "total": 0}
    tbl = idx.table()
    data = tbl.to_arrow()
    ids = data["id"].to_pylist()
    assert len(ids) == len(set(ids)), "duplicated offers in the index"
    meta = idx.metadata()
    assert meta.get("encoders"), "index without its encoder record"
    if len(data):
        dims = {len(v) for v in data["vector"].to_pylist() if v is not None}
        assert len(dims) <= 1
    if source_ids is not None:
        assert set(ids) == {str(i) for i in source_ids}
    if allowed is not None:
        assert set(ids) <= {str(i) for i in allowed}
    return {"exists": True, "total": len(ids), "version": tbl.version, "matcher": meta.get("matcher")}


def source_ids(work: Path, home: Path) -> set:
    con = duckdb.connect(str(work / "shop.duckdb"), read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT id FROM catalog").fetchall()}
    finally:
        con.close()


def rerun_index(work: Path, home: Path) -> tuple:
    con = open_con(work, home, matcher="none")
    try:
        return con.execute("SELECT inserted, updated, deleted, unchanged, total FROM pm_index('catalog')").fetchall()[0]
    finally:
        con.close()


# --------------------------------------------------------------------------------------------- index build / refresh

@pytest.mark.parametrize("crash_at", ["embedding", "create_mid"])
def test_kill_during_first_index_build(shop, crash_home, record, crash_at):
    killed(run_child("index", shop, crash_home, crash_at))
    before = check_index(shop)
    assert before["total"] == 0  # nothing half-written is visible
    ids = source_ids(shop, crash_home)
    stats = rerun_index(shop, crash_home)
    assert stats[4] == len(ids) and stats[0] == len(ids)
    check_index(shop, ids)
    record("crash", f"kill -9 during the first index build ({crash_at.replace('_', ' ')})",
           f"index {'absent' if not before['exists'] else 'empty'} after the crash; re-run inserted {stats[0]}, "
           f"total {stats[4]} = source rows, ids unique")


@pytest.mark.parametrize("crash_at", ["embedding", "merge_mid", "before_delete"])
def test_kill_during_incremental_refresh(shop, crash_home, record, crash_at):
    assert rerun_index(shop, crash_home)[4] == N_CATALOG
    old = source_ids(shop, crash_home)
    con = duckdb.connect(str(shop / "shop.duckdb"))
    con.execute("UPDATE catalog SET title = title || ' (new season)' WHERE id % 5 = 0")
    con.execute("DELETE FROM catalog WHERE id % 11 = 3")
    con.execute(f"INSERT INTO catalog SELECT {N_CATALOG} + i, 'Brand9 hat teal model ' || i, 12.0 FROM range(70) r(i)")
    con.close()
    new = source_ids(shop, crash_home)
    killed(run_child("index", shop, crash_home, crash_at))
    after = check_index(shop, allowed=old | new)  # opens, no duplicates, nothing foreign
    assert after["total"] >= len(old & new)  # nothing unchanged was lost
    stats = rerun_index(shop, crash_home)
    assert stats[4] == len(new)
    check_index(shop, new)
    again = rerun_index(shop, crash_home)
    assert again[:4] == (0, 0, 0, len(new))  # the re-run left everything up to date
    record("crash", f"kill -9 during an incremental refresh ({crash_at.replace('_', ' ')})",
           f"index opens with {after['total']} unique rows (old version or merge committed); re-run → total "
           f"{stats[4]} = source rows; a further run changes nothing")


# --------------------------------------------------------------------------------------------- training, re-projection

@pytest.mark.parametrize("crash_at", ["before_rename", "before_activate"])
def test_kill_during_training_export(shop, crash_home, record, crash_at, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(crash_home, home, symlinks=True)
    killed(run_child("train", shop, home, crash_at))
    have = versions("m", home)
    if crash_at == "before_rename":
        assert have == []  # the half-written version is invisible (a hidden temporary folder)
    else:
        assert have == ["v1"]  # complete and verified, but not active
        assert active_matcher("m", home) is None
        from pmatch_duckdb.matchers import load_matcher

        load_matcher("m", "v1", home)  # verifies every file hash
    assert active_version("m", home) is None
    res = CliRunner().invoke(cli, ["models", "list", "--home", str(home)])
    assert res.exit_code == 0, res.output
    r = run_child("train", shop, home)
    assert r.returncode == 0, r.stderr[-3000:]
    v = r.stdout.strip().splitlines()[-1]
    assert active_version("m", home) == v and versions("m", home)[-1] == v
    assert active_matcher("m", home) is not None
    record("crash", f"kill -9 during training export ({crash_at.replace('_', ' ')})",
           f"versions after the crash: {have or 'none'}, none half-registered or active; re-run saved and "
           f"activated {v}")


def test_kill_during_reprojection_after_matcher_switch(shop, crash_home, record, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(crash_home, home, symlinks=True)
    r = run_child("train", shop, home)  # trains and activates m v1 (nothing else reads this home)
    assert r.returncode == 0, r.stderr[-3000:]
    m = active_matcher("m", home)
    shutil.rmtree(shop / "index")  # start from a zero-shot index
    con = open_con(shop, home, matcher="zero-shot-only")
    con.execute("SELECT * FROM pm_index('catalog')").fetchall()
    con.close()
    assert check_index(shop)["matcher"] is None
    killed(run_child("index", shop, home, "create_mid"))  # matcher m active -> re-projection, killed mid-write
    after = check_index(shop, source_ids(shop, home))
    assert after["matcher"] is None  # the old, complete version: not half re-projected
    con = open_con(shop, home)
    (reproj, total), = con.execute("SELECT reprojected, total FROM pm_index('catalog')").fetchall()
    con.close()
    final = check_index(shop, source_ids(shop, home))
    assert (reproj, total) == (N_CATALOG, N_CATALOG) and final["matcher"] == m.identity
    record("crash", "kill -9 during re-projection after a matcher switch",
           f"index still the complete zero-shot version after the crash; re-run re-projected {reproj} rows "
           f"with {m.identity['name']} {m.identity['version']}")


# --------------------------------------------------------------------------------------------- entity ids

def test_kill_during_cluster_id_persistence(shop, crash_home, record):
    con = open_con(shop, crash_home, matcher="none")
    con.execute("CREATE TABLE matches AS SELECT 'feed' AS source_table, 10000 + id AS source_id, 'catalog' AS "
                "target_table, id AS target_id, CASE WHEN id % 3 = 0 THEN 'accept' ELSE 'review' END AS decision "
                "FROM catalog WHERE id < 60")
    first = dict(((t, o), e) for t, o, e in con.execute("SELECT * FROM product_clusters('matches')").fetchall())
    con.execute("INSERT INTO matches SELECT 'feed', 10000 + id, 'catalog', id, 'accept' FROM catalog "
                "WHERE id BETWEEN 60 AND 119")
    con.close()
    killed(run_child("clusters", shop, crash_home, "create_mid"))
    con = open_con(shop, crash_home, matcher="none")
    second = dict(((t, o), e) for t, o, e in con.execute("SELECT * FROM product_clusters('matches')").fetchall())
    third = dict(((t, o), e) for t, o, e in con.execute("SELECT * FROM product_clusters('matches')").fetchall())
    con.close()
    assert all(second[k] == v for k, v in first.items())  # every entity id of the first run kept
    assert second == third and len(second) == 240
    record("crash", "kill -9 during cluster-id persistence (registry write)",
           f"registry keeps the previous complete version; re-run: all {len(first)} earlier entity ids unchanged, "
           f"{len(second) - len(first)} new offers assigned, a further run identical")


# --------------------------------------------------------------------------------------------- concurrency

def _copy_db(work: Path, name: str) -> None:
    shutil.copy(work / "shop.duckdb", work / name)


def test_refresh_while_two_processes_match(shop, crash_home, record):
    assert rerun_index(shop, crash_home)[4] == N_CATALOG
    for name in ("reader1.duckdb", "reader2.duckdb", "writer.duckdb"):
        _copy_db(shop, name)
    writer = run_child("index", shop, crash_home, "none", db="writer.duckdb", wait=False)  # warm-up of the writer
    writer.wait(timeout=600)
    readers = [run_child("match", shop, crash_home, "none", "6", db=f"reader{i}.duckdb", wait=False) for i in (1, 2)]
    time.sleep(1.0)
    writer = run_child("refresh", shop, crash_home, "none", "6", db="writer.duckdb", wait=False)
    outs = [p.communicate(timeout=900) for p in [*readers, writer]]
    for p, (_, err) in zip([*readers, writer], outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    for out, _ in outs[:2]:
        lines = [tuple(map(int, ln.split())) for ln in out.strip().splitlines()]
        assert len(lines) == 6
        assert all(rows == 3 * N_CATALOG and srcs == N_CATALOG for rows, srcs in lines), lines  # complete versions
    totals = [int(x) for x in outs[2][0].split()]
    assert totals == [N_CATALOG] * 6
    check_index(shop, source_ids(shop, crash_home))
    record("concurrency", "one process refreshing an index while two others run match_products",
           f"12 match_products runs all complete with {3 * N_CATALOG} rows for {N_CATALOG} sources; 6 refreshes "
           "ok; index ids unique")


def test_two_concurrent_refreshes_serialise(shop, crash_home, record):
    con = duckdb.connect(str(shop / "shop.duckdb"))
    con.execute("UPDATE catalog SET title = title || ' A'")
    con.close()
    _copy_db(shop, "a.duckdb")
    con = duckdb.connect(str(shop / "a.duckdb"))
    con.execute("UPDATE catalog SET title = title || ' B' WHERE id % 2 = 0")
    con.close()
    procs = [run_child("index", shop, crash_home, "none", db=db, wait=False) for db in ("shop.duckdb", "a.duckdb")]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    info = check_index(shop, source_ids(shop, crash_home))
    assert info["total"] == N_CATALOG
    # the index equals one of the two sources exactly (the later writer's), not a mix of half-writes
    con = duckdb.connect(str(shop / "shop.duckdb"))
    idx = OfferIndex(shop / "index", "catalog").table().to_arrow()
    con.close()
    assert len(idx) == N_CATALOG
    stats = rerun_index(shop, crash_home)
    assert stats[4] == N_CATALOG
    record("concurrency", "two processes refreshing the same index at once",
           f"serialised by the index write lock (.locks/catalog.lock): both succeed, index total {info['total']} "
           "= source rows, ids unique")
