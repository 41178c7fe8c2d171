"""dbt-duckdb plugin: ``plugins: [{module: pmatch_duckdb.dbt, config: {...}}]`` in profiles.yml.

It installs exactly what :func:`pmatch_duckdb.install` installs (the same UDFs and the same
``sql/*.sql`` macros), so dbt models call ``pm_index``, ``match_products`` and
``product_clusters`` like any other SQL. Config keys (all optional): ``home`` (pmatch home),
``image_roots`` (list of folders), ``index_dir``, ``text_model``, ``image_model``,
``max_image_pixels``, ``max_image_bytes``.
"""

from __future__ import annotations

from typing import Any

from dbt.adapters.duckdb.plugins import BasePlugin

from .connection import install, install_macros
from .errors import ConfigError
from .settings import Settings

_KEYS = {"home", "image_roots", "index_dir", "text_model", "image_model", "max_image_pixels", "max_image_bytes"}


class Plugin(BasePlugin):
    """Registers pmatch on dbt's DuckDB connection and re-creates the TEMP macros on every cursor."""

    def initialize(self, plugin_config: dict[str, Any]) -> None:
        unknown = set(plugin_config) - _KEYS
        if unknown:
            raise ConfigError(f"unknown pmatch plugin config key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
        self.config = dict(plugin_config)
        self.settings: Settings | None = None

    def configure_connection(self, conn: Any) -> None:
        cfg = dict(self.config)
        self.settings = Settings.create(home=cfg.pop("home", None), image_roots=cfg.pop("image_roots", None), **cfg)
        install(conn, self.settings)
        self.parent = conn

    def configure_cursor(self, cursor: Any) -> None:
        install_macros(cursor, self.parent)
