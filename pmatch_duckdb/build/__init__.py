"""Export pretrained encoders to ONNX model bundles (needs the ``build`` extra: torch).

Nothing in this package is imported at query time; the runtime only reads the bundles it writes.
"""

from .defaults import DEFAULT_BUNDLES, build_defaults

__all__ = ["DEFAULT_BUNDLES", "build_defaults"]
