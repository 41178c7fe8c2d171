"""Quality metrics for matching, and the charts people look at (PR curve, threshold chart).

Pair metrics count every true pair: a true pair that was never retrieved is a false negative.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def recall_at_k(ranked: dict[str, list[str]], truth: dict[str, set[str]], ks: Iterable[int] = (1, 5, 10)) -> dict:
    """Share of sources with a true match among their top-k candidates (sources that have a true match)."""
    out = {}
    srcs = [s for s in truth if truth[s]]
    for k in ks:
        hit = sum(bool(set(ranked.get(s, [])[:k]) & truth[s]) for s in srcs)
        out[f"recall@{k}"] = hit / len(srcs) if srcs else float("nan")
    return out


def pr_points(scores: np.ndarray, labels: np.ndarray, n_true: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall when accepting every pair with score ≥ threshold, for each distinct threshold."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(np.float64)
    tp = np.cumsum(y)
    n = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)
    precision = (tp / n)[last]
    recall = (tp / max(n_true, 1))[last]
    return s[last], precision, recall


def summarize(scores: np.ndarray, labels: np.ndarray, n_true: int, decisions: list[str] | None = None) -> dict:
    """Best F1, recall at precision ≥ 0.99 / 0.95, and precision/recall/F1 of the decisions."""
    thr, p, r = pr_points(scores, labels, n_true)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    out = {"pairs": int(len(scores)), "true_pairs": int(n_true)}
    if len(f1):
        b = int(np.argmax(f1))
        out.update(best_f1=float(f1[b]), best_f1_threshold=float(thr[b]), best_f1_precision=float(p[b]),
                   best_f1_recall=float(r[b]))
    for target in (0.99, 0.95):
        ok = p >= target
        out[f"recall_at_precision_{target}"] = float(r[ok].max()) if ok.any() else 0.0
    if decisions is not None:
        dec = np.asarray(decisions)
        for name, sel in (("accept", dec == "accept"), ("accept_or_review", dec != "reject")):
            tp = float(labels[sel].sum())
            prec = tp / sel.sum() if sel.sum() else float("nan")
            rec = tp / n_true if n_true else float("nan")
            out[f"{name}_precision"] = prec
            out[f"{name}_recall"] = rec
            out[f"{name}_f1"] = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
        out["review_band"] = int((dec == "review").sum())
    return out


def plot_curves(scores: np.ndarray, labels: np.ndarray, n_true: int, out_dir: Path,
                accept: float | None = None, review: float | None = None, title: str = "") -> list[Path]:
    """Write ``pr_curve.png`` and ``thresholds.png`` (matplotlib, the ``eval`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on extras
        raise RuntimeError("plots need matplotlib: pip install 'pmatch-duckdb[eval]'") from e
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    thr, p, r = pr_points(scores, labels, n_true)
    paths = []
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(r, p, lw=2)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.axhline(0.99, color="grey", ls=":", lw=1)
    paths.append(_finish(plt, fig, ax, f"Precision–recall {title}", out_dir / "pr_curve.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(thr, p, label="precision (score ≥ t)")
    ax.plot(thr, r, label="recall (score ≥ t)")
    if accept is not None and np.isfinite(accept):
        ax.axvline(accept, color="green", ls="--", label=f"accept ≥ {accept:.3f}")
    if review is not None:
        ax.axvline(review, color="orange", ls="--", label=f"review ≥ {review:.3f}")
    ax.set_xlabel("score threshold t")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    paths.append(_finish(plt, fig, ax, f"Thresholds {title}", out_dir / "thresholds.png"))
    return paths


def _finish(plt, fig, ax, title: str, path: Path) -> Path:  # noqa: ANN001 - matplotlib objects
    """Title (wrapped: part names are long), grid, layout, save, close."""
    ax.set_title(textwrap.fill(title.strip(), 48), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate(con, source: str, target: str, pairs: str, k: int = 10, out_dir: str | Path | None = None) -> dict:
    """Match ``source`` against ``target`` and score the result against a labels table.

    ``pairs`` has ``left_id`` (source id), ``right_id`` (target id) and optionally ``label`` (rows with
    label 0 are ignored: every listed positive pair counts as a true match). Returns the metrics; with
    ``out_dir``, also writes ``metrics.json``, ``pr_curve.png``, ``thresholds.png`` and ``report.html``.
    """
    import json

    from .sqlident import quote_qualified

    quote_qualified(source)
    quote_qualified(target)
    q = quote_qualified(pairs)
    cols = {d[0].lower() for d in con.execute(f"SELECT * FROM {q} LIMIT 0").description}
    con.fetchall()
    cond = "WHERE CAST(label AS INTEGER) = 1" if "label" in cols else ""
    truth_rows = con.execute(f"SELECT DISTINCT CAST(left_id AS VARCHAR), CAST(right_id AS VARCHAR) FROM {q} {cond}").fetchall()
    truth: dict[str, set[str]] = {}
    for a, b in truth_rows:
        truth.setdefault(a, set()).add(b)
    rows = con.execute("SELECT CAST(source_id AS VARCHAR), CAST(target_id AS VARCHAR), rank, score, decision, mutual_best "
                       "FROM match_products(?, ?, k := ?) ORDER BY 1, rank", [source, target, k]).fetchall()
    ranked: dict[str, list[str]] = {}
    for s, t, *_ in rows:
        ranked.setdefault(s, []).append(t)
    scores = np.array([r[3] for r in rows], dtype=np.float64)
    labels = np.array([r[1] in truth.get(r[0], ()) for r in rows], dtype=np.float64)
    n_true = len(truth_rows)
    out = {"source": source, "target": target, "k": k, **recall_at_k(ranked, truth, (1, 5, 10)),
           **summarize(scores, labels, n_true, [r[4] for r in rows])}
    mutual = np.array([bool(r[5]) for r in rows])
    if mutual.any():
        out["mutual_best"] = summarize(scores[mutual], labels[mutual], n_true)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        accept = review = None
        if rows:
            acc = [r[3] for r in rows if r[4] == "accept"]
            rev = [r[3] for r in rows if r[4] == "review"]
            accept = min(acc) if acc else None
            review = min(rev) if rev else None
        plots = plot_curves(scores, labels, n_true, out_dir, accept, review, f"{source} → {target}")
        (out_dir / "metrics.json").write_text(json.dumps(out, indent=1, default=float))
        table = "".join(f"<tr><td>{key}</td><td>{val:.4f}</td></tr>" if isinstance(val, float) else
                        f"<tr><td>{key}</td><td>{val}</td></tr>" for key, val in out.items() if not isinstance(val, dict))
        imgs = "".join(f'<img src="{p.name}" style="max-width:48%">' for p in plots)
        (out_dir / "report.html").write_text(
            f"<html><head><meta charset='utf-8'><title>pmatch evaluation</title></head><body>"
            f"<h1>{source} → {target}</h1>{imgs}<table>{table}</table></body></html>")
    return out
