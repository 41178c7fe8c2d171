"""A child process that runs one pmatch job and SIGKILLs itself at a chosen point (tests/test_reliability_crash.py).

    python tests/crash_child.py JOB WORKDIR HOME CRASH_AT

JOB: ``index`` (pm_index('catalog')), ``clusters`` (product_clusters('matches')), ``train`` (a tiny matcher
``m``), ``match`` (match_products, for the concurrency test: prints row counts). CRASH_AT (``none`` = run to
the end) names where ``os.kill(getpid(), SIGKILL)`` happens:

* ``embedding``: the offers are embedded, nothing written yet;
* ``create_mid``: inside LanceDB's create_table (first build, re-projection, cluster registry), after the
  first 50 rows were handed to the writer and before the commit;
* ``merge_mid``: inside the merge-insert of an incremental refresh, mid-stream;
* ``before_delete``: a refresh's merge is committed, its delete of removed rows is not;
* ``before_rename``: a trained matcher is fully written in its temporary folder, not yet renamed to v<N>;
* ``before_activate``: the new version is in place, ACTIVE not yet switched.

No test hook exists in the product: the kill points are monkeypatched here, around the real calls.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import lancedb.db
import lancedb.merge
import lancedb.table
import pyarrow as pa


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def killing_reader(data: object) -> pa.RecordBatchReader:
    """``data`` as a reader that dies after the writer has consumed its first 50 rows."""
    tbl = data if isinstance(data, pa.Table) else pa.Table.from_batches(list(data))

    def batches():
        for i, b in enumerate(tbl.to_batches(max_chunksize=50)):
            if i == 1:
                die()
            yield b
        die()  # fewer than 51 rows: still die before the commit

    return pa.RecordBatchReader.from_batches(tbl.schema, batches())


def install(crash_at: str) -> None:
    import pmatch_duckdb.offer_vectors as ov

    if crash_at == "embedding":
        real = ov.embed_offers  # what the index's slices call (offer_vectors.embed_offer_slices)

        def embed_then_die(*a, **kw):
            out = real(*a, **kw)
            die()
            return out

        ov.embed_offers = embed_then_die
    elif crash_at == "create_mid":
        real_create = lancedb.db.LanceDBConnection.create_table

        def create(self, name, data=None, *a, **kw):
            return real_create(self, name, killing_reader(data) if data is not None else None, *a, **kw)

        lancedb.db.LanceDBConnection.create_table = create
    elif crash_at == "merge_mid":
        real_exec = lancedb.merge.LanceMergeInsertBuilder.execute

        def execute(self, new_data, *a, **kw):
            return real_exec(self, killing_reader(new_data), *a, **kw)

        lancedb.merge.LanceMergeInsertBuilder.execute = execute
    elif crash_at == "before_delete":
        def delete(self, where):
            die()

        lancedb.table.LanceTable.delete = delete
    elif crash_at == "before_rename":
        real_rename = Path.rename

        def rename(self, target):
            if Path(target).name.startswith("v") and Path(target).name[1:].isdigit():
                die()
            return real_rename(self, target)

        Path.rename = rename
    elif crash_at == "before_activate":
        import pmatch_duckdb.training.train as train

        def activate(*a, **kw):
            die()

        train.activate_version = activate
    elif crash_at != "none":
        raise SystemExit(f"unknown crash point {crash_at}")


def main() -> None:
    job, workdir, home, crash_at = sys.argv[1:5]
    os.environ["PMATCH_HOME"] = home
    import pmatch_duckdb as pm

    install(crash_at)
    wd = Path(workdir)
    # each process its own DuckDB file (DuckDB allows one writer per file), all sharing one index folder
    db = os.environ.get("PM_CHILD_DB", "shop.duckdb")
    con = pm.connect(wd / db, home=home, image_roots=[wd], matcher="m", index_dir=wd / "index")
    if job == "index":
        print(con.execute("SELECT total FROM pm_index('catalog')").fetchall())
    elif job == "clusters":
        print(con.execute("SELECT count(*) FROM product_clusters('matches')").fetchall())
    elif job == "train":
        from pmatch_duckdb.training import train_matcher

        r = train_matcher(con, ["feed", "catalog"], pairs="labels", name="m", dim=16, epochs=2, progress=False,
                          cross_fit=False, log=lambda _: None)
        print(r.version)
    elif job == "match":  # the concurrency test: match repeatedly, print each result's row count
        n = int(sys.argv[5])
        for _ in range(n):
            rows = con.execute("SELECT count(*), count(DISTINCT source_id) FROM match_products('feed', 'catalog', "
                               "k := 3)").fetchall()
            print(*rows[0], flush=True)
    elif job == "refresh":  # the concurrency test: alternate between two versions of the catalog
        n = int(sys.argv[5])
        for i in range(n):
            con.execute("UPDATE catalog SET title = title || ' v' WHERE id % 7 = ?", [i % 7])
            print(con.execute("SELECT total FROM pm_index('catalog')").fetchall()[0][0], flush=True)
    con.close()


if __name__ == "__main__":
    main()
