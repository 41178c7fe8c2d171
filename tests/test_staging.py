"""Bundle folders get the permissions the umask gives, like any folder ``mkdir`` makes (not mkdtemp's 0700)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from pmatch_duckdb.build.common import staging_dir
from pmatch_duckdb.staging import new_staging_dir

PACKAGE = Path(__file__).resolve().parents[1] / "pmatch_duckdb"


@pytest.fixture(params=[0o022, 0o077, 0o027])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_new_staging_dir_follows_the_umask(tmp_path, umask):
    a, b = new_staging_dir(tmp_path, ".v1."), new_staging_dir(tmp_path, ".v1.")
    assert a != b and a.parent == b.parent == tmp_path and a.name.startswith(".v1.")
    assert mode(a) == mode(b) == 0o777 & ~umask


def test_exported_bundle_folder_follows_the_umask(tmp_path, umask):
    """What `pmatch models build` / `export-text` / `export-openclip` leave: the folder as mkdir makes it."""
    final = tmp_path / "models" / "my-model"
    with staging_dir(final) as tmp:
        (tmp / "model.onnx").write_bytes(b"x")
    assert final.is_dir() and mode(final) == 0o777 & ~umask
    assert mode(final / "model.onnx") == 0o666 & ~umask
    assert mode(final.parent) == 0o777 & ~umask
    with staging_dir(final) as tmp:  # a rebuild replaces it with the same mode
        (tmp / "model.onnx").write_bytes(b"y")
    assert mode(final) == 0o777 & ~umask and (final / "model.onnx").read_bytes() == b"y"
    assert [p.name for p in final.parent.iterdir()] == ["my-model"]  # no staging folder left


# mkdtemp's 0700 is right where a folder is private scratch space in the system temp folder: the index
# of an in-memory connection without index_dir (it holds catalog rows, in a /tmp others can list)
PRIVATE_SCRATCH = {"context.py"}


def test_every_bundle_is_staged_through_new_staging_dir():
    """Model bundles, matcher versions and calibrated versions: no mkdtemp (mode 0700) in $PMATCH_HOME."""
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if re.search(r"\bmkdtemp\(", p.read_text()) and p.name != "staging.py"]
    assert sorted(offenders) == sorted(PRIVATE_SCRATCH)
