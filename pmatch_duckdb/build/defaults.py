"""The default bundle set and the idempotent ``pmatch models build`` logic."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..bundles import find_bundle
from ..console import quiet_export
from ..errors import ModelIntegrityError, ModelNotFoundError
from ..home import models_dir
from . import image_efficientnet, quantize, text_minilm

# name -> (builder, export recipe version, source distribution): a bundle made by another recipe or
# from another version of its source package is rebuilt.
DEFAULT_BUNDLES: dict[str, tuple[Callable[[Path], dict[str, Any]], int, str]] = {
    text_minilm.NAME: (text_minilm.build, text_minilm.RECIPE, text_minilm.SOURCE_DIST),
    image_efficientnet.NAME: (image_efficientnet.build, image_efficientnet.RECIPE, image_efficientnet.WEIGHTS_DIST),
}
# int8 variant name -> the fp32 default bundle it is quantized from
INT8_BUNDLES: dict[str, str] = {quantize.int8_name(n): n for n in DEFAULT_BUNDLES}


def build_defaults(home: str | os.PathLike[str] | None = None, force: bool = False,
                   names: list[str] | None = None, log: Callable[[str], None] = print,
                   int8: bool = False) -> dict[str, str]:
    """Build the default bundles under the pmatch home; return ``{name: "built" | "up to date"}``.

    Idempotent: an existing bundle that verifies is left alone. A bundle that fails verification is
    reported and *not* silently replaced unless ``force`` (so tampering is never hidden).
    ``int8``: also build the int8 variant of each (``minilm-l6-v2-int8``, ``efficientnet-lite0-int8``;
    see :mod:`pmatch_duckdb.build.quantize`); ``names`` may name int8 variants directly.
    """
    from .common import staging_dir

    names = list(names or DEFAULT_BUNDLES)
    for name in names:
        if name not in DEFAULT_BUNDLES and name not in INT8_BUNDLES:
            raise ModelNotFoundError(f"no default bundle named {name!r}; known: "
                                     f"{', '.join([*DEFAULT_BUNDLES, *INT8_BUNDLES])}")
    if int8:
        names += [quantize.int8_name(n) for n in names if n in DEFAULT_BUNDLES]
    # an int8 bundle is made from its fp32 bundle: that one first
    names = list(dict.fromkeys([INT8_BUNDLES.get(n, n) for n in names if n in INT8_BUNDLES] + names))
    names.sort(key=lambda n: n in INT8_BUNDLES)
    result: dict[str, str] = {}
    for name in names:
        if name in INT8_BUNDLES:
            src = INT8_BUNDLES[name]

            def builder(d: Path, src: str = src) -> dict[str, Any]:
                return quantize.quantize_bundle(find_bundle(src, home).verify(), d, log)

            def outdated(m: dict[str, Any]) -> str | None:
                return quantize.int8_outdated(m, home)
        else:
            builder, recipe, dist = DEFAULT_BUNDLES[name]

            def outdated(m: dict[str, Any], recipe: int = recipe, dist: str = dist) -> str | None:
                return _outdated(m, recipe, dist)
        if not force:
            try:
                bundle = find_bundle(name, home).verify()
                why = outdated(bundle.manifest)
                if not why:
                    result[name] = "up to date"
                    log(f"{name}: up to date")
                    continue
                log(f"{name}: {why}; rebuilding")
            except ModelNotFoundError:
                pass
            except ModelIntegrityError:
                raise
        log(f"{name}: {'quantizing to int8' if name in INT8_BUNDLES else 'exporting to ONNX'} ...")
        with staging_dir(models_dir(home) / name) as tmp, quiet_export():
            builder(tmp)
        find_bundle(name, home).verify()
        result[name] = "built"
        log(f"{name}: built in {models_dir(home) / name}")
    return result


def _outdated(manifest: dict[str, Any], recipe: int, dist: str) -> str | None:
    """Why an intact bundle must still be rebuilt (other export recipe or source version), or None."""
    from .common import package_version

    if manifest.get("recipe") != recipe:
        return f"export recipe {manifest.get('recipe')!r} != {recipe}"
    have = manifest.get("source", {}).get("version")
    want = package_version(dist)
    if want != "unknown" and have != want:
        return f"built from {dist} {have}, installed {want}"
    return None
