"""The ``known`` pair stage end to end: no transformer, whether a pair's two offers resolve to the same labelled
product by stage 1's own fused vectors. Trained inside ``train_matcher`` on a generated catalog whose products are
named two ways (catalog offers with disjoint words, bridged by labelled offers), scored through ``score_pairs``,
the bundle's files and manifest, the fallback from a transformer the gate drops, and the stacking folds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from named_two_ways import N_SEEN, create_tables

import pmatch_duckdb as pm
from pmatch_duckdb.decision import average_precision
from pmatch_duckdb.matchers import activate, deactivate, load_matcher

pytest.importorskip("torch")
from pmatch_duckdb.training.pair_model import PairOptions, PairTrainConfig  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def named_two_ways(tmp_path_factory, linked_home):
    root = tmp_path_factory.mktemp("known")
    thome = linked_home(root)
    con = pm.connect(root / "shop.duckdb", home=thome, image_roots=[root])
    create_tables(con)
    from pmatch_duckdb.training import train_matcher

    opts = PairOptions(PairTrainConfig(kind="known", threads=1), top_m=2, hard_negatives=0, min_positives=50,
                       min_gain=None)
    log: list[str] = []
    res = train_matcher(con, ["feed", "catalog"], pairs="labels", valid_pairs="valid", name="known",
                        pair_options=opts, activate=False, progress=False, log=log.append)
    yield con, thome, res, log
    con.close()


def _score_pairs(con, thome, **settings) -> list[tuple]:
    activate("known", "v1", thome)
    pm.install(con, home=thome, image_roots=[thome], matcher="known", **settings)
    try:
        return con.execute("SELECT source_id, target_id, score, scored_by "
                           "FROM score_pairs('feed_test', 'catalog', 'test_pairs')").fetchall()
    finally:
        deactivate("known", thome)


def test_the_known_kind_trains_in_seconds_and_its_bundle_holds_no_transformer(named_two_ways):
    con, thome, res, log = named_two_ways
    from pmatch_duckdb.pair_scorer import STACKED_FEATURES_KNOWN_ONLY, KnownProductsScorer

    assert not any("fine-tuning" in m for m in log), log
    kept = [m for m in log if m.startswith("pair model (known): known products: ")]
    assert len(kept) == 1 and kept[0].split(": ")[2].startswith(
        f"{3 * N_SEEN} labelled offers in {N_SEEN} match groups, by stage 1's vectors"), kept
    m = load_matcher("known", "v1", thome)
    assert isinstance(m.pair, KnownProductsScorer) and m.pair.top_m == 2
    files = m.bundle.manifest["files"]
    assert "pair_known_products.json" in files and "pair_decision.json" in files
    assert not any(f in files for f in ("pair_model.onnx", "pair_tokenizer.json"))
    man = m.bundle.manifest["pair_model"]
    assert man["kind"] == "known" and man["known_products"]["space"] == "stage 1"
    # the validation offers are not among the known ones (V… offers are in validation pairs only)
    assert man["known_products"]["offers"] == len(m.pair.known.groups) == 3 * N_SEEN
    assert tuple(m.pair_decision.features) == STACKED_FEATURES_KNOWN_ONLY and len(m.pair_decision.coef) == 2
    assert m.pair_decision.coef[1] > 0  # the stacked model trusts "same known product"
    assert man["valid"]["average_precision_known_products"] > 0.8
    assert man["valid"]["average_precision_stacked_oof"] > 0.8  # out-of-fold scores exist (five folds)
    assert "valid_pair_model" in res.metrics


def test_known_products_say_same_product_for_labelled_products_only(named_two_ways):
    """The feature, computed independently from the bundle's known offers and the offers' fused vectors (SQL
    ``pm_embed_offer`` under the matcher), separates each test offer's product from another product where the
    products were labelled, and says nothing where they were not; ``score_pairs`` re-reads every given pair."""
    con, thome, _, _ = named_two_ways
    from pmatch_duckdb.pair_scorer import KnownProducts

    m = load_matcher("known", "v1", thome)
    import json

    known = KnownProducts.from_json(json.loads(m.bundle.file("pair_known_products.json").read_text()))
    activate("known", "v1", thome)
    pm.install(con, home=thome, image_roots=[thome], matcher="known")
    try:
        vec = dict(con.execute("SELECT id, pm_embed_offer(title) FROM (SELECT * FROM feed_test UNION ALL "
                               "SELECT * FROM catalog)").fetchall())
    finally:
        deactivate("known", thome)
    pairs = con.execute("SELECT source_id, target_id FROM test_pairs").fetchall()
    same = known.same_product(np.array([vec[a] for a, _ in pairs]), np.array([vec[b] for _, b in pairs]))
    y = np.array([i % 2 == 0 for i in range(len(pairs))], dtype=np.float64)
    seen = np.arange(len(pairs)) < 2 * N_SEEN
    assert average_precision(same[seen], y[seen]) > 0.9
    assert same[seen & (y == 1)].mean() - same[~seen & (y == 1)].mean() > 0.5  # never labelled: no vote
    np.testing.assert_allclose(m.pair.vector_features(np.array([vec[a] for a, _ in pairs]),
                                                      np.array([vec[b] for _, b in pairs]))[:, 0],
                               np.log(np.clip(same, 1e-4, 1 - 1e-4) / (1 - np.clip(same, 1e-4, 1 - 1e-4))),
                               atol=1e-3)
    on = _score_pairs(con, thome)
    off = _score_pairs(con, thome, pair_top_m=0)
    assert {r[3] for r in on} == {"pair_scorer"} and {r[3] for r in off} == {"stage1"}
    assert [r[:2] for r in on] == pairs and all(r[2] is not None for r in on)

    def acc(rows: list[tuple], part: np.ndarray) -> float:
        s = np.array([r[2] for r in rows])
        return float(np.mean([(s[i] > s[i + 1]) + 0.5 * (s[i] == s[i + 1]) for i in np.flatnonzero(part)[::2]]))

    assert acc(on, seen) >= 0.95 and acc(on, seen) >= acc(off, seen) - 0.02, (acc(on, seen), acc(off, seen))


def test_a_transformer_the_gate_drops_falls_back_to_known_products(named_two_ways, monkeypatch):
    """A transformer scorer the gate drops is replaced by the known kind where that passes the same gate (here the
    gate is made to drop every transformer and pass anything else: stage 1 is perfect on these validation pairs,
    so no real gain is possible); with ``known_products`` off nothing is tried and stage 1 stays alone. (Where the
    known kind does not pass either: test_pair_scorer_e2e's gated test.)"""
    con, thome, _, _ = named_two_ways
    from pmatch_duckdb.training import pair_model, train_matcher

    real = pair_model._Gate.stack

    def transformers_fail(self, feats, out_dir, alone, t0, known_only=False):  # noqa: ANN001, ANN202
        if known_only:
            return real(self, feats, out_dir, alone, t0, known_only)
        self.log("pair model dropped (by the test)")  # the real gate drops it: no gain is enough
        return real(dataclasses.replace(self, min_gain=float("inf")), feats, out_dir, alone, t0, known_only)

    monkeypatch.setattr(pair_model._Gate, "stack", transformers_fail)
    tiny = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 64}
    base = PairOptions(PairTrainConfig(max_len=32, epochs=1, threads=1, tiny_bert=tiny, patience=None),
                       top_m=2, hard_negatives=0, min_positives=50, min_gain=-1.0)
    for fallback, floor in ((True, None), (False, None), (True, 10_000)):
        # floor: the known kind's MIN_MATCHES, with no min_positives given (the transformer's floor then its own)
        opts = dataclasses.replace(base, train=dataclasses.replace(base.train, known_products=fallback),
                                   min_positives=None if floor else base.min_positives)
        if floor:
            monkeypatch.setattr(pair_model, "MIN_MATCHES", {"cross": 50, "known": floor})
            assert opts.matches_needed() == 50 and opts.matches_needed("known") == floor
        log: list[str] = []
        name = f"fb{fallback}{floor or ''}"
        out = train_matcher(con, ["feed", "catalog"], pairs="labels", valid_pairs="valid", name=name,
                            pair_options=opts, activate=False, progress=False, log=log.append)
        assert "pair model dropped (by the test)" in log and any("fine-tuning on" in m for m in log), log
        tried = [m for m in log if "trying known products by stage 1's vectors instead" in m]
        assert len(tried) == (1 if fallback and not floor else 0), log
        if floor:  # too few matches for known products: said, and stage 1 stays alone
            assert any(m.startswith("pair model: known products not tried instead: ") and m.endswith(
                f"training matches (they need ≥ {floor})") for m in log), log
            fallback = False
        m = load_matcher(name, "v1", thome)
        files = m.bundle.manifest["files"]
        assert "pair_model.onnx" not in files and "pair_tokenizer.json" not in files  # the transformer is gone
        if fallback:
            man = m.bundle.manifest["pair_model"]
            assert man["kind"] == "known" and man["instead_of"] == "cross"
            assert out.metrics["valid_pair_model"]["kind"] == "known"  # what `pmatch train` prints
            assert out.metrics["valid_pair_model"]["instead_of"] == "cross"
            assert m.pair is not None and m.pair.known is not None and "pair_known_products.json" in files
            from click.testing import CliRunner

            from pmatch_duckdb.cli import main as cli

            listed = CliRunner().invoke(cli, ["models", "list", "--home", str(thome)]).output
            line = next(ln for ln in listed.splitlines() if ln.startswith("matcher fbTrue v1"))
            assert "pair scorer known (top 2, instead of cross)" in line, listed  # what pmatch models list says
        else:
            assert "pair model: the matcher keeps stage 1 only" in log and m.pair is None
            assert not any(f.startswith("pair_") for f in files) and "valid_pair_model" not in out.metrics


def test_without_validation_pairs_the_known_kind_is_not_a_fallback_and_asked_for_it_warns(named_two_ways):
    """No ``valid_pairs``: validation holds out whole label groups, so no validation pair is of a known product. The
    known kind asked for is still fitted, with a warning saying why it cannot be judged and what to give instead."""
    con, thome, _, _ = named_two_ways
    from pmatch_duckdb.training import train_matcher

    log: list[str] = []
    train_matcher(con, ["feed", "catalog"], pairs="labels", name="heldout",
                  pair_options=PairOptions(PairTrainConfig(kind="known", threads=1), top_m=2, hard_negatives=0,
                                           min_positives=20, min_gain=None),
                  activate=False, progress=False, log=log.append)
    warned = [m for m in log if m.startswith("pair model (known): warning: the validation pairs are of label groups "
                                             "held out from training")]
    assert len(warned) == 1 and "--valid-pairs" in warned[0] and "--valid-split offers" in warned[0], log
    assert any(m.startswith("pair model (known): known products: ") for m in log), log


def test_stacking_folds_spread_over_components_that_share_a_residue():
    """Component labels (smallest member) can all be ≡ 0 mod 5 (five offers per product in a row): the stacked
    model's five folds are still five, so it gets out-of-fold scores to be judged and calibrated on."""
    from pmatch_duckdb.training.pair_model import PairSet, _Gate

    rng = np.random.default_rng(0)
    n = 200
    comp = np.repeat(np.arange(0, 5 * n, 5), 5)  # offer i's component: 5 * (i // 5)
    src = np.arange(0, 5 * n, 5)  # one validation pair per component
    y = (rng.random(n) < 0.5).astype(np.float64)
    raw = np.clip(0.5 + 0.3 * (y - 0.5) + 0.2 * rng.standard_normal(n), 0.01, 0.99)
    feats = (2 * y - 1 + rng.standard_normal(n))[:, None]
    gate = _Gate(PairSet(src, src + 1, y, raw), comp, average_precision(raw, y), 0.99, 0.02, None, None,
                 lambda m: None)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        entry = gate.stack(feats, Path(d), "", 0.0, known_only=True)
    assert entry is not None and entry["average_precision_stacked_oof"] > average_precision(raw, y)


def _verdicts(con) -> None:  # noqa: ANN001
    """``pm_labels`` as a review would have left it: the labelled feed's verdicts first, the validation offers'
    (new offers of the same products) last."""
    from pmatch_duckdb.review.labels import ensure_labels

    ensure_labels(con)
    if con.execute("SELECT count(*) FROM pm_labels").fetchall()[0][0]:
        return
    rows = con.execute("SELECT left_id, right_id, label FROM labels UNION ALL BY NAME "
                       "SELECT left_id, right_id, label FROM valid").fetchall()  # in insertion order
    con.executemany("INSERT INTO pm_labels (source_table, source_id, target_table, target_id, verdict) "
                    "VALUES ('feed', ?, 'catalog', ?, ?)", [(a, b, "match" if y else "no_match") for a, b, y in rows])


def test_verdicts_validate_on_new_offers_so_known_products_can_be_judged(named_two_ways):
    """Training on review verdicts (``pm_labels``): by default (``valid_split="auto"`` → ``"offers"``) the validation
    pairs are every verdict on a random sample of offers, and with ``"latest"`` on the offers reviewed last — new
    offers of products reviewed before, either way — so the known kind is judged (no held-out-groups warning) and
    kept where it helps (here on the latest offers, named in words their products' other offers lack); a group split
    cannot judge it."""
    con, thome, _, _ = named_two_ways
    from pmatch_duckdb.pair_scorer import KnownProductsScorer
    from pmatch_duckdb.training import train_matcher

    _verdicts(con)
    opts = PairOptions(PairTrainConfig(kind="known", threads=1), top_m=2, hard_negatives=0, min_positives=50,
                       min_gain=0.0)
    logs = {}
    for split in ("auto", "latest", "groups"):
        logs[split] = log = []
        train_matcher(con, ["feed", "catalog"], pairs="pm_labels", valid_split=split, name=f"verdicts_{split}",
                      pair_options=opts, activate=False, progress=False, log=log.append)
    for split, resolved, how in (("auto", "offers", "a random sample of offers"),
                                 ("latest", "latest", "the offers reviewed last")):
        said = [m for m in logs[split] if m.startswith("validation: the ")]
        assert len(said) == 1 and how in said[0], logs[split]
        assert 0.15 * 660 <= int(said[0].split()[2]) <= 0.25 * 660, said  # valid_fraction 0.2 of the 660 verdicts
        assert not any("held out from training" in m for m in logs[split]), logs[split]
        assert any(m.startswith("known products: validation average precision") for m in logs[split]), logs[split]
        m = load_matcher(f"verdicts_{split}", "v1", thome)
        assert m.bundle.manifest["training"]["valid_split"] == resolved
        if split == "auto":  # random offers: most validation pairs share words, stage 1 alone gets them right
            continue
        assert isinstance(m.pair, KnownProductsScorer), logs[split]  # kept: it beats stage 1 on the new offers
        known = m.bundle.manifest["pair_model"]
        assert known["valid"]["average_precision_known_products"] > 0.8
        # the memory keeps the training offers that are also in validation pairs (a labelled catalog offer is known
        # at match time): all the labelled offers but the new ones
        assert known["known_products"]["offers"] > 3 * N_SEEN
    assert any("held out from training" in m and "--valid-split" in m for m in logs["groups"]), logs["groups"]
    hashes = {load_matcher(f"verdicts_{s}", "v1", thome).bundle.manifest["training"]["data_sha256"] for s in logs}
    assert len(hashes) == 1  # the data hash covers every label given, whichever split validated
    # auto with fewer matches than the pair stage needs: whole label groups, as for other labels
    few = train_matcher(con, ["feed", "catalog"], pairs="pm_labels", name="verdicts_few", pair_options=dataclasses.replace(
        opts, min_positives=10_000), activate=False, progress=False, log=lambda m: None)
    assert load_matcher("verdicts_few", few.version, thome).bundle.manifest["training"]["valid_split"] == "groups"
    with pytest.raises(pm.PmatchError, match="valid_split='latest' holds out the offers reviewed last"):
        train_matcher(con, ["feed", "catalog"], pairs="labels", valid_split="latest", progress=False,
                      activate=False, log=lambda m: None)  # a plain pairs table has no order
    with pytest.raises(pm.PmatchError, match="give it or valid_pairs, not both"):
        train_matcher(con, ["feed", "catalog"], pairs="labels", valid_pairs="valid", valid_split="offers",
                      progress=False, activate=False, log=lambda m: None)
    with pytest.raises(pm.PmatchError, match="valid_split must be one of 'auto', 'groups', 'offers', 'latest'"):
        train_matcher(con, ["feed", "catalog"], pairs="pm_labels", valid_split="newest", progress=False,
                      activate=False, log=lambda m: None)


@pytest.mark.parametrize("by", ["offers", "latest"])
def test_new_offers_split_holds_out_every_pair_of_some_offers(by: str):
    """Each validation pair has an offer no training pair has; about the fraction asked for is held out; ``offers``
    does not depend on the labels' order, ``latest`` holds out the offers labelled last."""
    import random

    from pmatch_duckdb.training.train import _new_offers_split, _OfferKeys

    rng = np.random.default_rng(1)
    ids = [f"o{i}" for i in range(300)]
    keys = _OfferKeys(ids, [0] * len(ids), ["t"])
    labels = [(ids[a], ids[b], int(rng.random() < 0.3)) for a, b in rng.integers(0, 300, (800, 2)) if a != b]
    labels += [("o1", "not-an-offer", 1)]  # an offer not trained on: its pair is dropped later, the split is unmoved
    train, valid = _new_offers_split(labels, keys, 1, 0.2, by)
    assert sorted(train + valid) == sorted(labels) and 0.15 <= len(valid) / len(labels) <= 0.3
    in_train = {o for a, b, _ in train for o in (a, b)}
    assert all(a not in in_train or b not in in_train for a, b, _ in valid)
    assert train == [lab for lab in labels if lab in train]  # the labels' order kept
    shuffled = random.Random(0).sample(labels, len(labels))
    _, valid2 = _new_offers_split(shuffled, keys, 1, 0.2, by)
    if by == "offers":
        assert sorted(valid2) == sorted(valid)  # the same offers held out
        assert _new_offers_split(labels, keys, 1, 0.2, by, seed=1)[1] != valid  # another seed, other offers
    else:
        assert sorted(valid2) != sorted(valid)
        assert np.mean([labels.index(v) for v in valid]) > np.mean([labels.index(t) for t in train])
