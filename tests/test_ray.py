"""The Ray path on real Ray (no mocks): a local instance (ray.init(num_cpus=2)), a two-node cluster on
localhost (``ray start --head`` + ``ray start --address``, separate processes), and a worker killed while
embedding. The cluster-built index must equal pm_index's row for row, and cluster matching must return
match_products' candidates, scores and decisions."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pmatch_duckdb as pm
from pmatch_duckdb.demo.synthetic import generate, write_parquet
from pmatch_duckdb.store import OfferIndex

ray = pytest.importorskip("ray")  # in the dev extra: these tests run in `make test`

from pmatch_duckdb.distributed import index_dataset, match_dataset  # noqa: E402

pytestmark = pytest.mark.slow
VECTORS = ("text_vec", "image_vec", "vector")
RAY_BIN = Path(sys.executable).with_name("ray")
OBJECT_STORE = 200 * 1024 * 1024


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs, small object store) shared by this module's tests."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, object_store_memory=OBJECT_STORE, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, home: Path):
    """Generated catalog + feed with rendered photos, in Parquet and in a DuckDB file indexed by pm_index."""
    root = tmp_path_factory.mktemp("rayshop")
    data = generate(root / "data", n_products=16, seed=3)
    cat, feed, _ = write_parquet(data, root / "data")
    con = pm.connect(root / "shop.duckdb", home=home, image_roots=[root / "data"])
    con.execute("CREATE TABLE catalog AS FROM read_parquet(?)", [str(cat)])
    con.execute("CREATE TABLE feed AS FROM read_parquet(?)", [str(feed)])
    pm.index(con, "catalog", progress=False)
    yield {"root": root, "con": con, "catalog": cat, "feed": feed, "images": root / "data", "home": home}
    con.close()


def _rows(root: Path, name: str = "catalog") -> pa.Table:
    return OfferIndex(root, name).table().to_arrow().sort_by("id")


def assert_same_index(a: pa.Table, b: pa.Table) -> None:
    """Row for row: same ids, hashes and every column; vectors within 1e-6."""
    assert a.column_names == b.column_names
    assert a["id"].to_pylist() == b["id"].to_pylist()
    assert a["content_hash"].to_pylist() == b["content_hash"].to_pylist()
    for c in a.column_names:
        if c in VECTORS:
            x, y = a[c].to_pylist(), b[c].to_pylist()
            assert [v is None for v in x] == [v is None for v in y], c
            xs = np.array([v for v in x if v is not None], dtype=np.float64)
            ys = np.array([v for v in y if v is not None], dtype=np.float64)
            assert xs.shape == ys.shape and (xs.size == 0 or np.abs(xs - ys).max() <= 1e-6), c
        else:
            assert a[c].to_pylist() == b[c].to_pylist(), c


def _meta(root: Path, name: str = "catalog") -> dict:
    m = OfferIndex(root, name).metadata()
    m.pop("source_table", None)
    return m


def test_cluster_index_equals_pm_index_and_refreshes_incrementally(shop, local_ray) -> None:
    ray_root = shop["root"] / "ray.pmatch"
    st = index_dataset(str(shop["catalog"]), ray_root, "catalog", home=shop["home"], image_roots=[shop["images"]],
                       progress=False, batch_size=8)
    n = shop["con"].execute("SELECT count(*) FROM catalog").fetchall()[0][0]
    assert (st.inserted, st.updated, st.deleted, st.total) == (n, 0, 0, n)
    assert_same_index(_rows(shop["root"] / "shop.pmatch"), _rows(ray_root))
    assert _meta(shop["root"] / "shop.pmatch") == _meta(ray_root)  # format, encoders, fusion, matcher
    assert any(r["image_errors"] == [] and r["n_images_ok"] > 0 for r in _rows(ray_root).to_pylist())

    # incremental: one title changed, one offer removed, one added -> only two embedded, on the cluster
    t = pq.read_table(shop["catalog"]).to_pylist()
    t[0]["title"] = t[0]["title"] + " (2025 edition)"
    gone = t.pop(1)["id"]
    t.append({**t[2], "id": "NEW-1", "images": t[2]["images"] + ["missing.jpg"]})
    changed = shop["root"] / "catalog_v2.parquet"
    pq.write_table(pa.Table.from_pylist(t, schema=pq.read_schema(shop["catalog"])), changed)
    version = OfferIndex(ray_root, "catalog").table().version
    st = index_dataset(str(changed), ray_root, "catalog", home=shop["home"], image_roots=[shop["images"]],
                       progress=False, batch_size=8)
    assert (st.inserted, st.updated, st.deleted, st.unchanged) == (1, 1, 1, n - 2)
    rows = {r["id"]: r for r in _rows(ray_root).to_pylist()}
    assert gone not in rows and rows[t[0]["id"]]["title"] == t[0]["title"]
    assert rows["NEW-1"]["image_errors"] == ["missing file"]  # per-offer failure record, as pm_index keeps it
    assert OfferIndex(ray_root, "catalog").table().version > version

    # pm_index on the same data agrees, and finds nothing left to do on the cluster-built index
    con = shop["con"]
    con.execute("CREATE TABLE catalog_v2 AS FROM read_parquet(?)", [str(changed)])
    pm.index(con, "catalog_v2", progress=False)
    assert_same_index(_rows(shop["root"] / "shop.pmatch", "catalog_v2"), _rows(ray_root))
    shutil.copytree(ray_root / "lancedb" / "catalog.lance",
                    shop["root"] / "shop.pmatch" / "lancedb" / "catalog_ray.lance")
    st = pm.index(con, "catalog_v2", name="catalog_ray", progress=False)
    assert (st.inserted, st.updated, st.deleted, st.unchanged) == (0, 0, 0, len(t))


def _match_rows(con, sql: str, params: list | None = None) -> list[tuple]:
    return con.execute(f"""SELECT CAST(source_id AS VARCHAR), CAST(target_id AS VARCHAR), rank, score, text_score,
                                  image_score, lexical_score, identifier_match, price_ratio, decision, mutual_best
                           FROM ({sql}) ORDER BY 1, 3""", params or []).fetchall()


def _assert_same_matches(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b, strict=True):
        assert x[:3] == y[:3] and x[7:] == y[7:] if x[9] == y[9] else False, (x, y)
        for u, v in zip(x[3:7], y[3:7], strict=True):
            assert (u is None and v is None) or abs(u - v) <= 1e-5, (x, y)


def test_cluster_matching_equals_match_products(shop, local_ray) -> None:
    con = shop["con"]
    out = shop["root"] / "out" / "matches.parquet"
    res = match_dataset(str(shop["feed"]), shop["root"] / "shop.pmatch", "catalog", out, k=5,
                        home=shop["home"], image_roots=[shop["images"]], progress=False, batch_size=8,
                        source_table="feed")
    want = _match_rows(con, "SELECT * FROM match_products('feed', 'catalog', k := 5)")
    got = _match_rows(con, "SELECT * FROM read_parquet(?)", [str(out)])
    _assert_same_matches(want, got)
    # one SQL statement loads it, with match_products' columns
    con.execute(res.load_sql("ray_matches"))
    cols = [d[0] for d in con.execute("SELECT * FROM ray_matches LIMIT 0").description]
    ref = [d[0] for d in con.execute("SELECT * FROM match_products('feed', 'catalog') LIMIT 0").description]
    assert cols == ref
    assert res.rows == len(want)

    # dedup mode: no self-pairs, one direction per pair, as match_products('catalog', 'catalog')
    out2 = shop["root"] / "out" / "dedup.parquet"
    match_dataset(str(shop["catalog"]), shop["root"] / "shop.pmatch", "catalog", out2, k=3, dedup=True,
                  home=shop["home"], image_roots=[shop["images"]], progress=False, batch_size=8)
    _assert_same_pairs(_match_rows(con, "SELECT * FROM match_products('catalog', 'catalog', k := 3)"),
                       _match_rows(con, "SELECT * FROM read_parquet(?)", [str(out2)]))


def test_cluster_matching_with_lexical_shards_equals_match_products(shop, local_ray) -> None:
    """Lexical shards (issue 12): the target's TF-IDF split across actors, the scoring actors holding the idf
    alone; the result is still match_products' row for row (3 shards; dedup mode with 2)."""
    con = shop["con"]
    out = shop["root"] / "out" / "sharded.parquet"
    match_dataset(str(shop["feed"]), shop["root"] / "shop.pmatch", "catalog", out, k=5, home=shop["home"],
                  image_roots=[shop["images"]], progress=False, batch_size=8, source_table="feed", lexical_shards=3)
    _assert_same_matches(_match_rows(con, "SELECT * FROM match_products('feed', 'catalog', k := 5)"),
                         _match_rows(con, "SELECT * FROM read_parquet(?)", [str(out)]))
    out2 = shop["root"] / "out" / "sharded_dedup.parquet"
    match_dataset(str(shop["catalog"]), shop["root"] / "shop.pmatch", "catalog", out2, k=3, dedup=True,
                  home=shop["home"], image_roots=[shop["images"]], progress=False, batch_size=8, lexical_shards=2)
    _assert_same_pairs(_match_rows(con, "SELECT * FROM match_products('catalog', 'catalog', k := 3)"),
                       _match_rows(con, "SELECT * FROM read_parquet(?)", [str(out2)]))
    with pytest.raises(pm.PmatchError, match="lexical_shards"):
        match_dataset(str(shop["feed"]), shop["root"] / "shop.pmatch", "catalog", out, lexical_shards=-1,
                      home=shop["home"], progress=False)


def test_lexical_shard_stages_give_the_whole_targets_top_k(shop, local_ray) -> None:
    """The chain of shard stages alone: each source row leaves with the whole target's lexical top-k (positions
    and scores, ties included), as the single-machine CharTfidf gives it."""
    from pmatch_duckdb.distributed.match import lexical_stages
    from pmatch_duckdb.features.lexical import CharTfidf
    from pmatch_duckdb.lexical_shards import global_weights, read_lexical_texts, shard_df, shard_ranges

    index = OfferIndex(shop["root"] / "shop.pmatch", "catalog")
    tbl = index.table()
    version, n = tbl.version, tbl.count_rows()
    ranges = shard_ranges(n, 3)
    weights = global_weights([shard_df(index, version, a, b) for a, b in ranges], n)
    feed = ray.data.read_parquet(str(shop["feed"])).materialize()  # read first: the 3 actors then fit beside it
    ds = lexical_stages(feed, index.root, "catalog", version, ranges, weights, 21, batch_size=8)
    rows = ds.to_arrow_refs()
    got = pa.concat_tables(ray.get(rows))
    texts = got["__pm_lex_text"].to_pylist()
    want_i, want_v = CharTfidf(read_lexical_texts(index, version, 0, n)).top_k(texts, 21)
    got_i = np.array(got["__pm_lex_pos"].to_pylist(), dtype=np.int64)
    got_v = np.array(got["__pm_lex_score"].to_pylist(), dtype=np.float32)
    assert got.num_rows == pq.read_metadata(shop["feed"]).num_rows > 0
    assert np.array_equal(got_i, want_i) and np.allclose(got_v, want_v, atol=1e-6)
    assert (got_v[:, 0] > 0.5).mean() > 0.5  # real lexical matches, not only the zero-score fill


def _assert_same_pairs(a: list[tuple], b: list[tuple]) -> None:
    """Dedup mode keeps one direction of each unordered pair; with equal scores both directions tie (scores
    are symmetric), and which one survives is arbitrary in match_products too: compare unordered pairs."""
    def canon(rows: list[tuple]) -> dict:
        return {frozenset(r[:2]): r for r in rows}

    ca, cb = canon(a), canon(b)
    assert len(ca) == len(a) and ca.keys() == cb.keys() and len(a) > 0
    for key, x in ca.items():
        y = cb[key]
        assert x[9] == y[9] and x[7] == y[7], (x, y)  # decision, identifier_match
        for u, v in zip(x[3:7], y[3:7], strict=True):
            assert (u is None and v is None) or abs(u - v) <= 1e-5, (x, y)


def _embedder_pids() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "MapBatches(OfferEmbedder)" in line
            and "ps -eo" not in line]


def _index_killing_an_embedder(shop, root, wait_s: float) -> tuple[int | None, dict]:
    """Index the catalog on Ray; once an embedding actor has run ``wait_s`` seconds, SIGKILL it."""
    result: dict = {}

    def run() -> None:
        try:
            result["stats"] = index_dataset(str(shop["catalog"]), root, "catalog", home=shop["home"],
                                            image_roots=[shop["images"]], progress=False, batch_size=2)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    job = threading.Thread(target=run)
    job.start()
    killed = None
    deadline = time.time() + 240
    while job.is_alive() and time.time() < deadline and killed is None:
        pids = _embedder_pids()
        if pids:
            time.sleep(wait_s)  # let it load the encoders and start on its batches
            pids = _embedder_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
        time.sleep(0.1)
    job.join(timeout=400)
    return killed, result


def test_worker_killed_mid_embedding_every_offer_exactly_once(shop, local_ray) -> None:
    # On a fast or idle machine the small catalog can be embedded before the first wait ends (one CI run saw
    # the actor, slept 3 s, and the job was done): try again, killing sooner, on a fresh index each time.
    for attempt, wait_s in enumerate((3.0, 1.0, 0.3)):
        root = shop["root"] / f"fault-{attempt}.pmatch"
        killed, result = _index_killing_an_embedder(shop, root, wait_s)
        if killed is not None:
            break
    assert killed is not None, "no embedding actor was seen running"
    assert "error" not in result, result.get("error")
    n = shop["con"].execute("SELECT count(*) FROM catalog").fetchall()[0][0]
    assert result["stats"].total == n
    rows = _rows(root)
    assert len(rows) == n and len(set(rows["id"].to_pylist())) == n  # every offer exactly once
    assert_same_index(_rows(shop["root"] / "shop.pmatch"), rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_cluster_on_localhost(shop, tmp_path: Path) -> None:
    """``ray start --head`` and ``ray start --address`` as separate processes, one CPU each; the CLI indexes and
    matches on that cluster; the embedding actors ran on both nodes (worker logs name their node)."""
    port = _free_port()
    temp = Path(f"/tmp/pmray{port}")  # short: Ray's unix socket paths must stay under 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PMATCH_HOME": str(shop["home"])}
    common = ["--num-cpus=1", f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats"]
    head = [str(RAY_BIN), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
            "--include-dashboard=false", f"--temp-dir={temp}", *common]
    try:
        _ray_start(head, env)
        _ray_start([str(RAY_BIN), "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", *common],
                   env)
        db = tmp_path / "cluster.duckdb"  # its own file: the module's connection holds shop.duckdb's lock
        with duckdb.connect(str(db)) as c:
            c.execute("CREATE TABLE catalog AS FROM read_parquet(?)", [str(shop["catalog"])])
            c.execute("CREATE TABLE feed AS FROM read_parquet(?)", [str(shop["feed"])])
        base = [sys.executable, "-m", "pmatch_duckdb.cli"]
        roots = ["--image-root", str(shop["images"])]
        r = subprocess.run([*base, "index", str(db), "catalog", "--ray",
                            f"127.0.0.1:{port}", "--workers", "2", *roots],
                           env=env, capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "inserted=" in r.stdout
        out = tmp_path / "m.parquet"
        r = subprocess.run([*base, "match", str(db), "feed", "catalog", "-k", "5", "--ray", f"127.0.0.1:{port}",
                            "--workers", "2", "--out", str(out), *roots],
                           env=env, capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, r.stderr[-3000:]
        nodes = _embedder_nodes(temp)
        assert len(nodes) == 2, nodes
    finally:
        _stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)
    assert_same_index(_rows(shop["root"] / "shop.pmatch"), _rows(tmp_path / "cluster.pmatch"))
    _assert_same_matches(_match_rows(shop["con"], "SELECT * FROM match_products('feed', 'catalog', k := 5)"),
                         _match_rows(shop["con"], "SELECT * FROM read_parquet(?)", [str(out)]))


def _ray_start(cmd: list[str], env: dict) -> None:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"


def _embedder_nodes(temp: Path) -> set[str]:
    """Node ids of the processes that ran OfferEmbedder actors, from the cluster's worker logs."""
    nodes = set()
    for err in temp.glob("session_*/logs/worker-*.err"):
        if "OfferEmbedder" not in err.read_text(errors="ignore"):
            continue
        pid = err.stem.rsplit("-", 1)[-1]
        for log in err.parent.glob(f"python-core-worker-*_{pid}.log"):
            m = re.search(r"node_id=([0-9a-f]+)", log.read_text(errors="ignore"))
            if m:
                nodes.add(m.group(1))
    return nodes


def _stop_cluster(temp: Path) -> None:
    """Stop exactly the processes of the cluster this test started (found by its private temp dir, plus their
    descendants), by pid: ``ray stop`` would stop every Ray instance on the machine."""
    procs: dict[int, tuple[int, str]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except (OSError, IndexError, ValueError):
            continue
        procs[int(d.name)] = (ppid, cmd)
    ours = {pid for pid, (_, cmd) in procs.items() if str(temp) in cmd}
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _) in procs.items() if ppid in ours} - ours
        grew = bool(kids)
        ours |= kids
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(2)


def test_cli_lexical_shards_needs_ray(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pmatch_duckdb.cli import main as cli

    r = CliRunner().invoke(cli, ["match", str(tmp_path / "x.duckdb"), "a", "b", "--lexical-shards", "2"])
    assert r.exit_code == 2 and "--lexical-shards needs --ray" in r.output, r.output
    assert not (tmp_path / "x.duckdb").exists()
    r = CliRunner().invoke(cli, ["match", str(tmp_path / "x.duckdb"), "a", "b", "--ray", "--lexical-shards", "-1"])
    assert r.exit_code == 2 and "lexical-shards" in r.output, r.output


TINY_BERT = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def named_shop(tmp_path_factory: pytest.TempPathFactory, linked_home):
    """The known-products catalog (tests/named_two_ways.py) in a fresh pmatch home, its test feed also as Parquet:
    for matchers trained with a pair scorer (the shared home keeps the zero-shot matcher the other tests use)."""
    from named_two_ways import create_tables

    root = tmp_path_factory.mktemp("raytrained")
    thome = linked_home(root)
    con = pm.connect(root / "shop.duckdb", home=thome, image_roots=[root])
    create_tables(con)
    feed = root / "feed_test.parquet"
    con.execute("COPY feed_test TO ? (FORMAT parquet)", [str(feed)])
    yield {"root": root, "home": thome, "con": con, "feed": feed}
    con.close()


@pytest.mark.parametrize("kind", ["known", "cross", "siamese"])
def test_cluster_matching_with_a_trained_pair_scorer_equals_match_products(named_shop, local_ray, kind: str) -> None:
    """A matcher trained with each pair kind (a small BERT for the transformers; the known kind has none) re-scores
    the top candidates on the Ray path exactly as match_products does: same candidates, scores, decisions and
    ``scored_by`` (each source's top m by stage 1 re-scored, the rest stage 1's)."""
    pytest.importorskip("torch")
    from pmatch_duckdb.matchers import deactivate, load_matcher
    from pmatch_duckdb.pair_scorer import KnownProductsScorer, PairScorer, SiameseScorer
    from pmatch_duckdb.settings import Settings
    from pmatch_duckdb.training import train_matcher
    from pmatch_duckdb.training.pair_model import PairOptions, PairTrainConfig

    con, thome, root = named_shop["con"], named_shop["home"], named_shop["root"]
    train = {"kind": kind, "threads": 1} if kind == "known" else {
        "kind": kind, "max_len": 32, "epochs": 2, "lr": 1e-3, "threads": 1, "tiny_bert": TINY_BERT, "patience": None,
        "freeze_layers": 0}
    opts = PairOptions(PairTrainConfig(**train), top_m=3, hard_negatives=0, min_positives=50, min_gain=None)
    train_matcher(con, ["feed", "catalog"], pairs="labels", valid_pairs="valid", name=kind, pair_options=opts,
                  activate=True, progress=False, log=lambda m: None)
    try:
        pair = load_matcher(kind, "v1", thome).pair
        assert type(pair) is {"known": KnownProductsScorer, "cross": PairScorer,
                              "siamese": SiameseScorer}[kind] and pair.top_m == 3
        pm.install(con, home=thome, image_roots=[root], matcher=kind)
        pm.index(con, "catalog", progress=False)  # the index is made for the active matcher
        out = root / f"{kind}.parquet"
        match_dataset(str(named_shop["feed"]), root / "shop.pmatch", "catalog", out, k=5,
                      settings=Settings.create(home=thome, image_roots=[root], matcher=kind), progress=False,
                      batch_size=16, source_table="feed_test")
        want_sql = "SELECT * FROM match_products('feed_test', 'catalog', k := 5)"
        _assert_same_matches(_match_rows(con, want_sql), _match_rows(con, "SELECT * FROM read_parquet(?)", [str(out)]))
        by = "SELECT CAST(source_id AS VARCHAR), rank, scored_by FROM ({}) ORDER BY 1, 2"
        want = con.execute(by.format(want_sql)).fetchall()
        assert want == con.execute(by.format("SELECT * FROM read_parquet(?)"), [str(out)]).fetchall()
        per_source: dict[str, list[str]] = {}
        for src_id, _, scorer in want:
            per_source.setdefault(src_id, []).append(scorer)
        assert len(per_source) == con.execute("SELECT count(*) FROM feed_test").fetchall()[0][0]
        assert all(b.count("pair_scorer") == min(3, len(b)) and b.count("stage1") == len(b) - min(3, len(b))
                   for b in per_source.values()), per_source  # each source's top 3 by stage 1, re-scored
    finally:
        deactivate(kind, thome)
