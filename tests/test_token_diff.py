"""The word-difference model (token_diff.py): vectorised words = a per-pair loop, what it learns, JSON, plumbing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pmatch_duckdb.decision import DecisionModel
from pmatch_duckdb.features.lexical import normalize
from pmatch_duckdb.token_diff import (
    TokenDiffModel,
    fit_out_of_fold,
    fit_token_diff,
    pair_words,
    shape,
    take_pairs,
)

WORDS = ["sony", "kdl40", "tv", "pro", "mini", "black", "2tb", "1tb", "café", "x", "5s", "5", "new", "sale", ""]


def _titles(rng: np.random.Generator, n: int) -> list[str | None]:
    out: list[str | None] = []
    for _ in range(n):
        k = int(rng.integers(0, 6))
        out.append(None if k == 0 and rng.random() < 0.3 else " ".join(rng.choice(WORDS, k)) + ("-X!" if k == 5 else ""))
    return out


def _reference(src: list, tgt: list, s: np.ndarray, t: np.ndarray, weights: dict, frac_w: float, b: float):
    """Per-pair loop over word sets: what TokenDiffModel.score must equal."""
    out = []
    for i, j in zip(s.tolist(), t.tolist(), strict=True):
        a, c = set(normalize(src[i]).split()), set(normalize(tgt[j]).split())
        diff, shared = a ^ c, a & c
        ud, uD, uS = (weights.get(f"{k}:?", 0) for k in "dDS")
        z = sum((ud if any(ch.isdigit() for ch in w) else weights.get(f"d:{w}", ud)) + weights.get(f"D:{shape(w)}", uD)
                for w in diff)
        z += sum(weights.get(f"S:{shape(w)}", uS) for w in shared)
        union = len(a | c)
        out.append(z + frac_w * (len(diff) / union if union else 0.0) + b)
    return np.array(out)


def test_vectorised_score_equals_a_per_pair_loop():
    rng = np.random.default_rng(0)
    src, tgt = _titles(rng, 40), _titles(rng, 30)
    s, t = rng.integers(0, 40, 500), rng.integers(0, 30, 500)
    names = [f"{k}:{x}" for k in "dDS" for x in {*(w for w in WORDS), *(shape(w) for w in WORDS), "?"}]
    weights = {x: float(rng.normal()) for x in names if rng.random() < 0.8}
    model = TokenDiffModel(weights, 0.7, -0.3)
    np.testing.assert_allclose(model.score(src, tgt, s, t), _reference(src, tgt, s, t, weights, 0.7, -0.3), atol=1e-9)
    # chunked: the same values when the pairs are split into many chunks
    import pmatch_duckdb.token_diff as td

    old = td._CHUNK
    td._CHUNK = 7
    try:
        np.testing.assert_allclose(model.score(src, tgt, s, t), _reference(src, tgt, s, t, weights, 0.7, -0.3),
                                   atol=1e-9)
    finally:
        td._CHUNK = old
    assert model.score(src, tgt, np.zeros(0, int), np.zeros(0, int)).shape == (0,)


def test_shape_folds_digit_runs():
    assert shape("ml140") == "ml0" and shape("r8000") == "r0" and shape("5s") == "0s" and shape("pro") == "pro"


def _editions(rng: np.random.Generator, n: int) -> tuple[list[str], list[str], np.ndarray]:
    """Pairs of one model number: matches differ by a shop's filler word, non-matches by an edition word."""
    a, b, y = [], [], []
    for _ in range(n):
        model = f"{rng.choice(['zx', 'kd', 'mt'])}{int(rng.integers(100, 99999))}"
        base = f"{rng.choice(['nordwind', 'lumora', 'ostrel'])} {model} {rng.choice(['tv', 'camera', 'phone'])}"
        if rng.random() < 0.5:
            a.append(base)
            b.append(f"{base} {rng.choice(['new', 'sale', 'free shipping', 'best price'])}")
            y.append(1)
        else:
            a.append(base)
            b.append(f"{base} {rng.choice(['pro', 'mini', 'plus', 'max'])}")
            y.append(0)
    return a, b, np.array(y)


def test_it_learns_which_differences_mean_another_product():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(1)
    a, b, y = _editions(rng, 400)
    at = np.arange(len(a))
    model = fit_token_diff(pair_words(a, b, at, at), y)
    assert model is not None
    assert model.weights["d:pro"] < 0 < model.weights["d:sale"]
    # unseen model numbers: every match outscores every non-match
    ta, tb, ty = _editions(np.random.default_rng(2), 200)
    tat = np.arange(len(ta))
    z = model.score(ta, tb, tat, tat)
    assert z[ty == 1].min() > z[ty == 0].max()
    # model numbers get no weight of their own (words with digits count in the d:? bucket, by shape in D:)
    assert not any(k.startswith("d:") and any(c.isdigit() for c in k) for k in model.weights)
    assert {"d:?", "D:?", "S:?"} <= set(model.weights) and "S:zx0" in model.weights


def test_too_few_labels_give_no_model_and_out_of_fold_scores_come_from_the_other_fold():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(3)
    a, b, y = _editions(rng, 400)
    at = np.arange(len(a))
    pw = pair_words(a, b, at, at)
    few = np.flatnonzero(y == 1)[:5]
    assert fit_token_diff(take_pairs(pw, np.r_[few, np.flatnonzero(y == 0)]), np.r_[y[few], y[y == 0]]) is None
    folds = np.arange(len(y)) % 2
    model, oof = fit_out_of_fold(pw, y, folds)
    assert model is not None and oof is not None
    other = fit_token_diff(take_pairs(pw, np.flatnonzero(folds == 1)), y[folds == 1])
    np.testing.assert_allclose(oof[folds == 0], other.score_words(take_pairs(pw, np.flatnonzero(folds == 0))))
    # a fold without matches: no model at all (never a model fitted on one label)
    model, oof = fit_out_of_fold(pw, y, np.where(y == 1, 0, 1))
    assert model is None and oof is None


def test_decision_json_round_trip_and_a_missing_model_is_a_clear_error():
    model = TokenDiffModel({"d:pro": -2.5, "S:0": 0.25}, 1.5, 0.1)
    dm = DecisionModel(coef=np.ones(2), intercept=0.0, mean=np.zeros(2), scale=np.ones(2),
                       features=("fused", "token_diff"), token_diff=model)
    d = json.loads(json.dumps(dm.to_dict()))
    back = DecisionModel.from_dict(d)
    assert back.token_diff == model and back.features == ("fused", "token_diff")
    d.pop("token_diff")
    with pytest.raises(ValueError, match="token_diff"):
        DecisionModel.from_dict(d)
    # a decision model without the feature (an older matcher) needs no model
    old = DecisionModel(coef=np.ones(1), intercept=0.0, mean=np.zeros(1), scale=np.ones(1), features=("fused",))
    assert DecisionModel.from_dict(json.loads(json.dumps(old.to_dict()))).token_diff is None


def test_trained_matcher_uses_it_in_sql(tmp_path: Path, linked_home):
    """train_matcher learns it (out-of-fold for its training pairs), the bundle holds it, and match_products /
    score_pairs in SQL score with it; ``token_diff=False`` leaves it out."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    import pmatch_duckdb as pm
    from pmatch_duckdb.matchers import load_matcher
    from pmatch_duckdb.training import train_matcher

    thome = linked_home(tmp_path)
    rng = np.random.default_rng(5)
    catalog, feed, labels = [], [], []
    for i in range(160):
        model = f"{rng.choice(['zx', 'kd', 'mt'])}{int(rng.integers(100, 99999))}"
        base = f"{rng.choice(['nordwind', 'lumora', 'ostrel'])} {model} {rng.choice(['tv', 'camera', 'phone'])}"
        catalog += [(f"C{i}", base), (f"C{i}p", f"{base} pro")]
        feed.append((f"S{i}", f"{base} {rng.choice(['new', 'sale', 'best price'])}"))
        labels += [(f"S{i}", f"C{i}", 1), (f"S{i}", f"C{i}p", 0)]
    con = pm.connect(tmp_path / "shop.duckdb", home=thome)
    for name, rows in (("catalog", catalog), ("feed", feed)):
        con.execute(f"CREATE TABLE {name} (id VARCHAR, title VARCHAR)")
        con.executemany(f"INSERT INTO {name} VALUES (?, ?)", rows)
    con.execute("CREATE TABLE labels (left_id VARCHAR, right_id VARCHAR, label INTEGER)")
    con.executemany("INSERT INTO labels VALUES (?, ?, ?)", labels)
    lines: list[str] = []
    kw = dict(pairs="labels", seed=0, epochs=10, pair_model=False, progress=False, log=lines.append)
    r = train_matcher(con, ["feed", "catalog"], name="words", **kw)
    said = next(x for x in lines if x.startswith("word-difference model:"))
    assert "another product: pro" in said, said  # the log names what it learnt
    m = load_matcher("words", r.version, thome)
    assert m.decision.features[-1] == "token_diff" and m.decision.token_diff is not None
    assert m.decision.token_diff.weights["d:pro"] < 0
    man = json.loads((r.path / "manifest.json").read_text())
    assert man["training"]["token_diff"]["weights"] == len(m.decision.token_diff.weights)
    got = con.execute("SELECT source_id, target_id, score FROM match_products('feed', 'catalog', k := 2) "
                      "ORDER BY source_id, rank").fetchall()
    assert len(got) == 2 * len(feed)
    best = {s: t for s, t, _ in con.execute(
        "SELECT source_id, target_id, score FROM match_products('feed', 'catalog', k := 1)").fetchall()}
    assert sum(best[f"S{i}"] == f"C{i}" for i in range(len(feed))) >= 0.95 * len(feed)
    con.execute("CREATE VIEW given AS SELECT left_id AS source_id, right_id AS target_id FROM labels")
    sp = con.execute("SELECT source_id, target_id, score FROM score_pairs('feed', 'catalog', 'given')").fetchall()
    assert len(sp) == len(labels)
    r2 = train_matcher(con, ["feed", "catalog"], name="nowords", token_diff=False, activate=False, **kw)
    m2 = load_matcher("nowords", r2.version, thome)
    assert "token_diff" not in m2.decision.features and m2.decision.token_diff is None
    con.close()
