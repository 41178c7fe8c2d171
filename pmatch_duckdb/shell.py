"""``pmatch sql``: a SQL prompt (and script runner) on a DuckDB database with every pmatch function registered.

The DuckDB CLI cannot load Python UDFs, so analysts get this instead: prompt_toolkit for line editing
(history file, multi-line statements that end with ``;``), DuckDB's own table rendering, dot commands
(``.help`` lists the pmatch functions, ``.mode``, ``.tables``, ``.quit``), and the same statements from
``-c`` / ``-f`` / a pipe for scripts and cron jobs, printed as a table, CSV, JSON or JSON lines. Parquet is
written by SQL itself: ``COPY (SELECT ...) TO 'out.parquet' (FORMAT parquet)``.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import duckdb

from .sql import SQL_FILES, read_sql

FORMATS = ("table", "csv", "json", "jsonl")
PROMPT, CONTINUATION = "pmatch> ", "   ...> "
PUBLIC_EXTRA = ("match_products", "product_clusters")  # public functions whose names lack the pm_ prefix
# statements whose result is a row count or nothing: executed, not printed
_SILENT = {"CREATE", "INSERT", "UPDATE", "DELETE", "DROP", "ALTER", "COPY", "TRANSACTION", "ATTACH", "DETACH",
           "SET", "VARIABLE_SET", "LOAD", "CREATE_FUNC", "EXPORT", "VACUUM", "ANALYZE", "PREPARE", "COPY_DATABASE",
           "UPDATE_EXTENSIONS"}


class ShellError(Exception):
    """A statement failed (scripts stop at the first one)."""


def statement_complete(text: str) -> bool:
    """Whether ``text`` ends a statement: its last token outside strings and comments is ``;`` (dot commands
    and blank input are complete at once)."""
    stripped = text.strip()
    if not stripped or stripped.startswith("."):
        return True
    last, i, n = "", 0, len(text)
    while i < n:
        c = text[i]
        if c in ("'", '"'):
            j = text.find(c, i + 1)
            while j != -1 and text[j + 1:j + 2] == c:  # doubled quote inside the string
                j = text.find(c, j + 2)
            if j == -1:
                return False  # an open string
            last, i = c, j + 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j == -1 else j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j == -1:
                return False
            i = j + 2
        elif text.startswith("$$", i):
            j = text.find("$$", i + 2)
            if j == -1:
                return False
            last, i = "$", j + 2
        else:
            if not c.isspace():
                last = c
            i += 1
    return last == ";"


def pmatch_functions(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(signature, description) of each public pmatch SQL function on ``con``, for ``.help``."""
    rows = con.execute(
        "SELECT DISTINCT function_name, parameters FROM duckdb_functions() "
        "WHERE (function_name LIKE 'pm\\_%' ESCAPE '\\' OR function_name IN ?) ORDER BY 1, len(parameters)",
        [list(PUBLIC_EXTRA)]).fetchall()
    docs = _function_docs()
    out, seen = [], set()
    for name, params in rows:
        sig = f"{name}({', '.join(params)})"
        if sig not in seen:
            seen.add(sig)
            out.append((sig, docs.get(name, "")))
    return out


# one line per public function; functions added later without a line here show the first line of their
# comment in sql/*.sql
DOCS = {
    "pm_embed_text": "text -> FLOAT[384] (or FLOAT[] of a named model); NULL for empty text",
    "pm_embed_image": "image path or BLOB -> FLOAT[1280] (or FLOAT[] of a named model); NULL when unusable",
    "pm_embed_images": "an offer's images -> one mean-pooled FLOAT[1280]; failing images skipped",
    "pm_image_error": "why an image is unusable (NULL when usable)",
    "pm_image_errors": "per image of a list: why it is unusable (NULL when usable)",
    "pm_models": "installed model bundles and whether their hashes verify (table)",
    "pm_index": "build or incrementally refresh an offer table's LanceDB index (table, 1 row)",
    "match_products": "candidate matches of source offers in a target table, as rows (table)",
    "pm_embed_offer": "the offer vector of the active matcher (or zero-shot fusion)",
    "product_clusters": "entity ids over the accepted pairs of a saved match result (table)",
    "pm_gtin": "the 14-digit form of a valid GTIN-8/12/13/14 (EAN, UPC), NULL when invalid",
    "pm_gtin_error": "why a code is not a valid GTIN (NULL when valid)",
}


def _function_docs() -> dict[str, str]:
    """name → a one-line description: :data:`DOCS`, else the first comment line naming it in ``sql/*.sql``."""
    docs: dict[str, str] = {}
    for f in SQL_FILES:
        for line in read_sql(f).splitlines():
            m = re.match(r"--\s+([a-z_]+)\(", line)
            if m and m.group(1) not in docs:
                cut = re.search(r"\)(?::| ->)\s*", line)
                docs[m.group(1)] = line[cut.end():].strip() if cut else ""
    return {**docs, **DOCS}


HELP = """\
Statements end with ';' (they may span lines). Dot commands:
  .help              this text and the pmatch functions
  .mode [FORMAT]     output format: table (default), csv, json, jsonl
  .tables            tables and views of the database
  .quit / .exit      leave (Ctrl-D too)
Parquet, CSV and JSON files are written with SQL: COPY (SELECT ...) TO 'out.parquet' (FORMAT parquet);
"""


class Shell:
    """Runs statements and dot commands on a connection and prints their results."""

    def __init__(self, con: duckdb.DuckDBPyConnection, out: TextIO | None = None, fmt: str = "table",
                 width: int | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; one of {', '.join(FORMATS)}")
        self.con, self.out, self.fmt, self.width = con, out or sys.stdout, fmt, width
        self.done = False

    def run(self, text: str) -> None:
        """Run one input: a dot command, or one or more statements (ShellError on the first failure)."""
        stripped = text.strip()
        if not stripped:
            return
        if stripped.startswith("."):
            self.dot(stripped)
            return
        try:
            statements = duckdb.extract_statements(text)
        except duckdb.Error as e:
            raise ShellError(str(e)) from None
        for st in statements:
            self._statement(st)

    def _statement(self, st) -> None:
        try:
            if st.type.name in _SILENT:
                self.con.execute(st.query)
                return
            rel = self.con.sql(st.query)
            if rel is not None:
                self.print_relation(rel)
        except duckdb.Error as e:
            raise ShellError(str(e)) from None

    def print_relation(self, rel: duckdb.DuckDBPyRelation) -> None:
        """Print a result in the current format (the query runs once)."""
        if self.fmt == "table":
            width = self.width or shutil.get_terminal_size((120, 24)).columns
            _to(self.out, rel.show, max_width=width)
            return
        cols, rows = rel.columns, rel.fetchall()
        if self.fmt == "csv":
            w = csv.writer(self.out, lineterminator="\n")
            w.writerow(cols)
            w.writerows([[_csv_value(v) for v in r] for r in rows])
        elif self.fmt == "json":
            self.out.write(json.dumps([dict(zip(cols, r, strict=True)) for r in rows], default=str,
                                      ensure_ascii=False, indent=1) + "\n")
        else:
            for r in rows:
                self.out.write(json.dumps(dict(zip(cols, r, strict=True)), default=str, ensure_ascii=False) + "\n")

    def dot(self, command: str) -> None:
        """A dot command."""
        parts = command.rstrip(";").split()
        name, args = parts[0].lower(), parts[1:]
        if name in (".quit", ".exit", ".q"):
            self.done = True
        elif name == ".help":
            self.out.write(HELP + "\npmatch functions:\n")
            for sig, doc in pmatch_functions(self.con):
                self.out.write(f"  {sig}\n" + (f"      {doc}\n" if doc else ""))
        elif name == ".mode":
            if not args:
                self.out.write(f"{self.fmt}\n")
            elif args[0] not in FORMATS:
                raise ShellError(f"unknown mode {args[0]!r}; one of {', '.join(FORMATS)}")
            else:
                self.fmt = args[0]
        elif name == ".tables":
            self.run("SELECT table_name AS name, table_type AS type FROM information_schema.tables "
                     "WHERE table_schema NOT IN ('information_schema', 'pg_catalog') ORDER BY 1;")
        else:
            raise ShellError(f"unknown command {name}; try .help")


def _to(out: TextIO, show: Callable, **kw) -> None:
    """DuckDB's renderer prints to sys.stdout; send it to ``out``."""
    if out is sys.stdout:
        show(**kw)
        return
    import contextlib

    with contextlib.redirect_stdout(out):
        show(**kw)


def _csv_value(v):
    if isinstance(v, list | dict | tuple):
        return json.dumps(v, default=str, ensure_ascii=False)
    return v


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)


def run_script(shell: Shell, text: str) -> None:
    """Run a script: statements, and dot commands on lines of their own between statements; stops at the
    first error (ShellError)."""
    buf: list[str] = []
    for line in text.splitlines(keepends=True):
        pending = "".join(buf)
        if line.strip().startswith(".") and not _COMMENTS.sub("", pending).strip():
            buf = []
            shell.run(line)
            if shell.done:
                return
            continue
        buf.append(line)
        if statement_complete("".join(buf)):
            shell.run("".join(buf))
            buf = []
    rest = "".join(buf)
    if _COMMENTS.sub("", rest).strip():
        shell.run(rest)


def interactive(shell: Shell, history: Path | None, banner: str = "") -> None:
    """The prompt: Enter runs the input once it ends with ';' (or is a dot command), else starts a new line."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.filters import Condition
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings

    kb = KeyBindings()

    @kb.add("enter", filter=Condition(lambda: True))
    def _(event) -> None:
        buf = event.current_buffer
        if statement_complete(buf.text):
            buf.validate_and_handle()
        else:
            buf.insert_text("\n")

    if history is not None:
        history.parent.mkdir(parents=True, exist_ok=True)
    session = PromptSession(history=FileHistory(str(history)) if history else InMemoryHistory(),
                            multiline=True, key_bindings=kb,
                            prompt_continuation=lambda width, line_number, wrap_count: CONTINUATION)
    if banner:
        print(banner)
    while not shell.done:
        try:
            text = session.prompt(PROMPT)
        except KeyboardInterrupt:
            continue  # Ctrl-C drops the input being typed
        except EOFError:
            break
        try:
            shell.run(text)
        except ShellError as e:
            print(f"Error: {e}", file=sys.stderr)
