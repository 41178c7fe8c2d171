"""The default bundle set and the idempotent ``pmatch models build`` logic."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..bundles import find_bundle
from ..errors import ModelIntegrityError, ModelNotFoundError
from ..home import models_dir
from . import image_efficientnet, text_minilm

# name -> (builder, source distribution whose version decides whether a rebuild is needed)
DEFAULT_BUNDLES: dict[str, tuple[Callable[[Path], dict[str, Any]], str]] = {
    text_minilm.NAME: (text_minilm.build, text_minilm.SOURCE_DIST),
    image_efficientnet.NAME: (image_efficientnet.build, image_efficientnet.WEIGHTS_DIST),
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
        builder, _dist = DEFAULT_BUNDLES[name]
        if not force:
            try:
                find_bundle(name, home).verify()
                result[name] = "up to date"
                log(f"{name}: up to date")
                continue
            except ModelNotFoundError:
                pass
            except ModelIntegrityError:
                raise
        log(f"{name}: exporting to ONNX ...")
        with staging_dir(models_dir(home) / name) as tmp:
            builder(tmp)
        find_bundle(name, home).verify()
        result[name] = "built"
        log(f"{name}: built in {models_dir(home) / name}")
    return result
