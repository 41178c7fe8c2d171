"""The decision model: calibrated match probability from pair features, and the thresholds.

Two model kinds, both run in pure numpy from JSON stored in the matcher bundle (no torch, no
scikit-learn at match time):

- ``logistic``: logistic regression (standardised features, L2, Newton steps; numpy only);
- ``gbdt``: gradient-boosted trees (scikit-learn's ``HistGradientBoostingClassifier`` at training
  time, the train extra), exported as node arrays and evaluated by :func:`_tree_values`.

Raw scores are isotonic-calibrated so ``score`` reads as a probability. The ``accept`` threshold is the
lowest score whose precision has a one-sided Wilson lower bound ≥ the target precision (default 0.99);
the ``reject`` threshold loses at most the target share of matches. Calibration and thresholds use
held-out scores only: the validation pairs, plus (``train_decision(..., folds=...)``) out-of-fold
scores of the training pairs, as scikit-learn's ``CalibratedClassifierCV(ensemble=False)`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .fusion import decide_by_thresholds
from .pair_features import PAIR_FEATURES
from .token_diff import TokenDiffModel

GTIN_MIN_PAIRS = 50  # training pairs with a GTIN on both sides needed to trust the learnt GTIN weights
#: which model scored a pair, i.e. the scale its score is on (``match_products`` / ``score_pairs``' ``scored_by``
#: column, ``pm_labels.scored_by``): the zero-shot fusion's similarity, a trained matcher's first-stage decision
#: model, or its pair scorer's stacked model (the pairs the pair scorer re-read). Index = the code kept in arrays.
SCORED_BY = ("zero-shot", "stage1", "pair_scorer")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


#: rows per block when the logistic fit fills its design matrix and sums its Hessian: the temporaries stay
#: bounded instead of one more copy of the whole pair-feature matrix (training at 100k offers peaked in this fit)
FIT_CHUNK = 65_536


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50,
                 sample_weight: np.ndarray | None = None, rows: np.ndarray | None = None
                 ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Newton-IRLS logistic regression on standardised features → (coef, intercept, mean, scale).

    ``rows``: fit on these rows of ``x`` only (positions or a boolean mask; ``y`` and ``sample_weight`` are
    then per selected row), without copying the subset first — the cross-fitting folds use it.
    """
    try:  # tiny matrices: BLAS threads only fight each other (measured 10 s vs 0.1 s on a busy machine)
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return _fit_logistic(x, y, l2, iters, sample_weight, rows)
    with threadpool_limits(1):
        return _fit_logistic(x, y, l2, iters, sample_weight, rows)


def _blocks(n: int) -> list[slice]:
    return [slice(a, min(a + FIT_CHUNK, n)) for a in range(0, n, FIT_CHUNK)]


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iters: int, sample_weight: np.ndarray | None,
                  rows: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    x = np.asarray(x)
    if rows is None:
        n = len(x)

        def part(b: slice) -> np.ndarray:
            return x[b]

        mean = x.mean(axis=0)
        scale = x.std(axis=0)
    else:
        idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, dtype=np.int64)
        n = len(idx)

        def part(b: slice) -> np.ndarray:
            return x[idx[b]]

        # two passes over blocks of the subset (the subset itself is never materialised)
        mean = sum((part(b).sum(axis=0) for b in _blocks(n)), np.zeros(x.shape[1])) / max(n, 1)
        scale = np.sqrt(sum((((part(b) - mean) ** 2).sum(axis=0) for b in _blocks(n)), np.zeros(x.shape[1]))
                        / max(n, 1))
    scale[scale < 1e-9] = 1.0
    d = x.shape[1]
    z = np.empty((n, d + 1))
    for b in _blocks(n):  # the same arithmetic as (x - mean) / scale in x's dtype, one block at a time
        z[b, :d] = (part(b) - mean) / scale
    z[:, d] = 1.0
    w = np.zeros(d + 1)
    sw = np.ones(n) if sample_weight is None else sample_weight
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = _sigmoid(z @ w)
        g = z.T @ (sw * (p - y)) + reg * w
        c = sw * p * (1 - p)
        h = np.diag(reg) + 1e-9 * np.eye(d + 1)
        for b in _blocks(n):
            h += (z[b] * c[b, None]).T @ z[b]
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1]), mean, scale


def isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators fit → breakpoints (xs, ys) for ``np.interp``."""
    order = np.argsort(x, kind="stable")
    xs, ys = x[order].astype(np.float64), y[order].astype(np.float64)
    vals, wts, lo = [], [], []
    for i, v in enumerate(ys):
        vals.append(v)
        wts.append(1.0)
        lo.append(i)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w = wts[-2] + wts[-1]
            vals[-2] = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w
            wts[-2] = w
            vals.pop()
            wts.pop()
            lo.pop()
    bx, by = [], []
    for k, start in enumerate(lo):
        end = (lo[k + 1] if k + 1 < len(lo) else len(xs)) - 1
        bx += [xs[start], xs[end]]
        by += [vals[k], vals[k]]
    return _drop_flat_interior(np.asarray(bx), np.asarray(by))


def _drop_flat_interior(bx: np.ndarray, by: np.ndarray) -> np.ndarray:
    """The breakpoints without those inside a run of equal values: ``np.interp`` gives the same value
    everywhere (between two kept points of a run it is that value), but the bundle's decision.json no longer
    holds two points per held-out pair (adjacent blocks of equal value: 1.4M points, 44 MB at 20k offers)."""
    if len(by) < 3:
        return bx, by
    flat = np.r_[False, (by[1:-1] == by[:-2]) & (by[1:-1] == by[2:]), False]
    return bx[~flat], by[~flat]


def wilson_lower(successes: np.ndarray, n: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    """One-sided Wilson lower confidence bound of a proportion."""
    z = {0.9: 1.2816, 0.95: 1.6449, 0.99: 2.3263}.get(confidence, 1.6449)
    n = np.maximum(n, 1e-12)
    p = successes / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - margin) / denom


def choose_thresholds(score: np.ndarray, y: np.ndarray, target_precision: float = 0.99,
                      max_recall_loss: float = 0.02, confidence: float = 0.95) -> tuple[float, float, dict]:
    """(accept, reject, info) from validation scores and labels."""
    order = np.argsort(-score, kind="stable")
    s, t = score[order], y[order].astype(np.float64)
    tp = np.cumsum(t)
    n = np.arange(1, len(s) + 1)
    lb = wilson_lower(tp, n, confidence)
    # only cut between distinct scores
    last_of_value = np.r_[s[1:] != s[:-1], True]
    ok = np.flatnonzero((lb >= target_precision) & last_of_value)
    accept = float(s[ok[-1]]) if len(ok) else math.inf
    pos = t.sum()
    # reject: the highest threshold that loses at most max_recall_loss of the matches
    lost = pos - tp  # matches with score below s[i] (strictly after position i)
    allowed = np.flatnonzero((lost <= max_recall_loss * pos) & last_of_value)
    reject = float(s[allowed[0]]) if len(allowed) and pos else 0.0
    reject = min(reject, accept)
    info = {"accept_recall": float(tp[ok[-1]] / pos) if len(ok) and pos else 0.0,
            # the share of the matches below the review threshold (pmatch calibrate's budget starts from it)
            "review_recall_loss": float(t[s < reject].sum() / pos) if pos else 0.0,
            # its one-sided upper bound (as a reject audit's: calibrate spends only what the bound leaves)
            "review_recall_loss_upper": (float(1 - wilson_lower(np.array([pos - t[s < reject].sum()]), np.array([pos]),
                                                                confidence)[0]) if pos else None),
            "accept_lower_bound": float(lb[ok[-1]]) if len(ok) else None,
            "validation_pairs": int(len(s)), "validation_matches": int(pos),
            "target_precision": target_precision, "max_recall_loss": max_recall_loss, "confidence": confidence}
    return accept, reject, info


GBDT_PARAMS = {"learning_rate": 0.05, "max_iter": 300, "max_leaf_nodes": 15, "min_samples_leaf": 20,
               "l2_regularization": 1.0}
_TREE_FIELDS = ("feature_idx", "num_threshold", "missing_go_to_left", "left", "right", "is_leaf", "value")


def fit_gbdt(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, list[dict[str, np.ndarray]]]:
    """Gradient-boosted trees (scikit-learn, train extra) → (baseline log-odds, trees as node arrays)."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError as e:  # pragma: no cover - the train extra installs it
        raise ImportError("the gbdt decision model needs scikit-learn: pip install 'pmatch-duckdb[train]'") from e
    clf = HistGradientBoostingClassifier(**GBDT_PARAMS, early_stopping=False, random_state=seed)
    clf.fit(x, y.astype(np.int64))
    trees = []
    for (pred,) in clf._predictors:  # binary: one tree per iteration
        nodes = pred.nodes
        if nodes["is_categorical"].any():  # pragma: no cover - no categorical features are declared
            raise ValueError("categorical splits are not supported")
        trees.append({f: np.asarray(nodes[f]).copy() for f in _TREE_FIELDS})
    return float(np.ravel(clf._baseline_prediction)[0]), trees


def _tree_values(tree: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Leaf value of each row (vectorised descent; NaN follows the node's missing-value branch)."""
    idx = np.zeros(len(x), dtype=np.int64)
    rows = np.arange(len(x))
    leaf_of = tree["is_leaf"].astype(bool)
    for _ in range(len(leaf_of)):
        leaf = leaf_of[idx]
        if leaf.all():
            break
        v = x[rows, tree["feature_idx"][idx]]
        left = np.where(np.isnan(v), tree["missing_go_to_left"][idx].astype(bool), v <= tree["num_threshold"][idx])
        idx = np.where(leaf, idx, np.where(left, tree["left"][idx], tree["right"][idx]).astype(np.int64))
    return tree["value"][idx]


@dataclass
class DecisionModel:
    """Logistic regression or boosted trees + isotonic calibration + thresholds (JSON-serialisable)."""

    coef: np.ndarray | None = None
    intercept: float = 0.0
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    kind: str = "logistic"
    trees: list[dict[str, np.ndarray]] | None = None
    calib_x: np.ndarray | None = None
    calib_y: np.ndarray | None = None
    accept_threshold: float = 0.9
    review_threshold: float = 0.5
    features: tuple[str, ...] = PAIR_FEATURES
    info: dict = field(default_factory=dict)
    #: the word-difference model behind the ``token_diff`` feature (when ``features`` names it)
    token_diff: TokenDiffModel | None = None

    def raw(self, x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Uncalibrated probability of each row of ``x`` (of ``x[rows]`` when ``rows`` is given)."""
        if self.kind == "gbdt":
            x = np.asarray(x if rows is None else x[rows], dtype=np.float64)
            z = np.full(len(x), self.intercept)
            for tree in self.trees or []:
                z += _tree_values(tree, x)
            return _sigmoid(z)
        # block by block: the float64 copy and the standardised temporaries of a training set's ~1.7M pairs
        # were the peak of train_matcher at 50k offers (benchmarks/README.md, Pipeline speed); with ``rows``
        # only one block of the selected rows is ever copied out of x
        n = len(x) if rows is None else len(rows)
        out = np.empty(n)
        for b in _blocks(n):
            xb = x[b] if rows is None else x[rows[b]]
            out[b] = _sigmoid(((np.asarray(xb, dtype=np.float64) - self.mean) / self.scale) @ self.coef
                              + self.intercept)
        return out

    def score(self, x: np.ndarray) -> np.ndarray:
        """Calibrated match probability in [0, 1]."""
        return self.calibrate(self.raw(x))

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Raw probability → calibrated probability."""
        p = raw
        if self.calib_x is not None and len(self.calib_x) >= 2:
            # isotonic steps tie many pairs at one value; a tiny share of the raw probability keeps their
            # order (measured: R@P≥0.99 0 → 0.44 on the Abt-Buy test split), staying within 1e-6 of calibration
            p = (1 - 1e-6) * np.interp(raw, self.calib_x, self.calib_y) + 1e-6 * raw
        return np.clip(p, 0.0, 1.0)

    def gtin_learnt(self, min_pairs: int = GTIN_MIN_PAIRS) -> bool:
        """Whether the model learnt what GTIN agreement means from its training pairs. If not (no GTIN
        columns in the training data, or a matcher older than them), matching applies the GTIN rule of
        the zero-shot score on top of its score."""
        return "gtin_equal" in self.features and self.info.get("gtin_pairs", 0) >= min_pairs

    def decide(self, score: np.ndarray) -> list[str]:
        """accept / review / reject."""
        return decide_by_thresholds(score, self.accept_threshold, self.review_threshold)

    def to_dict(self) -> dict:
        """JSON form."""
        def f(a):
            return None if a is None else [float(v) for v in np.asarray(a).ravel()]
        trees = None if self.trees is None else [
            {k: (v.astype(int).tolist() if k not in ("num_threshold", "value") else [float(a) for a in v])
             for k, v in t.items()} for t in self.trees]
        return {"type": f"{self.kind}+isotonic", "kind": self.kind, "features": list(self.features),
                "coef": f(self.coef), "intercept": self.intercept, "mean": f(self.mean), "scale": f(self.scale),
                "trees": trees,
                "calib_x": f(self.calib_x), "calib_y": f(self.calib_y),
                "accept_threshold": _finite(self.accept_threshold), "review_threshold": self.review_threshold,
                "info": self.info, **({"token_diff": self.token_diff.to_dict()} if self.token_diff else {})}

    @classmethod
    def from_dict(cls, d: dict) -> DecisionModel:
        """Inverse of :meth:`to_dict`."""
        def a(k):
            return None if d.get(k) is None else np.asarray(d[k], dtype=np.float64)
        acc = d.get("accept_threshold")
        kind = d.get("kind", "logistic")
        if "token_diff" in d.get("features", ()) and not d.get("token_diff"):
            raise ValueError("the decision model reads the token_diff feature, but its JSON holds no token_diff model")
        if kind not in ("logistic", "gbdt"):
            raise ValueError(f"unknown decision model kind {kind!r}")
        trees = None if d.get("trees") is None else [
            {k: np.asarray(v, dtype=np.float64 if k in ("num_threshold", "value") else np.int64)
             for k, v in t.items()} for t in d["trees"]]
        return cls(coef=a("coef"), intercept=float(d["intercept"]), mean=a("mean"), scale=a("scale"),
                   kind=kind, trees=trees,
                   calib_x=a("calib_x"), calib_y=a("calib_y"), accept_threshold=math.inf if acc is None else acc,
                   review_threshold=float(d["review_threshold"]), features=tuple(d["features"]),
                   info=d.get("info", {}),
                   token_diff=TokenDiffModel.from_dict(d["token_diff"]) if d.get("token_diff") else None)


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else float(x)


def _fit(kind: str, x: np.ndarray, y: np.ndarray, l2: float, seed: int, rows: np.ndarray | None = None
         ) -> DecisionModel:
    """Fit a model of ``kind`` on ``x`` (or on its ``rows``; ``y`` is per selected row)."""
    if kind == "gbdt":
        base, trees = fit_gbdt(x if rows is None else x[rows], y, seed)
        return DecisionModel(kind="gbdt", intercept=base, trees=trees)
    if kind != "logistic":
        raise ValueError(f"unknown decision model kind {kind!r} (logistic, gbdt or auto)")
    coef, b, mean, scale = fit_logistic(x, y.astype(np.float64), l2=l2, rows=rows)
    return DecisionModel(coef=coef, intercept=b, mean=mean, scale=scale)


def average_precision(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the precision-recall curve (step-wise, as scikit-learn's ``average_precision_score``)."""
    order = np.argsort(-score, kind="stable")
    t = y[order].astype(np.float64)
    if not t.sum():
        return 0.0
    tp = np.cumsum(t)
    return float((tp / np.arange(1, len(t) + 1))[t > 0].sum() / t.sum())


def out_of_fold_raw(kind: str, x: np.ndarray, y: np.ndarray, folds: np.ndarray, l2: float = 1.0,
                    seed: int = 0) -> np.ndarray:
    """Raw score of each training row from a model fitted on the other folds (NaN where none could be)."""
    out = np.full(len(y), np.nan)
    for f in np.unique(folds):
        test = folds == f
        train = ~test
        if y[train].sum() < 5 or (1 - y[train]).sum() < 5:
            continue
        model = _fit(kind, x, y[train], l2, seed, rows=train)
        at = np.flatnonzero(test)
        out[at] = model.raw(x, rows=at)  # scored block by block, never one copy of the whole fold
    return out


def train_decision(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
                   target_precision: float = 0.99, max_recall_loss: float = 0.02, l2: float = 1.0,
                   kind: str = "logistic", folds: np.ndarray | None = None, seed: int = 0,
                   features: tuple[str, ...] = PAIR_FEATURES, confidence: float = 0.95) -> DecisionModel:
    """Fit on train; calibrate and choose thresholds on held-out scores.

    ``kind``: ``logistic``, ``gbdt`` or ``auto`` (the one with the higher average precision on the
    held-out scores). ``folds``: a fold label per training row; when given, each training row also gets
    an out-of-fold score (a model fitted on the other folds), and those join the validation scores as
    held-out scores for model choice, calibration and thresholds, so they rest on more labelled matches.
    """
    y_train = y_train.astype(np.float64)
    y_valid = y_valid.astype(np.float64)
    oof: dict[str, np.ndarray] = {}
    fitted: dict[str, DecisionModel] = {}
    kinds = ("logistic", "gbdt") if kind == "auto" else (kind,)
    for k in kinds:
        fitted[k] = _fit(k, x_train, y_train, l2, seed)
        if folds is not None:
            oof[k] = out_of_fold_raw(k, x_train, y_train, folds, l2, seed)

    def held_out(k: str) -> tuple[np.ndarray, np.ndarray]:
        raw, y = fitted[k].raw(x_valid), y_valid
        if k in oof:
            ok = ~np.isnan(oof[k])
            raw, y = np.r_[raw, oof[k][ok]], np.r_[y, y_train[ok]]
        return raw, y

    ap = {k: average_precision(*held_out(k)) for k in kinds}
    if kind == "auto":
        kind = max(ap, key=ap.get)
    model = fitted[kind]
    model.features = tuple(features)
    held_raw, held_y = held_out(kind)
    if held_y.sum() >= 20 and (1 - held_y).sum() >= 20:
        model.calib_x, model.calib_y = isotonic(held_raw, held_y)
    model.accept_threshold, model.review_threshold, model.info = choose_thresholds(
        model.calibrate(held_raw), held_y, target_precision, max_recall_loss, confidence)
    if "gtin_equal" in features and x_train.shape[1] == len(features):  # pairs with GTINs on both sides
        gcols = [list(features).index(f) for f in ("gtin_equal", "gtin_conflict")]
        model.info["gtin_pairs"] = int((x_train[:, gcols] != 0).any(axis=1).sum())
    model.info.update({"kind": kind, "held_out_average_precision": ap,
                       "threshold_pairs": {"validation": int(len(y_valid)), "out_of_fold": int(len(held_y) - len(y_valid))}})
    return model

