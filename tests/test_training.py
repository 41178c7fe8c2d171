"""Training: the trained projection beats zero-shot on held-out groups; ONNX = torch; thresholds; versions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import pmatch_duckdb as pm
from pmatch_duckdb.cli import main as cli
from pmatch_duckdb.decision import choose_thresholds, isotonic, train_decision, wilson_lower

torch = pytest.importorskip("torch")
from pmatch_duckdb.matchers import active_version, versions  # noqa: E402
from pmatch_duckdb.training import train_matcher  # noqa: E402
from pmatch_duckdb.training.projection import export_projection_onnx, train_projection  # noqa: E402

BRANDS = ["Nordwind", "Lumora", "Ostrel", "Vexora", "Halvik", "Zentrix", "Marwick", "Kestrelle"]
KINDS = ["shirt", "dress", "jacket", "trousers", "sneaker", "cap", "scarf", "hoodie"]
COLOURS = ["red", "blue", "green", "black", "white", "yellow", "orange", "pink", "grey", "beige"]
MATERIALS = ["cotton", "wool", "linen", "denim", "leather"]


def _supplier_word(w: str) -> str:
    """The supplier writes every descriptive word in its own code (a new, unseen 'language')."""
    return w[::-1] + "o"


def _offers(n: int, seed: int):
    """Catalog titles in English; feed titles keep the brand but code every other word (zero-shot is lost)."""
    rng = np.random.default_rng(seed)
    combos = sorted({(b, k, c, m) for b, k, c, m in zip(rng.choice(BRANDS, 4 * n), rng.choice(KINDS, 4 * n),
                                                          rng.choice(COLOURS, 4 * n), rng.choice(MATERIALS, 4 * n),
                                                          strict=True)})[:n]
    catalog = [(f"C{i:04d}", f"{b} {k} {c} {m}", b, float(rng.integers(10, 200))) for i, (b, k, c, m) in enumerate(combos)]
    feed = [(f"S{i:04d}", f"{b} {_supplier_word(k)} {_supplier_word(c)} {_supplier_word(m)}", None, None)
            for i, (b, k, c, m) in enumerate(combos)]
    truth = [(f"S{i:04d}", f"C{i:04d}") for i in range(len(combos))]
    return catalog, feed, truth


@pytest.fixture(scope="module")
def text_catalog(tmp_path_factory, linked_home):
    """A text-only catalog and feed with known truth, in a fresh pmatch home that links the default encoders."""
    root = tmp_path_factory.mktemp("train")
    thome = linked_home(root)
    catalog, feed, truth = _offers(300, seed=3)
    con = pm.connect(root / "shop.duckdb", home=thome, image_roots=[root])
    for name, rows in (("catalog", catalog), ("feed", feed)):
        con.execute(f"CREATE TABLE {name} (id VARCHAR, title VARCHAR, brand VARCHAR, price DOUBLE)")
        con.executemany(f"INSERT INTO {name} VALUES (?, ?, ?, ?)", rows)
    con.execute("CREATE TABLE labels (left_id VARCHAR, right_id VARCHAR)")
    con.executemany("INSERT INTO labels VALUES (?, ?)", truth)
    yield con, thome, truth
    con.close()


def test_trained_projection_beats_zero_shot_on_held_out_groups(text_catalog):
    con, thome, _ = text_catalog
    r = train_matcher(con, ["feed", "catalog"], pairs="labels", name="t1", valid_fraction=0.3, seed=1,
                      progress=False, log=lambda _: None)
    v = r.metrics["valid"]
    assert v["vector_recall@1_trained"] >= v["vector_recall@1_zero_shot"] + 0.10, v
    assert v["best_f1"] > 0.8, v
    assert active_version("t1", thome) == r.version


def test_training_is_deterministic(text_catalog):
    con, _, _ = text_catalog
    a = train_matcher(con, ["feed", "catalog"], pairs="labels", name="det", seed=5, epochs=20, activate=False,
                      progress=False, log=lambda _: None)
    b = train_matcher(con, ["feed", "catalog"], pairs="labels", name="det", seed=5, epochs=20, activate=False,
                      progress=False, log=lambda _: None)
    assert a.history == b.history
    assert json.dumps(a.metrics["valid"], sort_keys=True) == json.dumps(b.metrics["valid"], sort_keys=True)


def test_onnx_projection_matches_torch(tmp_path: Path):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 40)).astype(np.float32)
    pos = np.array([(i, i + 150) for i in range(150)])
    groups = np.r_[np.arange(150), np.arange(150)]
    w, temp, hist = train_projection(x, pos, groups, dim=16, epochs=5, batch_size=64, seed=0)
    assert hist[-1] < hist[0] and 0 < temp < 1
    export_projection_onnx(w, tmp_path / "p.onnx")
    got = ort.InferenceSession(str(tmp_path / "p.onnx")).run(["embedding"], {"features": x})[0]
    ref = torch.nn.functional.normalize(torch.from_numpy(x) @ torch.from_numpy(w).T, dim=-1).numpy()
    assert got.shape == (300, 16)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_thresholds_hit_target_precision_on_calibration_set():
    rng = np.random.default_rng(0)

    def sample(n):
        y = rng.random(n) < 0.3
        x = np.where(y, rng.normal(2.0, 1.0, n), rng.normal(-1.0, 1.0, n))[:, None]
        return np.hstack([x, rng.normal(size=(n, 2))]).astype(np.float32), y.astype(np.float64)

    xtr, ytr = sample(20000)
    xva, yva = sample(20000)
    xte, yte = sample(40000)
    model = train_decision(xtr, ytr, xva, yva, target_precision=0.99, max_recall_loss=0.02)
    s = model.score(xte)
    acc = s >= model.accept_threshold
    assert acc.sum() > 100
    assert yte[acc].mean() >= 0.985  # certified 0.99 on validation; held-out sampling noise allowed
    lost = yte[s < model.review_threshold].sum() / yte.sum()
    assert lost <= 0.04
    # calibration: the score reads as a probability
    for lo, hi in ((0.1, 0.3), (0.4, 0.6), (0.7, 0.9)):
        sel = (s >= lo) & (s < hi)
        if sel.sum() > 200:
            assert lo - 0.07 <= yte[sel].mean() <= hi + 0.07


def test_wilson_bound_and_uncertifiable_target():
    assert wilson_lower(np.array([100.0]), np.array([100.0]))[0] < 0.99  # 100/100 cannot certify 0.99
    s = np.linspace(0, 1, 200)
    y = (s > 0.5).astype(float)
    accept, reject, info = choose_thresholds(s, y, target_precision=0.99)
    assert np.isinf(accept) and info["accept_recall"] == 0.0  # 100 matches are too few
    accept, reject, _ = choose_thresholds(s, y, target_precision=0.95)
    sel = s >= accept
    assert wilson_lower(y[sel].sum(), sel.sum()) >= 0.95 > wilson_lower(y[s >= accept - 0.02].sum(), (s >= accept - 0.02).sum())
    assert reject <= accept


def test_isotonic_is_monotone():
    rng = np.random.default_rng(1)
    x = rng.random(500)
    y = (rng.random(500) < x).astype(float)
    bx, by = isotonic(x, y)
    assert np.all(np.diff(by) >= -1e-12) and np.all(np.diff(bx) >= 0)


def test_version_switch_rollback_and_reprojection(text_catalog):
    con, thome, _ = text_catalog
    runner = CliRunner()
    v_a = train_matcher(con, ["feed", "catalog"], pairs="labels", name="sw", dim=32, epochs=10, seed=1,
                        progress=False, log=lambda _: None).version
    v_b = train_matcher(con, ["feed", "catalog"], pairs="labels", name="sw", dim=64, epochs=10, seed=2,
                        progress=False, log=lambda _: None).version
    assert versions("sw", thome) == [v_a, v_b] and active_version("sw", thome) == v_b
    c2 = pm.connect(home=thome, index_dir=Path(str(con.execute("SELECT 1").fetchall() and thome)) / "idx",
                    matcher="sw")
    c2.execute("CREATE TABLE cat AS SELECT * FROM (VALUES ('1', 'Nordwind tee XR-4410 red'), "
               "('2', 'Lumora cap QT-1200 blue')) t(id, title)")
    st = c2.execute("SELECT total, reprojected FROM pm_index('cat')").fetchall()[0]
    assert st == (2, 0)
    assert c2.execute("SELECT len(pm_embed_offer('x'))").fetchall()[0][0] == 64
    res = runner.invoke(cli, ["models", "activate", "sw", v_a, "--home", str(thome)])
    assert res.exit_code == 0, res.output
    st = c2.execute("SELECT inserted, updated, reprojected FROM pm_index('cat')").fetchall()[0]
    assert st == (0, 0, 2)  # vectors re-projected from the cached per-modality vectors, nothing re-embedded
    assert c2.execute("SELECT len(pm_embed_offer('x'))").fetchall()[0][0] == 32
    rows = c2.execute("SELECT count(*) FROM match_products('cat', 'cat', k := 1)").fetchall()
    assert rows[0][0] >= 1
    res = runner.invoke(cli, ["models", "rollback", "sw", "--home", str(thome)])
    assert res.exit_code == 0 and v_b in res.output
    assert active_version("sw", thome) == v_b
    res = runner.invoke(cli, ["models", "list", "--home", str(thome)])
    assert f"matcher sw {v_b} (active)" in res.output and "review ≥" in res.output
    res = runner.invoke(cli, ["models", "activate", "sw", "v99", "--home", str(thome)])
    assert res.exit_code != 0 and "no version" in res.output
    c2.close()


def test_closed_world_with_explicit_validation_pairs(text_catalog):
    con, _, truth = text_catalog
    con.execute("CREATE OR REPLACE TABLE labels_train AS SELECT * FROM labels WHERE right_id < 'C0200'")
    con.execute("CREATE OR REPLACE TABLE labels_valid AS SELECT * FROM labels WHERE right_id >= 'C0200'")
    r = train_matcher(con, ["feed", "catalog"], pairs="labels_train", valid_pairs="labels_valid", name="vp",
                      epochs=30, activate=False, progress=False, log=lambda _: None)
    v = r.metrics["valid"]
    assert v["true_pairs"] > 50 and v["vector_recall@1_trained"] > v["vector_recall@1_zero_shot"]


def _nan_sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.3).astype(np.float64)
    x = np.c_[np.where(y > 0, rng.normal(2.0, 1.0, n), rng.normal(-1.0, 1.0, n)), rng.normal(size=(n, 2)),
              (rng.random(n) < 0.5) & (y > 0)]
    x[rng.random(n) < 0.1, 1] = np.nan  # missing values follow each node's learnt branch
    return x, y


def test_gbdt_runs_in_numpy_like_sklearn_and_survives_json():
    pytest.importorskip("sklearn")
    from sklearn.ensemble import HistGradientBoostingClassifier

    from pmatch_duckdb.decision import GBDT_PARAMS, DecisionModel, fit_gbdt

    rng = np.random.default_rng(0)
    x, y = _nan_sample(rng, 3000)
    base, trees = fit_gbdt(x, y, seed=0)
    model = DecisionModel(kind="gbdt", intercept=base, trees=trees)
    ref = HistGradientBoostingClassifier(**GBDT_PARAMS, early_stopping=False, random_state=0).fit(x, y.astype(int))
    xt, _ = _nan_sample(rng, 1000)
    np.testing.assert_allclose(model.raw(xt), ref.predict_proba(xt)[:, 1], rtol=1e-9, atol=1e-12)
    again = DecisionModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again.kind == "gbdt" and len(again.trees) == len(trees)
    np.testing.assert_allclose(again.raw(xt), model.raw(xt), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["logistic", "gbdt", "auto"])
def test_out_of_fold_scores_join_the_threshold_data(kind):
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(2)
    xtr, ytr = _nan_sample(rng, 6000)
    xva, yva = _nan_sample(rng, 600)  # alone: ~180 matches, too few to certify 0.99 at 95 % confidence
    folds = rng.integers(0, 2, len(ytr))
    alone = train_decision(np.nan_to_num(xtr), ytr, np.nan_to_num(xva), yva, kind="logistic")
    assert alone.info["threshold_pairs"] == {"validation": 600, "out_of_fold": 0}
    def data(x):  # NaN only for the trees (pair features never hold NaN; the trees must handle it anyway)
        return x if kind == "gbdt" else np.nan_to_num(x)

    model = train_decision(data(xtr), ytr, data(xva), yva, kind=kind, folds=folds)
    assert model.info["threshold_pairs"] == {"validation": 600, "out_of_fold": 6000}
    assert model.kind in ("logistic", "gbdt") and (kind == "auto" or model.kind == kind)
    if kind == "auto":
        ap = model.info["held_out_average_precision"]
        assert set(ap) == {"logistic", "gbdt"} and model.kind == max(ap, key=ap.get)
    assert np.isfinite(model.accept_threshold)
    xte, yte = _nan_sample(rng, 20000)
    s = model.score(data(xte))
    acc = s >= model.accept_threshold
    assert acc.sum() > 500 and yte[acc].mean() >= 0.985


def test_train_matcher_cross_fits_and_records_the_decision_model(text_catalog):
    pytest.importorskip("sklearn")
    con, thome, _ = text_catalog
    for kind in ("gbdt", "logistic"):
        r = train_matcher(con, ["feed", "catalog"], pairs="labels", name=f"cf-{kind}", seed=2, epochs=20,
                          decision_model=kind, activate=False, progress=False, log=lambda _: None)
        man = json.loads((r.path / "manifest.json").read_text())
        assert man["training"]["cross_fit"] is True and man["training"]["decision_model"] == kind
        dec = json.loads((r.path / "decision.json").read_text())
        assert dec["kind"] == kind and dec["info"]["threshold_pairs"]["out_of_fold"] > 0
        assert r.metrics["valid"]["best_f1"] > 0.8, r.metrics["valid"]
    r = train_matcher(con, ["feed", "catalog"], pairs="labels", name="no-cf", seed=2, epochs=20, cross_fit=False,
                      decision_model="logistic", activate=False, progress=False, log=lambda _: None)
    man = json.loads((r.path / "manifest.json").read_text())
    assert man["training"]["cross_fit"] is False
    assert json.loads((r.path / "decision.json").read_text())["info"]["threshold_pairs"]["out_of_fold"] == 0


def test_mined_hard_negatives(text_catalog):
    from pmatch_duckdb.fusion import FusionConfig
    from pmatch_duckdb.matching import TargetView
    from pmatch_duckdb.training.train import _mine_negatives

    con, thome, truth = text_catalog
    r = train_matcher(con, ["feed", "catalog"], pairs="labels", name="mined", seed=2, epochs=20, mine_negatives=3,
                      activate=False, progress=False, log=lambda _: None)
    man = json.loads((r.path / "manifest.json").read_text())
    assert 0 < man["training"]["mined_negatives"] <= 3 * len(truth)
    assert r.metrics["valid"]["best_f1"] > 0.8, r.metrics["valid"]
    # the miner never returns a pair of one label component, and at most k per anchor
    from pmatch_duckdb.matching import OfferVectors

    rng = np.random.default_rng(0)
    n = 40
    vec = rng.normal(size=(n, 8)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    rows = OfferVectors(ids=[f"o{i}" for i in range(n)], hashes=[""] * n, text=vec, text_ok=np.ones(n, bool),
                        image=np.zeros((n, 4), np.float32), image_ok=np.zeros(n, bool), fused=vec,
                        lexical=[f"item {i % 7}" for i in range(n)], idents=[[] for _ in range(n)],
                        price=np.full(n, np.nan), titles=[f"item {i % 7}" for i in range(n)], brands=[None] * n,
                        descriptions=[None] * n, desc_idents=[[] for _ in range(n)])
    side = [0] * 20 + [1] * 20
    tpos = np.array([(i, 20 + i) for i in range(15)])
    comp = np.arange(n)
    comp[20:35] = np.arange(15)
    tgt_mask = np.array(side) == 1
    view = TargetView.from_vectors(rows.take(np.flatnonzero(tgt_mask)), FusionConfig())
    mined = _mine_negatives(rows, view, tgt_mask, comp, {35}, tpos, 2)
    assert len(mined) and all(comp[a] != comp[b] and comp[b] != 35 for a, b in mined)
    assert set(mined[:, 0]) <= set(range(15)) and set(mined[:, 1]) <= set(range(20, 40))
    assert np.bincount(mined[:, 0]).max() <= 2


def test_summarize_by_hand():
    from pmatch_duckdb.evaluation import summarize

    s = np.array([0.9, 0.8, 0.7, 0.6])
    y = np.array([1.0, 0.0, 1.0, 0.0])
    m = summarize(s, y, 3, ["accept", "review", "review", "reject"])
    # cut at 0.7: 2 of 3 pairs right, 2 of 3 matches found → F1 2/3
    assert m["best_f1"] == pytest.approx(2 / 3) and m["best_f1_threshold"] == pytest.approx(0.7)
    assert m["recall_at_precision_0.99"] == pytest.approx(1 / 3) == m["recall_at_precision_0.95"]
    assert (m["accept_precision"], m["accept_recall"]) == (1.0, pytest.approx(1 / 3))
    assert m["accept_or_review_precision"] == pytest.approx(2 / 3) and m["review_band"] == 2


def test_evaluate_reports_metrics_and_writes_plots(text_catalog, tmp_path: Path):
    from pmatch_duckdb.evaluation import evaluate

    con, thome, truth = text_catalog
    out = evaluate(con, "feed", "catalog", "labels", k=5, out_dir=tmp_path / "report")
    for key in ("recall@1", "recall@5", "best_f1", "recall_at_precision_0.99", "recall_at_precision_0.95",
                "accept_precision", "accept_recall", "review_band", "mutual_best"):
        assert key in out, key
    # recall@1 recomputed from match_products itself
    top = dict(con.execute("SELECT source_id, target_id FROM match_products('feed', 'catalog', k := 5) "
                           "WHERE rank = 1").fetchall())
    assert out["recall@1"] == pytest.approx(np.mean([top.get(a) == b for a, b in truth]))
    assert 0.0 <= out["recall@1"] <= out["recall@5"] <= 1.0
    files = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"pr_curve.png", "thresholds.png", "metrics.json", "report.html"} <= files
    for png in ("pr_curve.png", "thresholds.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["recall@1"] == pytest.approx(out["recall@1"])
    assert '<img src="pr_curve.png"' in (tmp_path / "report" / "report.html").read_text()
