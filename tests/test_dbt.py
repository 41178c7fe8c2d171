"""The example dbt project: `dbt build` twice embeds nothing new; adding supplier rows embeds only those."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

pytest.importorskip("dbt.adapters.duckdb")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dbt"
pytestmark = pytest.mark.slow


def _dbt(project: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("dbt")
    env = {**os.environ, "PMATCH_HOME": str(home), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    cmd = [str(exe), *args, "--profiles-dir", str(project), "--project-dir", str(project)]
    res = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    return res


def _generate(project: Path, hold_back: int) -> None:
    subprocess.run([sys.executable, "generate_data.py", "--products", "14", "--hold-back", str(hold_back)],
                   cwd=project, check=True, capture_output=True)


def _state(project: Path) -> tuple[list, list, list]:
    con = duckdb.connect(str(project / "pmatch_example.duckdb"), read_only=True)
    try:
        cols = "index, inserted, updated, deleted, unchanged, total"
        cat = con.execute(f"SELECT {cols} FROM catalog_index ORDER BY refreshed_at").fetchall()
        sup = con.execute(f"SELECT {cols} FROM supplier_index ORDER BY refreshed_at").fetchall()
        matches = con.execute("SELECT source_id, target_id, rank, round(score, 6), decision FROM candidate_matches "
                              "ORDER BY ALL").fetchall()
    finally:
        con.close()
    return cat, sup, matches


def test_dbt_build_is_incremental(tmp_path: Path, home: Path) -> None:
    project = tmp_path / "dbt"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("data", "target", "logs", "*.duckdb", "*.pmatch"))
    _generate(project, hold_back=3)

    _dbt(project, home, "build")
    cat, sup, first = _state(project)
    n_cat, n_sup = cat[0][5], sup[0][5]
    assert cat[0][1] == n_cat > 0 and sup[0][1] == n_sup > 0  # first build embeds everything
    assert first, "candidate_matches is empty"
    entities_before = _entities(project)

    _dbt(project, home, "build")
    cat, sup, second = _state(project)
    assert cat[-1][1:5] == (0, 0, 0, n_cat)  # nothing inserted/updated/deleted, all unchanged
    assert sup[-1][1:5] == (0, 0, 0, n_sup)
    assert second == first  # same results
    assert _entities(project) == entities_before  # entity ids stable across runs

    _generate(project, hold_back=0)  # three supplier offers arrive
    _dbt(project, home, "build")
    cat, sup, third = _state(project)
    assert cat[-1][1:5] == (0, 0, 0, n_cat)
    assert sup[-1][1:5] == (3, 0, 0, n_sup)  # only the new rows were embedded
    new_sources = {r[0] for r in third} - {r[0] for r in first}
    assert 1 <= len(new_sources) <= 3
    old_rows = [r for r in third if r[0] not in new_sources]
    assert old_rows == first  # earlier candidates unchanged


def _entities(project: Path) -> dict:
    con = duckdb.connect(str(project / "pmatch_example.duckdb"), read_only=True)
    try:
        return dict(((t, o), e) for t, o, e in con.execute(
            "SELECT table_name, offer_id, entity_id FROM product_entities").fetchall())
    finally:
        con.close()
