"""Matching against a large index keeps its vectors on disk (issues 12 and 16): counted, not timed.

An on-disk ``TargetView`` (what ``match_products`` and the Ray actors use from ``ON_DISK_MIN_ROWS`` rows) must
(1) load only the columns candidate generation needs — never an image or offer vector column, the text vectors
only when they fit in ``TEXT_IN_MEMORY_MAX_BYTES``, never ``to_arrow()`` of the table; (2) read the scoring
columns for the candidate rows only, a bounded batch at a time (on ``threads`` threads, the same result); and
(3) give the same candidates, scores and decisions as the in-memory view over the same index.
"""

from __future__ import annotations

import threading
from pathlib import Path

import lance
import lancedb
import numpy as np
import pyarrow as pa
import pytest

import pmatch_duckdb as pm
import pmatch_duckdb.matching as M
from pmatch_duckdb.api import context_of
from pmatch_duckdb.demo.grouped import grouped_offers, hashed_text_vectors
from pmatch_duckdb.offers import read_offers
from pmatch_duckdb.sqlident import index_name_for
from pmatch_duckdb.store import OfferIndex

VECTOR_COLUMNS = {"vector", "text_vec", "image_vec"}
N = 600


@pytest.fixture()
def shop(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A 600-offer generated table (distinct titles) and its index, embedded with the hashed stand-in encoder."""
    import pmatch_duckdb.offer_vectors as ov

    monkeypatch.setattr(ov, "embed_prepared", lambda texts, settings, threads=None: hashed_text_vectors(texts.texts))
    con = pm.connect(home=home, image_roots=[tmp_path], index_dir=tmp_path / "idx")
    t = grouped_offers(900, seed=3)
    con.register("g", t)
    con.execute("CREATE TABLE offers AS SELECT id, title, brand, description, price FROM g "
                "QUALIFY row_number() OVER (PARTITION BY title ORDER BY id) = 1 ORDER BY id LIMIT ?", [N])
    pm.index(con, "offers", progress=False)
    ctx = context_of(con)
    yield con, ctx, OfferIndex(ctx.index_root, index_name_for("offers"))
    con.close()


def _stand_in_photos(lists, settings, threads=None):  # noqa: ANN001, ANN202
    """A stand-in image encoder (1,280-d, as EfficientNet-Lite0): a photo named after its product gets a hashed
    vector of its name (siblings look alike); a path with ``bad`` in it fails, as an unreadable file does."""
    dim = 1280
    reasons = [[("unreadable" if "bad" in p else None) for p in (imgs or [])] for imgs in lists]
    out = np.zeros((len(lists), dim), dtype=np.float32)
    good = [i for i, rr in enumerate(reasons) if any(r is None for r in rr)]
    if good:
        names = [" ".join(p.rsplit(".", 1)[0].replace("_", " ") for p in lists[i] if "bad" not in p) for i in good]
        out[good] = hashed_text_vectors(names, dim)[0]
    valid = np.zeros(len(lists), dtype=bool)
    valid[good] = True
    return out, valid, reasons


@pytest.fixture()
def photo_shop(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """As ``shop``, but about half the offers have a photo (a stand-in image encoder) and some only a photo that
    fails: rows with and without image vectors side by side in one index. Its own pmatch home (linking the
    encoder bundles): a matcher trained here must not become the shared home's active one."""
    import pmatch_duckdb.offer_vectors as ov

    monkeypatch.setattr(ov, "embed_prepared", lambda texts, settings, threads=None: hashed_text_vectors(texts.texts))
    monkeypatch.setattr(ov, "embed_image_lists", _stand_in_photos)
    own = tmp_path / "home"
    (own / "models").mkdir(parents=True)
    for bundle in (home / "models").iterdir():
        (own / "models" / bundle.name).symlink_to(bundle)
    con = pm.connect(home=own, image_roots=[tmp_path], index_dir=tmp_path / "idx")
    con.register("g", grouped_offers(900, seed=3))
    con.execute("CREATE TABLE offers AS SELECT id, title, brand, description, price, CASE "
                "WHEN hash(id) % 7 = 0 THEN ['bad.jpg'] "
                "WHEN hash(id) % 2 = 0 THEN [replace(split_part(title, ' ', 2), ' ', '_') || '.jpg'] END AS images "
                "FROM g QUALIFY row_number() OVER (PARTITION BY title ORDER BY id) = 1 ORDER BY id LIMIT ?", [N])
    pm.index(con, "offers", progress=False)
    ctx = context_of(con)
    yield con, ctx, OfferIndex(ctx.index_root, index_name_for("offers"))
    con.close()


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, set[str]]]:
    """Record every read of the index table: (how, rows, columns)."""
    reads: list[tuple[str, int, set[str]]] = []
    real_take, real_to_table = lance.LanceDataset.take, lance.LanceDataset.to_table
    real_to_arrow, real_to_batches = lancedb.table.LanceTable.to_arrow, lance.LanceDataset.to_batches

    def take(self, indices, columns=None, **kw):  # noqa: ANN001, ANN202
        out = real_take(self, indices, columns=columns, **kw)
        reads.append(("take", len(out), set(out.column_names)))
        return out

    def to_table(self, *a, **kw):  # noqa: ANN002, ANN003, ANN202
        out = real_to_table(self, *a, **kw)
        reads.append(("to_table", len(out), set(out.column_names)))
        return out

    def to_arrow(self, *a, **kw):  # noqa: ANN002, ANN003, ANN202
        out = real_to_arrow(self, *a, **kw)
        reads.append(("to_arrow", len(out), set(out.column_names)))
        return out

    def to_batches(self, *a, **kw):  # noqa: ANN002, ANN003, ANN202
        for b in real_to_batches(self, *a, **kw):
            reads.append(("to_batches", b.num_rows, set(b.schema.names)))
            yield b

    monkeypatch.setattr(lance.LanceDataset, "take", take)
    monkeypatch.setattr(lance.LanceDataset, "to_batches", to_batches)
    monkeypatch.setattr(lance.LanceDataset, "to_table", to_table)
    monkeypatch.setattr(lancedb.table.LanceTable, "to_arrow", to_arrow)
    return reads


def test_on_disk_view_reads_vectors_of_candidate_rows_only(shop, monkeypatch):
    con, ctx, index = shop
    monkeypatch.setattr(M, "SCORE_BATCH", 40)
    monkeypatch.setattr(M, "TEXT_IN_MEMORY_MAX_BYTES", 0)  # text vectors too large to hold: read per candidate
    reads = _counting(monkeypatch)
    view = M.TargetView(index, ctx.settings.home, on_disk=True)
    # loading: the lookup columns of every row, no vector column, no whole-table read
    assert reads and all(how == "to_table" and not cols & VECTOR_COLUMNS for how, _, cols in reads), reads
    assert view.rows is None and view.data is None
    held = view.nbytes()
    assert "rows" not in held and held["ids"] < 64 * N  # ids + Lance row ids, no per-row vectors
    reads.clear()
    offers = read_offers(con, "offers")[:200]
    src = M.source_vectors(offers, ctx.settings, view.fusion, reuse=view, matcher=view.matcher)
    reads.clear()
    cand = M.match(src, view, 5, exclude_self=True)
    vec_reads = [(how, n) for how, n, cols in reads if cols & VECTOR_COLUMNS]
    # zero-shot: of the candidate rows' texts only what the conflict penalty reads (title, brand and the
    # description's identifiers); the score uses vectors, identifiers, GTIN and price
    assert view.fusion.conflict_penalty > 0
    assert all(cols & {"title", "brand", "desc_identifiers"} == {"title", "brand", "desc_identifiers"}
               and not cols & {"description", "lexical_text", "content_hash"} for how, n, cols in reads
               if cols & VECTOR_COLUMNS), reads
    assert all(how == "take" for how, _ in vec_reads), reads
    assert not [r for r in reads if r[0] == "to_arrow"]
    assert len(cand.source) == 200 * 5
    # one read per batch of 40 sources, of exactly that batch's distinct candidate rows
    want = [len(np.unique(M.candidate_pairs(src.take(np.arange(a, a + 40)), view, 5, exclude_self=True)[1]))
            for a in range(0, 200, 40)]
    assert [n for _, n in vec_reads] == want
    assert max(want) < N
    # an index recorded without the penalty reads no title at all
    import dataclasses

    view.fusion = dataclasses.replace(view.fusion, conflict_penalty=0.0)
    reads.clear()
    M.match(src, view, 5, exclude_self=True)
    assert reads and not any(cols & {"title", "brand", "desc_identifiers"} for how, n, cols in reads
                             if cols & VECTOR_COLUMNS), reads


def test_on_disk_view_holds_text_vectors_that_fit(shop, monkeypatch):
    """Text vectors within ``TEXT_IN_MEMORY_MAX_BYTES`` are read once, at load, whole column; candidates then
    read no vector column (no photos here) and score exactly as the view that takes them per candidate row."""
    con, ctx, index = shop
    monkeypatch.setattr(M, "SCORE_BATCH", 40)
    reads = _counting(monkeypatch)
    held = M.TargetView(index, ctx.settings.home, on_disk=True)
    assert held.text is not None and held.text[0].shape == (N, 384) and held.text[1].all()
    assert sum(n for how, n, cols in reads if cols == {"text_vec"}) == N
    assert all(not cols & VECTOR_COLUMNS for how, _, cols in reads if cols != {"text_vec"}), reads
    assert held.nbytes()["text vectors"] == N * (384 * 4 + 1)
    monkeypatch.setattr(M, "TEXT_IN_MEMORY_MAX_BYTES", N * 384 * 4 - 1)  # one byte short: not held
    per_row = M.TargetView(index, ctx.settings.home, on_disk=True)
    assert per_row.text is None and "text vectors" not in per_row.nbytes()
    offers = read_offers(con, "offers")[:200]
    reads.clear()
    src = M.source_vectors(offers, ctx.settings, held.fusion, reuse=held, matcher=held.matcher)
    # reused rows: the text vectors from the view, no image vector for rows without a photo (none here)
    assert reads and not [r for r in reads if r[2] & VECTOR_COLUMNS], reads
    again = M.source_vectors(offers, ctx.settings, per_row.fusion, reuse=per_row, matcher=per_row.matcher)
    for f in ("text", "text_ok", "image", "image_ok", "fused", "price"):
        np.testing.assert_array_equal(getattr(src, f), getattr(again, f), err_msg=f)
    assert src.ids == again.ids and src.lexical == again.lexical and src.idents == again.idents
    reads.clear()
    a = M.match(src, held, 5, exclude_self=True)
    assert reads and not [r for r in reads if r[2] & VECTOR_COLUMNS], reads
    b = M.match(src, per_row, 5, exclude_self=True)
    for f in ("source", "target", "rank", "score", "text_score", "image_score", "lexical_score", "id_match"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert a.decision == b.decision


@pytest.mark.parametrize("held", [True, False])
def test_source_batches_on_threads_give_the_same_candidates(shop, monkeypatch, held):
    """``match(threads=2)``: the source batches scored on two threads, concatenated in batch order — the same
    arrays as one thread; an error in a batch reaches the caller."""
    con, ctx, index = shop
    monkeypatch.setattr(M, "SCORE_BATCH", 32)
    if not held:
        monkeypatch.setattr(M, "TEXT_IN_MEMORY_MAX_BYTES", 0)
    view = M.TargetView(index, ctx.settings.home, on_disk=True)
    offers = read_offers(con, "offers")[:250]  # 8 batches, the last one short
    src = M.source_vectors(offers, ctx.settings, view.fusion, reuse=view, matcher=view.matcher)
    one = M.match(src, view, 5, exclude_self=True, threads=1)
    two = M.match(src, view, 5, exclude_self=True, threads=2)
    for f in ("source", "target", "rank", "score", "text_score", "image_score", "lexical_score", "id_match",
              "price_ratio"):
        np.testing.assert_array_equal(getattr(one, f), getattr(two, f), err_msg=f)
    assert one.decision == two.decision and len(one.source) == 250 * 5
    assert sorted(set(one.source.tolist())) == list(range(250))
    real = M.pair_signals
    calls = []

    def failing(src_, view_, s, t):  # noqa: ANN001, ANN202
        calls.append((len(src_.ids), threading.current_thread().name))
        if len(src_.ids) < 32:  # the short last batch
            raise RuntimeError("batch failed")
        return real(src_, view_, s, t)

    monkeypatch.setattr(M, "pair_signals", failing)
    with pytest.raises(RuntimeError, match="batch failed"):
        M.match(src, view, 5, exclude_self=True, threads=2)
    assert any(n == 26 for n, _ in calls), calls
    # the batches ran on the pool's threads (at most two of them), not on the caller's
    assert all(name.startswith("pmatch-match_") for _, name in calls) and len({nm for _, nm in calls}) <= 2, calls


def test_on_disk_view_scores_as_the_in_memory_view(shop, monkeypatch):
    con, ctx, index = shop
    monkeypatch.setattr(M, "SCORE_BATCH", 64)
    mem = M.TargetView(index, ctx.settings.home, on_disk=False)
    disk = M.TargetView(index, ctx.settings.home, on_disk=True)
    assert mem.rows is not None and disk.rows is None
    offers = read_offers(con, "offers")[::3]
    src_m = M.source_vectors(offers, ctx.settings, mem.fusion, reuse=mem, matcher=mem.matcher)
    src_d = M.source_vectors(offers, ctx.settings, disk.fusion, reuse=disk, matcher=disk.matcher)
    np.testing.assert_array_equal(src_m.fused, src_d.fused)
    assert src_m.ids == src_d.ids and src_m.lexical == src_d.lexical
    a = M.match(src_m, mem, 5, exclude_self=True)
    b = M.match(src_d, disk, 5, exclude_self=True)
    rows_a = {(src_m.ids[s], i): (d, sc) for s, i, sc, d in zip(a.source, mem.target_ids(a.target), a.score, a.decision,
                                                                  strict=True)}
    rows_b = {(src_d.ids[s], i): (d, sc) for s, i, sc, d in zip(b.source, disk.target_ids(b.target), b.score,
                                                                  b.decision, strict=True)}
    assert rows_a.keys() == rows_b.keys()
    for key, (d, sc) in rows_a.items():
        assert rows_b[key][0] == d
        assert abs(rows_b[key][1] - sc) < 1e-5
    # the pair signals themselves (the zero-shot fused cosine is derived, not read, on disk)
    ps, pt = M.candidate_pairs(src_m, mem, 5, exclude_self=True)
    cview, pt_local = disk.candidates(pt)
    sig_m, sig_d = M.pair_signals(src_m, mem, ps, pt), M.pair_signals(src_d, cview, ps, pt_local)
    for field in ("fused", "text", "image", "lexical", "id_match", "price_ratio", "gtin"):
        np.testing.assert_allclose(getattr(sig_m, field), getattr(sig_d, field), atol=1e-5, err_msg=field)
    assert sig_m.id_match.any() and not sig_m.id_match.all()
    # score_pairs' path (score_given) on the same pairs
    s = np.arange(len(src_d.ids))
    t = disk.positions([offers[(i + 1) % len(offers)].id for i in s])
    ga = M.score_given(src_m, mem, s, t, exclude_self=True)
    gb = M.score_given(src_d, disk, s, t, exclude_self=True)
    np.testing.assert_allclose(ga.score, gb.score, atol=1e-5)
    assert ga.decision == gb.decision
    # ranks among each source's candidates: equal near the top (the vector channel's cut at 30 rows can differ
    # by float rounding between LanceDB's flat scan and numpy, which moves only low-ranked given pairs)
    top = ga.rank <= 10
    assert top.sum() > 10 and list(ga.rank[top]) == list(gb.rank[top])
    assert disk.positions(["nope"]).tolist() == [-1]


@pytest.mark.parametrize("on_disk", [True, False])
def test_view_without_tfidf_scores_as_the_full_view(shop, monkeypatch, on_disk):
    """Lexical shards (the Ray path): a view holding only the global idf, given the merged shard top-k as its
    lexical candidates, returns the full view's candidates, scores, lexical scores and decisions."""
    from pmatch_duckdb.lexical_shards import sharded_top_k

    con, ctx, index = shop
    monkeypatch.setattr(M, "SCORE_BATCH", 64)
    full = M.TargetView(index, ctx.settings.home, on_disk=on_disk)
    offers = read_offers(con, "offers")[::4]
    src = M.source_vectors(offers, ctx.settings, full.fusion, reuse=full, matcher=full.matcher)
    width = M.lexical_width(5, exclude_self=True)
    lex, _, weights = sharded_top_k(index, full.version, full.n, 3, src.lexical, width)
    reads = _counting(monkeypatch)
    light = M.TargetView(index, ctx.settings.home, on_disk=on_disk, lexical=weights)
    if on_disk:  # no lexical_text read at load: the candidates' texts come with their scoring columns
        assert all("lexical_text" not in cols for how, _, cols in reads if how == "to_table"), reads
        # the lean view (the Ray path's) holds no text vectors either; the full one does, they fit
        assert light.text is None and full.text is not None
        assert not any(cols & VECTOR_COLUMNS for how, _, cols in reads), reads
    # it holds the idf alone: no TF-IDF rows, no inverted index
    assert light.nbytes()["tfidf"] == weights.nbytes() and not hasattr(light.tfidf, "matrix")
    a = M.match(src, full, 5, exclude_self=True)
    b = M.match(src, light, 5, exclude_self=True, lexical=lex)
    assert len(a.source) == len(src.ids) * 5
    np.testing.assert_array_equal(a.source, b.source)
    np.testing.assert_array_equal(a.target, b.target)
    np.testing.assert_array_equal(a.rank, b.rank)
    np.testing.assert_allclose(a.score, b.score, atol=1e-6)
    np.testing.assert_allclose(a.lexical_score, b.lexical_score, atol=1e-6)
    assert a.decision == b.decision and (a.lexical_score > 0.2).sum() > 20
    # the candidate union itself, before any cut
    ca = M.candidate_pairs(src, full, 5, exclude_self=True)
    cb = M.candidate_pairs(src, light, 5, exclude_self=True, lexical=lex)
    assert all(np.array_equal(x, y) for x, y in zip(ca, cb, strict=True))
    with pytest.raises(ValueError, match="holds no TF-IDF rows"):
        M.candidate_pairs(src, light, 5)


def test_image_vectors_read_only_for_rows_with_a_photo(photo_shop, monkeypatch):
    """On disk, ``image_vec`` is read for the candidate rows whose ``n_images_ok`` > 0 only, and the candidates,
    scores, decisions and pair signals equal the in-memory view's (which reads every row's image vector)."""
    con, ctx, index = photo_shop
    monkeypatch.setattr(M, "SCORE_BATCH", 64)
    mem = M.TargetView(index, ctx.settings.home, on_disk=False)
    assert 0.2 < mem.rows.image_ok.mean() < 0.7  # a mix of rows with and without an image vector
    n_ok = mem.data["n_images_ok"].to_numpy()
    np.testing.assert_array_equal(mem.rows.image_ok, n_ok > 0)
    assert (mem.data["n_images"].to_numpy() > n_ok).any()  # some photos failed
    disk = M.TargetView(index, ctx.settings.home, on_disk=True)
    offers = read_offers(con, "offers")[::3]
    src = M.source_vectors(offers, ctx.settings, mem.fusion, reuse=mem, matcher=mem.matcher)
    reads = _counting(monkeypatch)
    # source rows reused from the on-disk view: image vectors read for the rows with a photo only, text vectors
    # from the view; the same vectors as the in-memory view's
    src_d = M.source_vectors(offers, ctx.settings, disk.fusion, reuse=disk, matcher=disk.matcher)
    rows = mem.positions([o.id for o in offers])
    assert [n for how, n, cols in reads if "image_vec" in cols] == [int((n_ok[rows] > 0).sum())], reads
    assert not [r for r in reads if "text_vec" in r[2]], reads
    for f in ("text", "text_ok", "image", "image_ok", "fused"):
        np.testing.assert_array_equal(getattr(src, f), getattr(src_d, f), err_msg=f)
    reads.clear()
    ps, pt = M.candidate_pairs(src, mem, 5, exclude_self=True)
    cview, pt_local = disk.candidates(pt)
    image_reads = [n for how, n, cols in reads if "image_vec" in cols]
    uniq = np.unique(pt)
    assert image_reads == [int((n_ok[uniq] > 0).sum())], (image_reads, reads)
    assert all("image_vec" not in cols for how, n, cols in reads if "text_vec" in cols)
    np.testing.assert_array_equal(cview.rows.image_ok, mem.rows.image_ok[uniq])
    np.testing.assert_array_equal(cview.rows.image, mem.rows.image[uniq])
    sig_m, sig_d = M.pair_signals(src, mem, ps, pt), M.pair_signals(src, cview, ps, pt_local)
    assert np.isfinite(sig_m.image).sum() > 50  # pairs with an image cosine on both sides
    for field in ("fused", "text", "image", "lexical", "id_match", "price_ratio", "gtin"):
        np.testing.assert_allclose(getattr(sig_m, field), getattr(sig_d, field), atol=1e-5, err_msg=field)
    a, b = M.match(src, mem, 5, exclude_self=True), M.match(src, disk, 5, exclude_self=True)
    rows_a = {(s, i): (d, sc, im) for s, i, sc, d, im in zip(a.source, mem.target_ids(a.target), a.score, a.decision,
                                                             a.image_score, strict=True)}
    rows_b = {(s, i): (d, sc, im) for s, i, sc, d, im in zip(b.source, disk.target_ids(b.target), b.score,
                                                             b.decision, b.image_score, strict=True)}
    assert rows_a.keys() == rows_b.keys()
    for key, (d, sc, im) in rows_a.items():
        assert rows_b[key][0] == d and abs(rows_b[key][1] - sc) < 1e-5
        assert (np.isnan(im) and np.isnan(rows_b[key][2])) or abs(rows_b[key][2] - im) < 1e-5


def test_id_lookup_equals_index_in():
    """``TargetView.positions`` on disk (sorted fixed-width ids, binary search) gives ``pc.index_in``'s answer:
    first occurrence of a repeated id, -1 for unknown, longer, shorter and non-ASCII ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(0)
    ids = [f"o-{i}" for i in rng.permutation(5000)] + ["é-x", "ab", "abc", "", "ab", "o-17"]
    lookup = M._IdLookup(pa.array(ids))
    assert lookup.keys is not None  # the binary search, not the fallback
    q = ids[::7] + ["nope", "ab", "a", "abcd", "", "é-x", "o-123456789", "z" * 80, "o-17"]
    want = np.asarray(pc.index_in(pa.array(q), value_set=pa.array(ids)).fill_null(-1).to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(lookup.positions(pa.array(q)), want)
    assert lookup.positions(pa.array(["ab"]))[0] == ids.index("ab")
    # ids the padded comparison cannot order (a NUL byte) fall back to index_in, with the same answer
    odd = M._IdLookup(pa.array(["a\x00", "a", "b"]))
    assert odd.keys is None and odd.positions(pa.array(["a", "a\x00", "c"])).tolist() == [1, 0, -1]


@pytest.mark.parametrize("ann", [True, False])
def test_batched_search_equals_lancedb_search(tmp_path, ann):
    """The async-API batched query returns exactly ``table.search(matrix)``'s rows and distances, with an IVF-RQ
    index (nprobes honoured: 2 of 8 partitions) and as a flat scan; one query and many."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((8, 32)).astype(np.float32)
    vecs = (centers[rng.integers(0, 8, 2000)] + 0.3 * rng.standard_normal((2000, 32))).astype(np.float32)
    import pyarrow as pa

    db = lancedb.connect(tmp_path / "db")
    tbl = db.create_table("t", pa.table({"id": np.arange(2000), "vector": pa.FixedSizeListArray.from_arrays(
        pa.array(vecs.ravel()), 32)}))
    if ann:
        from lancedb.index import IvfRq

        tbl.create_index("vector", config=IvfRq(distance_type="cosine", num_bits=4, num_partitions=8))
    queries = vecs[::97] + 0.05
    nprobes = 2 if ann else None
    for q in (queries, queries[:1]):
        want = tbl.search(q, vector_column_name="vector").distance_type("cosine")
        want = (want.nprobes(nprobes) if ann else want).limit(7).with_row_id(True).select(["_distance"]).to_arrow()
        got = M._batched_search(tbl, np.ascontiguousarray(q), 7, nprobes, None)
        key = [(c, "ascending") for c in ("query_index", "_distance", "_rowid") if c in want.column_names]
        cols = [c for c, _ in key]
        assert got.sort_by(key).select(cols).equals(want.sort_by(key).select(cols))
    if ann:  # nprobes reaches the index: with all 8 partitions probed some lists change
        far = rng.standard_normal((20, 32)).astype(np.float32)  # between the clusters: neighbours in several
        allp = M._batched_search(tbl, far, 100, 8, None)
        few = M._batched_search(tbl, far, 100, 1, None)
        key = [("query_index", "ascending"), ("_distance", "ascending"), ("_rowid", "ascending")]
        assert not allp.sort_by(key)["_rowid"].equals(few.sort_by(key)["_rowid"])


def test_trained_matcher_on_disk_scores_as_in_memory(photo_shop, monkeypatch, home):
    """With a trained matcher (its decision features read titles, descriptions and the offer vector) the on-disk
    view reads every scoring column, image vectors only where a row has a photo, and gives the in-memory view's
    pairs, scores and decisions."""
    pytest.importorskip("torch")
    from pmatch_duckdb.training import train_matcher

    con, ctx, index = photo_shop
    con.execute("CREATE TABLE labelled AS SELECT o.*, g.group_id FROM offers o JOIN g USING (id)")
    r = train_matcher(con, "labelled", group_column="group_id", name="default", dim=16, epochs=2, cross_fit=False,
                      pair_model=False, progress=False, log=lambda _: None)
    assert r.activated and ctx.settings.home != home and (ctx.settings.home / "matchers" / "default").exists()
    pm.index(con, "offers", progress=False)  # re-projected with the active matcher
    monkeypatch.setattr(M, "SCORE_BATCH", 64)
    mem = M.TargetView(index, ctx.settings.home, on_disk=False)
    disk = M.TargetView(index, ctx.settings.home, on_disk=True)
    assert mem.matcher is not None and disk.matcher is not None
    offers = read_offers(con, "offers")[::3]
    src = M.source_vectors(offers, ctx.settings, mem.fusion, reuse=mem, matcher=mem.matcher)
    reads = _counting(monkeypatch)
    a, b = M.match(src, mem, 5, exclude_self=True), M.match(src, disk, 5, exclude_self=True)
    assert any({"title", "description", "vector"} <= cols for how, n, cols in reads if how == "take"), reads
    assert any(cols == {"image_vec"} for how, n, cols in reads if how == "take"), reads
    rows_a = {(s, i): (d, sc) for s, i, sc, d in zip(a.source, mem.target_ids(a.target), a.score, a.decision,
                                                      strict=True)}
    rows_b = {(s, i): (d, sc) for s, i, sc, d in zip(b.source, disk.target_ids(b.target), b.score, b.decision,
                                                      strict=True)}
    assert len(rows_a) == len(src.ids) * 5 and rows_a.keys() == rows_b.keys()
    for key, (d, sc) in rows_a.items():
        assert rows_b[key][0] == d and abs(rows_b[key][1] - sc) < 1e-5


def test_match_products_scores_source_batches_on_the_connections_threads(shop, monkeypatch):
    """The SQL path hands DuckDB's thread count to ``match`` (source batches on threads against an on-disk
    target), and returns the rows one thread gives."""
    con, ctx, index = shop
    monkeypatch.setattr(M, "ON_DISK_MIN_ROWS", 100)
    monkeypatch.setattr(M, "SCORE_BATCH", 32)
    seen, real = [], M.match

    def recording(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        seen.append(kw.get("threads", 1))
        return real(*a, **kw)

    monkeypatch.setattr(M, "match", recording)
    con.execute("CREATE TABLE src AS SELECT * FROM offers ORDER BY id LIMIT 150")
    q = ("SELECT source_id, target_id, rank, score, decision FROM match_products('src', 'offers', 5) "
         "ORDER BY source_id, rank")
    many = con.execute(q).fetchall()
    assert ctx.duckdb_threads >= 1 and seen and seen[0] == ctx.duckdb_threads, (seen, ctx.duckdb_threads)
    monkeypatch.setattr(ctx, "duckdb_threads", 1)
    assert con.execute(q).fetchall() == many and len(many) == 150 * 5


def test_lance_gets_a_second_compute_thread_on_small_machines():
    """Lance keeps two cores for I/O (compute pool ``cpus - 2``, at least 1): on 2 cores its vector search ran on one
    thread for every caller. Importing pmatch gives it ``min(cpus, 2)`` there, leaves larger machines at Lance's
    default, and a value the user set stands."""
    import os
    import subprocess
    import sys

    from pmatch_duckdb.store import lance_compute_threads

    assert [lance_compute_threads(c) for c in (None, 1, 2, 3, 4, 8, 16)] == [1, 1, 2, 2, 2, 6, 14]
    code = "import os, pmatch_duckdb.store; print(os.environ['LANCE_CPU_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "LANCE_CPU_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(lance_compute_threads(os.cpu_count()))
    out = subprocess.run([sys.executable, "-c", code], env={**env, "LANCE_CPU_THREADS": "7"}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "7"


def test_match_result_columns_equal_one_dict_per_candidate():
    """``_pm_match`` builds its list-of-struct result from the candidate arrays: the same value as one Python dict
    per candidate (the way it was built before), with sources that have no candidate, NaN text/image scores and
    price ratios (NULL) and human verdicts."""
    from pmatch_duckdb.udfs.matching import _HIT, _hits, _nan_none

    rng = np.random.default_rng(0)
    src = np.sort(rng.choice([0, 1, 3, 4, 6], size=23))  # rows 2 and 5 (and 7) have no candidate
    n = len(src)
    nan_at = rng.random(n) < 0.3
    cand = M.Candidates(source=src, target=rng.integers(0, 50, n), rank=np.arange(n) % 5 + 1,
                        score=rng.random(n), text_score=np.where(nan_at, np.nan, rng.random(n)),
                        image_score=np.full(n, np.nan), lexical_score=rng.random(n),
                        id_match=rng.random(n) < 0.5, price_ratio=np.where(~nan_at, np.nan, rng.random(n)),
                        decision=[["accept", "review", "reject"][i % 3] for i in range(n)],
                        scored_by=(np.arange(n) % 3).astype(np.int8))
    ids = [f"t{int(t)}" for t in cand.target]
    human = [None if i % 4 else "match" for i in range(n)]
    want: list[list[dict]] = [[] for _ in range(8)]
    for i in range(n):
        want[int(cand.source[i])].append({
            "target_key": ids[i], "rank": int(cand.rank[i]), "score": float(cand.score[i]),
            "text_score": _nan_none(cand.text_score[i]), "image_score": _nan_none(cand.image_score[i]),
            "lexical_score": float(cand.lexical_score[i]), "identifier_match": bool(cand.id_match[i]),
            "price_ratio": _nan_none(cand.price_ratio[i]), "decision": cand.decision[i], "human_verdict": human[i],
            "scored_by": ("zero-shot", "stage1", "pair_scorer")[i % 3]})
    got = _hits(8, cand, ids, cand.decision, human)
    assert got.type == pa.list_(_HIT) and len(got) == 8
    assert got.equals(pa.array(want, type=pa.list_(_HIT)))
    assert got.to_pylist()[2] == [] and got.to_pylist()[7] == []
    empty = M.Candidates(*(np.zeros(0, t) for t in (np.int64, np.int64, np.int64, float, float, float, float, bool,
                                                    float)), decision=[], scored_by=np.zeros(0, np.int8))
    assert _hits(3, empty, [], [], []).to_pylist() == [[], [], []]


@pytest.mark.parametrize("rows", ["more", "fewer"])
def test_text_vectors_not_held_when_the_scan_disagrees_with_the_row_count(shop, monkeypatch, rows):
    """A scan of ``text_vec`` with more or fewer rows than the view counted (the table changed in between) leaves
    the text vectors on disk — read per candidate — instead of failing or holding misaligned rows."""
    con, ctx, index = shop
    real = lance.LanceDataset.to_batches

    def skewed(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        batches = list(real(self, *a, **kw))
        yield from (batches + batches[:1] if rows == "more" else [b.slice(1) for b in batches[:1]] + batches[1:])

    monkeypatch.setattr(lance.LanceDataset, "to_batches", skewed)
    view = M.TargetView(index, ctx.settings.home, on_disk=True)
    assert view.text is None
    offers = read_offers(con, "offers")[:50]
    src = M.source_vectors(offers, ctx.settings, view.fusion, reuse=view, matcher=view.matcher)
    assert len(M.match(src, view, 5, exclude_self=True).source) == 50 * 5


def test_text_vector_budget_from_the_environment(shop, monkeypatch):
    """``PMATCH_VIEW_TEXT_MAX_BYTES`` sets the budget when a view is built (0: keep the text vectors on disk); a
    value that is not a byte count is a clear error naming the variable, also through ``match_products``."""
    from pmatch_duckdb.errors import ConfigError

    con, ctx, index = shop
    monkeypatch.setenv("PMATCH_VIEW_TEXT_MAX_BYTES", "0")
    assert M.text_in_memory_max_bytes() == 0
    assert M.TargetView(index, ctx.settings.home, on_disk=True).text is None
    monkeypatch.setenv("PMATCH_VIEW_TEXT_MAX_BYTES", str(N * 384 * 4))
    assert M.TargetView(index, ctx.settings.home, on_disk=True).text is not None
    monkeypatch.delenv("PMATCH_VIEW_TEXT_MAX_BYTES")
    assert M.text_in_memory_max_bytes() == M.TEXT_IN_MEMORY_MAX_BYTES
    for bad in ("1.5GB", "-1"):
        monkeypatch.setenv("PMATCH_VIEW_TEXT_MAX_BYTES", bad)
        with pytest.raises(ConfigError, match="PMATCH_VIEW_TEXT_MAX_BYTES must be a whole number"):
            M.TargetView(index, ctx.settings.home, on_disk=True)
    monkeypatch.setattr(M, "ON_DISK_MIN_ROWS", 100)
    M.forget_views(str(ctx.index_root))
    with pytest.raises(Exception, match="PMATCH_VIEW_TEXT_MAX_BYTES must be a whole number") as err:
        con.execute("SELECT count(*) FROM match_products('offers', 'offers', 3)").fetchall()
    assert "-1" in str(err.value)
