"""pm_index / pm.index: the LanceDB offer index, incremental refresh, offer-table conventions,
encoder bookkeeping and argument validation."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import pmatch_duckdb as pm
import pmatch_duckdb.offer_vectors as ov
import pmatch_duckdb.store as store
from pmatch_duckdb.api import context_of
from pmatch_duckdb.demo.synthetic import render_product
from pmatch_duckdb.store import OfferIndex, OfferIndexError, RefreshStats

CATALOG = [
    (1, "Acme widget XJ-9000B black", "Acme", 19.99),
    (2, "Sony Bravia KDL-40V4100 40in LCD TV", "Sony", 499.0),
    (3, "Apple iPhone 13 128GB blue", "Apple", 799.0),
    (4, "Samsung Galaxy S21 smartphone 256GB", "Samsung", 699.0),
    (5, "Logitech MX Master 3 wireless mouse", "Logitech", 99.0),
    (6, "Bose QuietComfort 35 II noise cancelling headphones", "Bose", 299.0),
    (7, "Canon EOS 250D digital SLR camera", "Canon", 549.0),
    (8, "Dyson V11 cordless vacuum cleaner", "Dyson", None),
]
N = len(CATALOG)
STATS_COLUMNS = ["index", "inserted", "updated", "deleted", "unchanged", "total", "version", "ann_index", "seconds",
                 "reprojected"]


@pytest.fixture()
def shop(tmp_path: Path, home: Path, images: Path):
    """A file database with a text-only ``catalog`` (INTEGER ids); its index lives in shop.pmatch/."""
    con = pm.connect(tmp_path / "shop.duckdb", home=home, image_roots=[images])
    con.execute("CREATE TABLE catalog (id INTEGER, title VARCHAR, brand VARCHAR, price DOUBLE)")
    con.executemany("INSERT INTO catalog VALUES (?, ?, ?, ?)", CATALOG)
    yield con
    con.close()


@pytest.fixture()
def embedded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ids of the offers the index builder embeds (spy on offer_vectors.embed_offers, which the index's slices
    call)."""
    seen: list[str] = []
    real = ov.embed_offers

    def spy(offers, *args, **kwargs):
        seen.extend(o.id for o in offers)
        return real(offers, *args, **kwargs)

    monkeypatch.setattr(ov, "embed_offers", spy)
    return seen


def _sql_index(con: duckdb.DuckDBPyConnection, table: str, **named: object) -> dict:
    args = "".join(f", {k} := {v!r}" if not isinstance(v, bool) else f", {k} := {str(v).lower()}"
                   for k, v in named.items())
    rel = con.execute(f"SELECT * FROM pm_index(?{args})", [table])
    cols = [d[0] for d in rel.description]
    rows = rel.fetchall()
    assert len(rows) == 1
    return dict(zip(cols, rows[0], strict=True))


def _index(tmp_path: Path, name: str = "catalog") -> OfferIndex:
    return OfferIndex(tmp_path / "shop.pmatch", name)


def _rows(tmp_path: Path, name: str = "catalog") -> dict[str, dict]:
    """Index rows by id (vectors as numpy arrays)."""
    t = _index(tmp_path, name).table().to_arrow()
    out = {}
    for r in t.to_pylist():
        for c in ("text_vec", "image_vec", "vector"):
            r[c] = None if r[c] is None else np.asarray(r[c], dtype=np.float32)
        out[r["id"]] = r
    return out


def _target_ids(con: duckdb.DuckDBPyConnection, source: str = "probe", k: int = 10) -> set:
    return {r[0] for r in con.execute(f"SELECT target_id FROM match_products('{source}', 'catalog', k := {k})"
                                      ).fetchall()}


# ----------------------------------------------------------------------------------------------
# incremental refresh
# ----------------------------------------------------------------------------------------------


def test_first_build_inserts_all(shop, tmp_path: Path, embedded: list[str]) -> None:
    rel = shop.execute("SELECT * FROM pm_index('catalog')")
    assert [d[0] for d in rel.description] == STATS_COLUMNS
    (row,) = rel.fetchall()
    st = dict(zip(STATS_COLUMNS, row, strict=True))
    assert st["index"] == "catalog"
    assert (st["inserted"], st["updated"], st["deleted"], st["unchanged"], st["total"]) == (N, 0, 0, 0, N)
    assert st["ann_index"] is False
    assert sorted(embedded) == sorted(str(r[0]) for r in CATALOG)
    # the index lives beside the database file
    assert (tmp_path / "shop.pmatch" / "lancedb" / "catalog.lance").is_dir()
    rows = _rows(tmp_path)
    assert set(rows) == {str(r[0]) for r in CATALOG}
    assert rows["2"]["title"] == CATALOG[1][1]
    assert rows["2"]["identifiers"] == ["kdl40v4100"]
    assert rows["8"]["price"] is None and rows["8"]["price_missing"] is True
    # text-only offers: a text vector, no image vector, a unit-norm fused vector
    for r in rows.values():
        assert r["text_vec"] is not None and r["image_vec"] is None
        assert np.linalg.norm(r["vector"]) == pytest.approx(1.0, abs=1e-4)


def test_python_index_returns_stats(shop, tmp_path: Path) -> None:
    st = pm.index(shop, "catalog")
    assert isinstance(st, RefreshStats)
    assert (st.index, st.inserted, st.total) == ("catalog", N, N)
    again = pm.index(shop, "catalog")
    assert (again.inserted, again.updated, again.deleted, again.unchanged) == (0, 0, 0, N)
    assert again.version == st.version


def test_refresh_without_changes_writes_nothing(shop, tmp_path: Path, embedded: list[str]) -> None:
    first = _sql_index(shop, "catalog")
    before = _rows(tmp_path)
    embedded.clear()
    again = _sql_index(shop, "catalog")
    assert (again["inserted"], again["updated"], again["deleted"]) == (0, 0, 0)
    assert again["unchanged"] == again["total"] == N
    assert again["version"] == first["version"]
    assert _index(tmp_path).table().version == first["version"]
    assert embedded == []
    after = _rows(tmp_path)
    for i, r in before.items():
        assert np.array_equal(after[i]["vector"], r["vector"])


def test_update_one_title_reembeds_only_that_row(shop, tmp_path: Path, embedded: list[str]) -> None:
    first = _sql_index(shop, "catalog")
    before = _rows(tmp_path)
    embedded.clear()
    shop.execute("UPDATE catalog SET title = 'Apple iPhone 14 Pro 256GB graphite' WHERE id = 3")
    st = _sql_index(shop, "catalog")
    assert (st["inserted"], st["updated"], st["deleted"], st["unchanged"], st["total"]) == (0, 1, 0, N - 1, N)
    assert st["version"] > first["version"]
    assert embedded == ["3"]
    after = _rows(tmp_path)
    assert set(after) == set(before)
    assert after["3"]["title"] == "Apple iPhone 14 Pro 256GB graphite"
    assert after["3"]["content_hash"] != before["3"]["content_hash"]
    assert not np.allclose(after["3"]["text_vec"], before["3"]["text_vec"])
    for i in set(before) - {"3"}:
        assert after[i]["content_hash"] == before[i]["content_hash"]
        assert np.array_equal(after[i]["text_vec"], before[i]["text_vec"])
        assert np.array_equal(after[i]["vector"], before[i]["vector"])


def test_price_change_counts_as_update(shop, tmp_path: Path) -> None:
    _sql_index(shop, "catalog")
    shop.execute("UPDATE catalog SET price = 9.5 WHERE id = 1")
    st = _sql_index(shop, "catalog")
    assert (st["updated"], st["unchanged"]) == (1, N - 1)
    assert _rows(tmp_path)["1"]["price"] == 9.5


def test_insert_one(shop, tmp_path: Path, embedded: list[str]) -> None:
    _sql_index(shop, "catalog")
    embedded.clear()
    shop.execute("INSERT INTO catalog VALUES (9, 'Nintendo Switch OLED console', 'Nintendo', 349.0)")
    st = _sql_index(shop, "catalog")
    assert (st["inserted"], st["updated"], st["deleted"], st["unchanged"], st["total"]) == (1, 0, 0, N, N + 1)
    assert embedded == ["9"]
    assert _rows(tmp_path)["9"]["title"] == "Nintendo Switch OLED console"


def test_delete_one_gone_from_index_and_results(shop, tmp_path: Path) -> None:
    _sql_index(shop, "catalog")
    shop.execute("CREATE TABLE probe AS SELECT 1000 AS id, 'Canon EOS 250D digital SLR camera' AS title, "
                 "'Canon' AS brand")
    assert 7 in _target_ids(shop)
    shop.execute("DELETE FROM catalog WHERE id = 7")
    st = _sql_index(shop, "catalog")
    assert (st["inserted"], st["updated"], st["deleted"], st["unchanged"], st["total"]) == (0, 0, 1, N - 1, N - 1)
    assert "7" not in _rows(tmp_path)
    hits = _target_ids(shop)
    assert 7 not in hits
    assert hits and hits <= {r[0] for r in CATALOG} - {7}


def test_rebuild_reembeds_everything(shop, tmp_path: Path, embedded: list[str]) -> None:
    _sql_index(shop, "catalog")
    embedded.clear()
    st = _sql_index(shop, "catalog", rebuild=True)
    assert (st["inserted"], st["total"]) == (N, N)
    assert sorted(embedded) == sorted(str(r[0]) for r in CATALOG)


def test_named_index(shop, tmp_path: Path) -> None:
    st = _sql_index(shop, "catalog", index_name="cat_v2")
    assert st["index"] == "cat_v2"
    assert _index(tmp_path, "cat_v2").exists()
    assert not _index(tmp_path, "catalog").exists()
    assert _index(tmp_path, "cat_v2").metadata()["source_table"] == "catalog"


# ----------------------------------------------------------------------------------------------
# offer-table conventions
# ----------------------------------------------------------------------------------------------


def test_view_mapping_other_column_names(shop, tmp_path: Path) -> None:
    shop.execute("CREATE TABLE products (sku VARCHAR, name VARCHAR, maker VARCHAR, cost DECIMAL(10, 2))")
    shop.execute("""INSERT INTO products VALUES ('SKU-1', 'Logitech MX Master 3 wireless mouse', 'Logitech', 89.90),
                    ('SKU-2', 'Dyson V11 cordless vacuum cleaner', 'Dyson', 549.00)""")
    shop.execute("CREATE VIEW products_v AS SELECT sku AS id, name AS title, maker AS brand, cost AS price "
                 "FROM products")
    st = _sql_index(shop, "products_v")
    assert (st["index"], st["inserted"], st["total"]) == ("products_v", 2, 2)
    rows = _rows(tmp_path, "products_v")
    assert rows["SKU-1"]["brand"] == "Logitech"
    assert rows["SKU-1"]["price"] == pytest.approx(89.90)
    # and the view works as a match target, returning the mapped ids
    shop.execute("CREATE TABLE probe AS SELECT 1 AS id, 'dyson v11 cordless vacuum' AS title")
    res = shop.execute("SELECT target_id FROM match_products('probe', 'products_v') WHERE rank = 1").fetchall()
    assert res == [("SKU-2",)]


def test_only_id_and_title(shop, tmp_path: Path) -> None:
    shop.execute("CREATE TABLE minimal AS SELECT * FROM (VALUES (10, 'Red cotton t-shirt'), "
                 "(11, 'Blue denim jeans'), (12, NULL)) t(id, title)")
    st = _sql_index(shop, "minimal")
    assert (st["inserted"], st["total"]) == (3, 3)
    rows = _rows(tmp_path, "minimal")
    assert rows["10"]["brand"] is None and rows["10"]["price"] is None
    assert rows["10"]["n_images"] == 0
    assert rows["12"]["text_vec"] is None  # NULL title: no text vector, still indexed


def test_images_as_single_varchar_column(shop, tmp_path: Path, images: Path) -> None:
    render_product("sneaker", "red").convert("RGB").save(images / "shoe.png")
    shop.execute("""CREATE TABLE pics AS SELECT * FROM (VALUES
        (1, 'Red running shoe', 'shoe.png'),
        (2, 'Blue running shoe', 'missing.png'),
        (3, 'Green running shoe', NULL),
        (4, 'Yellow running shoe', '')) t(id, title, images)""")
    assert shop.execute("SELECT typeof(images) FROM pics LIMIT 1").fetchall() == [("VARCHAR",)]
    st = _sql_index(shop, "pics")
    assert (st["inserted"], st["total"]) == (4, 4)
    rows = _rows(tmp_path, "pics")
    assert (rows["1"]["n_images"], rows["1"]["n_images_ok"]) == (1, 1)
    assert rows["1"]["image_vec"] is not None
    assert np.linalg.norm(rows["1"]["image_vec"]) == pytest.approx(1.0, abs=1e-3)
    assert (rows["2"]["n_images"], rows["2"]["n_images_ok"]) == (1, 0)
    assert rows["2"]["image_errors"] == ["missing file"] and rows["2"]["image_vec"] is None
    assert rows["3"]["n_images"] == 0 and rows["4"]["n_images"] == 0


# ----------------------------------------------------------------------------------------------
# encoders recorded with the index
# ----------------------------------------------------------------------------------------------


def test_index_records_encoders(shop, tmp_path: Path) -> None:
    _sql_index(shop, "catalog")
    settings = context_of(shop).settings
    meta = _index(tmp_path).metadata()
    enc = meta["encoders"]
    assert enc["text_model"] == settings.text_model
    assert enc["image_model"] == settings.image_model
    for key in ("text_model_sha256", "image_model_sha256"):
        assert len(enc[key]) == 64 and int(enc[key], 16) >= 0
    assert enc["text_model_sha256"] != enc["image_model_sha256"]
    assert enc == store.encoder_identity(settings)
    assert meta["source_table"] == "catalog"
    assert set(meta["fusion"]) >= {"accept_threshold", "review_threshold"}
    _index(tmp_path).check_encoders(settings)  # matching encoders: no error


def test_other_encoder_sha_refused(shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _sql_index(shop, "catalog")
    settings = context_of(shop).settings
    real = store.encoder_identity(settings)
    fake = {**real, "text_model_sha256": "0" * 64}
    monkeypatch.setattr(store, "encoder_identity", lambda s: dict(fake))
    with pytest.raises(OfferIndexError, match="(?i)rebuild") as err:
        _index(tmp_path).check_encoders(settings)
    assert "text_model_sha256" in str(err.value)
    # the SQL paths refuse the stale index too
    with pytest.raises(duckdb.Error, match="(?i)rebuild"):
        _sql_index(shop, "catalog")
    shop.execute("CREATE TABLE probe AS SELECT 1 AS id, 'iphone' AS title")
    with pytest.raises(duckdb.Error, match="(?i)rebuild"):
        shop.execute("SELECT * FROM match_products('probe', 'catalog')").fetchall()
    # following the advice works: a rebuild records the new identity
    st = _sql_index(shop, "catalog", rebuild=True)
    assert st["inserted"] == N
    assert _index(tmp_path).metadata()["encoders"] == fake
    _index(tmp_path).check_encoders(settings)


# ----------------------------------------------------------------------------------------------
# bad arguments
# ----------------------------------------------------------------------------------------------


def test_unknown_table(shop) -> None:
    with pytest.raises(duckdb.Error, match="no_such_table"):
        shop.execute("SELECT * FROM pm_index('no_such_table')").fetchall()
    with pytest.raises(pm.PmatchError, match="no_such_table"):
        pm.index(shop, "no_such_table")


def test_missing_title_column(shop) -> None:
    shop.execute("CREATE TABLE raw AS SELECT 1 AS id, 'Red shirt' AS name")
    with pytest.raises(duckdb.Error, match=r"required column\(s\) title"):
        shop.execute("SELECT * FROM pm_index('raw')").fetchall()
    shop.execute("CREATE TABLE noid AS SELECT 'Red shirt' AS title")
    with pytest.raises(duckdb.Error, match=r"required column\(s\) id\b"):
        shop.execute("SELECT * FROM pm_index('noid')").fetchall()


@pytest.mark.parametrize("name", ["catalog; DROP TABLE catalog", 'x") UNION SELECT', "catalog --",
                                  "(SELECT 1)", "catalog' OR '1'='1"])
def test_malicious_identifiers_refused(shop, tmp_path: Path, name: str) -> None:
    with pytest.raises(duckdb.Error, match="(?i)invalid table name|does not exist"):
        shop.execute("SELECT * FROM pm_index(?)", [name]).fetchall()
    with pytest.raises(pm.PmatchError):
        pm.index(shop, name)
    assert shop.execute("SELECT count(*) FROM catalog").fetchall() == [(N,)]
    assert not (tmp_path / "shop.pmatch" / "lancedb").exists() or not _index(tmp_path).exists()


def test_bad_index_name_refused(shop, tmp_path: Path) -> None:
    with pytest.raises(duckdb.Error, match="invalid index name"):
        shop.execute("SELECT * FROM pm_index('catalog', index_name := '../escape')").fetchall()
    assert not (tmp_path / "escape").exists()


def test_duplicate_ids(shop) -> None:
    shop.execute("INSERT INTO catalog VALUES (5, 'Another mouse', 'Acme', 5.0)")
    with pytest.raises(duckdb.Error, match="duplicate id '5'"):
        shop.execute("SELECT * FROM pm_index('catalog')").fetchall()


def test_null_id(shop) -> None:
    shop.execute("INSERT INTO catalog VALUES (NULL, 'Nameless gadget', 'Acme', 5.0)")
    with pytest.raises(duckdb.Error, match="NULL id"):
        shop.execute("SELECT * FROM pm_index('catalog')").fetchall()


def test_description_columns_and_format1_migration(shop, tmp_path: Path, embedded: list[str]) -> None:
    shop.execute("ALTER TABLE catalog ADD COLUMN description VARCHAR")
    shop.execute("UPDATE catalog SET description = 'Replacement part AB-12345 for the KDL-40V4100; ' || repeat('x', 3000) "
                 "WHERE id = 2")
    pm.index(shop, "catalog")
    rows = _rows(tmp_path)
    assert rows["2"]["desc_identifiers"] == ["ab12345"]  # kdl40v4100 is already a title identifier
    assert len(rows["2"]["description"]) == store.DESC_CHARS
    assert rows["1"]["description"] is None and rows["1"]["desc_identifiers"] == []
    # an index written before the description columns existed (format 1): the next refresh adds them
    # from the offers without embedding anything, and keeps every vector
    idx = _index(tmp_path)
    data = idx.table().to_arrow().drop_columns(list(store.DESC_COLUMNS))
    meta = {**idx.metadata(), "format": 1}
    idx.db.create_table(idx.name, data.replace_schema_metadata({store.META_KEY: json.dumps(meta).encode()}),
                        mode="overwrite", on_bad_vectors="null")
    before = _rows(tmp_path)
    embedded.clear()
    st = pm.index(shop, "catalog")
    assert (st.inserted, st.updated, st.deleted, st.unchanged) == (0, 0, 0, N)
    assert embedded == []
    assert idx.metadata()["format"] == store.FORMAT
    after = _rows(tmp_path)
    assert after["2"]["desc_identifiers"] == ["ab12345"]
    for i, r in before.items():
        assert np.array_equal(after[i]["vector"], r["vector"])
    # a changed offer merges into the migrated table (same column order as fresh rows)
    shop.execute("UPDATE catalog SET title = 'Acme widget XJ-9000C red' WHERE id = 1")
    assert pm.index(shop, "catalog").updated == 1
    assert _rows(tmp_path)["1"]["identifiers"] == ["xj9000c"]


def test_a_table_is_embedded_in_slices_streamed_into_one_write(shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """pm_index embeds INDEX_SLICE offers at a time and streams the rows into one write: the same rows as one
    slice, one new version per refresh, in a first build and in an incremental one."""
    _sql_index(shop, "catalog")
    whole = _rows(tmp_path)
    sizes: list[int] = []
    real = ov.embed_offers

    def spy(offers, *args, **kwargs):
        sizes.append(len(offers))
        return real(offers, *args, **kwargs)

    monkeypatch.setattr(ov, "embed_offers", spy)
    monkeypatch.setattr(ov, "INDEX_SLICE", 3)
    st = _sql_index(shop, "catalog", index_name="sliced")
    assert sizes == [3, 3, 2] and st["inserted"] == N and st["version"] == 1
    sliced = _rows(tmp_path, "sliced")
    assert sliced.keys() == whole.keys()
    for i, r in whole.items():
        for c, v in r.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_allclose(sliced[i][c], v, atol=1e-5)
            else:
                assert sliced[i][c] == v, (i, c)
    sizes.clear()
    shop.execute("UPDATE catalog SET title = title || ' (2024 edition)' WHERE id <= 4")
    st = _sql_index(shop, "catalog", index_name="sliced")
    assert sizes == [3, 1] and st["updated"] == 4 and st["unchanged"] == N - 4 and st["version"] == 2
    assert {i: r["title"] for i, r in _rows(tmp_path, "sliced").items()} == {
        str(k): t + (" (2024 edition)" if k <= 4 else "") for k, t, _, _ in CATALOG}


def test_slices_are_embedded_as_the_writer_reads_them(shop, monkeypatch: pytest.MonkeyPatch):
    """embed_offer_slices embeds the first slice up front and each later one only when the writer has read the
    previous one, and hands the writer batches of at most WRITE_BATCH rows, in the order given."""
    from pmatch_duckdb.fusion import FusionConfig
    from pmatch_duckdb.offers import read_offers

    offers = read_offers(shop, "catalog")
    sizes: list[int] = []
    real = ov.embed_offers

    def spy(offers, *args, **kwargs):
        sizes.append(len(offers))
        return real(offers, *args, **kwargs)

    monkeypatch.setattr(ov, "embed_offers", spy)
    monkeypatch.setattr(ov, "WRITE_BATCH", 2)
    settings = context_of(shop).settings
    reader = ov.embed_offer_slices(offers, settings, FusionConfig(), [f"h{i}" for i in range(N)], progress=False,
                                   slice_size=3)
    assert isinstance(reader, pa.RecordBatchReader) and sizes == [3]
    batches = [reader.read_next_batch() for _ in range(2)]  # the first slice: 2 + 1 rows
    assert [b.num_rows for b in batches] == [2, 1] and sizes == [3]
    batches += list(reader)
    assert sizes == [3, 3, 2] and max(b.num_rows for b in batches) <= 2
    assert [i for b in batches for i in b.column("id").to_pylist()] == [o.id for o in offers]
    # a table that fits one slice comes back as a table, embedded once
    sizes.clear()
    assert ov.embed_offer_slices(offers, settings, FusionConfig(), ["h"] * N, progress=False).num_rows == N
    assert sizes == [N]


@pytest.mark.parametrize("rebuild", [False, True])
def test_a_failing_slice_leaves_the_index_as_it_was(shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    rebuild: bool):
    """An error while embedding a later slice (the rows of the first ones already streamed to the writer)
    commits nothing, in an incremental refresh (merge-insert) and in a rebuild (overwrite): the index keeps its
    version and rows, and the next refresh does the whole change."""
    _sql_index(shop, "catalog")
    before, version = _rows(tmp_path), _index(tmp_path).table().version
    shop.execute("UPDATE catalog SET title = title || ' refurbished'")
    real, calls = ov.embed_offers, []

    def failing(offers, *args, **kwargs):
        calls.append(len(offers))
        if len(calls) == 2:
            raise MemoryError("out of memory in the second slice")
        return real(offers, *args, **kwargs)

    monkeypatch.setattr(ov, "embed_offers", failing)
    monkeypatch.setattr(ov, "INDEX_SLICE", 3)
    with pytest.raises(Exception, match="second slice"):
        pm.index(shop, "catalog", rebuild=rebuild, progress=False)
    assert calls == [3, 3]
    assert _index(tmp_path).table().version == version
    after = _rows(tmp_path)
    assert {i: r["title"] for i, r in after.items()} == {i: r["title"] for i, r in before.items()}
    monkeypatch.setattr(ov, "embed_offers", real)
    st = pm.index(shop, "catalog", rebuild=rebuild, progress=False)
    assert (st.inserted if rebuild else st.updated) == N
    assert all(r["title"].endswith(" refurbished") for r in _rows(tmp_path).values())


def test_offers_are_embedded_in_chunks_of_similar_length_and_come_back_in_order(con, monkeypatch: pytest.MonkeyPatch):
    """embed_offers orders offers by the encoder's token length before chunking (a chunk of short and long titles
    pads every batch to its longest one), and returns the rows in the order given, each with its own vectors."""
    import pmatch_duckdb.embedding as embedding
    from pmatch_duckdb.encoders.registry import get_text_encoder
    from pmatch_duckdb.fusion import FusionConfig
    from pmatch_duckdb.offers import Offer

    settings = context_of(con).settings
    rng = np.random.default_rng(0)
    words = ["sony", "tv", "hdmi", "cable", "4k", "ultra", "black", "stand", "kdl-40v4100", "remote", "wall", "mount"]
    titles = [" ".join(rng.choice(words, size=int(rng.integers(1, 14)))) for _ in range(23)]
    offers = [Offer(id=f"o{i}", title=t, price=float(i) if i % 3 else None) for i, t in enumerate(titles)]
    offers.insert(5, Offer(id="no-title", title=None))
    chunks = []
    real = embedding.embed_prepared

    def spy(texts, *args, **kwargs):
        chunks.append(texts)
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(ov, "embed_prepared", spy)
    monkeypatch.setattr(ov, "EMBED_CHUNK", 4)
    rows = ov.embed_offers(offers, settings, FusionConfig(), [f"h{o.id}" for o in offers], progress=False)

    assert rows["id"].to_pylist() == [o.id for o in offers]
    assert rows["content_hash"].to_pylist() == [f"h{o.id}" for o in offers]
    assert rows["title"].to_pylist() == [o.title for o in offers]
    enc = get_text_encoder(settings)
    seen = [tuple(e.ids) if e is not None else None for c in chunks for e in c.items]
    want = [tuple(enc.prepare([o.title])[0].ids) if o.title else None for o in offers]
    assert sorted(seen, key=str) == sorted(want, key=str)  # every offer embedded once, tokenised as encode does
    lengths = [0 if t is None else len(t) for t in seen]
    assert lengths == sorted(lengths)  # chunks in token-length order, not table order
    assert [int(x) for c in chunks for x in c.lengths] == lengths
    vec = np.array(rows["text_vec"].to_pylist()[6], dtype=np.float32)
    np.testing.assert_allclose(vec, enc.encode([titles[5]])[0], atol=1e-5)  # offers[6] is titles[5]
    assert rows["text_vec"].to_pylist()[5] is None and rows["price"].to_pylist()[:3] == [None, 1.0, 2.0]

