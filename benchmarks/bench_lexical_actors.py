"""Lexical shards on the Ray path (issue 12): what each actor holds and costs, sharded vs not, and the recall.

On the generated index ``bench_pipeline.py --parts match`` builds (``--workdir``/match_N; offers of
:func:`pmatch_duckdb.demo.grouped.grouped_offers`, seed 0, whose product groups are known), each role a Ray
actor or task plays on the Ray path is run alone in a child process (so its peak RSS is that role's, as in an
actor process), with the constructors and calls the actors make:

* ``scorer, whole TF-IDF`` — ``OfferScorer`` today (``lexical_shards=0``): ``TargetView(index)`` then
  ``match()`` of the sources (k = 10, dedup, as ``bench_pipeline``);
* ``df task i`` — ``lexical_shards.shard_df`` of shard i (the global idf is their sum);
* ``shard actor i`` — ``LexicalShardStage``: ``LexicalShard`` (its rows' TF-IDF, global idf) + its top-k for
  the sources;
* ``scorer, idf only`` — ``OfferScorer`` with lexical shards: ``TargetView(index, lexical=weights)`` then
  ``match(..., lexical=merged shard lists)``;
* ``baseline`` — the same imports and nothing else (Python, numpy, LanceDB, DuckDB).

Printed: per role wall s, CPU s, peak RSS; the sums; whether the two scorers return the same candidates /
scores / decisions; same-group recall@20 of the lexical channel alone (whole-target approximate vs merged
shards) and same-group recall@10 of the final candidates. Sources: index rows with siblings in their group.

Usage::

    python benchmarks/bench_lexical_actors.py --workdir /work/bench1m --n 100000 --shards 2 [--sources 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

WIDTH = 21  # lexical_width(10, exclude_self=True)


def _index(workdir: Path, n: int):  # noqa: ANN202
    from pmatch_duckdb.store import OfferIndex

    return OfferIndex(workdir / f"match_{n}" / "idx", "offers")


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _weights(tmp: Path, shards: int, n: int):  # noqa: ANN202
    from pmatch_duckdb.lexical_shards import global_weights

    return global_weights([np.load(tmp / f"df{i}.npy") for i in range(shards)], n)


def role(name: str, a: argparse.Namespace) -> dict:
    """One role, in this (child) process; returns its measurements."""
    import pmatch_duckdb.matching as M
    from pmatch_duckdb.lexical_shards import LexicalShard, shard_df, shard_ranges
    from pmatch_duckdb.offer_vectors import OfferVectors

    tmp, index = Path(a.tmp), _index(a.workdir, a.n)
    cand = np.load(tmp / "sources.npy")
    version = index.table().version
    ranges = shard_ranges(a.n, a.shards)
    out: dict = {"role": name}
    t, c = time.perf_counter(), time.process_time()
    if name == "baseline":
        pass
    elif name.startswith("df"):
        i = int(name[2:])
        np.save(tmp / f"df{i}.npy", shard_df(index, version, *ranges[i]))
    elif name.startswith("shard"):
        i = int(name[5:])
        shard = LexicalShard(index, version, *ranges[i], _weights(tmp, a.shards, a.n))
        out["build_s"], out["build_cpu_s"] = time.perf_counter() - t, time.process_time() - c
        out["held_mb"] = shard.nbytes() / 2**20
        texts = index.table().to_lance().take(cand, columns=["lexical_text"])["lexical_text"].to_pylist()
        t2, c2 = time.perf_counter(), time.process_time()
        idx, val = shard.top_k(texts, WIDTH)
        out["top_k_s"], out["top_k_cpu_s"] = time.perf_counter() - t2, time.process_time() - c2
        np.savez(tmp / f"shard{i}.npz", idx=idx, val=val)
    else:  # the scorers
        light = name == "scorer-idf"
        if light:
            view = M.TargetView(index, None, lexical=_weights(tmp, a.shards, a.n))
            merged = np.load(tmp / "merged.npy")
        else:
            view, merged = M.TargetView(index, None), None
        out["build_s"], out["build_cpu_s"] = time.perf_counter() - t, time.process_time() - c
        out["held_mb"] = sum(view.nbytes().values()) / 2**20
        out["tfidf_mb"] = view.nbytes()["tfidf"] / 2**20
        out["rss_after_load_gb"] = _peak_gb()
        src = OfferVectors.from_arrow(view.row_table(cand))
        t2, c2 = time.perf_counter(), time.process_time()
        r = M.match(src, view, 10, exclude_self=True, lexical=merged)
        out["match_s"], out["match_cpu_s"] = time.perf_counter() - t2, time.process_time() - c2
        np.savez(tmp / f"{name}.npz", source=r.source, target=r.target, score=r.score, lexical=r.lexical_score,
                 decision=np.array(r.decision))
        if not light:  # the whole-target lexical lists, for the recall comparison
            np.save(tmp / "whole_lexical.npy", view.tfidf.top_k(src.lexical, WIDTH)[0])
    out["wall_s"], out["cpu_s"], out["peak_rss_gb"] = time.perf_counter() - t, time.process_time() - c, _peak_gb()
    return out


def _run(name: str, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--_role", name, "--tmp", a.tmp, "--workdir", str(a.workdir), "--n", str(a.n),
           "--shards", str(a.shards)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{name} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path(".bench"))
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--sources", type=int, default=1000)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--_role", default=None)
    a = ap.parse_args()
    if a._role:
        print(json.dumps(role(a._role, a)))
        return
    from pmatch_duckdb.demo.grouped import grouped_offers
    from pmatch_duckdb.features.lexical import merge_top_k

    print(f"# bench_lexical_actors {time.strftime('%Y-%m-%dT%H:%M:%S')}  n={a.n:,} shards={a.shards} "
          f"cpus={os.cpu_count()}  load avg {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"# command: python benchmarks/bench_lexical_actors.py --workdir {a.workdir} --n {a.n} --shards {a.shards} "
          f"--sources {a.sources}")
    index = _index(a.workdir, a.n)
    ids = index.table().to_lance().to_table(columns=["id"])["id"].to_pylist()
    g = grouped_offers(a.n, seed=0)
    grp = dict(zip(g["id"].to_pylist(), g["group_id"].to_pylist(), strict=True))
    group = np.array([grp[i] for i in ids])
    del g, grp, ids
    cnt = Counter(group.tolist())
    perm = np.random.default_rng(0).permutation(a.n)[:20 * a.sources]
    cand = np.sort(np.array([i for i in perm if cnt[group[i]] > 1][:a.sources], dtype=np.int64))
    others = np.array([cnt[group[i]] - 1 for i in cand])
    with tempfile.TemporaryDirectory() as tmp:
        a.tmp = tmp
        np.save(Path(tmp) / "sources.npy", cand)
        rows = [_run("baseline", a), _run("scorer-whole", a)]
        rows += [_run(f"df{i}", a) for i in range(a.shards)]
        rows += [_run(f"shard{i}", a) for i in range(a.shards)]
        idx, val = np.full((len(cand), 0), -1, np.int64), np.zeros((len(cand), 0), np.float32)
        for i in range(a.shards):
            z = np.load(Path(tmp) / f"shard{i}.npz")
            idx, val = merge_top_k(idx, val, z["idx"], z["val"], WIDTH)
        np.save(Path(tmp) / "merged.npy", idx)
        rows.append(_run("scorer-idf", a))
        whole = np.load(Path(tmp) / "whole_lexical.npy")
        res = {r: dict(np.load(Path(tmp) / f"{r}.npz")) for r in ("scorer-whole", "scorer-idf")}
    print(f"\n{'role':16s} {'wall s':>8s} {'CPU s':>8s} {'build s':>8s} {'held MB':>8s} {'peak RSS GB':>12s}  per call")
    for r in rows:
        extra = (f"top-k of {len(cand)} sources {r['top_k_s']:.1f} s wall / {r['top_k_cpu_s']:.1f} s CPU"
                 if "top_k_s" in r else f"match() of {len(cand)} sources {r['match_s']:.1f} s wall / "
                 f"{r['match_cpu_s']:.1f} s CPU" if "match_s" in r else "")
        print(f"{r['role']:16s} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} {r.get('build_s', 0):8.1f} "
              f"{r.get('held_mb', 0):8.0f} {r['peak_rss_gb']:12.2f}  {extra}")
    by = {r["role"]: r for r in rows}
    shard_roles = [by[f"shard{i}"] for i in range(a.shards)] + [by[f"df{i}"] for i in range(a.shards)]
    whole_cpu = by["scorer-whole"]["cpu_s"]
    sharded_cpu = by["scorer-idf"]["cpu_s"] + sum(r["cpu_s"] for r in shard_roles)
    crit = (max(by[f"df{i}"]["wall_s"] for i in range(a.shards)) + max(by[f"shard{i}"]["wall_s"]
            for i in range(a.shards)))
    print(f"\nCPU s, one scoring actor's view + match: whole TF-IDF {whole_cpu:.1f}; sharded (idf-only scorer + "
          f"{a.shards} df tasks + {a.shards} shard actors) {sharded_cpu:.1f}  ratio {sharded_cpu / whole_cpu:.2f}")
    print(f"wall s: whole {by['scorer-whole']['wall_s']:.1f}; sharded, shards in parallel (df max + shard max, "
          f"then the scorer) {crit + by['scorer-idf']['wall_s']:.1f}  ratio "
          f"{(crit + by['scorer-idf']['wall_s']) / by['scorer-whole']['wall_s']:.2f}")
    print(f"RSS GB after loading the view: scorer whole {by['scorer-whole']['rss_after_load_gb']:.2f}, scorer idf-only "
          f"{by['scorer-idf']['rss_after_load_gb']:.2f}")
    print(f"peak RSS GB: scorer whole {by['scorer-whole']['peak_rss_gb']:.2f}, scorer idf-only "
          f"{by['scorer-idf']['peak_rss_gb']:.2f}, largest shard actor "
          f"{max(by[f'shard{i}']['peak_rss_gb'] for i in range(a.shards)):.2f}, baseline {by['baseline']['peak_rss_gb']:.2f}")
    w, s_ = res["scorer-whole"], res["scorer-idf"]
    kw = set(zip(w["source"].tolist(), w["target"].tolist(), strict=True))
    ks = set(zip(s_["source"].tolist(), s_["target"].tolist(), strict=True))
    same = len(w["source"]) == len(s_["source"]) and np.array_equal(w["target"], s_["target"])
    print(f"\nscorers' results: {len(kw)} vs {len(ks)} pairs, {len(kw & ks) / max(1, len(kw)):.4f} shared; "
          f"identical rows: {same}" + (f", max |score diff| {np.abs(w['score'] - s_['score']).max():.2e}, decisions "
                                       f"equal {bool((w['decision'] == s_['decision']).all())}" if same else ""))

    def lex_recall(lists: np.ndarray) -> float:
        found = [(group[row[(row >= 0) & (row != i)][:20]] == group[i]).sum() for row, i in zip(lists, cand, strict=True)]
        return float(np.mean(np.array(found) / others))

    def final_recall(r: dict) -> float:
        hit = np.bincount(r["source"], weights=group[r["target"]] == group[cand[r["source"]]], minlength=len(cand))
        return float(np.mean(hit / np.minimum(others, 10)))

    print(f"same-group recall@20, lexical channel alone: whole target {lex_recall(whole):.4f}, {a.shards} shards "
          f"merged {lex_recall(idx):.4f}; lists identical for {np.mean((whole == idx).all(axis=1)):.4f} of sources")
    print(f"same-group recall@10 of the final candidates: whole {final_recall(w):.4f}, sharded {final_recall(s_):.4f}")
    print(f"# done {time.strftime('%Y-%m-%dT%H:%M:%S')}  load avg {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
