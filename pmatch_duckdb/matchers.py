"""Trained matchers: versioned bundles of (projection ONNX, decision model JSON, manifest).

Layout: ``<home>/matchers/<name>/v<N>/`` with ``projection.onnx``, ``decision.json`` and
``manifest.json`` (training data hash, metrics, date, parent encoders, feature spec, sha256 of every
file); ``<home>/matchers/<name>/ACTIVE`` names the active version and ``history.json`` lists past
activations, so switching and rolling back are one command each.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundles import Bundle, read_bundle
from .decision import DecisionModel
from .encoders.sessions import get_session
from .errors import ModelNotFoundError
from .features.offer_features import offer_features
from .home import pmatch_home
from .pair_scorer import (
    KnownProducts,
    KnownProductsScorer,
    PairScorer,
    SiameseScorer,
    Summarizer,
    load_pair_scorer,
)

_VERSION = re.compile(r"^v(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def matchers_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """``<home>/matchers``."""
    return pmatch_home(home) / "matchers"


def matcher_dir(name: str, home: str | os.PathLike[str] | None = None) -> Path:
    """``<home>/matchers/<name>``; the name is a folder name, so path separators, ``..`` etc. are refused."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ModelNotFoundError(f"invalid matcher name {name!r}: use letters, digits, '_', '-', '.'")
    return matchers_dir(home) / name


def versions(name: str, home: str | os.PathLike[str] | None = None) -> list[str]:
    """Saved versions of a matcher, oldest first."""
    d = matcher_dir(name, home)
    if not d.is_dir():
        return []
    found = [p.name for p in d.iterdir() if p.is_dir() and _VERSION.match(p.name)]
    return sorted(found, key=lambda v: int(v[1:]))


def active_version(name: str, home: str | os.PathLike[str] | None = None) -> str | None:
    """The active version of a matcher, or None (then matching is zero-shot)."""
    f = matcher_dir(name, home) / "ACTIVE"
    if not f.is_file():
        return None
    v = f.read_text().strip()
    return v if _VERSION.match(v) and (matcher_dir(name, home) / v).is_dir() else None


def _history(name: str, home) -> list[str]:
    f = matcher_dir(name, home) / "history.json"
    return json.loads(f.read_text()) if f.is_file() else []


def activate(name: str, version: str, home: str | os.PathLike[str] | None = None) -> None:
    """Make ``version`` (e.g. ``v3``) the active one (verified first); recorded for rollback."""
    if version not in versions(name, home):
        raise ModelNotFoundError(f"matcher {name!r} has no version {version!r}; have: {versions(name, home) or 'none'}")
    read_bundle(matcher_dir(name, home) / version).verify()
    d = matcher_dir(name, home)
    hist = _history(name, home)
    if not hist or hist[-1] != version:
        hist.append(version)
    (d / "history.json.tmp").write_text(json.dumps(hist))
    os.replace(d / "history.json.tmp", d / "history.json")
    (d / "ACTIVE.tmp").write_text(version)
    os.replace(d / "ACTIVE.tmp", d / "ACTIVE")


def rollback(name: str, home: str | os.PathLike[str] | None = None) -> str | None:
    """Re-activate the previously active version; with none before, deactivate (zero-shot). Returns it."""
    d = matcher_dir(name, home)
    hist = _history(name, home)
    if not hist:
        raise ModelNotFoundError(f"matcher {name!r} has no activation history")
    hist.pop()
    if hist:
        (d / "history.json").write_text(json.dumps(hist[:-1]))
        activate(name, hist[-1], home)
        return hist[-1]
    (d / "history.json").write_text("[]")
    (d / "ACTIVE").unlink(missing_ok=True)
    return None


def deactivate(name: str, home: str | os.PathLike[str] | None = None) -> None:
    """Back to zero-shot matching (versions are kept)."""
    (matcher_dir(name, home) / "ACTIVE").unlink(missing_ok=True)


@dataclass
class Matcher:
    """A loaded, verified matcher version."""

    bundle: Bundle
    decision: DecisionModel
    # optional second stage (a bundle without it loads as before): the pair scorer (cross-encoder, siamese, or known
    # products by stage 1's vectors) and the stacked decision model over [stage-1 logit, its columns] (pair_scorer.py)
    pair: PairScorer | SiameseScorer | KnownProductsScorer | None = None
    pair_decision: DecisionModel | None = None

    @property
    def identity(self) -> dict:
        """What an index records about the matcher that made its vectors."""
        m = self.bundle.manifest
        return {"name": m["name"], "version": m["version"], "sha256": m["files"]["projection.onnx"]}

    @property
    def spec(self) -> dict:
        return self.bundle.manifest["feature_spec"]

    @property
    def dim(self) -> int:
        return self.bundle.dim

    def project(self, feats: np.ndarray) -> np.ndarray:
        """Projection of feature rows (batched ONNX runs)."""
        sess = get_session(self.bundle.file("projection.onnx"), self.bundle.manifest["files"]["projection.onnx"], 1)
        out = np.zeros((len(feats), self.dim), dtype=np.float32)
        for s in range(0, len(feats), 4096):
            out[s:s + 4096] = sess.run(["embedding"], {"features": feats[s:s + 4096]})[0]
        return out

    def embed(self, text, text_ok, image, image_ok, price, lexical) -> np.ndarray:
        """Offer vectors from cached per-modality vectors."""
        return self.project(offer_features(text, text_ok, image, image_ok, price, lexical, self.spec))


_cache: dict[tuple[str, str], Matcher] = {}
_lock = threading.Lock()


def load_matcher(name: str, version: str, home: str | os.PathLike[str] | None = None) -> Matcher:
    """Load (and verify, once per process) a matcher version."""
    path = matcher_dir(name, home) / version
    key = (str(path), (path / "manifest.json").read_text() if (path / "manifest.json").is_file() else "")
    with _lock:
        if key in _cache:
            return _cache[key]
    bundle = read_bundle(path).verify()
    decision = DecisionModel.from_dict(json.loads(bundle.file("decision.json").read_text()))
    m = Matcher(bundle, decision, *_load_pair_stage(bundle))
    with _lock:
        _cache[key] = m
    return m


def _load_pair_stage(bundle: Bundle
                     ) -> tuple[PairScorer | SiameseScorer | KnownProductsScorer | None, DecisionModel | None]:
    """The pair-scorer stage of a (verified) bundle, or (None, None) when it has none."""
    files = bundle.manifest["files"]
    cfg = bundle.manifest.get("pair_model") or {}
    if cfg.get("kind") == "known":  # no transformer: known products by stage 1's fused vectors
        if "pair_known_products.json" not in files or "pair_decision.json" not in files:
            raise ValueError(f"matcher bundle {bundle.path}: a 'known' pair stage needs pair_known_products.json and "
                             "pair_decision.json")
        known = KnownProducts.from_json(json.loads(bundle.file("pair_known_products.json").read_text()))
        stacked = DecisionModel.from_dict(json.loads(bundle.file("pair_decision.json").read_text()))
        return KnownProductsScorer(cfg, known), stacked
    if "pair_model.onnx" not in files:
        return None, None
    summarizer = None
    if "pair_summarizer.json" in files:
        d = json.loads(bundle.file("pair_summarizer.json").read_text())
        summarizer = Summarizer(d["idf"], float(d["default_idf"]))
    known = None
    if "pair_known_products.json" in files:
        known = KnownProducts.from_json(json.loads(bundle.file("pair_known_products.json").read_text()))
    scorer = load_pair_scorer(bundle.file("pair_model.onnx"), files["pair_model.onnx"],
                              bundle.file("pair_tokenizer.json"), cfg, summarizer, known)
    if "pair_known_stage1.json" in files and isinstance(scorer, SiameseScorer):  # its second memory
        scorer.known_stage1 = KnownProductsScorer(cfg, KnownProducts.from_json(
            json.loads(bundle.file("pair_known_stage1.json").read_text())))
    stacked = DecisionModel.from_dict(json.loads(bundle.file("pair_decision.json").read_text()))
    return scorer, stacked


def same_scores(name: str, version: str, home: str | os.PathLike[str] | None = None) -> list[str]:
    """The versions of ``name`` whose scores are ``version``'s, oldest first: ``pmatch calibrate`` writes a copy of
    the version in force that differs only in its thresholds (its manifest names the version it copies, ``parent``,
    and the reviews it came from, ``calibration``), so a verdict given on one of them holds for all. A version
    trained anew starts a line of its own. Reads the manifests only (loading verifies them)."""

    def origin(v: str) -> str:
        seen = {v}
        while True:
            f = matcher_dir(name, home) / v / "manifest.json"
            try:
                m = json.loads(f.read_text())
            except (OSError, ValueError):
                return v
            parent = m.get("parent") if isinstance(m, dict) and m.get("calibration") else None
            if not isinstance(parent, str) or not _VERSION.match(parent) or parent in seen:
                return v
            seen.add(parent)
            v = parent

    root = origin(version)
    return [v for v in versions(name, home) if v == version or origin(v) == root]


def active_matcher(name: str, home: str | os.PathLike[str] | None = None) -> Matcher | None:
    """The active version of ``name``, loaded; None when no trained version is active."""
    v = active_version(name, home)
    return load_matcher(name, v, home) if v else None


def next_version(name: str, home: str | os.PathLike[str] | None = None) -> str:
    """The version string a new training run gets."""
    have = versions(name, home)
    return f"v{int(have[-1][1:]) + 1 if have else 1}"
