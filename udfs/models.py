"""``pm_models()``: the installed model bundles as a table (backed by ``_pm_models_list()``)."""

from __future__ import annotations

import duckdb
import pyarrow as pa
from duckdb import sqltypes as T

from pmatch_duckdb.bundles import list_bundles
from pmatch_duckdb.settings import Settings

from .arrow_util import Registrar

_ROW = pa.struct([("name", pa.string()), ("modality", pa.string()), ("dim", pa.int32()),
                  ("verified", pa.bool_()), ("problem", pa.string()), ("source", pa.string()),
                  ("path", pa.string())])


def model_rows(settings: Settings) -> list[dict]:
    """One dict per bundle directory under the pmatch home, with its verification status."""
    rows = []
    for b in list_bundles(settings.home):
        problems = b.problems()
        src = b.manifest.get("source", {})
        rows.append({"name": b.name, "modality": b.modality, "dim": b.dim, "verified": not problems,
                     "problem": "; ".join(problems) or None,
                     "source": _source(src),
                     "path": str(b.path)})
    return rows


def _source(src: dict) -> str | None:
    """``package==version`` for packaged weights, the folder for a model exported from a local folder."""
    if not src:
        return None
    if src.get("package") is None and src.get("folder"):
        return str(src["folder"])
    return f"{src.get('package', '?')}=={src.get('version', '?')}"


def register_model_udfs(reg: Registrar, settings: Settings) -> None:
    """Register ``_pm_models_list()`` (the table macro ``pm_models()`` unnests it)."""

    def models_list() -> pa.Array:
        return pa.array([model_rows(settings)], type=pa.list_(_ROW))

    struct = duckdb.struct_type({"name": T.VARCHAR, "modality": T.VARCHAR, "dim": T.INTEGER,
                                 "verified": T.BOOLEAN, "problem": T.VARCHAR, "source": T.VARCHAR,
                                 "path": T.VARCHAR})
    reg.add("_pm_models_list", models_list, [], duckdb.list_type(struct), side_effects=True)
