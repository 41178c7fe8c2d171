"""Embedding UDFs: text, image (path or bytes), several images mean-pooled, and image diagnostics."""

from __future__ import annotations

import duckdb
import pyarrow as pa
from duckdb import sqltypes as T

from ..bundles import find_bundle
from ..embedding import embed_image_lists, embed_texts, policy_of
from ..encoders.image_io import image_errors
from ..errors import ModelNotFoundError
from ..settings import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL, Settings
from .arrow_util import Registrar, as_pylist, vectors_to_arrow

_KNOWN_DIMS = {DEFAULT_TEXT_MODEL: 384, DEFAULT_IMAGE_MODEL: 1280}


def model_dim(name: str, settings: Settings) -> int:
    """Output dimension of a model: from its manifest, else the built-in default's.

    The default models may be built after ``connect()``; their functions then fail at call time with
    the build command instead of failing the connection.
    """
    try:
        return find_bundle(name, settings.home).dim
    except ModelNotFoundError:
        if name in _KNOWN_DIMS:
            return _KNOWN_DIMS[name]
        raise


def register_embedding_udfs(reg: Registrar, settings: Settings, duckdb_threads: int | None) -> None:
    """Register the embedding UDFs (bound to ``settings``)."""
    text_dim = model_dim(settings.text_model, settings)
    image_dim = model_dim(settings.image_model, settings)
    policy = policy_of(settings)

    def pm_embed_text(texts: pa.ChunkedArray) -> pa.Array:
        vecs, valid = embed_texts(as_pylist(texts), settings, duckdb_threads)
        return vectors_to_arrow(vecs, valid)

    def embed_single_images(images: pa.ChunkedArray) -> pa.Array:
        vecs, valid, _ = embed_image_lists([[v] if v is not None else None for v in as_pylist(images)],
                                           settings, duckdb_threads)
        return vectors_to_arrow(vecs, valid)

    def pm_embed_images(lists: pa.ChunkedArray) -> pa.Array:
        vecs, valid, _ = embed_image_lists(as_pylist(lists), settings, duckdb_threads)
        return vectors_to_arrow(vecs, valid)

    def image_error(images: pa.ChunkedArray) -> pa.Array:
        values = as_pylist(images)
        reasons = image_errors([v for v in values if v is not None], policy)
        it = iter(reasons)
        return pa.array([None if v is None else next(it) for v in values], type=pa.string())

    def pm_image_errors(lists: pa.ChunkedArray) -> pa.Array:
        out = []
        for imgs in as_pylist(lists):
            out.append(None if imgs is None else image_errors(imgs, policy))
        return pa.array(out, type=pa.list_(pa.string()))

    vec_text = duckdb.array_type(T.FLOAT, text_dim)
    vec_image = duckdb.array_type(T.FLOAT, image_dim)
    special = {"null_handling": "special"}
    reg.add("_pm_embed_text", pm_embed_text, [T.VARCHAR], vec_text, **special)
    reg.add("_pm_embed_image_path", embed_single_images, [T.VARCHAR], vec_image, **special)
    reg.add("_pm_embed_image_blob", embed_single_images, [T.BLOB], vec_image, **special)
    reg.add("_pm_embed_images", pm_embed_images, [duckdb.list_type(T.VARCHAR)], vec_image, **special)
    # image checks read the file system, whose state can change between calls
    reg.add("_pm_image_error_path", image_error, [T.VARCHAR], T.VARCHAR, side_effects=True, **special)
    reg.add("_pm_image_error_blob", image_error, [T.BLOB], T.VARCHAR, **special)
    reg.add("_pm_image_errors", pm_image_errors, [duckdb.list_type(T.VARCHAR)],
                     duckdb.list_type(T.VARCHAR), side_effects=True, **special)
