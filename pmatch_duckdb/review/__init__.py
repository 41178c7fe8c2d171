"""Human review: the ``pm_labels`` verdict history, the review queue, overrides of the model by
human verdicts, threshold recalibration from reviewed pairs, and the ``pmatch review`` web page."""

from .answers import answer_entry, pick_candidate, reject_listed, undo_last
from .labels import PairKey, current_verdicts, ensure_labels, labels_as_pairs, record_verdict
from .queue import QueueStats, next_entry, progress, queue_review
from .stats import accept_precision, wilson_interval

__all__ = ["PairKey", "QueueStats", "accept_precision", "answer_entry", "current_verdicts", "ensure_labels",
           "labels_as_pairs", "next_entry", "pick_candidate", "progress", "queue_review", "record_verdict", "reject_listed",
           "undo_last",
           "wilson_interval"]
