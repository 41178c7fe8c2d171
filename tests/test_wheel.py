"""The wheel works without the repository: build wheel + sdist from a copy of the tree, install the wheel into a
fresh virtual environment outside the repository, build a model into a temporary home and match a small
generated table from a working directory outside the repository.

No download: the fresh venv is made without pip and the wheel is installed into it by this test's pip with
``--no-deps --no-index``; the dependencies come from this test venv's site-packages, made visible by a
``.pth`` line (a plain path entry: the editable install's finder hook in that folder is NOT run, so
``pmatch_duckdb`` can only come from the wheel — checked). An undeclared dependency therefore goes
unnoticed here when this venv happens to have it; missing package data, imports of repository-only files
and a broken console script do not. The text model is built into the temporary home by the installed
``pmatch models build``; the image bundle is copied from the test home (building it too would add about
a minute and exercise the same code path).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
import pmatch_duckdb as pm
assert pm.__file__.startswith(sys.prefix), pm.__file__  # the wheel, not the repository
con = pm.connect("shop.duckdb")
con.execute("SET enable_progress_bar = false")  # a slow machine would draw DuckDB's bar on stdout
con.execute("CREATE TABLE catalog AS SELECT * FROM (VALUES (1, 'Sony KDL-40V4100 40in LCD TV', '4006381333931'), "
            "(2, 'Apple iPod nano 8GB silver', NULL), (3, 'Canon PowerShot SD1100 IS camera', NULL), "
            "(4, 'Sony Bravia KDL-40V4100 LCD television', NULL)) t(id, title, gtin)")
con.execute("CREATE TABLE feed AS SELECT * FROM (VALUES ('a', 'sony kdl40v4100 tv', NULL), "
            "('b', 'ipod nano 8 gb', NULL), ('c', 'some other thing', '4006381333931')) t(id, title, gtin)")
rows = con.execute("SELECT source_id, target_id, decision FROM match_products('feed', 'catalog', k := 1) "
                   "ORDER BY source_id").fetchall()
print(json.dumps({"rows": rows, "module": pm.__file__}))
"""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_wheel_installs_and_matches_outside_the_repository(tmp_path, home):
    # 1. wheel + sdist from a copy of the tracked (and new, not ignored) files
    src = tmp_path / "src"
    files = _run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    dist = tmp_path / "dist"
    for kind in ("wheel", "sdist"):  # one process each (the backend keeps state between the two)
        _run([sys.executable, "-c", f"import sys; from setuptools import build_meta as b; b.build_{kind}(sys.argv[1])",
              str(dist)], cwd=src)
    wheel = next(dist.glob("*.whl"))
    sdist = next(dist.glob("*.tar.gz"))
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("pmatch_duckdb/sql/match.sql", "pmatch_duckdb/sql/examples/dedup_table.sql",
              "pmatch_duckdb/udfs/__init__.py", "pmatch_duckdb/shell.py", "pmatch_duckdb/features/codes.py"):
        assert f in names, f
    assert not [n for n in names if n.split("/")[0] in ("udfs", "sql", "tests")]  # nothing generic at the top
    with tarfile.open(sdist) as t:
        snames = t.getnames()
    assert any(n.endswith("sql/examples/link_feed_to_catalog.sql") for n in snames)
    assert any(n.endswith("udfs/matching.py") for n in snames)

    # 2. a fresh venv outside the repository; the wheel installed without dependencies or an index
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (purelib / "_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)])

    # 3. models in a temporary home: the text model built by the installed command, the image bundle copied
    thome = tmp_path / "home"
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "PMATCH_HOME": str(thome), "HOME": str(tmp_path)}
    work = tmp_path / "work"
    work.mkdir()
    r = _run([str(venv / "bin" / "pmatch"), "models", "build", "--only", "minilm-l6-v2"], cwd=work, env=env)
    assert "Warning" not in r.stderr and "Loading weights" not in r.stderr, r.stderr  # a quiet console
    shutil.copytree(home / "models" / "efficientnet-lite0", thome / "models" / "efficientnet-lite0")
    listed = _run([str(venv / "bin" / "pmatch"), "models", "list"], cwd=work, env=env).stdout
    assert "minilm-l6-v2" in listed and "efficientnet-lite0" in listed and " NO " not in listed

    # 4. match_products from a working directory outside the repository
    r = _run([str(py), "-c", SCRIPT], cwd=work, env=env)
    assert "WARN" not in r.stderr, r.stderr  # LanceDB's first-write warning stays off the console
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["module"].startswith(str(venv))
    best = {s: (t, d) for s, t, d in out["rows"]}
    assert best["a"][0] in (1, 4) and best["b"][0] == 2
    assert best["c"] == (1, "accept")  # the gtin column (equal valid GTINs)
    # the packaged example query, through the installed console script
    example = purelib / "pmatch_duckdb" / "sql" / "examples" / "dedup_table.sql"
    r = _run([str(venv / "bin" / "pmatch"), "sql", "shop.duckdb", "--format", "csv", "-f", str(example)],
             cwd=work, env=env)
    assert r.stdout.strip().splitlines()[-1] == "4,3"  # Sony 1 and 4 are one product
