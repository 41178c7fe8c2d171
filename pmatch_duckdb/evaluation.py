"""Quality metrics for matching, and the charts people look at (PR curve, threshold chart).

Pair metrics count every true pair: a true pair that was never retrieved is a false negative.
"""

from __future__ import annotations

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
    ax.set_title(f"Precision–recall {title}".strip())
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "pr_curve.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
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
    ax.set_title(f"Thresholds {title}".strip())
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "thresholds.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
