"""Hostile arguments: names with quotes, semicolons, comments, path separators and ``..`` passed to every
macro and CLI command; bundles whose hashes do not verify; a manifest naming files outside its folder; a
matcher with a tampered decision.json. All refused with a clear error; nothing runs, nothing is written or
read outside the allowed places."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from reliability_log import first_line

import pmatch_duckdb as pm
from pmatch_duckdb.bundles import read_bundle
from pmatch_duckdb.cli import main as cli
from pmatch_duckdb.errors import PmatchError

HOSTILE = [
    "x'; DROP TABLE sentinel; --",
    'x"; DROP TABLE sentinel; --',
    "good; DROP TABLE sentinel",
    "good /* comment */",
    "good -- comment",
    "../../escape",
    "..",
    "/etc/passwd",
    "sub/dir",
    "a\\b",
    "good\x00",
    "(SELECT * FROM sentinel)",
    "",
]


def _id(s: str) -> str:
    return s.encode("unicode_escape").decode()[:30] or "empty"


@pytest.fixture()
def hcon(home, tmp_path):
    c = pm.connect(tmp_path / "h.duckdb", home=home, image_roots=[tmp_path])
    c.execute("CREATE TABLE sentinel AS SELECT 1 AS x")
    c.execute("CREATE TABLE good AS SELECT i AS id, 'usb cable ' || i AS title FROM range(3) r(i)")
    yield c
    c.close()


def snapshot(tmp_path: Path) -> set[str]:
    return {str(p.relative_to(tmp_path.parent)) for p in tmp_path.parent.rglob("*") if "escape" in p.name
            or p.name in ("passwd",)}


MACRO_CALLS = [
    ("pm_index", "SELECT * FROM pm_index(?)"),
    ("pm_index", "SELECT * FROM pm_index('good', index_name := ?)"),
    ("match_products", "SELECT * FROM match_products(?, 'good')"),
    ("match_products", "SELECT * FROM match_products('good', ?)"),
    ("product_clusters", "SELECT * FROM product_clusters(?)"),
    ("product_clusters", "SELECT * FROM product_clusters('good', registry := ?)"),
    ("pm_embed_text", "SELECT pm_embed_text('usb', ?)"),
    ("pm_embed_image", "SELECT pm_embed_image('x.jpg', ?)"),
    ("pm_embed_images", "SELECT pm_embed_images(['x.jpg'], ?)"),
    ("pm_queue_review", "SELECT * FROM pm_queue_review(?)"),
]


@pytest.mark.parametrize("name", HOSTILE, ids=[_id(h) for h in HOSTILE])
def test_hostile_names_into_every_macro(hcon, tmp_path, record, name):
    before = snapshot(tmp_path)
    outcomes = []
    for fn, sql in MACRO_CALLS:
        try:
            hcon.execute(sql, [name]).fetchall()
        except duckdb.Error as e:
            msg = first_line(e)
            # match_products binds its tables with DuckDB's query_table(), which refuses an unknown name itself
            # (a catalog, parser or binder error naming it) before any pmatch code runs
            duckdb_own = fn == "match_products" and any(k in msg for k in ("Catalog Error", "Parser Error",
                                                                           "Binder Error", "IO Error"))
            assert fn in msg or duckdb_own, (fn, msg)
            outcomes.append(fn)
        else:
            pytest.fail(f"{fn} accepted the name {name!r}")
    assert hcon.execute("SELECT * FROM sentinel").fetchall() == [(1,)]  # nothing executed
    assert snapshot(tmp_path) == before  # nothing created outside
    assert not (tmp_path.parent / "escape").exists()
    record("hostile names", f"name {name!r} into every macro",
           f"refused by all {len(outcomes)} calls ({', '.join(sorted(set(outcomes)))}); sentinel table intact, "
           "no file written outside")


CLI_CALLS = [
    ["index", "{db}", "{name}"],
    ["index", "{db}", "good", "--name", "{name}"],
    ["match", "{db}", "{name}", "good"],
    ["match", "{db}", "good", "good", "--into", "{name}"],
    ["match", "{db}", "good", "good", "--matcher", "{name}"],
    ["models", "activate", "{name}", "v1", "--home", "{home}"],
    ["models", "rollback", "{name}", "--home", "{home}"],
    ["evaluate", "{db}", "--source", "{name}", "--target", "good", "--pairs", "good"],
    ["train", "{db}", "--offers", "good", "--group-column", "title", "--name", "{name}", "--home", "{home}"],
    ["train", "{db}", "--offers", "good", "--pairs", "{name}", "--home", "{home}"],
    ["train", "{db}", "--offers", "good", "--group-column", "{name}", "--home", "{home}"],
    ["evaluate", "{db}", "--source", "good", "--target", "good", "--pairs", "{name}"],
    ["review", "{db}", "--matches", "{name}"],
    ["review", "{db}", "--queue", "{name}"],
    ["calibrate", "{db}", "--target", "{name}"],
    ["calibrate", "{db}", "--target", "good", "--matches", "{name}"],
    ["calibrate", "{db}", "--target", "good", "--matcher", "{name}"],
    ["sql", "{db}", "--matcher", "{name}", "-c", "SELECT 1"],
    ["sql", "{db}", "--text-model", "{name}", "-c", "SELECT 1"],
    ["sql", "{db}", "-c", "SELECT * FROM match_products('{name}', 'good')"],
    ["models", "export-text", "--path", "{home}", "--name", "{name}", "--home", "{home}"],
    ["models", "export-text", "--path", "{name}", "--name", "ok-name", "--home", "{home}"],
    ["models", "export-openclip", "--weights", "{home}", "--name", "{name}", "--home", "{home}"],
    ["models", "build", "--only", "{name}", "--home", "{home}"],
]


@pytest.mark.parametrize("name", [h for h in HOSTILE if "\x00" not in h and h],
                         ids=[_id(h) for h in HOSTILE if "\x00" not in h and h])
def test_hostile_names_into_every_cli_command(linked_home, tmp_path, record, name):
    db = tmp_path / "c.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE sentinel AS SELECT 1 AS x")
    con.execute("CREATE TABLE good AS SELECT i AS id, 'usb cable ' || i AS title FROM range(3) r(i)")
    con.close()
    thome = linked_home(tmp_path)
    runner = CliRunner()
    for args in CLI_CALLS:
        argv = [a.format(db=db, name=name, home=thome) for a in args]
        res = runner.invoke(cli, argv, env={"PMATCH_HOME": str(thome)})
        assert res.exit_code != 0, (argv, res.output)
        assert res.exception is None or isinstance(res.exception, SystemExit), (argv, repr(res.exception))
        assert "Traceback" not in res.output and "Error" in res.output, (argv, res.output)
    con = duckdb.connect(str(db))
    assert con.execute("SELECT * FROM sentinel").fetchall() == [(1,)]
    con.close()
    assert not (tmp_path.parent / "escape").exists() and not (thome.parent / "escape").exists()
    assert sorted(p.name for p in (thome / "matchers").iterdir()) == [] if (thome / "matchers").exists() else True
    record("hostile names", f"name {name!r} into every CLI command",
           f"all {len(CLI_CALLS)} commands (index, match, --into, --matcher, models activate/rollback, evaluate, "
           "train --name/--pairs/--group-column, review, calibrate, sql, models export-text/export-openclip/build) "
           "exit non-zero with an error line; nothing executed or written outside")


# --------------------------------------------------------------------------------------------- bundles and matchers

def _copy_home(home: Path, tmp_path: Path) -> Path:
    h = tmp_path / "home"
    (h / "models").mkdir(parents=True)
    shutil.copytree(home / "models" / "minilm-l6-v2", h / "models" / "minilm-l6-v2")
    (h / "models" / "efficientnet-lite0").symlink_to(home / "models" / "efficientnet-lite0")
    return h


def test_bundle_whose_hash_does_not_verify(home, tmp_path, record):
    h = _copy_home(home, tmp_path)
    shutil.copytree(h / "models" / "minilm-l6-v2", h / "models" / "evil-text")
    mf = json.loads((h / "models" / "evil-text" / "manifest.json").read_text())
    mf["name"] = "evil-text"
    (h / "models" / "evil-text" / "manifest.json").write_text(json.dumps(mf))
    with open(h / "models" / "evil-text" / "tokenizer.json", "a") as f:
        f.write(" ")
    con = pm.connect(home=h, image_roots=[tmp_path])
    with pytest.raises(duckdb.Error) as ei:
        con.execute("SELECT pm_embed_text('usb', 'evil-text')").fetchall()
    msg = first_line(ei.value, 1000)
    assert "pm_embed_text" in msg and "failed verification" in msg and "sha256 mismatch" in msg, msg
    rows = dict(con.execute("SELECT name, verified FROM pm_models()").fetchall())
    assert rows["evil-text"] is False and rows["minilm-l6-v2"] is True
    con.close()
    record("hostile bundles", "model bundle whose file hashes do not verify",
           f"refused: {msg[:120]}; pm_models() shows verified = false")


@pytest.mark.parametrize("rel", ["../../secret.txt", "/etc/hostname", "sub/../../x.onnx"])
def test_manifest_pointing_outside_its_folder(home, tmp_path, record, rel):
    h = _copy_home(home, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for you")
    d = h / "models" / "minilm-l6-v2"
    mf = json.loads((d / "manifest.json").read_text())
    mf["files"][rel] = hashlib.sha256(b"not for you").hexdigest()
    (d / "manifest.json").write_text(json.dumps(mf))
    with pytest.raises(PmatchError, match="outside its bundle folder"):
        read_bundle(d)
    con = pm.connect(home=h, image_roots=[tmp_path])
    with pytest.raises(duckdb.Error) as ei:
        con.execute("SELECT pm_embed_text('usb')").fetchall()
    msg = first_line(ei.value, 1000)
    assert "pm_embed_text" in msg and "outside its bundle folder" in msg, msg
    (prob,), = con.execute("SELECT problem FROM pm_models() WHERE name = 'minilm-l6-v2'").fetchall()
    assert "outside its bundle folder" in prob
    con.close()
    record("hostile bundles", f"manifest listing a file outside its folder ({rel})",
           f"refused before any file is read: {msg[:110]}")


def _fake_matcher(home: Path, name: str = "m", version: str = "v1") -> Path:
    """A matcher version folder with a manifest whose hashes match (contents need not be a real model)."""
    d = home / "matchers" / name / version
    d.mkdir(parents=True)
    (d / "decision.json").write_text(json.dumps({"kind": "logistic", "accept": 0.9}))
    (d / "projection.onnx").write_bytes(b"onnx?")
    from pmatch_duckdb.bundles import write_manifest

    write_manifest(d, {"name": name, "version": version, "modality": "matcher", "dim": 8})
    (home / "matchers" / name / "ACTIVE").write_text(version)
    return d


def test_tampered_decision_json_refused(home, tmp_path, record):
    h = _copy_home(home, tmp_path)
    d = _fake_matcher(h)
    (d / "decision.json").write_text(json.dumps({"kind": "logistic", "accept": 0.0}))  # accept everything
    con = pm.connect(home=h, image_roots=[tmp_path], matcher="m")
    con.execute("CREATE TABLE good AS SELECT i AS id, 'usb cable ' || i AS title FROM range(3) r(i)")
    msgs = []
    for sql in ["SELECT * FROM pm_index('good')", "SELECT * FROM match_products('good', 'good')",
                "SELECT pm_embed_offer('usb cable')"]:
        with pytest.raises(duckdb.Error) as ei:
            con.execute(sql).fetchall()
        msg = first_line(ei.value, 1000)
        assert "failed verification" in msg and "decision.json: sha256 mismatch" in msg, msg
        msgs.append(msg.split(":")[0])
    con.close()
    res = CliRunner().invoke(cli, ["models", "activate", "m", "v1", "--home", str(h)])
    assert res.exit_code != 0 and "decision.json: sha256 mismatch" in res.output
    record("hostile bundles", "trained matcher with a tampered decision.json",
           f"refused by {', '.join(msgs)} and `pmatch models activate` (sha256 mismatch names decision.json)")


def test_matcher_name_cannot_leave_the_home(home, tmp_path, record):
    from pmatch_duckdb.matchers import activate, active_version, versions

    for bad in ["../../escape", "..", "a/b", ".hidden"]:
        for call in (lambda n: versions(n, tmp_path), lambda n: active_version(n, tmp_path),
                     lambda n: activate(n, "v1", tmp_path)):
            with pytest.raises(PmatchError, match="invalid matcher name"):
                call(bad)
    con = pm.connect(home=home, image_roots=[tmp_path], matcher="../../escape")
    con.execute("CREATE TABLE good AS SELECT 1 AS id, 'usb' AS title")
    with pytest.raises(duckdb.Error, match="invalid matcher name"):
        con.execute("SELECT * FROM pm_index('good')").fetchall()
    con.close()
    assert not any(p.name == "escape" for p in tmp_path.parent.iterdir())
    record("hostile names", "matcher names with path separators or .. (connect(matcher=...), CLI, Python)",
           "refused: invalid matcher name (before any file is touched)")


def test_unreadable_and_odd_files_in_the_home(home, tmp_path, record):
    h = _copy_home(home, tmp_path)
    (h / "models" / "junk").mkdir()
    (h / "models" / "junk" / "manifest.json").write_text("{not json")
    (h / "models" / "file-not-dir").write_text("x")
    os.symlink("/nonexistent", h / "models" / "dangling")
    con = pm.connect(home=h, image_roots=[tmp_path])
    rows = dict(con.execute("SELECT name, verified FROM pm_models()").fetchall())
    assert rows == {"efficientnet-lite0": True, "junk": False, "minilm-l6-v2": True}
    assert con.execute("SELECT len(pm_embed_text('usb'))").fetchall() == [(384,)]
    con.close()
    record("hostile bundles", "junk in the model folder (bad JSON manifest, stray file, dangling symlink)",
           "listed as unverified by pm_models(); other models keep working")
