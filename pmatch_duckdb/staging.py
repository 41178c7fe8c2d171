"""Staging folders for bundles that are written, then renamed into place (models, matcher versions).

``tempfile.mkdtemp`` makes its folder mode 0700 whatever the umask, and the rename kept that mode, so
every bundle under ``$PMATCH_HOME`` ended up ``drwx------`` while the files in it were ``rw-r--r--``:
no one else could read a home a build or a team shared (a container image built by root, a models
folder on a shared disk). Bundles hold model weights and hashes, not secrets - and the LanceDB index
beside them, which holds the catalog itself, always followed the umask. So the folders follow the
process umask too, as ``mkdir`` does; who may read them is decided by the umask (``umask 077`` for a
private home), in one place for all of ``$PMATCH_HOME``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def new_staging_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """Create and return a new, uniquely named folder ``parent/<prefix><random>`` with mode ``0o777 & ~umask``.

    Like ``tempfile.mkdtemp`` (a fresh name, created atomically, never an existing path or a link
    followed), except for the mode: ``os.mkdir(..., 0o777)`` applies the umask itself, which avoids
    reading the umask with ``os.umask`` (process-wide, racy between threads).
    """
    for _ in range(100):
        path = Path(parent) / f"{prefix}{secrets.token_hex(6)}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        return path
    raise FileExistsError(f"no free staging folder name under {parent!s}")  # pragma: no cover
