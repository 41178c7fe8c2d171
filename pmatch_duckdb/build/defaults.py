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
from . import image_efficientnet, text_minilm

# name -> (builder, export recipe version, source distribution): a bundle made by another recipe or
# from another version of its source package is rebuilt.
DEFAULT_BUNDLES: dict[str, tuple[Callable[[Path], dict[str, Any]], int, str]] = {
    text_minilm.NAME: (text_minilm.build, text_minilm.RECIPE, text_minilm.SOURCE_DIST),
    image_efficientnet.NAME: (image_efficientnet.build, image_efficientnet.RECIPE, image_efficientnet.WEIGHTS_DIST),
}


def build_defaults(home: str | os.PathLike[str] | None = None, force: bool = False,
                   names: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, str]:
    """Build the default bundles under the pmatch home; return ``{name: "built" | "up to date"}``.

    Idempotent: an existing bundle that verifies is left alone. A bundle that fails verification is
    reported and *not* silently replaced unless ``force`` (so tampering is never hidden).
    """
    from .common import staging_dir

    result: dict[str, str] = {}
    for name in names or list(DEFAULT_BUNDLES):
        if name not in DEFAULT_BUNDLES:
            raise ModelNotFoundError(f"no default bundle named {name!r}; known: {', '.join(DEFAULT_BUNDLES)}")
        builder, recipe, dist = DEFAULT_BUNDLES[name]
        if not force:
            try:
                bundle = find_bundle(name, home).verify()
                outdated = _outdated(bundle.manifest, recipe, dist)
                if not outdated:
                    result[name] = "up to date"
                    log(f"{name}: up to date")
                    continue
                log(f"{name}: {outdated}; rebuilding")
            except ModelNotFoundError:
                pass
            except ModelIntegrityError:
                raise
        log(f"{name}: exporting to ONNX ...")
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
