"""``pmatch sql``: statements from -c / -f / a pipe in every output format, errors, and the interactive prompt
driven through a pseudo-terminal (multi-line statements, .help, .mode, history, .quit)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pmatch_duckdb.cli import main as cli
from pmatch_duckdb.shell import statement_complete

SETUP = ("CREATE TABLE catalog AS SELECT * FROM (VALUES (1, 'Sony KDL-40V4100 40in LCD TV'), "
         "(2, 'Apple iPod nano 8GB silver'), (3, 'Canon PowerShot SD1100 IS camera')) t(id, title);"
         "CREATE TABLE feed AS SELECT * FROM (VALUES ('a', 'sony kdl40v4100 television'), "
         "('b', 'ipod nano 8 gb apple')) t(id, title);")
MATCH = "SELECT source_id, target_id, decision <> 'reject' AS found FROM match_products('feed', 'catalog', k := 1) ORDER BY source_id"


@pytest.mark.parametrize("text, done", [
    ("SELECT 1;", True), ("SELECT 1", False), ("SELECT 1;  -- comment", True), ("SELECT ';'", False),
    ("SELECT 'it''s';", True), ("SELECT 1 /* ; */", False), ("SELECT 1 /* open", False), ("SELECT 'open;", False),
    ("SELECT 1;\nSELECT 2", False), (".help", True), ("", True), ('SELECT ";" AS "a;b";', True),
])
def test_statement_complete(text, done):
    assert statement_complete(text) is done


@pytest.fixture()
def db(tmp_path, home):
    """A database with a small catalog and feed; runs from tmp_path (the default image root)."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["sql", "shop.duckdb", "-c", SETUP, "--home", str(home)])
    assert r.exit_code == 0, r.output
    yield tmp_path / "shop.duckdb", home
    os.chdir(cwd)


def test_command_formats(db):
    path, home = db
    run = CliRunner().invoke
    r = run(cli, ["sql", str(path), "--home", str(home), "-c", MATCH])
    assert r.exit_code == 0, r.output
    assert "source_id" in r.output and "│" in r.output and "true" in r.output  # DuckDB's box rendering
    r = run(cli, ["sql", str(path), "--home", str(home), "--format", "csv", "-c", MATCH])
    assert r.output.splitlines()[:3] == ["source_id,target_id,found", "a,1,True", "b,2,True"], r.output
    r = run(cli, ["sql", str(path), "--home", str(home), "--format", "json", "-c", MATCH + "; SELECT [1, 2] AS l"])
    first, second = r.output.split("\n]\n")[:2]
    assert json.loads(first + "]") == [{"source_id": "a", "target_id": 1, "found": True},
                                       {"source_id": "b", "target_id": 2, "found": True}]
    assert json.loads(second + "]") == [{"l": [1, 2]}]
    r = run(cli, ["sql", str(path), "--home", str(home), "--format", "jsonl", "-c", MATCH])
    assert [json.loads(x)["target_id"] for x in r.output.splitlines()] == [1, 2]


def test_file_pipe_parquet_and_errors(db, tmp_path):
    path, home = db
    run = CliRunner().invoke
    script = tmp_path / "job.sql"
    script.write_text(f"-- nightly job\n.mode csv\nCREATE TABLE m AS\n  {MATCH};\n"
                      "COPY m TO 'm.parquet' (FORMAT parquet);\nSELECT count(*) AS n FROM 'm.parquet';\n")
    r = run(cli, ["sql", str(path), "--home", str(home), "-f", str(script)])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == ["n", "2"] and (tmp_path / "m.parquet").is_file()
    r = run(cli, ["sql", str(path), "--home", str(home), "--format", "csv"], input="SELECT 6 * 7 AS a;\n")
    assert r.output.splitlines() == ["a", "42"]
    r = run(cli, ["sql", str(path), "--home", str(home), "-c", "SELECT 1 AS a; SELEC 2; SELECT 3 AS b"])
    assert r.exit_code == 1 and "syntax error" in r.output and "b" not in r.output.split("Error")[0]
    r = run(cli, ["sql", str(path), "--home", str(home), "-c", "SELECT * FROM match_products('nope', 'catalog')"])
    assert r.exit_code == 1 and "nope" in r.output
    r = run(cli, ["sql", str(path), "--home", str(home), "-c", ".mode xml"])
    assert r.exit_code == 1 and "unknown mode" in r.output


def test_interactive_prompt_through_a_pty(db, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    path, home = db
    hist = tmp_path / "hist"
    env = {**os.environ, "PMATCH_HOME": str(home), "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm",
           "COLUMNS": "160", "LINES": "40"}
    exe = str(Path(sys.executable).with_name("pmatch"))
    child = pexpect.spawn(exe, ["sql", str(path), "--history", str(hist)], env=env, cwd=str(tmp_path),
                          encoding="utf-8", timeout=60, dimensions=(40, 160))
    try:
        child.expect_exact("pmatch>")
        child.send("SELECT 6 * 7\r")  # no ';' yet: a continuation line
        child.expect_exact("...>")
        child.send("AS answer;\r")
        child.expect_exact("42")
        child.expect_exact("pmatch>")
        child.send(".help\r")
        child.expect_exact("match_products(src, tgt, k)")
        child.expect_exact("pm_index(tbl")
        child.expect_exact("pmatch>")
        child.send(".mode csv\r")
        child.expect_exact("pmatch>")
        child.send(MATCH + ";\r")
        child.expect_exact("a,1,True")
        child.expect_exact("pmatch>")
        child.send("SELEC 1;\r")
        child.expect_exact("syntax error")  # reported, and the prompt goes on
        child.expect_exact("pmatch>")
        child.send(".quit\r")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    text = hist.read_text()
    assert "SELECT 6 * 7" in text and "AS answer;" in text and ".quit" in text


def _commands(group, path=()):
    yield path
    for name, cmd in getattr(group, "commands", {}).items():
        yield from _commands(cmd, (*path, name))


def test_help_texts_end_with_an_example():
    run = CliRunner().invoke
    paths = list(_commands(cli))
    assert ("sql",) in paths and ("models", "build") in paths
    for args in paths:
        r = run(cli, [*args, "--help"])
        assert r.exit_code == 0, r.output
        last = r.output.strip().splitlines()[-1]
        assert last.strip().startswith("Example: pmatch"), (args, last)
