"""Process-wide encoder cache: one encoder (and so one ONNX session) per verified bundle."""

from __future__ import annotations

import threading

from ..bundles import find_bundle
from ..settings import Settings
from .image import ImageEncoder
from .sessions import intra_op_threads
from .text import TextEncoder

_cache: dict[tuple, TextEncoder | ImageEncoder] = {}
_lock = threading.Lock()


def _get(kind: str, name: str, settings: Settings, duckdb_threads: int | None):
    bundle = find_bundle(name, settings.home)
    key = (kind, str(bundle.path), bundle.manifest["files"].get("model.onnx"), duckdb_threads)
    enc = _cache.get(key)
    if enc is None:
        with _lock:
            enc = _cache.get(key)
            if enc is None:
                bundle.verify()  # hash every file once per process before first use
                threads = intra_op_threads(duckdb_threads)
                if kind == "text":
                    enc = TextEncoder(bundle, threads=threads, batch_size=settings.text_batch_size)
                else:
                    enc = ImageEncoder(bundle, threads=threads, batch_size=settings.image_batch_size)
                _cache[key] = enc
    return enc


def get_text_encoder(settings: Settings, name: str | None = None, duckdb_threads: int | None = None) -> TextEncoder:
    """The shared text encoder for ``name`` (default: the settings' text model)."""
    enc = _get("text", name or settings.text_model, settings, duckdb_threads)
    assert isinstance(enc, TextEncoder)
    return enc


def get_image_encoder(settings: Settings, name: str | None = None,
                      duckdb_threads: int | None = None) -> ImageEncoder:
    """The shared image encoder for ``name`` (default: the settings' image model)."""
    enc = _get("image", name or settings.image_model, settings, duckdb_threads)
    assert isinstance(enc, ImageEncoder)
    return enc
