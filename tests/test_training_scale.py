"""Training scales with the labels: the validation metric on 20k generated offers builds no validation
sources × targets matrix and searches each source once per projection (operations and memory, never wall
time); the label-driven metric equals the dense computation it replaced. End-to-end training time and peak
RSS at 5k-100k offers: benchmarks/bench_pipeline.py --parts training."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from pmatch_duckdb.demo.grouped import grouped_offers
from pmatch_duckdb.matching import TargetView

pytest.importorskip("torch")
from pmatch_duckdb.training import train  # noqa: E402

N = 20_000


def test_grouped_offers_shape():
    t = grouped_offers(5000, seed=1)
    assert t.num_rows == 5000 and t.column_names == ["id", "title", "brand", "description", "price", "group_id"]
    sizes = np.unique(np.array(t["group_id"].to_pylist()), return_counts=True)[1]
    assert sizes.min() >= 1 and sizes.max() <= 6 and 1.8 < sizes.mean() < 3.0
    assert grouped_offers(5000, seed=1).equals(t)


def test_retrieval_metric_matches_a_dense_reference():
    """The chunked, label-driven recall@k equals the dense sources × targets computation it replaced."""
    rng = np.random.default_rng(0)
    t = grouped_offers(600, seed=2)
    groups = np.unique(np.array(t["group_id"].to_pylist()), return_inverse=True)[1]
    base = rng.standard_normal((groups.max() + 1, 16)).astype(np.float32)
    vec = base[groups] + 0.9 * rng.standard_normal((len(groups), 16)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    from pmatch_duckdb.offer_vectors import OfferVectors

    n = len(groups)
    rows = OfferVectors(ids=[f"o{i}" for i in range(n)], hashes=[""] * n, text=vec, text_ok=np.ones(n, bool),
                        image=np.zeros((n, 4), np.float32), image_ok=np.zeros(n, bool), fused=vec,
                        lexical=t["title"].to_pylist(), idents=[[] for _ in range(n)], price=np.full(n, np.nan),
                        titles=t["title"].to_pylist(), brands=[None] * n, descriptions=[None] * n,
                        desc_idents=[[] for _ in range(n)])
    pos = np.array([(i, j) for i in range(n) for j in range(i + 1, min(n, i + 6)) if groups[i] == groups[j]])
    valid_comp = set(range(0, groups.max() + 1, 3))
    comp = groups
    tgt_pos = np.arange(n)
    view = TargetView.from_vectors(rows, train.FusionConfig())
    got = train._retrieval(rows, rows, view, [0] * n, comp, valid_comp, tgt_pos, pos, 1)
    # dense reference (the old code)
    truth_pairs = {(int(a), int(b)) for a, b in pos} | {(int(b), int(a)) for a, b in pos}
    srcs = [i for i in range(n) if comp[i] in valid_comp]
    sims = vec[srcs] @ vec.T
    for r, i in enumerate(srcs):
        sims[r, i] = -np.inf
    top = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    ranked = {str(i): [str(j) for j in row] for i, row in zip(srcs, top, strict=True)}
    truth = {str(i): {str(t_) for t_ in range(n) if (i, t_) in truth_pairs} for i in srcs}
    want = train.recall_at_k(ranked, truth)
    for k, v in want.items():
        assert got[f"vector_{k}_trained"] == pytest.approx(v, abs=1.5 / len(srcs)), k  # ties may order apart
    assert 0.2 < got["vector_recall@10_trained"] <= 1.0


def _rows(t, vec: np.ndarray):
    from pmatch_duckdb.offer_vectors import OfferVectors

    n = len(vec)
    return OfferVectors(ids=t["id"].to_pylist(), hashes=[""] * n, text=vec, text_ok=np.ones(n, bool),
                        image=np.zeros((n, 4), np.float32), image_ok=np.zeros(n, bool), fused=vec,
                        lexical=t["title"].to_pylist(), idents=[[] for _ in range(n)], price=np.full(n, np.nan),
                        titles=t["title"].to_pylist(), brands=[None] * n, descriptions=[None] * n,
                        desc_idents=[[] for _ in range(n)])


def test_validation_retrieval_on_20k_offers_builds_no_dense_matrix(monkeypatch):
    """The validation metric on 20,000 offers (4,000 validation sources): traced memory stays far below one
    validation-sources x targets float32 matrix (the old code built it, its negation and its int64 argsort),
    and each validation source is searched once per projection (operations linear in the sources)."""
    t = grouped_offers(N, seed=3)
    groups = np.unique(np.array(t["group_id"].to_pylist()), return_inverse=True)[1]
    rng = np.random.default_rng(1)
    vec = rng.standard_normal((groups.max() + 1, 32)).astype(np.float32)[groups]
    vec += 0.8 * rng.standard_normal(vec.shape).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    rows = _rows(t, vec)
    pos = np.array([(i, j) for i in range(N) for j in range(i + 1, min(N, i + 7)) if groups[i] == groups[j]])
    valid_comp = {int(g) for g in range(0, groups.max() + 1, 5)}
    n_src = int(np.isin(groups, list(valid_comp)).sum())
    view = TargetView.from_vectors(rows, train.FusionConfig())
    queries = []
    real_search = TargetView.vector_candidates

    def counting_search(self, q, k, *a, **kw):
        queries.append((len(q), self.n, k))
        return real_search(self, q, k, *a, **kw)

    monkeypatch.setattr(TargetView, "vector_candidates", counting_search)
    tracemalloc.start()
    try:
        got = train._retrieval(rows, rows, view, [0] * N, groups, valid_comp, np.arange(N), pos, 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dense = n_src * N * 4
    # measured ~0.35x dense (search chunks of ~4M scores); the old code peaked above 4x dense
    assert n_src > 3000 and peak < dense / 2, (peak, dense)
    assert queries == [(n_src, N, 11), (n_src, N, 11)]
    assert 0.5 < got["vector_recall@10_trained"] <= 1.0


def test_pair_signals_gather_vectors_in_chunks():
    """Training scores ~10^6 candidate pairs: ``pair_signals`` must not copy every pair's vector rows at once
    (2 x pairs x 1,280 floats for the image block alone) nor touch the image block where no side has one."""
    from pmatch_duckdb.matching import PAIR_CHUNK, pair_signals

    rng = np.random.default_rng(0)
    t = grouped_offers(200, seed=4)
    vec = rng.standard_normal((200, 384)).astype(np.float32)
    rows = _rows(t, vec)
    rows.image = np.zeros((200, 1280), np.float32)  # no photos: image_ok is False everywhere
    view = TargetView.from_vectors(rows, train.FusionConfig())
    n_pairs = 4 * PAIR_CHUNK
    s, tt = rng.integers(0, 200, n_pairs), rng.integers(0, 200, n_pairs)
    tracemalloc.start()
    try:
        sig = pair_signals(rows, view, s, tt)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_shot = 2 * n_pairs * (384 + 1280 + 384) * 4  # the old gathers: text, image and fused rows of every pair
    assert peak < one_shot / 8, (peak, one_shot)  # chunked: ~0.05x; the one-shot text gather alone is 0.19x
    assert np.isnan(sig.image).all()
    np.testing.assert_allclose(sig.text, np.einsum("ij,ij->i", vec[s], vec[tt]), rtol=1e-6)
    np.testing.assert_allclose(sig.fused, np.einsum("ij,ij->i", vec[s], vec[tt]), rtol=1e-6)


def test_training_runs_the_lexical_top_k_once_per_source(monkeypatch, tmp_path, linked_home):
    """The lexical channel and the title + description cosine do not depend on the projection: train_matcher
    (cross-fitted: two fold projections, the final one, validation) queries the lexical top-k once per source
    and makes each offer's full-text TF-IDF row once, not once per decision-data pass."""
    import pmatch_duckdb as pm
    from pmatch_duckdb.features.lexical import CharTfidf, LexicalWeights
    from pmatch_duckdb.matching import FULL_TEXT_CHARS

    queries: list[int] = []
    real = CharTfidf.top_k

    def counting(self, texts, k, *a, **kw):
        queries.append(len(texts))
        return real(self, texts, k, *a, **kw)

    monkeypatch.setattr(CharTfidf, "top_k", counting)
    real_self = CharTfidf.self_top_k

    def counting_self(self, k, *a, **kw):  # dedup: every corpus row against the corpus
        queries.append(self.n)
        return real_self(self, k, *a, **kw)

    monkeypatch.setattr(CharTfidf, "self_top_k", counting_self)
    full_rows: list[int] = []  # texts weighed that carry a description (the full-text inputs)
    real_transform = LexicalWeights.transform

    def counting_transform(self, texts):
        full_rows.append(sum(" series." in t for t in texts))  # grouped_offers descriptions end so
        return real_transform(self, texts)

    monkeypatch.setattr(LexicalWeights, "transform", counting_transform)
    assert FULL_TEXT_CHARS >= 60  # the descriptions (~60 chars) are whole in the full-text input
    import pmatch_duckdb.offer_vectors as ov
    from pmatch_duckdb.demo.grouped import hashed_text_vectors

    monkeypatch.setattr(ov, "embed_prepared", lambda texts, settings, threads=None: hashed_text_vectors(texts.texts))
    thome = linked_home(tmp_path)  # matchers trained here stay out of the suite's shared home
    con = pm.connect(home=thome, image_roots=[tmp_path], index_dir=tmp_path / "idx")
    con.register("g", grouped_offers(1_500, seed=5))
    con.execute("CREATE TABLE offers AS SELECT * FROM g")
    pm.index(con, "offers", progress=False)
    queries.clear()
    n_desc = con.execute("SELECT count(*) FROM offers WHERE description IS NOT NULL").fetchone()[0]
    full_rows.clear()
    r = train.train_matcher(con, "offers", group_column="group_id", name="lexonce", pair_model=False,
                            activate=False, progress=False, log=lambda m: None)
    assert r.metrics["valid"]["pairs"] > 0
    # one top-k over all 1,500 offers (dedup: every offer is a source) for the decision model's pair data;
    # the old code queried per fold (2), validation (1): 3 x 1,500 in all
    assert sum(queries) == 1_500, queries
    # each offer with a description weighed once for the full-text cosine; the old code weighed each pass's
    # sources and all of its targets (3 passes: ~4 x n_desc)
    assert n_desc > 300 and sum(full_rows) == n_desc, (sum(full_rows), n_desc)


def test_isotonic_breakpoints_are_compact_and_interpolate_the_same():
    """The calibration keeps no point inside a run of equal values: the same np.interp everywhere, and a
    decision.json of hundreds of points, not two per held-out pair (1.4M points, 44 MB at 20k offers)."""
    from pmatch_duckdb.decision import isotonic

    rng = np.random.default_rng(0)
    # most candidate pairs are clear non-matches scored below every match (each its own block of value 0),
    # then a mixed range with tied scores
    raw = np.r_[rng.random(150_000) * 0.2, np.round(0.2 + 0.8 * rng.random(50_000), 4)]
    y = np.r_[np.zeros(150_000), rng.random(50_000) < raw[150_000:] ** 2].astype(float)
    bx, by = isotonic(raw, y)
    assert len(bx) < 2_000, len(bx)  # uncompacted: two points per block of equal value, ~300,000 here
    # the uncompacted breakpoints (two per pool-adjacent-violators block), as the fit made them before
    order = np.argsort(raw, kind="stable")
    xs, ys = raw[order], y[order]
    vals, wts, lo = [], [], []
    for i, v in enumerate(ys):
        vals.append(v), wts.append(1.0), lo.append(i)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w = wts[-2] + wts[-1]
            vals[-2] = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w
            wts[-2] = w
            vals.pop(), wts.pop(), lo.pop()
    ends = [*lo[1:], len(xs)]
    ox = np.array([xs[e] for a, b in zip(lo, ends, strict=True) for e in (a, b - 1)])
    oy = np.repeat(vals, 2)
    q = np.r_[rng.random(50_000) * 1.2 - 0.1, ox, np.nextafter(ox, 2), np.nextafter(ox, -1)]
    np.testing.assert_array_equal(np.interp(q, bx, by), np.interp(q, ox, oy))


def test_validation_retrieval_searches_only_the_columns_in_use(monkeypatch):
    """The zero-shot vector of text-only offers is [text, 1,280 image zeros]: the validation search multiplies
    the columns some offer uses (at 50k offers the full width was 40 s of training), and finds what the
    full-width search finds."""
    t = grouped_offers(3000, seed=6)
    groups = np.unique(np.array(t["group_id"].to_pylist()), return_inverse=True)[1]
    rng = np.random.default_rng(2)
    vec = rng.standard_normal((groups.max() + 1, 24)).astype(np.float32)[groups]
    vec += 0.8 * rng.standard_normal(vec.shape).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    wide = np.hstack([vec, np.zeros((len(vec), 200), np.float32)])  # an image block no offer has
    rows = _rows(t, wide)
    n = len(vec)
    pos = np.array([(i, j) for i in range(n) for j in range(i + 1, min(n, i + 7)) if groups[i] == groups[j]])
    valid_comp = {int(g) for g in range(0, groups.max() + 1, 4)}
    view = TargetView.from_vectors(rows, train.FusionConfig())
    widths = []
    real_search = TargetView.vector_candidates

    def recording(self, q, k, *a, **kw):
        widths.append((q.shape[1], self.rows.fused.shape[1]))
        return real_search(self, q, k, *a, **kw)

    monkeypatch.setattr(TargetView, "vector_candidates", recording)
    got = train._retrieval(rows, rows, view, [0] * n, groups, valid_comp, np.arange(n), pos, 1)
    assert widths == [(24, 24), (24, 24)], widths
    monkeypatch.setattr(TargetView, "vector_candidates", real_search)
    narrow = _rows(t, vec)
    want = train._retrieval(narrow, narrow, TargetView.from_vectors(narrow, train.FusionConfig()), [0] * n, groups,
                            valid_comp, np.arange(n), pos, 1)
    assert got == want and 0.3 < got["vector_recall@10_trained"] <= 1.0


def _reference_fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50):
    """The logistic fit as it was before it worked in blocks (whole-matrix temporaries)."""
    from pmatch_duckdb.decision import _sigmoid

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w, reg = np.zeros(z.shape[1]), np.full(z.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = _sigmoid(z @ w)
        g = z.T @ (p - y) + reg * w
        h = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1]), mean, scale


def test_logistic_fit_works_in_blocks_and_equals_the_whole_matrix_fit(monkeypatch: pytest.MonkeyPatch):
    """The decision model's fit (and each cross-fitting fold's, on a row subset it never copies) holds the
    design matrix plus bounded blocks — not further copies of the pair-feature matrix, which is what made
    training at 100k offers peak inside this fit — and gives the whole-matrix fit's model."""
    from pmatch_duckdb import decision

    monkeypatch.setattr(decision, "FIT_CHUNK", 4096)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60_000, 12))
    x[:, 3] = 0.0
    x[:, 5] *= 1e3
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=len(x)) > 1).astype(np.float64)
    folds = rng.integers(0, 5, len(x))
    want = _reference_fit_logistic(x, y)
    tracemalloc.start()
    try:
        got = decision.fit_logistic(x, y)
        peak_whole = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        oof = decision.out_of_fold_raw("logistic", x, y, folds)
        peak_oof = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-12)
    assert abs(got[1] - want[1]) < 1e-12
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[3], want[3])
    # the design matrix + blocks of 4,096 rows + a handful of n-length vectors (the IRLS weights, gradients);
    # the whole-matrix fit added two more matrix-sized temporaries, and a fold a copy of its rows
    bound = len(x) * (x.shape[1] + 1) * 8 + 10 * len(x) * 8
    assert peak_whole < bound, (peak_whole, bound)
    assert peak_oof < bound, (peak_oof, bound)
    ref = np.full(len(y), np.nan)
    for f in range(5):
        tr = folds != f
        c, b, m, s = _reference_fit_logistic(x[tr], y[tr])
        ref[~tr] = decision._sigmoid(((x[~tr] - m) / s) @ c + b)
    np.testing.assert_allclose(oof, ref, rtol=0, atol=1e-9)
    # raw(x, rows=r) scores x[r] block by block without copying x[r]: the same values as raw(x[r])
    model = decision._fit("logistic", x, y, 1.0, 0)
    r = np.flatnonzero(folds == 2)
    np.testing.assert_array_equal(model.raw(x, rows=r), model.raw(x[r]))


def test_offer_features_fill_one_matrix_with_the_blocks_values():
    """The projection's input is written block by block into one float32 matrix: the same values as
    concatenating the blocks, and no concatenated or cast copy (at 50k training offers those were two
    transient 0.5 GB matrices)."""
    from pmatch_duckdb.features.offer_features import DEFAULT_SPEC, hashed_lexical, offer_features

    rng = np.random.default_rng(0)
    n = 3000
    text = rng.normal(size=(n, 384)).astype(np.float32)
    text_ok = rng.random(n) > 0.2
    lexical = [f"Sony DVP-NS{i} dvd player {i % 7}" for i in range(n)]
    price = np.where(rng.random(n) > 0.3, rng.random(n) * 1000, np.nan)
    for image_ok in (rng.random(n) > 0.5, np.zeros(n, bool)):
        image = rng.normal(size=(n, 1280)).astype(np.float32) * image_ok[:, None]
        missing = np.isnan(price)
        want = np.concatenate([
            text * text_ok[:, None], image * image_ok[:, None], (~image_ok).astype(np.float32)[:, None],
            (np.log1p(np.where(missing, 0.0, np.maximum(price, 0.0))) / 10.0).astype(np.float32)[:, None],
            missing.astype(np.float32)[:, None], hashed_lexical(lexical)], axis=1)
        tracemalloc.start()
        try:
            got = offer_features(text, text_ok, image, image_ok, price, lexical, DEFAULT_SPEC)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        # the output, the lexical block it copies in, and small per-row temporaries — not 2x the output
        assert peak < got.nbytes + n * 1024 * 4 + 10 * n * 8, (peak, got.nbytes)


def test_stack_rows_equals_vstack_and_frees_the_parts():
    """The cross-fitted folds' decision features are stacked into one matrix with a spare column for the word
    score, each fold released once copied (np.vstack held both folds and the stack at once: training's peak)."""
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(500, 7)), rng.normal(size=(300, 7))]
    want = np.vstack(parts)
    held = list(parts)
    got = train._stack_rows(held, extra_columns=1)
    assert held == [] and got.shape == (800, 8) and got.dtype == want.dtype
    np.testing.assert_array_equal(got[:, :7], want)
    np.testing.assert_array_equal(train._stack_rows(list(parts)), want)
    one = [parts[0]]
    assert train._stack_rows(one) is parts[0] and one == []  # a single part without spare columns is not copied
