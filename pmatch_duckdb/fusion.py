"""Zero-shot fusion and scoring: how per-modality similarities become one vector and one score.

Until a trained projection exists, the offer vector is the L2-normalised concatenation of the
weighted text and (mean-pooled) image embeddings, and a candidate pair's ``score`` is a weighted
mean of the available similarities (lexical, text, image) plus a bonus for a shared product
identifier; equal valid GTINs (the offer tables' ``gtin`` columns) lift it to at least
``gtin_match_score``, different valid GTINs cap it at ``gtin_conflict_score``; titles that say two products (model
numbers that differ, colours or quantities with none in common: ``pair_features.conflict_evidence``) lower it by
``conflict_penalty``. Defaults were chosen on ../shared/data (Abt-Buy: see benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class FusionConfig:
    """Weights of the zero-shot fusion and the decision thresholds stored with an index."""

    text_weight: float = 0.4
    image_weight: float = 0.4
    lexical_weight: float = 0.6
    identifier_bonus: float = 0.2
    gtin_match_score: float = 0.97  # equal valid GTINs: near-certain match (above accept)
    gtin_conflict_score: float = 0.05  # different valid GTINs: near-certain non-match (below review)
    accept_threshold: float = 0.80
    review_threshold: float = 0.55
    # titles that say two products: a sibling (KXTG9341T / KXTG9342T) scores like its twin on words and text, and
    # one catalog is full of them (benchmarks/README.md, "Zero-shot: titles that say two products")
    conflict_penalty: float = 0.2

    def to_dict(self) -> dict:
        """JSON-able form (stored in the index metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FusionConfig:
        """Inverse of :meth:`to_dict`, ignoring unknown keys. A setting the record lacks takes the value that its
        index was scored with (``LEGACY``), not today's default: an index keeps its scores, and the thresholds
        ``pmatch calibrate`` chose on them, until it is rebuilt."""
        return cls(**{**LEGACY, **{k: v for k, v in d.items() if k in cls.__dataclass_fields__}})


#: settings added after indexes were first recorded, with the value that reproduces an older index's scores
LEGACY: dict[str, float] = {"conflict_penalty": 0.0}


def fuse(text: np.ndarray, text_ok: np.ndarray, image: np.ndarray, image_ok: np.ndarray,
         cfg: FusionConfig) -> np.ndarray:
    """Offer vectors: normalise(concat(w_t·text, w_i·image)); a missing modality contributes zeros.

    Filled in place in one float32 matrix (``pm_index`` calls this per chunk of 512 offers: the float64
    temporaries and the concatenation took 17 ms of it, the image block mostly zeros)."""
    n, dt = text.shape
    v = np.zeros((n, dt + image.shape[1]), dtype=np.float32)
    np.multiply(text, np.float32(cfg.text_weight) * text_ok.astype(np.float32)[:, None], out=v[:, :dt])
    if image_ok.any():
        np.multiply(image, np.float32(cfg.image_weight) * image_ok.astype(np.float32)[:, None], out=v[:, dt:])
    norm = np.sqrt(np.einsum("ij,ij->i", v, v))[:, None]
    np.divide(v, norm, out=v, where=norm > 0)
    return v


def pair_score(lexical: np.ndarray, text: np.ndarray, image: np.ndarray, id_match: np.ndarray,
               cfg: FusionConfig, gtin: np.ndarray | None = None, conflict: np.ndarray | None = None) -> np.ndarray:
    """Zero-shot match score in [0, 1]; ``text``/``image`` are NaN where a side lacks that modality;
    ``gtin``: 1 equal valid GTINs, -1 different ones, 0 unknown (see :func:`apply_gtin_evidence`);
    ``conflict``: the titles say two products (``pair_features.conflict_evidence``), minus ``conflict_penalty``."""
    num = cfg.lexical_weight * np.clip(lexical, 0, 1)
    den = np.full(len(lexical), cfg.lexical_weight, dtype=np.float64)
    for sim, w in ((text, cfg.text_weight), (image, cfg.image_weight)):
        ok = ~np.isnan(sim)
        num = num + np.where(ok, w * np.clip(np.nan_to_num(sim), 0, 1), 0.0)
        den = den + np.where(ok, w, 0.0)
    evidence = cfg.identifier_bonus * id_match
    if conflict is not None and cfg.conflict_penalty:
        evidence = evidence - cfg.conflict_penalty * conflict
    score = np.clip(num / den + evidence, 0.0, 1.0)
    return score if gtin is None else apply_gtin_evidence(score, gtin, cfg.gtin_match_score, cfg.gtin_conflict_score)


def apply_gtin_evidence(score: np.ndarray, gtin: np.ndarray, match_floor: float, conflict_cap: float) -> np.ndarray:
    """Equal valid GTINs (``gtin`` 1) lift the score to at least ``match_floor``; different ones (-1) cap it
    at ``conflict_cap``. A GTIN identifies one trade item (GS1), so this overrides what the similarities say."""
    score = np.where(gtin > 0, np.maximum(score, match_floor), score)
    return np.where(gtin < 0, np.minimum(score, conflict_cap), score)


def decide(score: np.ndarray, cfg: FusionConfig) -> list[str]:
    """``accept`` / ``review`` / ``reject`` from the thresholds."""
    return decide_by_thresholds(score, cfg.accept_threshold, cfg.review_threshold)


def decide_by_thresholds(score, accept: float, review: float) -> list[str]:  # noqa: ANN001 - any iterable of floats
    """``accept`` at or above ``accept``, ``review`` at or above ``review``, else ``reject`` — the rule of every
    model's thresholds (zero-shot, a trained matcher's decision models, the review queue's)."""
    return ["accept" if s >= accept else "review" if s >= review else "reject" for s in score]
