"""The main job (``make demo`` / ``pmatch demo``): a real end-to-end match on a generated catalog.

Steps, all through the SQL functions: generate catalog + supplier feed with rendered photos,
load them into a DuckDB file, index the catalog in LanceDB (``pm_index``), match the feed
(``match_products``), cluster accepted pairs (``product_clusters``), and score everything against
the generator's ground truth. Writes ``matches.html`` (pairs with their images) for a person to look at.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..connection import connect
from .synthetic import generate, write_parquet


def _table(con, sql: str, echo: Callable[[str], None], limit: int = 12) -> None:
    rel = con.sql(sql)
    echo(str(rel.limit(limit)))


def run_demo(out: str | os.PathLike[str], n_products: int = 60, seed: int = 0,
             echo: Callable[[str], None] = print) -> dict[str, float]:
    """Run the demo into ``out``; return the quality numbers it printed."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = generate(out / "data", n_products=n_products, seed=seed)
    cat_p, feed_p, truth_p = write_parquet(data, out / "data")
    echo(f"generated {len(data.catalog)} catalog offers, {len(data.feed)} supplier offers, "
         f"{sum(len(o['images']) for o in data.catalog + data.feed)} images in {out / 'data'}")

    db = out / "shop.duckdb"
    con = connect(db, image_roots=[out / "data"])
    for name, path in (("catalog", cat_p), ("supplier_feed", feed_p), ("truth", truth_p)):
        con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM read_parquet(?)", [str(path)])

    echo("\n== models ==")
    _table(con, "SELECT name, modality, dim, verified FROM pm_models()", echo)

    echo("\n== index the catalog (LanceDB, incremental) ==")
    _table(con, "SELECT * FROM pm_index('catalog')", echo)

    echo("\n== match the supplier feed against the catalog ==")
    t = time.perf_counter()
    con.execute("CREATE OR REPLACE TABLE matches AS SELECT * FROM match_products('supplier_feed', 'catalog', k := 5)")
    echo(f"match_products: {time.perf_counter() - t:.1f} s")
    base = """SELECT m.source_id, f.title AS supplier_title, m.target_id, c.title AS catalog_title,
                     round(m.score, 3) AS score, round(m.text_score, 2) AS text, round(m.image_score, 2) AS image,
                     round(m.lexical_score, 2) AS lexical, m.decision
              FROM matches m JOIN supplier_feed f ON f.id = m.source_id JOIN catalog c ON c.id = m.target_id"""
    echo("\naccepted (auto-accept):")
    _table(con, base + " WHERE m.decision = 'accept' ORDER BY m.score DESC", echo, 10)
    echo("\nreview band (sent to humans):")
    _table(con, base + " WHERE m.decision = 'review' ORDER BY m.score DESC", echo, 10)

    echo("\n== entity clusters over accepted pairs ==")
    con.execute("CREATE OR REPLACE TABLE entities AS SELECT * FROM product_clusters('matches')")
    _table(con, """SELECT entity_id, count(*) AS offers, string_agg(table_name || ':' || offer_id, ', ') AS members
                   FROM entities GROUP BY entity_id HAVING count(*) > 1 ORDER BY entity_id""", echo, 8)

    echo("\n== quality against the generator's ground truth ==")
    q = con.execute("""
        WITH t AS (SELECT feed_id, catalog_id FROM truth),
        top1 AS (SELECT * FROM matches WHERE rank = 1)
        SELECT
          (SELECT count(*) FROM top1 JOIN t ON t.feed_id = top1.source_id AND t.catalog_id = top1.target_id)
              / (SELECT count(*) FROM t)::DOUBLE AS recall_at_1,
          (SELECT count(DISTINCT m.source_id) FROM matches m JOIN t ON t.feed_id = m.source_id AND t.catalog_id = m.target_id)
              / (SELECT count(*) FROM t)::DOUBLE AS recall_at_5,
          (SELECT count(*) FROM matches m JOIN t ON t.feed_id = m.source_id AND t.catalog_id = m.target_id
              WHERE m.decision = 'accept') AS accepted_true,
          (SELECT count(*) FROM matches WHERE decision = 'accept') AS accepted,
          (SELECT count(*) FROM matches m JOIN t ON t.feed_id = m.source_id AND t.catalog_id = m.target_id
              WHERE m.decision IN ('accept', 'review')) AS true_in_accept_or_review,
          (SELECT count(*) FROM matches WHERE decision = 'review') AS review,
          (SELECT count(*) FROM t) AS true_pairs
    """).fetchall()[0]
    r1, r5, acc_true, acc, acc_rev_true, review, n_true = q
    precision = acc_true / acc if acc else float("nan")
    echo(f"recall@1 {r1:.3f}   recall@5 {r5:.3f}")
    echo(f"auto-accept: {acc} pairs, precision {precision:.3f}, recall {acc_true / n_true:.3f}")
    echo(f"review band: {review} pairs; accept+review recall {acc_rev_true / n_true:.3f}")
    report = write_report(con, out / "matches.html")
    echo(f"\npairs with images: {report}")

    echo("\n== human review ==")
    queued = con.execute("SELECT queued, boundary, accept_samples FROM pm_queue_review('matches')").fetchall()[0]
    echo(f"queued {queued[0]} pairs for review: the {queued[1]} of the review band, nearest the decision boundary "
         f"first, and {queued[2]} randomly sampled auto-accepts (to measure auto-accept precision)")
    echo("open the review page (one pair per screen; keys M match, N no match, U unsure, Z undo):")
    echo(f"  {_cli()} review {_rel(db)} --image-root {_rel(out / 'data')}    # or: make review-demo")
    echo("  then browse http://127.0.0.1:8765/ ; verdicts land in the pm_labels table of the database")
    echo(f"done in {time.perf_counter() - t0:.1f} s (DuckDB file {db}, LanceDB index {db.with_suffix('.pmatch')})")
    con.close()
    return {"recall_at_1": r1, "recall_at_5": r5, "accept_precision": precision,
            "accept_recall": acc_true / n_true, "review": review}


def _rel(p: Path) -> str:
    """``p`` relative to the working directory where that is shorter (what the user would type)."""
    try:
        rel = os.path.relpath(p)
    except ValueError:
        return str(p)
    return str(p) if rel.startswith("..") else rel


def _cli() -> str:
    """How to call pmatch from here: the venv's script when the demo runs from one."""
    import sys

    exe = Path(sys.executable).with_name("pmatch")
    return _rel(exe) if exe.exists() else "pmatch"


def write_report(con, path: Path) -> Path:
    """An HTML page of the rank-1 pairs grouped by decision, with both offers' images."""
    rows = con.execute("""
        SELECT m.decision, m.score, f.title, f.images, c.title, c.images,
               EXISTS (SELECT 1 FROM truth t WHERE t.feed_id = m.source_id AND t.catalog_id = m.target_id)
        FROM matches m JOIN supplier_feed f ON f.id = m.source_id JOIN catalog c ON c.id = m.target_id
        WHERE m.rank = 1 ORDER BY CASE m.decision WHEN 'accept' THEN 0 WHEN 'review' THEN 1 ELSE 2 END, m.score DESC
    """).fetchall()
    base = path.parent

    def imgs(paths: list[str]) -> str:
        return "".join(f'<img src="{html.escape(os.path.relpath(p, base))}" height="96">' for p in paths or [])

    parts = ["<html><head><meta charset='utf-8'><title>pmatch demo matches</title><style>"
             "body{font-family:sans-serif} td{vertical-align:top;padding:4px;border-bottom:1px solid #ddd}"
             ".accept{background:#e8f7e8}.review{background:#fff6dd}.reject{background:#f7e8e8}</style></head><body>",
             "<h1>Supplier offer → best catalog match</h1><table><tr><th>decision</th><th>score</th>"
             "<th>supplier offer</th><th>catalog product</th><th>truly the same?</th></tr>"]
    for dec, score, ft, fi, ct, ci, ok in rows:
        parts.append(f"<tr class='{dec}'><td>{dec}</td><td>{score:.3f}</td><td>{html.escape(ft or '')}<br>{imgs(fi)}</td>"
                     f"<td>{html.escape(ct or '')}<br>{imgs(ci)}</td><td>{'yes' if ok else 'no'}</td></tr>")
    parts.append("</table></body></html>")
    path.write_text("\n".join(parts))
    return path
