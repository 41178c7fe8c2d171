"""Margin features (pair_features.MARGIN_FEATURES): each pair against the best of its source's other pairs."""

from __future__ import annotations

import numpy as np

from pmatch_duckdb.pair_features import MARGIN_FEATURES, PAIR_FEATURES, source_margins


def _reference(src: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per-pair loop: this value minus the largest value among the other pairs of the same source."""
    v = np.nan_to_num(v)
    out = np.zeros(len(v))
    for i in range(len(v)):
        others = [v[j] for j in range(len(v)) if j != i and src[j] == src[i]]
        out[i] = v[i] - max(others) if others else 0.0
    return out


def test_source_margins_equal_a_per_pair_loop():
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 7, 300):
        src = rng.integers(0, max(1, n // 3), n)
        v = np.round(rng.random(n), 1)  # rounded: ties at the top of a source
        v[rng.random(n) < 0.1] = np.nan
        np.testing.assert_allclose(source_margins(src, v), _reference(src, v))


def test_the_leader_gets_its_lead_and_the_others_their_deficit():
    # source 0: an exact identifier (1.0) beside a sibling (0.9); source 1: a tie; source 2: one pair
    got = source_margins(np.array([0, 0, 1, 1, 2]), np.array([1.0, 0.9, 0.5, 0.5, 0.7]))
    np.testing.assert_allclose(got, [0.1, -0.1, 0.0, 0.0, 0.0])


def test_margin_features_name_pair_features():
    assert set(MARGIN_FEATURES.values()) <= set(PAIR_FEATURES)
    assert not set(MARGIN_FEATURES) & set(PAIR_FEATURES)


def _shop(rng: np.random.Generator, n: int, tag: str) -> tuple[list, list, list, list]:
    """Two kinds of source, alike pair by pair: (A) the match's model number differs from the source's by a
    final letter (a shop's spelling) and no sibling is listed; (B) the catalog lists the exact model AND a
    sibling whose number differs by a final letter. B's sibling pair looks like A's match pair; only the
    comparison with the source's other candidates (the exact model number) tells them apart.
    → (feed, catalog, labels, probes)."""
    feed, catalog, labels, probes = [], [], [], []
    used: set[int] = set()
    for i in range(n):
        num = int(rng.integers(1000, 99999))
        while num in used:
            num = int(rng.integers(1000, 99999))
        used.add(num)
        brand, kind = rng.choice(["acme", "nordwind", "lumora", "ostrel"]), rng.choice(["speaker", "router", "drive"])
        src = f"{tag}S{i}"
        feed.append((src, f"{brand} kd{num}z {kind}"))
        if i % 2 == 0:  # A
            catalog.append((f"{tag}C{i}", f"{brand} kd{num}x {kind}"))
            probes.append(("A", src, f"{tag}C{i}"))
        else:  # B
            # the exact model reads less like the source than the sibling does: the sibling leads on the
            # vectors (rank 1, no gap), so rank and gap cannot tell it either
            catalog += [(f"{tag}C{i}", f"{kind} kd{num}z {brand} with extended warranty and carry bundle"),
                        (f"{tag}C{i}s", f"{brand} kd{num}x {kind}")]
            probes.append(("B", src, f"{tag}C{i}s"))
        labels.append((src, f"{tag}C{i}"))
    return feed, catalog, labels, probes


def test_margins_tell_a_sibling_from_a_match_that_look_alike(tmp_path, linked_home):
    """Trained with the margin features, a sibling beaten by an exact model number scores below every match that
    looks like it (its pair features are the same); trained without them, the two kinds mix. Two tables: on by
    default; the manifest says so; dedup of one table leaves them off."""
    import json

    import pytest

    pytest.importorskip("torch")
    import pmatch_duckdb as pm
    from pmatch_duckdb.matchers import load_matcher
    from pmatch_duckdb.training import train_matcher

    thome = linked_home(tmp_path)
    con = pm.connect(tmp_path / "shop.duckdb", home=thome)
    rng = np.random.default_rng(7)
    feed, catalog, labels, _ = _shop(rng, 240, "")
    tfeed, tcat, _, probes = _shop(rng, 120, "t")
    for name, rows in (("feed", feed), ("catalog", catalog), ("tfeed", tfeed), ("tcat", tcat)):
        con.execute(f"CREATE TABLE {name} (id VARCHAR, title VARCHAR)")
        con.executemany(f"INSERT INTO {name} VALUES (?, ?)", rows)
    con.execute("CREATE TABLE labels (left_id VARCHAR, right_id VARCHAR)")
    con.executemany("INSERT INTO labels VALUES (?, ?)", labels)
    kw = dict(pairs="labels", seed=0, epochs=10, pair_model=False, token_diff=False, progress=False,
              log=lambda _: None)

    def separation(name: str) -> float:
        """Share of (A match, B sibling) probe pairs where the match scores higher (an AUC)."""
        pm.install(con, home=thome, matcher=name)
        got = {(s, t): sc for s, t, sc in con.execute(
            "SELECT source_id, target_id, score FROM match_products('tfeed', 'tcat', k := 5)").fetchall()}
        a = np.array([got.get((s, t), 0.0) for kind, s, t in probes if kind == "A"])
        b = np.array([got.get((s, t), 0.0) for kind, s, t in probes if kind == "B"])
        return float((a[:, None] > b[None, :]).mean() + 0.5 * (a[:, None] == b[None, :]).mean())

    on = train_matcher(con, ["feed", "catalog"], name="margins", **kw)
    m = load_matcher("margins", on.version, thome)
    assert set(MARGIN_FEATURES) <= set(m.decision.features)
    assert json.loads((on.path / "manifest.json").read_text())["training"]["source_margins"] is True
    off = train_matcher(con, ["feed", "catalog"], name="plain", source_margins=False, **kw)
    assert not set(MARGIN_FEATURES) & set(load_matcher("plain", off.version, thome).decision.features)
    with_m, without = separation("margins"), separation("plain")
    print(f"separation with margins {with_m:.3f}, without {without:.3f}")
    assert with_m >= 0.95 and without <= 0.8, (with_m, without)
    # dedup of one table: off unless asked for
    con.execute("CREATE TABLE everything AS SELECT f.id, f.title, f.id AS product FROM feed f UNION ALL "
                "SELECT c.id, c.title, coalesce(l.left_id, c.id) FROM catalog c LEFT JOIN labels l ON l.right_id = c.id")
    dd = train_matcher(con, "everything", group_column="product", name="dedup", activate=False,
                       **{k: v for k, v in kw.items() if k != "pairs"})
    assert not set(MARGIN_FEATURES) & set(load_matcher("dedup", dd.version, thome).decision.features)
    con.close()


def test_labelled_pairs_are_featurised_among_their_sources_candidates(tmp_path, linked_home, monkeypatch):
    """Open world (labels with non-matches): the decision model's training rows are computed as score_pairs
    computes them, each source's labelled pairs among its match candidates: rank, gap and margins vary. Without
    source margins each pair stands alone (rank 1, margins absent), as before."""
    import pytest

    pytest.importorskip("torch")
    import pmatch_duckdb as pm
    import pmatch_duckdb.training.train as train_mod
    from pmatch_duckdb.pair_features import PAIR_FEATURES as PF

    thome = linked_home(tmp_path)
    con = pm.connect(tmp_path / "shop.duckdb", home=thome)
    feed, catalog, labels, probes = _shop(np.random.default_rng(8), 200, "")
    for name, rows in (("feed", feed), ("catalog", catalog)):
        con.execute(f"CREATE TABLE {name} (id VARCHAR, title VARCHAR)")
        con.executemany(f"INSERT INTO {name} VALUES (?, ?)", rows)
    con.execute("CREATE TABLE labels (left_id VARCHAR, right_id VARCHAR, label INTEGER)")
    con.executemany("INSERT INTO labels VALUES (?, ?, ?)",
                    [(s, t, 1) for s, t in labels] + [(s, t, 0) for kind, s, t in probes if kind == "B"])
    seen: list[tuple[np.ndarray, tuple]] = []
    real = train_mod.train_decision

    def spy(x_tr, *a, **k):  # noqa: ANN001, ANN202
        seen.append((x_tr, k["features"]))
        return real(x_tr, *a, **k)

    monkeypatch.setattr(train_mod, "train_decision", spy)
    kw = dict(pairs="labels", seed=0, epochs=10, pair_model=False, token_diff=False, progress=False,
              log=lambda _: None, activate=False)
    train_mod.train_matcher(con, ["feed", "catalog"], name="ctx", **kw)
    train_mod.train_matcher(con, ["feed", "catalog"], name="alone", source_margins=False, **kw)
    (x_ctx, f_ctx), (x_alone, f_alone) = seen
    assert x_ctx.shape[0] == x_alone.shape[0]  # the labelled pairs only, in both
    assert (x_ctx[:, f_ctx.index("rank")] > 0).any() and (x_ctx[:, f_ctx.index("id_similarity_margin")] < 0).any()
    assert (x_alone[:, list(f_alone).index("rank")] == 0).all() and tuple(f_alone) == PF  # log(rank 1)
    con.close()


def test_cli_source_margins_option(tmp_path, linked_home):
    """``pmatch train --source-margins off`` trains without them; the manifest records the choice."""
    import json

    import pytest

    pytest.importorskip("torch")
    from click.testing import CliRunner

    import pmatch_duckdb as pm
    from pmatch_duckdb.cli import main as cli
    from pmatch_duckdb.matchers import load_matcher

    thome = linked_home(tmp_path)
    db = tmp_path / "shop.duckdb"
    con = pm.connect(db, home=thome)
    feed, catalog, labels, _ = _shop(np.random.default_rng(9), 120, "")
    for name, rows in (("feed", feed), ("catalog", catalog)):
        con.execute(f"CREATE TABLE {name} (id VARCHAR, title VARCHAR)")
        con.executemany(f"INSERT INTO {name} VALUES (?, ?)", rows)
    con.execute("CREATE TABLE labels (left_id VARCHAR, right_id VARCHAR)")
    con.executemany("INSERT INTO labels VALUES (?, ?)", labels)
    con.close()
    args = ["train", str(db), "--offers", "feed", "--offers", "catalog", "--pairs", "labels", "--epochs", "5",
            "--no-pair-model", "--no-token-diff", "--home", str(thome)]
    for flag, want in (("off", False), ("auto", True)):
        res = CliRunner().invoke(cli, [*args, "--name", f"m_{flag}", "--source-margins", flag])
        assert res.exit_code == 0, res.output
        m = load_matcher(f"m_{flag}", "v1", thome)
        assert bool(set(MARGIN_FEATURES) & set(m.decision.features)) is want
        man = json.loads((thome / "matchers" / f"m_{flag}" / "v1" / "manifest.json").read_text())
        assert man["training"]["source_margins"] is want
    res = CliRunner().invoke(cli, [*args, "--source-margins", "sometimes"])
    assert res.exit_code != 0 and "sometimes" in res.output
