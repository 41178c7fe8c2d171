"""A quiet console: LanceDB's Rust warnings and model-export warnings stay off the user's terminal unless
PMATCH_LOG / --verbose asks for them."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

from pmatch_duckdb.console import quiet_export, verbose

FIRST_INDEX = """
import sys, pyarrow as pa
import pmatch_duckdb  # sets the LanceDB log level before lancedb loads
import lancedb
db = lancedb.connect(sys.argv[1])
db.create_table("t", pa.table({"a": [1]}), mode="overwrite")  # 'No existing dataset ... it will be created'
"""


def _stderr(tmp_path, name: str, **env) -> str:
    e = {k: v for k, v in os.environ.items() if k not in ("PMATCH_LOG", "LANCEDB_LOG")}
    r = subprocess.run([sys.executable, "-c", FIRST_INDEX, str(tmp_path / name)], capture_output=True, text=True,
                       env={**e, **env}, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stderr


def test_lancedb_warnings_only_when_verbose(tmp_path):
    assert "WARN" not in _stderr(tmp_path, "quiet")
    assert "lance::dataset" in _stderr(tmp_path, "verbose", PMATCH_LOG="verbose")
    assert "lance::dataset" in _stderr(tmp_path, "explicit", LANCEDB_LOG="warn")  # an explicit setting is kept


def test_export_warnings_only_when_verbose(monkeypatch):
    monkeypatch.delenv("PMATCH_LOG", raising=False)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    assert not verbose()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_export():
            warnings.warn("tracer says hi", UserWarning, stacklevel=1)
        assert not seen
        monkeypatch.setenv("PMATCH_LOG", "verbose")
        with quiet_export():
            warnings.warn("tracer says hi", UserWarning, stacklevel=1)
        assert len(seen) == 1
    monkeypatch.delenv("PMATCH_LOG")
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pmatch", "--verbose", "models", "build"])
    assert verbose()
