"""Validating and quoting SQL identifiers that users pass as strings (table names, index names)."""

from __future__ import annotations

import re

from .errors import PmatchError

_PART = re.compile(r'\s*(?:"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_$]*))\s*')
_INDEX_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class IdentifierError(PmatchError):
    """A table or index name that is not a valid (qualified) identifier."""


def split_qualified(name: str) -> list[str]:
    """Split ``catalog``, ``main.catalog`` or ``"my db"."main"."t"`` into its unquoted parts.

    Anything else (a subquery, a semicolon, a comment, unbalanced quotes) raises IdentifierError.
    """
    if not isinstance(name, str) or not name.strip():
        raise IdentifierError(f"expected a table name, got {name!r}")
    parts: list[str] = []
    pos = 0
    while True:
        m = _PART.match(name, pos)
        if not m or m.end() == pos:
            raise IdentifierError(f"invalid table name {name!r}: expected identifiers separated by '.'")
        parts.append(m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2))
        pos = m.end()
        if pos == len(name):
            break
        if name[pos] != ".":
            raise IdentifierError(f"invalid table name {name!r}: unexpected {name[pos:]!r}")
        pos += 1
    if len(parts) > 3:
        raise IdentifierError(f"invalid table name {name!r}: at most database.schema.table")
    return parts


def quote_ident(part: str) -> str:
    """Double-quote one identifier part."""
    return '"' + part.replace('"', '""') + '"'


def quote_qualified(name: str) -> str:
    """Validated, fully quoted form of a possibly qualified table name."""
    return ".".join(quote_ident(p) for p in split_qualified(name))


def index_name_for(table: str) -> str:
    """Default index name of a table: its unqualified name, lower-cased."""
    return split_qualified(table)[-1].lower()


def check_index_name(name: str) -> str:
    """An index name is used as a folder name: letters, digits, ``_ . -`` only."""
    if not isinstance(name, str) or not _INDEX_NAME.match(name) or ".." in name:
        raise IdentifierError(f"invalid index name {name!r}: use letters, digits, '_', '-', '.'")
    return name
