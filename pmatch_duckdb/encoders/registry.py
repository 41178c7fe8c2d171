"""Process-wide encoder cache: one encoder (and so one ONNX session) per verified bundle and tower.

Which encoder class serves a bundle is decided by its manifest's ``modality``: ``text`` bundles give
text encoders, ``image`` bundles image encoders, and ``clip`` bundles (both towers of one CLIP model,
``pmatch models export-openclip``) give either, so one name serves ``pm_embed_text(t, 'my-clip')`` and
``pm_embed_image(img, 'my-clip')``.
"""

from __future__ import annotations

import threading

from ..bundles import Bundle, find_bundle
from ..errors import ConfigError
from ..settings import Settings
from .clip import ClipImageEncoder, ClipTextEncoder, tower_spec
from .image import ImageEncoder
from .sessions import intra_op_threads
from .text import TextEncoder

TextLike = TextEncoder | ClipTextEncoder
ImageLike = ImageEncoder | ClipImageEncoder

_cache: dict[tuple, TextLike | ImageLike] = {}
_lock = threading.Lock()

# kind -> {bundle modality: encoder class}
_CLASSES: dict[str, dict[str, type]] = {
    "text": {"text": TextEncoder, "clip": ClipTextEncoder},
    "image": {"image": ImageEncoder, "clip": ClipImageEncoder},
}


def _graph_file(kind: str, bundle: Bundle) -> str:
    """The manifest key of the ONNX graph that encodes ``kind`` in ``bundle``."""
    if bundle.modality == "clip":
        return tower_spec(bundle, kind)["file"]
    return "model.onnx"


def _get(kind: str, name: str, settings: Settings, duckdb_threads: int | None):
    bundle = find_bundle(name, settings.home)
    cls = _CLASSES[kind].get(bundle.modality)
    if cls is None:
        usable = " or ".join(sorted(_CLASSES[kind]))
        raise ConfigError(f"model {name!r} is a {bundle.modality} model; {kind} embedding needs a {usable} model")
    graph = _graph_file(kind, bundle)
    # keyed by the resolved ORT thread count too: $PMATCH_ORT_THREADS changed later in the process gets an encoder
    # with that many threads, not the first one's (a benchmark timing 1 then 2 threads measured 1 twice)
    threads = intra_op_threads(duckdb_threads)
    key = (kind, str(bundle.path), bundle.manifest["files"].get(graph), duckdb_threads, threads)
    enc = _cache.get(key)
    if enc is None:
        with _lock:
            enc = _cache.get(key)
            if enc is None:
                bundle.verify()  # hash every file once per process before first use
                batch = settings.text_batch_size if kind == "text" else settings.image_batch_size
                enc = cls(bundle, threads=threads, batch_size=batch)
                _cache[key] = enc
    return enc


def get_text_encoder(settings: Settings, name: str | None = None, duckdb_threads: int | None = None) -> TextLike:
    """The shared text encoder for ``name`` (default: the settings' text model); a text or CLIP bundle."""
    enc = _get("text", name or settings.text_model, settings, duckdb_threads)
    assert isinstance(enc, TextLike)
    return enc


def get_image_encoder(settings: Settings, name: str | None = None,
                      duckdb_threads: int | None = None) -> ImageLike:
    """The shared image encoder for ``name`` (default: the settings' image model); an image or CLIP bundle."""
    enc = _get("image", name or settings.image_model, settings, duckdb_threads)
    assert isinstance(enc, ImageLike)
    return enc
