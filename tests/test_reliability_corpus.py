"""The bad-input corpus (tests/bad_input_corpus.py) run through every public SQL function and table macro.

Promises checked for each kind: the process survives; scalar functions return exactly one row per input row;
a NULL only where the docs promise one, with a queryable reason (pm_image_error, or "no text"); an error only
where documented, naming the public function and the offending column or value; indexes hold exactly the
source rows. Every case is recorded for docs/reliability.md (``record``).
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from bad_input_corpus import id_cases, make_image_lib, price_cases, shape_cases, text_cases
from reliability_log import first_line

import pmatch_duckdb as pm

MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return make_image_lib(tmp_path_factory.mktemp("corpus"), MAX_PIXELS)


@pytest.fixture(scope="module")
def rcon(home, lib, tmp_path_factory):
    c = pm.connect(home=home, image_roots=[lib.root], max_image_pixels=MAX_PIXELS,
                   index_dir=tmp_path_factory.mktemp("corpus_index"))
    c.execute("CREATE TABLE good AS SELECT * FROM (VALUES (1, 'usb cable 2m'), (2, 'hdmi cable 1m'), "
              "(3, 'wireless mouse')) t(id, title)")
    yield c
    c.close()


def unit(v) -> bool:
    a = np.asarray(v, dtype=np.float32)
    return bool(np.all(np.isfinite(a))) and abs(float(np.linalg.norm(a)) - 1.0) < 1e-3


def register(con: duckdb.DuckDBPyConnection, name: str, columns: dict[str, pa.Array]) -> None:
    con.register(name, pa.table(columns))


def fails(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    with pytest.raises(duckdb.Error) as ei:
        con.execute(sql).fetchall()
    return first_line(ei.value)


# --------------------------------------------------------------------------------------------- text

def test_text_corpus_through_scalar_functions(rcon, record):
    cases = text_cases()
    register(rcon, "texts", {"i": pa.array(range(len(cases)), pa.int32()),
                             "t": pa.array([c[1] for c in cases], pa.string())})
    rows = rcon.execute("""SELECT i, pm_embed_text(t), pm_embed_text(t, 'minilm-l6-v2'), pm_embed_offer(t),
                                  pm_embed_offer(t, price := 10, brand := t)
                           FROM texts ORDER BY i""").fetchall()
    assert [r[0] for r in rows] == list(range(len(cases)))  # one row per input row, in order
    for (kind, _, embeds), (_, a, b, offer, offer2) in zip(cases, rows, strict=True):
        if embeds:
            assert a is not None and b is not None and offer is not None and offer2 is not None, kind
            assert unit(a) and unit(b) and unit(offer) and unit(offer2), kind
            assert float(np.dot(a, b)) > 0.999, kind  # named form = default form for the same model
            outcome = "unit vector from pm_embed_text (both forms) and pm_embed_offer"
        else:
            assert a is None and b is None and offer is None and offer2 is None, kind
            outcome = "NULL from pm_embed_text / pm_embed_offer (documented: no text)"
        record("text", kind, outcome + f"; {len(rows)} rows in, {len(rows)} out")


def test_text_corpus_as_offer_titles(rcon, record):
    cases = text_cases()
    register(rcon, "text_offers_src", {"id": pa.array(range(len(cases)), pa.int64()),
                                       "title": pa.array([c[1] for c in cases], pa.string())})
    rcon.execute("CREATE OR REPLACE TABLE text_offers AS SELECT * FROM text_offers_src")
    (total,), = rcon.execute("SELECT total FROM pm_index('text_offers')").fetchall()
    assert total == len(cases)
    (unchanged, inserted), = rcon.execute("SELECT unchanged, inserted FROM pm_index('text_offers')").fetchall()
    assert (unchanged, inserted) == (len(cases), 0)  # content hashes of odd text are stable
    per_source = dict(rcon.execute("""SELECT source_id, count(*) FROM match_products('text_offers', 'good', k := 2)
                                      GROUP BY ALL""").fetchall())
    for i, (kind, _, embeds) in enumerate(cases):
        assert per_source.get(i, 0) == (2 if embeds else 0), kind
        record("text", kind + " (as offer title)",
               f"pm_index: indexed ({total}/{len(cases)} rows, re-run unchanged); match_products: "
               + ("k=2 candidates" if embeds else "no candidates (documented: offer without text or image)"))
    dedup = rcon.execute("SELECT count(*) FILTER (source_id = target_id) FROM match_products('text_offers', "
                         "'text_offers', k := 3)").fetchall()
    assert dedup == [(0,)]


def test_invalid_utf8_blob(rcon, record):
    msg = fails(rcon, "SELECT pm_embed_text('\\xff\\xfe\\xc3\\x28'::BLOB)")
    assert "pm_embed_text expects VARCHAR" in msg and "BLOB" in msg
    with pytest.raises(duckdb.Error) as ei:  # DuckDB itself refuses to make such a VARCHAR
        rcon.execute("SELECT decode('\\xff\\xfe\\xc3\\x28'::BLOB)").fetchall()
    record("text", "invalid UTF-8 (as BLOB)", f"pm_embed_text error: {msg}; DuckDB cannot hold it in VARCHAR "
                                              f"({first_line(ei.value, 60)})")


# --------------------------------------------------------------------------------------------- images

def test_image_paths_through_every_image_function(rcon, lib, record):
    cases = lib.cases
    register(rcon, "paths", {"i": pa.array(range(len(cases)), pa.int32()),
                             "p": pa.array([c[1] for c in cases], pa.string())})
    rows = rcon.execute("""SELECT i, pm_embed_image(p), pm_image_error(p), pm_embed_images([p]), pm_image_errors([p]),
                                  pm_embed_image(p, 'efficientnet-lite0'), pm_embed_images([p, NULL, p]),
                                  pm_embed_offer(NULL, images := [p])
                           FROM paths ORDER BY i""").fetchall()
    assert [r[0] for r in rows] == list(range(len(cases)))
    for (kind, path, expected), (_, v, reason, pooled, reasons, named, pooled2, offer) in zip(cases, rows, strict=True):
        assert reason == expected, (kind, path, reason)
        assert reasons == [expected], kind
        usable = expected is None
        for x in (v, pooled, named, pooled2, offer):
            assert (x is not None) == usable, kind  # NULL exactly when pm_image_error gives a reason
            assert x is None or unit(x), kind
        record("images", kind, ("unit vector from pm_embed_image(s) (both forms) and pm_embed_offer" if usable else
                                f"NULL + pm_image_error(s) = '{reason}'") + f"; {len(rows)} rows in, {len(rows)} out")


def test_image_blobs(rcon, lib, record):
    cases = lib.blobs
    register(rcon, "blobs", {"i": pa.array(range(len(cases)), pa.int32()),
                             "b": pa.array([c[1] for c in cases], pa.binary())})
    rows = rcon.execute("SELECT i, pm_embed_image(b), pm_image_error(b), pm_embed_image(b, 'efficientnet-lite0') "
                        "FROM blobs ORDER BY i").fetchall()
    assert [r[0] for r in rows] == list(range(len(cases)))
    for (kind, _, expected), (_, v, reason, named) in zip(cases, rows, strict=True):
        assert reason == expected, (kind, reason)
        assert (v is not None) == (expected is None) == (named is not None), kind
    # one record for the BLOB path as a whole, and the BLOB-only kinds
    record("images", f"all {len(cases)} image kinds as BLOB bytes (pm_embed_image/pm_image_error on BLOB)",
           "same reasons as from files; NULL exactly where a reason is given")
    for (kind, _, _), (_, _, reason, _) in zip(cases, rows, strict=True):
        if kind.startswith("BLOB:"):
            record("images", kind, f"NULL + pm_image_error = '{reason}'")


def test_image_corpus_as_offer_images(rcon, lib, record):
    cases = lib.cases
    rcon.execute("CREATE OR REPLACE TABLE img_offers (id INTEGER, title VARCHAR, images VARCHAR[])")
    rcon.executemany("INSERT INTO img_offers VALUES (?, NULL, [?])", [[i, c[1]] for i, c in enumerate(cases)])
    (total,), = rcon.execute("SELECT total FROM pm_index('img_offers')").fetchall()
    assert total == len(cases)
    usable = {i for i, c in enumerate(cases) if c[2] is None}
    got = {r[0] for r in rcon.execute("SELECT DISTINCT source_id FROM match_products('img_offers', 'img_offers', k := 1)"
                                      ).fetchall()}
    got |= {r[0] for r in rcon.execute("SELECT DISTINCT target_id FROM match_products('img_offers', 'img_offers', "
                                       "k := 1)").fetchall()}
    assert got <= usable and len(got) >= 2
    record("images", f"all {len(cases)} path kinds as an offer's only image (images column, no title)",
           f"pm_index: {total}/{len(cases)} rows indexed; match_products: only offers with a usable image match")


# --------------------------------------------------------------------------------------------- prices

def test_price_corpus(rcon, record):
    cases = price_cases()
    sel = " UNION ALL ".join(f"SELECT {i} AS id, 'usb cable {i % 3}' AS title, ({expr})::DOUBLE AS price"
                             for i, (_, expr) in enumerate(cases))
    rcon.execute(f"CREATE OR REPLACE TABLE priced AS {sel}")
    rows = rcon.execute("SELECT id, pm_embed_offer(title, price := price) FROM priced ORDER BY id").fetchall()
    assert len(rows) == len(cases) and all(v is not None and unit(v) for _, v in rows)
    for kind, expr in cases:  # the native type too, not only as DOUBLE
        (v,), = rcon.execute(f"SELECT pm_embed_offer('usb cable', price := {expr})").fetchall()
        assert v is not None and unit(v), kind
    (total,), = rcon.execute("SELECT total FROM pm_index('priced')").fetchall()
    assert total == len(cases)
    res = rcon.execute("SELECT score, price_ratio FROM match_products('priced', 'priced', k := 5)").fetchall()
    assert res and all(np.isfinite(s) and 0 <= s <= 1 for s, _ in res)
    assert all(p is None or (np.isfinite(p) and 0 <= p <= 1) for _, p in res)
    for kind, _ in cases:
        record("prices", kind, f"pm_embed_offer: unit vector; pm_index {total}/{len(cases)} rows; match_products "
                               "scores in [0,1], price_ratio in [0,1] or NULL (non-finite/negative = no price)")


# --------------------------------------------------------------------------------------------- ids

@pytest.mark.parametrize(("kind", "sql", "expected"), id_cases(), ids=[c[0] for c in id_cases()])
def test_id_corpus(rcon, record, kind, sql, expected):
    name = "ids_" + str(abs(hash(kind)) % 10**8)
    rcon.execute(f"CREATE OR REPLACE TABLE {name} AS {sql}")
    n = rcon.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
    if expected != "ok":
        for q, fn in [(f"SELECT * FROM pm_index('{name}')", "pm_index"),
                      (f"SELECT * FROM match_products('{name}', 'good')", "match_products")]:
            msg = fails(rcon, q)
            assert fn in msg and expected in msg, msg
        record("ids", kind, f"error: {msg}")
        return
    (total,), = rcon.execute(f"SELECT total FROM pm_index('{name}')").fetchall()
    assert total == n
    src_ids = [r[0] for r in rcon.execute(f"SELECT id FROM {name}").fetchall()]
    rows = rcon.execute(f"SELECT source_id, target_id FROM match_products('{name}', '{name}', k := 2)").fetchall()
    assert all(s != t for s, t in rows)  # dedup mode: no self pairs, even for odd ids
    assert all(t in src_ids and s in src_ids for s, t in rows)  # ids come back with their value and type
    assert len({r[1] for r in rows} | {r[0] for r in rows}) >= min(n, 2)
    # delete one row: the refresh removes exactly that id (ids are quoted safely in LanceDB's filter)
    victim = src_ids[0]
    rcon.execute(f"DELETE FROM {name} WHERE id = ?", [victim])
    (deleted, total2), = rcon.execute(f"SELECT deleted, total FROM pm_index('{name}')").fetchall()
    assert (deleted, total2) == (1, n - 1)
    record("ids", kind, f"indexed {total}/{n}; match_products returns the original ids (no self pairs); "
                        f"deleting one id → refresh deleted=1, total={total2}")


def test_duplicate_source_id_across_duckdb_chunks(rcon, record):
    """A duplicate 2,093 rows apart (in different 2,048-row DuckDB vectors) gets the same clear error as one
    inside a vector, before any row is embedded (NULL titles: an old build would have matched silently)."""
    msgs = {}
    for name, other in (("dup_far", 2100), ("dup_near", 8)):
        rcon.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT CASE WHEN i = {other} THEN 7 ELSE i END AS id, "
                     "NULL::VARCHAR AS title FROM range(2101) r(i)")
        msgs[name] = fails(rcon, f"SELECT * FROM match_products('{name}', 'good')")
        assert f"match_products: source '{name}' has duplicate id '7'; ids must be unique" in msgs[name], msgs[name]
    assert msgs["dup_far"].replace("dup_far", "dup_near") == msgs["dup_near"]
    record("ids", "duplicate source id split across two 2,048-row DuckDB chunks (2,101 rows)",
           f"error before any row is matched, same as within one chunk: {msgs['dup_far']}")


# --------------------------------------------------------------------------------------------- table shapes

@pytest.mark.parametrize(("kind", "sql", "expected"), shape_cases(), ids=[c[0] for c in shape_cases()])
def test_table_shapes(rcon, record, kind, sql, expected):
    name = "shape_" + str(abs(hash(kind)) % 10**8)
    rcon.execute(f"CREATE OR REPLACE TABLE {name} AS {sql}")
    n = rcon.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
    if expected != "ok":
        msg = fails(rcon, f"SELECT * FROM pm_index('{name}')")
        assert "pm_index" in msg and expected in msg, msg
        # every public macro names itself, the table and the missing column (no DuckDB binder error)
        column = "id" if "no id" in kind else "title"
        calls = {"match_products (source)": f"SELECT * FROM match_products('{name}', 'good')",
                 "match_products (target)": f"SELECT * FROM match_products('good', '{name}')",
                 "score_pairs (source)": f"SELECT * FROM score_pairs('{name}', 'good', 'good_pairs')",
                 "score_pairs (target)": f"SELECT * FROM score_pairs('good', '{name}', 'good_pairs')"}
        rcon.execute("CREATE OR REPLACE TABLE good_pairs AS SELECT 1 AS source_id, 2 AS target_id")
        for what, sql in calls.items():
            m = fails(rcon, sql)
            fn = what.split()[0]
            assert f"{fn}: {what.split()[1][1:-1]} '{name}' {expected}(s) {column}" in m, (what, m)
        record("table shapes", kind, f"error: {msg}; match_products and score_pairs (as source and as target) "
                                     f"name themselves, the table and the column: {m[m.index('score_pairs'):][:90]}")
        return
    (total,), = rcon.execute(f"SELECT total FROM pm_index('{name}')").fetchall()
    assert total == n
    k = 2
    per_source = dict(rcon.execute(f"SELECT source_id, count(*) FROM match_products('{name}', 'good', k := {k}) "
                                   "GROUP BY ALL").fetchall())
    assert all(c == k for c in per_source.values())
    self_rows = rcon.execute(f"SELECT count(*) FROM match_products('{name}', '{name}', k := {k})").fetchall()[0][0]
    cte = rcon.execute(f"WITH src AS (SELECT * FROM {name}) SELECT count(*) FROM match_products('src', 'good', "
                       f"k := {k})").fetchall()[0][0]
    assert cte == sum(per_source.values())
    record("table shapes", kind, f"pm_index {total}/{n} rows; match_products → {sum(per_source.values())} rows "
                                 f"({len(per_source)} sources × k), dedup {self_rows} rows, same from a CTE")


def test_pm_models_and_empty_inputs(rcon, record):
    rows = rcon.execute("SELECT name, verified FROM pm_models()").fetchall()
    assert ("minilm-l6-v2", True) in rows
    for sql in ["SELECT pm_embed_text(t) FROM (SELECT 'x' AS t LIMIT 0)",
                "SELECT pm_image_errors([]::VARCHAR[])", "SELECT pm_embed_images([]::VARCHAR[])",
                "SELECT pm_embed_images([NULL]::VARCHAR[])"]:
        out = rcon.execute(sql).fetchall()
        assert out in ([], [([],)], [(None,)]), (sql, out)
    record("table shapes", "empty lists and zero-row inputs to scalar functions",
           "zero rows → zero rows; [] → NULL vector / [] reasons; [NULL] → NULL vector")


# --------------------------------------------------------------------------------------------- identifier codes

def test_code_functions_over_the_text_corpus(rcon, record):
    """pm_gtin / pm_gtin_error over every text kind, plus numbers of odd types: one row per row, NULL with reason."""
    cases = text_cases()
    register(rcon, "codes", {"i": pa.array(range(len(cases)), pa.int32()),
                             "t": pa.array([c[1] for c in cases], pa.string())})
    rows = rcon.execute("SELECT i, t IS NULL, pm_gtin(t), pm_gtin_error(t) FROM codes ORDER BY i").fetchall()
    assert [r[0] for r in rows] == list(range(len(cases)))
    for (kind, text, _), (_, is_null, gtin, err) in zip(cases, rows, strict=True):
        assert gtin is None, kind  # none of these texts is a GTIN
        assert is_null or not text.strip() or err, kind  # a non-blank input that is no GTIN always says why
    for expr in ["'nan'::DOUBLE", "'inf'::DOUBLE", "-1", "1e308", "4006381333931::HUGEINT", "4006381333931.0",
                 "[1, 2]::VARCHAR", "'\\x00'"]:
        (g, e), = rcon.execute(f"SELECT pm_gtin({expr}), pm_gtin_error({expr})").fetchall()
        assert (g is None) != (e is None), (expr, g, e)
    record("text", f"all {len(cases)} text kinds and odd numbers (NaN, ±inf, -1, 1e308) into pm_gtin / "
                   "pm_gtin_error", "one row per row; pm_gtin NULL; a reason from pm_gtin_error for every non-blank input (blank = no code)")
