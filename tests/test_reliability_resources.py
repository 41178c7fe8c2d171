"""Resources over repeated runs: open file descriptors, temporary files and resident memory do not grow.

(Peak RSS while embedding 100k texts and 10k images is measured by benchmarks/bench_memory.py.)
"""

from __future__ import annotations

import gc
import os
import tempfile
from pathlib import Path

import pytest
from PIL import Image

import pmatch_duckdb as pm

pytestmark = pytest.mark.slow


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def files_under(d: Path) -> int:
    return sum(1 for _ in d.rglob("*"))


def one_run(home: Path, work: Path, i: int, memory: bool) -> None:
    """What a scheduled job does: connect, index, match, cluster, look at images, close."""
    db = ":memory:" if memory else work / "shop.duckdb"  # a scheduled job: the same database every run
    con = pm.connect(db, home=home, image_roots=[work], index_dir=work / "index" if memory else None)
    con.execute("CREATE OR REPLACE TABLE t AS SELECT i AS id, 'usb cable model ' || i AS title, "
                "['img.png', 'missing.jpg'] AS images, i * 1.5 AS price FROM range(40) r(i)")
    con.execute("SELECT * FROM pm_index('t')").fetchall()
    con.execute("CREATE OR REPLACE TABLE m AS SELECT * FROM match_products('t', 't', k := 2)")
    con.execute("SELECT count(*) FROM product_clusters('m')").fetchall()
    con.execute("SELECT pm_image_error('img.png'), pm_embed_image('img.png') IS NULL").fetchall()
    con.close()
    del con
    gc.collect()


@pytest.mark.parametrize("memory", [False, True], ids=["file-db", "in-memory-db"])
def test_no_fd_temp_file_or_memory_growth_over_repeated_runs(home, tmp_path, monkeypatch, record, memory):
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    work = tmp_path / "work"
    work.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(work / "img.png")
    for i in range(2):  # warm-up: ONNX sessions, caches and the index are created once per process
        one_run(home, work, i, memory)
    fds0, tmp0, rss0 = open_fds(), files_under(private_tmp), rss_mb()
    runs = 8
    for i in range(2, 2 + runs):
        one_run(home, work, i, memory)
    fds1, tmp1, rss1 = open_fds(), files_under(private_tmp), rss_mb()
    assert fds1 <= fds0 + 2, (fds0, fds1)  # no descriptor per run
    assert tmp1 == tmp0, (tmp0, tmp1)  # no temporary file per run
    assert rss1 - rss0 < 150, (rss0, rss1)  # generous: allocator noise, not per-run growth
    record("resources", f"{runs} repeated connect/index/match/cluster/close runs ({'in-memory' if memory else 'file'} "
                        "database)", f"open fds {fds0} → {fds1}, temp files {tmp0} → {tmp1}, RSS {rss0:.0f} → "
                                     f"{rss1:.0f} MB")


def test_in_memory_database_temp_folder_is_removed_at_exit(home, tmp_path, record):
    """Without index_dir an in-memory database indexes into a temporary folder, removed when the process exits."""
    import subprocess
    import sys

    code = ("import pmatch_duckdb as pm, sys; c = pm.connect(home=sys.argv[1], image_roots=[sys.argv[2]]); "
            "c.execute(\"CREATE TABLE t AS SELECT 1 AS id, 'usb' AS title\"); "
            "c.execute(\"SELECT * FROM pm_index('t')\").fetchall(); print('ok')")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code, str(home), str(tmp_path)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith("pmatch-memory-")]
    assert left == []
    record("resources", "in-memory database without index_dir (temporary index folder)",
           "folder removed at process exit (left behind: 0)")
