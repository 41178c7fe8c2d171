"""Embedding UDFs: text, image (path or bytes), several images mean-pooled, and image diagnostics.

The one-argument functions use the connection's default models and return ``FLOAT[dim]``; the ``_named``
ones take the model name as a second argument (``pm_embed_text(t, 'my-clip')``) and return ``FLOAT[]``,
since a UDF's return type is fixed when it is registered while the dimension depends on the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import duckdb
import numpy as np
import pyarrow as pa
from duckdb import sqltypes as T

from pmatch_duckdb.bundles import find_bundle, list_bundles
from pmatch_duckdb.embedding import embed_image_lists, embed_texts, policy_of
from pmatch_duckdb.encoders.image_io import image_errors
from pmatch_duckdb.errors import ConfigError, ModelIntegrityError, ModelNotFoundError
from pmatch_duckdb.settings import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL, Settings

from .arrow_util import Registrar, as_pylist, vectors_to_arrow

_KNOWN_DIMS = {DEFAULT_TEXT_MODEL: 384, DEFAULT_IMAGE_MODEL: 1280}


def model_dim(name: str, settings: Settings) -> int:
    """Output dimension of a model: from its manifest, else the built-in default's.

    The default models may be built after ``connect()``; their functions then fail at call time with
    the build command instead of failing the connection.
    """
    try:
        return find_bundle(name, settings.home).dim
    except (ModelNotFoundError, ModelIntegrityError):  # a broken default bundle: fail when used, with its problem
        if name in _KNOWN_DIMS:
            return _KNOWN_DIMS[name]
        raise


def variable_vectors(n: int, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> pa.ListArray:
    """Rows ``idx`` of each ``(idx, vectors, valid)`` part -> an Arrow ``list<float>`` (``FLOAT[]``), NULL elsewhere."""
    lengths = np.zeros(n, dtype=np.int64)
    valid_all = np.zeros(n, dtype=bool)
    rows: list[np.ndarray | None] = [None] * n
    for idx, vecs, valid in parts:
        for j, i in enumerate(idx):
            if valid[j]:
                rows[i] = vecs[j]
                lengths[i] = vecs.shape[1]
                valid_all[i] = True
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    chunks = [r for r in rows if r is not None]
    values = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), mask=pa.array(~valid_all))


def _by_model(models: list, kind: str, settings: Settings) -> dict[str, np.ndarray]:
    """Row indices per (non-NULL) model name; an unknown name or a model of the wrong kind is an error."""
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(models):
        if m is not None:
            groups.setdefault(m, []).append(i)
    for name in groups:
        try:
            bundle = find_bundle(name, settings.home)
        except ModelNotFoundError as e:
            if str(e).startswith("invalid model name"):
                raise
            usable = [b.name for b in list_bundles(settings.home) if b.modality in (kind, "clip")]
            raise ModelNotFoundError(
                f"pm_embed_{kind}: unknown model {name!r} (installed {kind} models: {', '.join(usable) or 'none'}; "
                f"export a local text model with: pmatch models export-text, a CLIP checkpoint with: "
                f"pmatch models export-openclip)") from None
        if bundle.modality not in (kind, "clip"):
            raise ConfigError(f"pm_embed_{kind}: model {name!r} has modality {bundle.modality!r}; "
                              f"pm_embed_{kind} needs a {kind} or clip model")
    return {name: np.asarray(idx, dtype=np.int64) for name, idx in groups.items()}


def _named(kind: str, settings: Settings, run: Callable[[list, Settings], tuple[np.ndarray, np.ndarray]]):
    """An Arrow UDF ``(values, model) -> FLOAT[]`` that embeds each model's rows with that model."""
    field = "text_model" if kind == "text" else "image_model"

    def udf(values: pa.ChunkedArray, models: pa.ChunkedArray) -> pa.Array:
        vals, names = as_pylist(values), as_pylist(models)
        parts = []
        for name, idx in _by_model(names, kind, settings).items():
            vecs, valid = run([vals[i] for i in idx], dataclasses.replace(settings, **{field: name}))
            parts.append((idx, vecs, valid))
        return variable_vectors(len(vals), parts)

    return udf


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

    def text_run(vals: list, s: Settings) -> tuple[np.ndarray, np.ndarray]:
        return embed_texts(vals, s, duckdb_threads)

    def image_run(vals: list, s: Settings) -> tuple[np.ndarray, np.ndarray]:
        vecs, valid, _ = embed_image_lists([[v] if v is not None else None for v in vals], s, duckdb_threads)
        return vecs, valid

    def images_run(vals: list, s: Settings) -> tuple[np.ndarray, np.ndarray]:
        vecs, valid, _ = embed_image_lists(vals, s, duckdb_threads)
        return vecs, valid

    vec_text = duckdb.array_type(T.FLOAT, text_dim)
    vec_image = duckdb.array_type(T.FLOAT, image_dim)
    special = {"null_handling": "special"}
    reg.add("_pm_embed_text", pm_embed_text, [T.VARCHAR], vec_text, **special)
    reg.add("_pm_embed_image_path", embed_single_images, [T.VARCHAR], vec_image, **special)
    reg.add("_pm_embed_image_blob", embed_single_images, [T.BLOB], vec_image, **special)
    reg.add("_pm_embed_images", pm_embed_images, [duckdb.list_type(T.VARCHAR)], vec_image, **special)
    # named forms: the model is the second argument, the result FLOAT[] (its length is the model's dim)
    vec_any = duckdb.list_type(T.FLOAT)
    reg.add("_pm_embed_text_named", _named("text", settings, text_run), [T.VARCHAR, T.VARCHAR], vec_any, **special)
    reg.add("_pm_embed_image_path_named", _named("image", settings, image_run), [T.VARCHAR, T.VARCHAR], vec_any,
            **special)
    reg.add("_pm_embed_image_blob_named", _named("image", settings, image_run), [T.BLOB, T.VARCHAR], vec_any,
            **special)
    reg.add("_pm_embed_images_named", _named("image", settings, images_run), [duckdb.list_type(T.VARCHAR), T.VARCHAR],
            vec_any, **special)
    # image checks read the file system, whose state can change between calls
    reg.add("_pm_image_error_path", image_error, [T.VARCHAR], T.VARCHAR, side_effects=True, **special)
    reg.add("_pm_image_error_blob", image_error, [T.BLOB], T.VARCHAR, **special)
    reg.add("_pm_image_errors", pm_image_errors, [duckdb.list_type(T.VARCHAR)],
                     duckdb.list_type(T.VARCHAR), side_effects=True, **special)
