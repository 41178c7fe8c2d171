"""Decision-model pair features: identifier similarity, description-aware features, column selection."""

from __future__ import annotations

import numpy as np
import pytest

from pmatch_duckdb.decision import DecisionModel
from pmatch_duckdb.fusion import FusionConfig
from pmatch_duckdb.matching import OfferVectors, TargetView, decision_features, pair_signals
from pmatch_duckdb.pair_features import PAIR_FEATURES, best_id_pair, id_similarity, quantities

OLD_FEATURES = PAIR_FEATURES[:17]  # what matchers trained before the description features list


def _offers(titles: list[str], descs: list[str | None], desc_ids: list[list[str]], idents: list[list[str]]
            ) -> OfferVectors:
    n = len(titles)
    rng = np.random.default_rng(len(titles))
    v = rng.normal(size=(n, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return OfferVectors(ids=[f"{titles[0][:3]}{i}" for i in range(n)], hashes=[""] * n, text=v,
                        text_ok=np.ones(n, bool), image=np.zeros((n, 4), np.float32), image_ok=np.zeros(n, bool),
                        fused=v, lexical=titles, idents=idents, price=np.full(n, np.nan), titles=titles,
                        brands=[None] * n, descriptions=descs, desc_idents=desc_ids)


def test_id_similarity_and_digits():
    assert id_similarity("du1100ss", "du1100xtps") == pytest.approx(0.7)
    assert id_similarity("abc123", "abc123") == 1.0
    assert id_similarity("", "x") == 0.0
    best, agree, differ = best_id_pair({"msmt1g"}, {"msmt2g"})
    assert best > 0.8 and not agree and differ  # a different capacity, not a colour variant
    best, agree, differ = best_id_pair({"mmv4205bt"}, {"mmv4205baq", "zz99"})
    assert best == pytest.approx(8 / 10) and agree and not differ  # common prefix mmv4205b
    assert best_id_pair(set(), {"a1b2"}) == (0.0, False, False)


def test_description_identifiers_and_full_text():
    src = _offers(["Sony camera silver", "LG range"], ["Model DSC-W120, 7.2 MP", None], [["dscw120"], []],
                  [[], ["lre30757ss"]])
    tgt = _offers(["Sony Cyber-shot DSC-W120 pink", "LG electric range"], ["pink", "5.6 cu ft"], [[], []],
                  [["dscw120"], []])
    view = TargetView.from_vectors(tgt, FusionConfig())
    s, t = np.array([0, 0, 1]), np.array([0, 1, 1])
    x = decision_features(src, view, s, t, pair_signals(src, view, s, t))
    col = {f: x[:, i] for i, f in enumerate(PAIR_FEATURES)}
    assert col["id_shared"].tolist() == [0, 0, 0]  # title identifiers alone never meet
    assert col["full_id_shared"].tolist() == [1, 0, 0]  # the source's description names the target's id
    assert col["full_id_strong"].tolist() == [1, 0, 0]
    assert col["description_missing"].tolist() == [0, 0, 1]
    assert col["full_text"][0] > col["full_text"][1] and 0 <= col["full_text"].min() <= col["full_text"].max() <= 1
    # a decision model names its columns: an older model gets exactly its 17, in its order
    old = decision_features(src, view, s, t, pair_signals(src, view, s, t), OLD_FEATURES[::-1])
    np.testing.assert_array_equal(old, x[:, :17][:, ::-1])
    with pytest.raises(ValueError, match="unknown pair features"):
        decision_features(src, view, s, t, pair_signals(src, view, s, t), ("fused", "nope"))


def test_colour_features_see_colour_variants():
    """A colour variant (same model line, another colour) is another product: the titles' colour words agree,
    conflict, or say nothing when a side names no colour; synonyms are one colour; the brand's words are not."""
    src = _offers(["Sony silver Cyber-shot DSC-W150", "LG range gray", "Black & Decker drill", "Omnimount shelf",
                   "Nikon Coolpix S550 blue"], [None] * 5, [[]] * 5, [[]] * 5)
    tgt = _offers(["Sony Cyber-shot DSC-W150 gold", "LG range grey", "Bosch drill white", "Omnimount shelf black",
                   "Nikon Coolpix S550 graphite black / blue"], [None] * 5, [[]] * 5, [[]] * 5)
    src.brands = [None, None, "Black & Decker", None, None]
    view = TargetView.from_vectors(tgt, FusionConfig())
    s = t = np.arange(5)
    x = decision_features(src, view, s, t, pair_signals(src, view, s, t), ("colour_agree", "colour_conflict"))
    assert x.tolist() == [[0, 1], [1, 0], [0, 0], [0, 0], [1, 0]]


def test_quantities_and_unit_features():
    """Numbers with a unit: one unit per quantity (TB→GB, GHz→MHz), decimals kept, '2 in 1' is not inches; a unit
    both titles name with no value in common is a conflict (another capacity, speed or pack size)."""
    assert quantities("4GB DDR3, 1.6GHz, 2,5 kg 3-pack") == {("gb", 4.0), ("mhz", 1600.0), ("kg", 2.5), ("pack", 3.0)}
    assert quantities("2 in 1 cable, 5 in, 2TB, 180 hour") == {("inch", 5.0), ("gb", 2000.0), ("h", 180.0)}
    assert quantities("model 1600, 2024 edition") == set() and quantities(None) == set()
    src = _offers(["HyperX 4GB 1600MHz", "Samsung 970 EVO 500GB", "SSD 2TB", "cable", "TiVo HD 180 hour"],
                  [None] * 5, [[]] * 5, [[]] * 5)
    tgt = _offers(["HyperX 4 GB 1866 MHz", "Samsung 970 EVO 2TB", "SSD 2000 GB", "cable 3-pack", "TiVo 80 hour"],
                  [None] * 5, [[]] * 5, [[]] * 5)
    view = TargetView.from_vectors(tgt, FusionConfig())
    s = t = np.arange(5)
    x = decision_features(src, view, s, t, pair_signals(src, view, s, t), ("unit_agree", "unit_conflict"))
    assert x.tolist() == [[1, 1], [0, 1], [1, 0], [0, 0], [0, 1]]


def test_decision_json_from_before_the_gbdt_kind_loads():
    old = {"type": "logistic+isotonic", "features": list(OLD_FEATURES), "coef": [0.5] * 17, "intercept": -1.0,
           "mean": [0.0] * 17, "scale": [1.0] * 17, "calib_x": None, "calib_y": None, "accept_threshold": None,
           "review_threshold": 0.3, "info": {}}
    m = DecisionModel.from_dict(old)
    assert m.kind == "logistic" and m.features == OLD_FEATURES and np.isinf(m.accept_threshold)
    assert m.score(np.ones((2, 17))).shape == (2,)
    with pytest.raises(ValueError, match="unknown decision model kind"):
        DecisionModel.from_dict({**old, "kind": "forest"})
