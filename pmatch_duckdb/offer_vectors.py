"""Turning offers into vectors: everything an offer becomes before it is stored or matched.

Per offer: the text and pooled image embeddings, the price, the lexical and identifier fields, the start
of the description, and the fused offer vector (zero-shot fusion, or the active matcher's projection).
Used by indexing (``store``), by matching's source side, by training and by the Ray path; the LanceDB
table itself is read and written only by ``store``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from .bundles import find_bundle
from .embedding import PreparedTexts, embed_image_lists, embed_prepared, prepare_texts
from .features.codes import mpn_identifiers
from .features.lexical import identifiers
from .fusion import FusionConfig, fuse
from .matchers import Matcher
from .offers import Offer
from .settings import Settings

DESC_CHARS = 1000
DESC_COLUMNS = ("description", "desc_identifiers")
CODE_COLUMNS = ("gtin", "mpn")  # index format 3: the GTIN (14-digit form) and MPN columns of the offer table
EMBED_CHUNK = 512
# pm_index embeds a table this many offers at a time and streams each slice's rows into the one LanceDB write, so
# its memory is bounded by a slice, not the table (all at once: 5.4 GB peak for 100k generated offers).
INDEX_SLICE = 20_000
WRITE_BATCH = 2_048  # rows per batch handed to the LanceDB writer


def encoder_identity(settings: Settings) -> dict[str, str]:
    """Names and ONNX hashes of the encoders a connection uses (recorded in, and checked against, indexes)."""
    out = {}
    for key, name in (("text", settings.text_model), ("image", settings.image_model)):
        b = find_bundle(name, settings.home)
        out[f"{key}_model"] = name
        graph = b.manifest.get("towers", {}).get(key, {}).get("file", "model.onnx")  # CLIP bundles: two graphs
        out[f"{key}_model_sha256"] = b.manifest["files"].get(graph, "")
        out[f"{key}_dim"] = str(b.dim)
    return out


def content_salt(settings: Settings) -> str:
    """What every content hash is salted with: the encoders' identity (other encoders → other hashes)."""
    return json.dumps(encoder_identity(settings), sort_keys=True)


def _fsl(mat: np.ndarray, valid: np.ndarray | None = None) -> pa.FixedSizeListArray:
    mask = None if valid is None else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(mat, np.float32).ravel()),
                                             mat.shape[1], mask=mask)


def text_input(o: Offer) -> str | None:
    """What the text encoder sees: the title, prefixed by the brand when the title lacks it."""
    title = (o.title or "").strip()
    brand = (o.brand or "").strip()
    if brand and brand.lower() not in title.lower():
        title = f"{brand} {title}".strip()
    return title or None


def lexical_input(o: Offer) -> str:
    """What the lexical channel sees: brand and title."""
    return " ".join(x for x in ((o.brand or "").strip(), (o.title or "").strip()) if x)


def description_input(o: Offer) -> str | None:
    """The start of the description, kept in the index for the decision model's pair features."""
    d = (o.description or "").strip()
    return d[:DESC_CHARS] or None


def description_columns(offers: list[Offer], title_idents: list[list[str]]) -> dict[str, pa.Array]:
    """``description`` and ``desc_identifiers`` (identifiers of the description not in ``title_idents``,
    each offer's identifiers of brand + title)."""
    descs = [description_input(o) for o in offers]
    idents = []
    for d, title in zip(descs, title_idents, strict=True):
        seen = set(title)
        idents.append([t for t in identifiers(d) if t not in seen])
    return {"description": pa.array(descs, pa.string()),
            "desc_identifiers": pa.array(idents, pa.list_(pa.string()))}


def with_description_columns(data: pa.Table) -> pa.Table:
    """Index rows of an older format (no description columns, format 1; no GTIN/MPN columns, format 2)
    with NULL ones, so old and new rows concatenate."""
    if "description" not in data.column_names:
        data = _insert_description_columns(data, {"description": pa.nulls(len(data), pa.string()),
                                                  "desc_identifiers": pa.nulls(len(data), pa.list_(pa.string()))})
    for c in CODE_COLUMNS:
        if c not in data.column_names:
            data = data.append_column(c, pa.nulls(len(data), pa.string()))
    return data


def code_columns(offers: list[Offer]) -> dict[str, pa.Array]:
    """``gtin`` (normalised, NULL when missing or invalid) and ``mpn`` of each offer."""
    return {"gtin": pa.array([o.gtin for o in offers], pa.string()),
            "mpn": pa.array([o.mpn for o in offers], pa.string())}


def _insert_description_columns(data: pa.Table, cols: dict[str, pa.Array]) -> pa.Table:
    """Put the description columns right after ``identifiers``, where freshly embedded rows have them."""
    data = data.drop_columns([c for c in DESC_COLUMNS if c in data.column_names])
    at = data.schema.get_field_index("identifiers") + 1
    for k, name in enumerate(DESC_COLUMNS):
        data = data.add_column(at + k, name, cols[name])
    return data


def fuse_vectors(text: np.ndarray, text_ok: np.ndarray, image: np.ndarray, image_ok: np.ndarray,
                 price: np.ndarray, lexical: list[str], cfg: FusionConfig, matcher: Matcher | None) -> np.ndarray:
    """Offer vectors: the trained projection when a matcher is active, else the zero-shot fusion."""
    if matcher is not None:
        return matcher.embed(text, text_ok, image, image_ok, price, lexical)
    return fuse(text, text_ok, image, image_ok, cfg)


def _encode_chunk(texts: PreparedTexts, images: list[list | None], settings: Settings
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[list[str | None]]]:
    """The encoders' part of one chunk: text vectors and validity, pooled image vectors, validity and reasons."""
    tv, tok = embed_prepared(texts, settings)
    iv, iok, reasons = embed_image_lists(images, settings)
    return tv, tok, iv, iok, reasons


def _index_rows(offers: list[Offer], hashes: list[str], lexical: list[str], tv: np.ndarray, tok: np.ndarray,
                iv: np.ndarray, iok: np.ndarray, reasons: list[list[str | None]], fused: np.ndarray) -> pa.Table:
    """Index rows of ``offers``, from the offers and what the encoders and the fusion made of them."""
    prices = [o.price for o in offers]
    title_idents = [identifiers(t) for t in lexical]
    return pa.table({
        "id": pa.array([o.id for o in offers], pa.string()),
        "content_hash": pa.array(hashes, pa.string()),
        "title": pa.array([o.title for o in offers], pa.string()),
        "brand": pa.array([o.brand for o in offers], pa.string()),
        "lexical_text": pa.array(lexical, pa.string()),
        "identifiers": pa.array(title_idents, pa.list_(pa.string())),
        **description_columns(offers, title_idents),
        "price": pa.array(prices, pa.float64()),
        "currency": pa.array([o.currency for o in offers], pa.string()),
        "log_price": pa.array([math.log1p(p) if p is not None else 0.0 for p in prices], pa.float32()),
        "price_missing": pa.array([p is None for p in prices], pa.bool_()),
        "n_images": pa.array([len(o.images or []) for o in offers], pa.int32()),
        "n_images_ok": pa.array([sum(r is None for r in rr) for rr in reasons], pa.int32()),
        "image_errors": pa.array([[r for r in rr if r is not None] for rr in reasons], pa.list_(pa.string())),
        "text_vec": _fsl(tv, tok),
        "image_vec": _fsl(iv, iok),
        "vector": _fsl(fused),
        **code_columns(offers),
    })


def embed_offers(offers: list[Offer], settings: Settings, cfg: FusionConfig, hashes: list[str],
                 progress: bool = True, desc: str = "embedding offers", matcher: Matcher | None = None,
                 bar: Any = None) -> pa.Table | None:
    """Embed offers into index rows, in the order given (chunked, with a progress bar); None when there are none.

    ``bar``: a progress bar to advance (one bar over several calls, see :func:`embed_offer_slices`) instead of
    one of its own.

    Offers are embedded in chunks of similar token length: the encoder pads each batch to its longest text, and
    chunks in table order mix short and long titles (``benchmarks/bench_embed_order.py``: 4,096 real titles in
    chunks of 512, int8 MiniLM, one thread: 8.2 s in table order, 5.9 s sorted by token length). Each text is
    tokenised once, for the key and the model alike; each chunk's vectors go straight to their offers' rows, and
    the table is built once, in the order of ``offers`` (``benchmarks/bench_index_cost.py`` shows what this
    costs around the model).
    """
    n = len(offers)
    if not n:
        return None
    texts = prepare_texts([text_input(o) for o in offers], settings)  # tokenised once: the order key and the model
    order = np.argsort(texts.lengths, kind="stable")
    lexical = [lexical_input(o) for o in offers]
    price = np.array([np.nan if o.price is None else o.price for o in offers], dtype=np.float64)
    tv = tok = iv = iok = fused = None
    reasons: list[list[str | None]] = [[] for _ in range(n)]
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=n, desc=desc, unit="offer", disable=not progress or n < EMBED_CHUNK)
    for s in range(0, n, EMBED_CHUNK):
        idx = order[s:s + EMBED_CHUNK]
        ctv, ctok, civ, ciok, creasons = _encode_chunk(texts.take(idx), [offers[i].images for i in idx], settings)
        cfused = fuse_vectors(ctv, ctok, civ, ciok, price[idx], [lexical[i] for i in idx], cfg, matcher)
        if tv is None:  # the widths are the encoders' and the matcher's
            tv, iv = np.zeros((n, ctv.shape[1]), np.float32), np.zeros((n, civ.shape[1]), np.float32)
            tok, iok = np.zeros(n, bool), np.zeros(n, bool)
            fused = np.zeros((n, cfused.shape[1]), np.float32)
        tv[idx], tok[idx], iv[idx], iok[idx], fused[idx] = ctv, ctok, civ, ciok, cfused
        for j, i in enumerate(idx):
            reasons[i] = creasons[j]
        bar.update(len(idx))
    if own_bar:
        bar.close()
    return _index_rows(offers, hashes, lexical, tv, tok, iv, iok, reasons, fused)


def embed_offer_slices(offers: list[Offer], settings: Settings, cfg: FusionConfig, hashes: list[str],
                       progress: bool = True, matcher: Matcher | None = None, slice_size: int | None = None
                       ) -> pa.Table | pa.RecordBatchReader | None:
    """:func:`embed_offers` for a whole table with bounded memory: up to ``slice_size`` offers, their rows as a
    table; beyond, a ``RecordBatchReader`` that embeds one slice of ``slice_size`` offers at a time as the
    writer reads it (rows in the order given, one progress bar for all). None when there are no offers.
    ``slice_size`` defaults to :data:`INDEX_SLICE`."""
    n, slice_size = len(offers), slice_size or INDEX_SLICE
    if n <= slice_size:
        return embed_offers(offers, settings, cfg, hashes, progress=progress, matcher=matcher)
    bar = tqdm(total=n, desc="embedding offers", unit="offer", disable=not progress)
    first = embed_offers(offers[:slice_size], settings, cfg, hashes[:slice_size], matcher=matcher, bar=bar)
    schema = first.schema

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal first
        try:
            # small batches: the writer's casts and checks copy a batch at a time, not a whole slice
            head, first = first.to_batches(max_chunksize=WRITE_BATCH), None
            while head:
                yield head.pop(0)
            for s in range(slice_size, n, slice_size):
                rows = embed_offers(offers[s:s + slice_size], settings, cfg, hashes[s:s + slice_size],
                                    matcher=matcher, bar=bar)
                yield from rows.cast(schema).to_batches(max_chunksize=WRITE_BATCH)
                del rows
        finally:
            bar.close()

    return pa.RecordBatchReader.from_batches(schema, batches())


_MATRIX_COLUMNS = ("text_vec", "image_vec", "vector")


def identifier_lists(identifiers: list[list[str] | None], mpns: list[str | None]) -> list[list[str]]:
    """Identifier tokens per index row: those of brand + title, then the MPN's, without repeats (what
    ``OfferVectors.idents`` and a target view's identifier index hold). A row with no MPN and at most one title
    identifier is taken as it is (nothing to merge or de-duplicate)."""
    return [list(dict.fromkeys((x or []) + mpn_identifiers(m))) if m or (x is not None and len(x) > 1) else (x or [])
            for x, m in zip(identifiers, mpns, strict=True)]


def _matrix(col: pa.ChunkedArray, dim_hint: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-size-list column → (float32 matrix with zeros for NULL, validity)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    dim = arr.type.list_size if pa.types.is_fixed_size_list(arr.type) else dim_hint
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if len(arr) == 0:
        return np.zeros((0, dim), np.float32), valid
    if not valid.any():  # e.g. image_vec of offers without photos
        return np.zeros((len(arr), dim), np.float32), valid
    # the child values of every slot, NULL rows included (cheaper than fill_null with a list scalar)
    values = arr.values.slice(arr.offset * dim, len(arr) * dim)
    if pa.types.is_float32(values.type):
        flat = np.frombuffer(values.buffers()[1], dtype=np.float32, count=len(values), offset=values.offset * 4)
        if values.null_count:  # NULL elements read as NaN, as to_numpy gives them (NULL rows are zeroed below)
            flat = np.where(values.is_null().to_numpy(zero_copy_only=False), np.float32(np.nan), flat)
    else:
        flat = values.to_numpy(zero_copy_only=False)
    mat = flat.astype(np.float32, copy=False).reshape(len(arr), dim)
    if not valid.all():
        mat = mat.copy()
        mat[~valid] = 0.0
    return mat, valid


@dataclass
class OfferVectors:
    """Index rows of a set of offers, as numpy arrays (the source side, or a small target)."""

    ids: list[str]
    hashes: list[str]
    text: np.ndarray
    text_ok: np.ndarray
    image: np.ndarray
    image_ok: np.ndarray
    fused: np.ndarray
    lexical: list[str]
    idents: list[list[str]]
    price: np.ndarray  # NaN where missing
    titles: list[str | None]
    brands: list[str | None]
    descriptions: list[str | None]  # first DESC_CHARS characters (None: none, or a format-1 index)
    desc_idents: list[list[str]]  # identifiers of the description not already in brand + title
    # the offer table's gtin (14-digit form) and mpn columns (None: none, or an index of format < 3); the
    # MPN's identifier tokens are also in ``idents``
    gtins: list[str | None] | None = None
    mpns: list[str | None] | None = None

    def __post_init__(self) -> None:
        if self.gtins is None:
            self.gtins = [None] * len(self.ids)
        if self.mpns is None:
            self.mpns = [None] * len(self.ids)

    @classmethod
    def from_arrow(cls, t: pa.Table, image: tuple[np.ndarray, np.ndarray] | None = None,
                   text: tuple[np.ndarray, np.ndarray] | None = None) -> OfferVectors:
        """From index rows (LanceDB table or freshly embedded rows).

        ``image`` / ``text``: the rows' ``(matrix, validity)`` when read apart (``t`` then needs no ``image_vec``
        / ``text_vec``)."""
        text, tok = _matrix(t["text_vec"]) if text is None else text
        image, iok = _matrix(t["image_vec"]) if image is None else image
        # without a ``vector`` column (a zero-shot caller fuses text and image itself): an empty matrix
        fused = _matrix(t["vector"])[0] if "vector" in t.column_names else np.zeros((len(t), 0), np.float32)
        price = pc.fill_null(t["price"].cast(pa.float64()), np.nan).to_numpy()  # NaN where missing
        t = with_description_columns(t)
        mpns = t["mpn"].to_pylist()
        idents = identifier_lists(t["identifiers"].to_pylist(), mpns)
        return cls(ids=t["id"].to_pylist(), hashes=t["content_hash"].to_pylist(), text=text, text_ok=tok,
                   image=image, image_ok=iok, fused=fused, lexical=t["lexical_text"].to_pylist(),
                   idents=idents, price=price, gtins=t["gtin"].to_pylist(), mpns=mpns,
                   titles=t["title"].to_pylist(), brands=t["brand"].to_pylist(),
                   descriptions=t["description"].to_pylist(),
                   desc_idents=[x or [] for x in t["desc_identifiers"].to_pylist()])

    def take(self, idx: np.ndarray) -> OfferVectors:
        """Rows ``idx`` (positions), every field subset alike."""
        return OfferVectors(**{k: v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx]
                               for k, v in self.__dict__.items()})
