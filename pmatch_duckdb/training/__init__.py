"""Training the fusion projection and the decision model (the ``train`` extra: torch for the projection)."""

from .train import TrainResult, train_matcher

__all__ = ["TrainResult", "train_matcher"]
