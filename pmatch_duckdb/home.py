"""Where pmatch keeps its files (model bundles, caches): the *pmatch home*.

Resolution order: an explicit argument, the ``PMATCH_HOME`` environment variable, then a per-user
data directory (``platformdirs.user_data_dir("pmatch")``, e.g. ``~/.local/share/pmatch``).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def pmatch_home(home: str | os.PathLike[str] | None = None) -> Path:
    """Return the pmatch home directory (not created)."""
    if home is not None:
        return Path(home).expanduser().resolve()
    env = os.environ.get("PMATCH_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_data_dir("pmatch", appauthor=False)).resolve()


def models_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """Directory holding one sub-directory per model bundle."""
    return pmatch_home(home) / "models"
