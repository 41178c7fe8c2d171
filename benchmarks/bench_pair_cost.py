"""Cost of the pair scorer at match time (issue 11): ``match_products`` with the scorer off and on, side by side.

Runs ``match_products(source, target, k := 10)`` in SQL on an existing database, alternating the scorer off
(``pair_top_m=0``) with each configuration asked for: a trained matcher (``NAME`` = its active version, or
``NAME@vN``) at its bundle's default ``m`` or at the ``m`` values given (``--m 3,10``). Round by round: off, then
every configuration, ...; the first round warms caches and is not counted. Reports wall seconds AND process CPU
seconds per run (DuckDB's and onnxruntime's threads are in this process, so CPU seconds stay meaningful on a
shared machine), each configuration's ratio to the scorer off, and the scorer's pairs per CPU-second (pairs
re-read = each source's ``m`` best candidates). The scorer's speed does not depend on its weights, only on its
kind (cross-encoder: one pass per pair; siamese: one pass per distinct offer, kept for later calls, so a
siamese configuration is measured twice: its first call with the cache emptied, and the same call again) and max
length.

The matcher versions are linked into a scratch pmatch home (the models folder too) and activated there, so the
user's home and its active versions are not touched.

Usage (after ``bench_quality.py --only abt-buy-full --workdir W``; any trained matchers)::

    PMATCH_HOME=... python benchmarks/bench_pair_cost.py --db W/abt-buy-full.duckdb \
        --matcher NAME@v3,NAME@v2 [--m 3,10] --source abt_test --target buy_all [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import pmatch_duckdb as pm
from pmatch_duckdb.api import context_of
from pmatch_duckdb.matchers import activate, active_version, load_matcher, matcher_dir


def run(con, source: str, target: str) -> tuple[float, float, int]:  # noqa: ANN001
    """One ``match_products`` → (wall s, process CPU s, rows)."""
    c0, w0 = time.process_time(), time.perf_counter()
    n = con.execute(f"SELECT count(*) FROM match_products('{source}', '{target}', k := 10)").fetchone()[0]
    return time.perf_counter() - w0, time.process_time() - c0, int(n)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def scratch_db(db: Path, work: Path) -> Path:
    """A copy of the database ``db`` in ``work``, with its index folder (``DB.pmatch``) where it has one: a
    benchmark's verdicts, queues and tables never touch the original. Returns the copy's path."""
    copy = work / db.name
    shutil.copy2(db, copy)
    if db.with_suffix(".pmatch").is_dir():
        shutil.copytree(db.with_suffix(".pmatch"), copy.with_suffix(".pmatch"))
    return copy


def scratch_home(home: Path, refs: list[str], into: Path) -> list[tuple[str, str, str]]:
    """Each ``NAME[@vN]``'s version under its own name and version in a scratch home ``into`` (hard links
    where the file system allows; a bundle's manifest names itself), the models folder linked. Returns
    ``(ref, name, version)`` per ref; :func:`main` activates each in turn, in the scratch home only."""
    (into / "matchers").mkdir(parents=True)
    if (home / "models").exists():
        (into / "models").symlink_to(home / "models")
    out = []
    for ref in refs:
        name, _, version = ref.partition("@")
        version = version or active_version(name, home)
        if version is None:
            raise SystemExit(f"matcher {name!r} has no active version; name one: {name}@vN")
        src = matcher_dir(name, home) / version
        if not src.is_dir():
            raise SystemExit(f"matcher {name!r} has no version {version!r}")
        dst = into / "matchers" / name / version
        if not dst.exists():
            shutil.copytree(src, dst, copy_function=_link_or_copy)
        out.append((f"{name}@{version}", name, version))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--matcher", required=True, help="comma-separated NAME or NAME@vN (default: active version)")
    ap.add_argument("--m", default="", help="comma-separated m values (default: each bundle's own)")
    ap.add_argument("--source", default="abt_test")
    ap.add_argument("--target", default="buy_all")
    ap.add_argument("--rounds", type=int, default=2, help="counted rounds after one warm-up round")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    args = ap.parse_args(argv)
    con = pm.connect(args.db)
    con.execute(f"SET threads = {args.threads}")
    settings = context_of(con).settings
    tmp = Path(tempfile.mkdtemp(prefix="pmatch-pair-cost-"))
    try:
        refs = scratch_home(settings.home, args.matcher.split(","), tmp / "home")
        # label, name, version, m, whether to empty the scorer's embedding cache first
        configs: list[tuple[str, str, str, int, bool]] = []
        for ref, name, version in refs:
            m = load_matcher(name, version, tmp / "home")
            if m.pair is None:
                raise SystemExit(f"matcher {ref} has no pair scorer")
            kind = m.pair.config.get("kind", "cross")
            for top_m in [int(x) for x in args.m.split(",") if x] or [m.pair.top_m]:
                label = f"{ref} {kind} max_len {m.pair.max_len} m={top_m}"
                if kind == "siamese":
                    # a loaded siamese scorer keeps offers' embeddings between calls: measure the first call on
                    # these tables (cache emptied) and the next one (cache full) apart
                    configs.append((label + " (first call)", name, version, top_m, True))
                    configs.append((label + " (again, cached)", name, version, top_m, False))
                else:
                    configs.append((label, name, version, top_m, False))
        n_src = con.execute(f"SELECT count(*) FROM {args.source}").fetchone()[0]
        print(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} load avg {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
              f"cpus {len(os.sched_getaffinity(0))} duckdb threads {args.threads}; match_products('{args.source}' "
              f"({n_src} offers), '{args.target}', k := 10)")
        runs = [("off (m=0)", *refs[0][1:], 0, False), *configs]
        res: dict[str, list[tuple[float, float, int]]] = {label: [] for label, *_ in runs}
        for r in range(args.rounds + 1):
            for label, name, version, top_m, cold in runs:
                activate(name, version, tmp / "home")
                pm.install(con, dataclasses.replace(settings, home=tmp / "home", matcher=name, pair_top_m=top_m))
                if cold:
                    load_matcher(name, version, tmp / "home").pair.clear_cache()
                out = run(con, args.source, args.target)
                print(f"  round {r} {label}: {out[0]:.1f} s wall, {out[1]:.1f} s CPU, {out[2]} rows", flush=True)
                if r:
                    res[label].append(out)
    finally:
        pm.install(con, settings)
        shutil.rmtree(tmp, ignore_errors=True)
    best = {label: (min(x[0] for x in v), min(x[1] for x in v)) for label, v in res.items()}
    off_w, off_c = best["off (m=0)"]
    print(f"| scorer | wall s (best of {args.rounds}) | CPU s (best of {args.rounds}) | wall / off | CPU / off | "
          "pairs re-read | pairs per extra CPU-s |\n|---|---|---|---|---|---|---|")
    print(f"| off (m=0) | {off_w:.1f} | {off_c:.1f} | 1.00 | 1.00 | 0 | — |")
    for label, _, _, top_m, _ in configs:
        w, c = best[label]
        pairs = n_src * top_m
        rate = f"{pairs / (c - off_c):.1f}" if c - off_c > 0.05 else "— (no measurable extra CPU)"
        print(f"| {label} | {w:.1f} | {c:.1f} | {w / off_w:.2f} | {c / off_c:.2f} | ~{pairs} | {rate} |")
    print(f"# done {time.strftime('%Y-%m-%dT%H:%M:%S')} load avg {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
