"""pmatch-duckdb: multimodal product matching inside DuckDB.

Public surface::

    import pmatch_duckdb as pm
    con = pm.connect("shop.duckdb", image_roots=["./images"])   # DuckDB connection, functions registered
    pm.install(existing_con)                                     # same for a connection you already have

SQL functions registered: ``pm_embed_text``, ``pm_embed_image``, ``pm_embed_images``,
``pm_image_error``, ``pm_image_errors``, ``pm_models()``.
"""

from __future__ import annotations

from .console import quiet_native_logs

quiet_native_logs()  # before anything imports lancedb: its Rust log level is read once, at load

from .api import clusters, index, match  # noqa: E402
from .connection import connect, install, install_macros  # noqa: E402
from .errors import ConfigError, ModelIntegrityError, ModelNotFoundError, PmatchError  # noqa: E402
from .settings import Settings  # noqa: E402

__version__ = "0.1.0"

__all__ = ["ConfigError", "ModelIntegrityError", "ModelNotFoundError", "PmatchError", "Settings",
           "__version__", "clusters", "connect", "index", "install", "install_macros", "match"]
