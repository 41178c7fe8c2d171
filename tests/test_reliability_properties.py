"""Property-based tests (Hypothesis) for the text and offer paths: arbitrary Unicode titles, arbitrary price
floats and arbitrary id types never crash and never change the row count."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import pmatch_duckdb as pm  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TEXT = st.one_of(st.none(), st.text(max_size=200), st.text(alphabet=st.characters(codec="utf-8"), max_size=50))


@pytest.fixture(scope="module")
def pcon(home, tmp_path_factory):
    c = pm.connect(home=home, image_roots=[tmp_path_factory.mktemp("prop_images")],
                   index_dir=tmp_path_factory.mktemp("prop_index"))
    yield c
    c.close()


def _unit(v) -> bool:
    a = np.asarray(v, dtype=np.float32)
    return bool(np.all(np.isfinite(a))) and abs(float(np.linalg.norm(a)) - 1) < 1e-3


@SETTINGS
@given(texts=st.lists(TEXT, min_size=1, max_size=12))
def test_arbitrary_unicode_text(pcon, record, texts):
    pcon.register("prop_texts", pa.table({"i": pa.array(range(len(texts)), pa.int32()),
                                          "t": pa.array(texts, pa.string())}))
    rows = pcon.execute("SELECT i, pm_embed_text(t), pm_embed_offer(t) FROM prop_texts ORDER BY i").fetchall()
    assert [r[0] for r in rows] == list(range(len(texts)))
    for t, (_, v, o) in zip(texts, rows, strict=True):
        has_text = t is not None and bool(t.strip())
        assert (v is not None) == has_text and (o is not None) == has_text, repr(t)
        assert v is None or (_unit(v) and _unit(o))
    test_arbitrary_unicode_text.seen = getattr(test_arbitrary_unicode_text, "seen", 0) + len(texts)


def test_record_text_property(record):
    record("text", "Hypothesis: arbitrary Unicode titles (incl. NUL, surrogate-free planes, NULL), 25 examples",
           "pm_embed_text / pm_embed_offer: one row per input row; NULL exactly for NULL/blank text; else unit vector")


@SETTINGS
@given(prices=st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64)),
                       min_size=1, max_size=12))
def test_arbitrary_price_floats(pcon, prices):
    pcon.register("prop_prices", pa.table({"i": pa.array(range(len(prices)), pa.int32()),
                                           "p": pa.array(prices, pa.float64())}))
    rows = pcon.execute("SELECT i, pm_embed_offer('usb cable', price := p) FROM prop_prices ORDER BY i").fetchall()
    assert [r[0] for r in rows] == list(range(len(prices)))
    assert all(v is not None and _unit(v) for _, v in rows)
    # equal to the offer without price where the price is unusable (NaN, infinite, negative, NULL)
    (no_price,), = pcon.execute("SELECT pm_embed_offer('usb cable')").fetchall()
    for p, (_, v) in zip(prices, rows, strict=True):
        if p is None or not math.isfinite(p) or p < 0:
            assert np.allclose(v, no_price, atol=1e-6), p


def test_record_price_property(record):
    record("prices", "Hypothesis: arbitrary float64 prices (NaN, ±inf, subnormal, huge, negative), 25 examples",
           "pm_embed_offer: one unit vector per row; unusable prices give exactly the no-price vector")


ID_TYPES = {
    "BIGINT": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "VARCHAR": st.text(max_size=30),
    "UTINYINT": st.integers(min_value=0, max_value=255),
}


@st.composite
def offer_tables(draw):
    typ = draw(st.sampled_from(sorted(ID_TYPES)))
    ids = draw(st.lists(ID_TYPES[typ], min_size=1, max_size=8, unique=True))
    titles = draw(st.lists(TEXT, min_size=len(ids), max_size=len(ids)))
    prices = draw(st.lists(st.one_of(st.none(), st.floats(width=64)), min_size=len(ids), max_size=len(ids)))
    brands = draw(st.lists(TEXT, min_size=len(ids), max_size=len(ids)))
    return typ, ids, titles, prices, brands


@settings(SETTINGS, max_examples=15)
@given(table=offer_tables())
def test_arbitrary_offer_tables(pcon, table):
    typ, ids, titles, prices, brands = table
    arrow_type = {"BIGINT": pa.int64(), "VARCHAR": pa.string(), "UTINYINT": pa.uint8()}[typ]
    pcon.register("prop_offers_src", pa.table({"id": pa.array(ids, arrow_type), "title": pa.array(titles, pa.string()),
                                               "price": pa.array(prices, pa.float64()),
                                               "brand": pa.array(brands, pa.string())}))
    pcon.execute("CREATE OR REPLACE TABLE prop_offers AS SELECT * FROM prop_offers_src")
    (total,), = pcon.execute("SELECT total FROM pm_index('prop_offers')").fetchall()
    assert total == len(ids)
    rows = pcon.execute("SELECT source_id, target_id, score FROM match_products('prop_offers', 'prop_offers', "
                        "k := 2)").fetchall()
    idset = set(ids)
    assert all(s in idset and t in idset and s != t and 0 <= sc <= 1 for s, t, sc in rows)
    # and the same again: nothing changed, nothing re-embedded, nothing lost
    (unchanged, total2), = pcon.execute("SELECT unchanged, total FROM pm_index('prop_offers')").fetchall()
    assert unchanged == total2 == len(ids)


def test_record_offer_property(record):
    record("ids", "Hypothesis: arbitrary offer tables (BIGINT / VARCHAR / UTINYINT ids, Unicode titles and brands, "
                  "float prices), 15 examples",
           "pm_index total = rows every time; match_products returns only existing ids, no self pairs, scores in [0,1]")
