"""The pair scorer end to end: trained inside ``train_matcher`` on a generated catalog, it separates a
same-model / different-edition pair that the cheap pair features (cosine, TF-IDF, word overlap) cannot;
the bundle round trip; a matcher without a pair scorer still loads."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest

import pmatch_duckdb as pm
from pmatch_duckdb.bundles import read_bundle
from pmatch_duckdb.errors import ModelIntegrityError
from pmatch_duckdb.matchers import load_matcher

pytest.importorskip("torch")
pytest.importorskip("transformers")
from pmatch_duckdb.training.pair_model import PairOptions, PairTrainConfig  # noqa: E402

pytestmark = pytest.mark.slow
TINY = {"vocab_size": 30522, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "max_position_embeddings": 64}

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

    # a small BERT (random init) keeps the test in seconds; pmatch train fine-tunes MiniLM-L6's weights
    opts = PairOptions(PairTrainConfig(max_len=24, epochs=20, batch_size=16, lr=1e-3, freeze_layers=0, threads=1,
                                       warmup=0.05, tiny_bert=TINY),
                       top_m=2, hard_negatives=0, min_positives=50, min_gain=None)
    with_pair = train_matcher(con, ["feed", "catalog"], pairs="labels", name="pairs", pair_options=opts,
                              activate=False, progress=False, log=lambda m: None)
    without = train_matcher(con, ["feed", "catalog"], pairs="labels", name="nopair", pair_model=False,
                            activate=False, progress=False, log=lambda m: None)
    yield con, thome, with_pair, without, truth_te, opts
    con.close()


def _edition_accuracy(con, thome, name: str) -> tuple[float, float]:
    """(share of sources whose true match outscores the other edition by ``score``, the same by the
    cosine of the text vectors ``text_score``)."""
    from pmatch_duckdb.matchers import activate, deactivate

    activate(name, "v1", thome)
    pm.install(con, home=thome, image_roots=[thome], matcher=name)
    try:
        rows = con.execute("SELECT source_id, target_id, score, text_score "
                           "FROM score_pairs('feed_test', 'catalog', 'test_pairs')").fetchall()
    finally:
        deactivate(name, thome)
    assert len(rows) % 2 == 0 and all(r[2] is not None for r in rows)
    # rows come in input order: (source, its match), (source, the other edition)
    pairs = range(0, len(rows), 2)
    return (float(np.mean([rows[i][2] > rows[i + 1][2] for i in pairs])),
            float(np.mean([rows[i][3] > rows[i + 1][3] for i in pairs])))


def test_pair_scorer_tells_editions_apart_where_cosine_cannot(editions):
    con, thome, with_pair, without, _, _ = editions
    assert "valid_pair_model" in with_pair.metrics and "valid_pair_model" not in without.metrics
    acc_with, cosine = _edition_accuracy(con, thome, "pairs")
    acc_without, _ = _edition_accuracy(con, thome, "nopair")
    assert acc_with >= 0.9, (acc_with, acc_without, cosine)
    assert cosine <= 0.8, (acc_with, acc_without, cosine)  # the text cosine cannot tell the editions apart
    # (the trained projection + decision model also learn it here: it is a per-token weight; see the report)
    assert acc_with >= acc_without, (acc_with, acc_without, cosine)


def test_bundle_round_trip_and_a_matcher_without_pair_scorer_loads(editions):
    _, thome, with_pair, without, _, _ = editions
    m = load_matcher("pairs", "v1", thome)
    assert m.pair is not None and m.pair_decision is not None and m.pair.top_m == 2
    man = m.bundle.manifest
    for f in ("pair_model.onnx", "pair_tokenizer.json", "pair_decision.json"):
        assert f in man["files"]
    assert man["pair_model"]["onnx_max_abs_diff"] <= 1e-4 and man["pair_model"]["max_len"] == 24
    assert json.loads((with_pair.path / "pair_decision.json").read_text())["features"] == [
        "stage1_logit", "pair_model_logit"]
    plain = load_matcher("nopair", "v1", thome)
    assert plain.pair is None and plain.pair_decision is None
    # tampering with the pair model is caught like any other bundle file
    (with_pair.path / "pair_model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelIntegrityError, match="pair_model.onnx"):
        read_bundle(with_pair.path).verify()


def test_a_pair_scorer_that_does_not_beat_stage_one_on_held_out_pairs_is_dropped(editions):
    """The scorer costs ~25x match CPU: a bundle keeps it only if the stacked model's held-out average
    precision beats stage 1's by ``min_gain`` (here an unreachable gain, so it must be dropped)."""
    con, thome, with_pair, _, _, opts = editions
    from pmatch_duckdb.training import train_matcher

    log: list[str] = []
    gated = train_matcher(con, ["feed", "catalog"], pairs="labels", name="gated",
                          pair_options=dataclasses.replace(opts, min_gain=1.5, max_train_pairs=200),
                          activate=False, progress=False, log=log.append)
    assert any(m.startswith("pair model dropped") for m in log), log
    # (and the pair stage's cost is capped: a sample of whole label groups, at most max_train_pairs)
    capped = [m for m in log if m.startswith("pair model: training on a sample of")]
    assert capped and int(capped[0].split("sample of ")[1].split(" ")[0].replace(",", "")) <= 200, log
    assert "valid_pair_model" not in gated.metrics and "valid_pair_model" in with_pair.metrics
    m = load_matcher("gated", "v1", thome)
    assert m.pair is None and m.pair_decision is None
    assert "pair_model" not in m.bundle.manifest
    assert not any((gated.path / f).exists() for f in ("pair_model.onnx", "pair_tokenizer.json",
                                                         "pair_decision.json", "pair_summarizer.json"))
