"""The package list in pyproject.toml matches the tree (udfs/ and sql/ are mapped into the package)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _declared() -> tuple[set[str], dict[str, str]]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(cfg["packages"]), cfg["package-dir"]


def test_every_package_folder_is_declared() -> None:
    packages, package_dir = _declared()
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "pmatch_duckdb").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    for name, folder in package_dir.items():
        assert (ROOT / folder / "__init__.py").is_file(), folder
        on_disk |= {
            name + "".join("." + part for part in p.parent.relative_to(ROOT / folder).parts)
            for p in (ROOT / folder).rglob("__init__.py")
        }
    assert on_disk == packages


def test_mapped_packages_import_from_top_level_folders() -> None:
    import pmatch_duckdb.sql as sql
    import pmatch_duckdb.udfs as udfs

    assert Path(udfs.__file__).resolve().parent == ROOT / "udfs"
    assert "CREATE" in sql.read_sql("match.sql").upper()
