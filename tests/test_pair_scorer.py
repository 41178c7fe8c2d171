"""The pair scorer (cross-encoder stage of a matcher): serialisation, ONNX = torch, training inside
``train_matcher``, the bundle round trip, and a pair that only reading both offers together can decide."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

import pmatch_duckdb as pm
from pmatch_duckdb.bundles import read_bundle
from pmatch_duckdb.errors import ModelIntegrityError
from pmatch_duckdb.matchers import load_matcher
from pmatch_duckdb.pair_scorer import PairScorer, SerializeOptions, Summarizer, serialize_offer, top_m_mask

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from pmatch_duckdb.training.pair_model import (  # noqa: E402
    PairOptions,
    PairTrainConfig,
    augment_pair,
    export_cross_encoder,
    minilm_dir,
    torch_logits,
    train_cross_encoder,
)

TINY = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 128}


def test_serialization_marks_ids_and_summarizes():
    opts = SerializeOptions(mark_ids=True, desc_tokens=4)
    s = serialize_offer("Sony KDL-40V4100 40 inch TV", "Sony", 499.0, ["kdl40v4100"], "a b c d e f", opts)
    assert s == ("COL title VAL Sony KDL-40V4100 # 40 # inch TV COL brand VAL Sony COL price VAL 499.00 "
                 "COL id VAL kdl40v4100 COL description VAL a b c d")
    plain = serialize_offer("Sony TV 40", None, float("nan"), ["x1"], None, SerializeOptions(mark_ids=False))
    assert plain == "COL title VAL Sony TV 40"
    summ = Summarizer.fit(["the camera body is black", "the camera lens is black", "the great zoom lens x100"] * 2)
    out = serialize_offer("t", None, None, [], "the great camera is the zoom lens x100 black",
                          SerializeOptions(summarize=True, desc_tokens=3), summ)
    assert out.endswith("COL description VAL great zoom x100")  # rare words kept, in their order


def test_augmentation_keeps_the_content_words():
    rng = random.Random(0)
    a, b = "COL title VAL one two three four five six COL brand VAL x", "COL title VAL other"
    for _ in range(20):
        x, y = augment_pair(a, b, rng)
        assert {x, y} == {a, b} or (len((x + y).split()) <= len((a + b).split()))


def test_onnx_export_equals_torch(tmp_path: Path):
    tok = minilm_dir() / "tokenizer.json"
    a = ["COL title VAL acme widget pro", "COL title VAL b", "COL title VAL sony tv 40 inch black"] * 4
    b = ["COL title VAL acme widget lite", "COL title VAL b c", "COL title VAL sony television"] * 4
    y = np.array([0, 1, 1] * 4, dtype=np.float32)
    model, info = train_cross_encoder(a, b, y, tok, PairTrainConfig(max_len=24, epochs=2, batch_size=4, threads=1,
                                                                    tiny_bert=TINY))
    assert info["steps"] == 6 and len(info["loss_history"]) == 2
    diff = export_cross_encoder(model, tmp_path, tok, 24, a, b)
    assert diff <= 1e-4
    cfg = {"max_len": 24, "serialize": SerializeOptions().to_dict()}
    from pmatch_duckdb.bundles import sha256_file

    scorer = PairScorer(tmp_path / "pair_model.onnx", sha256_file(tmp_path / "pair_model.onnx"),
                        tmp_path / "pair_tokenizer.json", cfg, batch_size=5)  # batches of uneven length
    np.testing.assert_allclose(scorer.logits(a, b), torch_logits(model, tok, 24, a, b), atol=1e-4)


def test_top_m_mask():
    s = np.array([0, 0, 0, 1, 1, 2])
    sc = np.array([0.1, 0.9, 0.5, 0.2, 0.3, 0.0])
    assert top_m_mask(s, sc, 2).tolist() == [False, True, True, True, True, True]
    assert not top_m_mask(s, sc, 0).any()


# --------------------------------------------------------- same model, different edition (end to end)

EDITIONS = ["pro", "lite", "max", "mini", "plus", "air"]
FILLERS = ["new", "sale", "deal", "gift", "top", "hot"]
BRANDS = ["Acme", "Zenko", "Orbis", "Kalto", "Vexa", "Lumo"]
KINDS = ["camera", "phone", "tablet", "speaker", "watch", "router", "monitor", "drone"]


def _products(n: int, seed: int):
    """Each product exists in two editions. Catalog: '<brand> <model> <kind> <edition> <filler>'; feed: the same
    product and edition with the OTHER catalog offer's filler — so the true match and the other edition share
    the same number of words with the feed offer: cosine, char TF-IDF and word overlap cannot tell them apart."""
    rng = random.Random(seed)
    catalog, feed, truth = [], [], []
    for p in range(n):
        model = "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3))
        base = f"{rng.choice(BRANDS)} {model} {rng.choice(KINDS)}"
        e1, e2 = rng.sample(EDITIONS, 2)
        f1, f2 = rng.sample(FILLERS, 2)
        cid1, cid2 = f"C{seed}-{p}a", f"C{seed}-{p}b"
        catalog += [(cid1, f"{base} {e1} {f1}"), (cid2, f"{base} {e2} {f2}")]
        feed += [(f"S{seed}-{p}a", f"{base} {e1} {f2}"), (f"S{seed}-{p}b", f"{base} {e2} {f1}")]
        truth += [(f"S{seed}-{p}a", cid1, cid2), (f"S{seed}-{p}b", cid2, cid1)]
    return catalog, feed, truth


@pytest.fixture(scope="module")
def editions(tmp_path_factory, home):
    root = tmp_path_factory.mktemp("pairs")
    thome = root / "home"
    (thome / "models").mkdir(parents=True)
    for b in ("minilm-l6-v2", "efficientnet-lite0"):
        (thome / "models" / b).symlink_to(home / "models" / b)
    cat_tr, feed_tr, truth_tr = _products(90, seed=1)
    cat_te, feed_te, truth_te = _products(25, seed=2)
    con = pm.connect(root / "shop.duckdb", home=thome, image_roots=[root])
    for name, rows in (("catalog", cat_tr + cat_te), ("feed", feed_tr), ("feed_test", feed_te)):
        con.execute(f"CREATE TABLE {name} (id VARCHAR, title VARCHAR)")
        con.executemany(f"INSERT INTO {name} VALUES (?, ?)", rows)
    con.execute("CREATE TABLE labels (left_id VARCHAR, right_id VARCHAR)")
    con.executemany("INSERT INTO labels VALUES (?, ?)", [(s, c) for s, c, _ in truth_tr])
    con.execute("CREATE TABLE test_pairs (source_id VARCHAR, target_id VARCHAR)")
    con.executemany("INSERT INTO test_pairs VALUES (?, ?)", [(s, x) for s, c, o in truth_te for x in (c, o)])
    from pmatch_duckdb.training import train_matcher

    opts = PairOptions(PairTrainConfig(max_len=32, epochs=3, batch_size=16, lr=1e-4, threads=2),
                       top_m=2, min_positives=50)
    with_pair = train_matcher(con, ["feed", "catalog"], pairs="labels", name="pairs", pair_options=opts,
                              activate=False, progress=False, log=lambda m: None)
    without = train_matcher(con, ["feed", "catalog"], pairs="labels", name="nopair", pair_model=False,
                            activate=False, progress=False, log=lambda m: None)
    yield con, thome, with_pair, without, truth_te
    con.close()


def _edition_accuracy(con, thome, name: str) -> float:
    from pmatch_duckdb.matchers import activate, deactivate

    activate(name, "v1", thome)
    pm.install(con, home=thome, image_roots=[thome], matcher=name)
    try:
        rows = con.execute("SELECT source_id, target_id, score FROM score_pairs('feed_test', 'catalog', 'test_pairs')"
                           ).fetchall()
    finally:
        deactivate(name, thome)
    assert len(rows) % 2 == 0 and all(r[2] is not None for r in rows)
    # rows come in input order: (source, its match), (source, the other edition)
    return float(np.mean([rows[i][2] > rows[i + 1][2] for i in range(0, len(rows), 2)]))


def test_pair_scorer_tells_editions_apart_where_cosine_cannot(editions):
    con, thome, with_pair, without, _ = editions
    assert "valid_pair_model" in with_pair.metrics and "valid_pair_model" not in without.metrics
    acc_with = _edition_accuracy(con, thome, "pairs")
    acc_without = _edition_accuracy(con, thome, "nopair")
    assert acc_with >= 0.9, (acc_with, acc_without)
    assert acc_without <= 0.75, (acc_with, acc_without)  # the cheap features see no difference


def test_bundle_round_trip_and_a_matcher_without_pair_scorer_loads(editions):
    _, thome, with_pair, without, _ = editions
    m = load_matcher("pairs", "v1", thome)
    assert m.pair is not None and m.pair_decision is not None and m.pair.top_m == 2
    man = m.bundle.manifest
    for f in ("pair_model.onnx", "pair_tokenizer.json", "pair_decision.json"):
        assert f in man["files"]
    assert man["pair_model"]["onnx_max_abs_diff"] <= 1e-4 and man["pair_model"]["max_len"] == 32
    assert json.loads((with_pair.path / "pair_decision.json").read_text())["features"] == [
        "stage1_logit", "pair_model_logit"]
    plain = load_matcher("nopair", "v1", thome)
    assert plain.pair is None and plain.pair_decision is None
    # tampering with the pair model is caught like any other bundle file
    (with_pair.path / "pair_model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelIntegrityError, match="pair_model.onnx"):
        read_bundle(with_pair.path).verify()
