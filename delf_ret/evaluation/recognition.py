"""Recognition metrics: Global Average Precision, accuracy, and choosing the "unknown" threshold.

Pure Python; no TensorFlow. A recognition answer for a query is ``(label, score)``:
the predicted label (None = "unknown", no prediction) and its confidence (summed
RANSAC inliers, see delf_ret.retrieval.recognition). Ground truth maps each query
(its image id) to its label, or None for a query that shows no landmark of the gallery.

Global Average Precision (GAP, the metric of the Google Landmark Recognition
challenges, as in tensorflow/models research/delf ``metrics.py``): the N
predictions of all queries (one per query at most) sorted by confidence,
descending (ties: query id, then label, ascending), and

  GAP = (1 / M) * sum_{i=1..N} P(i) * rel(i)

with M the number of queries whose ground truth has a landmark, P(i) the
precision of the first i predictions and rel(i) = 1 when prediction i is the
query's label. A prediction for a non-landmark query is a false positive; an
"unknown" answer is no prediction (it counts nowhere but in M).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from delf_ret.evaluation.ground_truth import GroundTruthError

Answer = tuple[str | None, float]  # (label or None = "unknown", confidence)


def _check_queries(answers: Mapping[str, Answer], ground_truth: Mapping[str, str | None]) -> None:
  missing = [query for query in answers if query not in ground_truth]
  if missing:
    raise GroundTruthError(f"{len(missing)} queries have no ground truth, e.g. {missing[0]}")


def global_average_precision(
  answers: Mapping[str, Answer], ground_truth: Mapping[str, str | None]
) -> float:
  """GAP in [0, 1] (see the module docstring) of the queries' answers {query: (label, score)}.

  Queries of ``ground_truth`` without an answer, and answers with label None, are
  no prediction. Raises GroundTruthError when a query has no ground truth or no
  query has a landmark (M = 0).
  """
  _check_queries(answers, ground_truth)
  num_landmark_queries = sum(label is not None for label in ground_truth.values())
  if num_landmark_queries == 0:
    raise GroundTruthError("GAP needs at least one query with a landmark in the ground truth")
  predictions = sorted(
    ((query, label, score) for query, (label, score) in answers.items() if label is not None),
    key=lambda item: (-item[2], item[0], item[1]),
  )
  total, correct = 0.0, 0
  for i, (query, label, _) in enumerate(predictions, 1):
    if label == ground_truth[query]:
      correct += 1
      total += correct / i
  return total / num_landmark_queries


@dataclasses.dataclass(frozen=True)
class RecognitionMetrics:
  """Figures of a set of answers (fractions in [0, 1]).

  gap: Global Average Precision. accuracy: answers equal to the ground truth over
  all queries ("unknown" is right for a non-landmark query). landmark_accuracy: the
  challenge's top-1 accuracy (right labels over the landmark queries only). gap and
  landmark_accuracy are None when no query has a landmark.
  """

  gap: float | None
  accuracy: float
  landmark_accuracy: float | None
  num_queries: int
  num_landmark_queries: int

  def as_dict(self) -> dict[str, float | int]:
    return dataclasses.asdict(self)


def evaluate_recognition(
  answers: Mapping[str, Answer], ground_truth: Mapping[str, str | None]
) -> RecognitionMetrics:
  """GAP and accuracies of ``answers`` over the queries of ``ground_truth`` (each must have an
  answer; a query missing from ``answers`` raises GroundTruthError)."""
  unanswered = [query for query in ground_truth if query not in answers]
  if unanswered:
    raise GroundTruthError(f"{len(unanswered)} queries have no answer, e.g. {unanswered[0]}")
  if not ground_truth:
    raise GroundTruthError("no query to evaluate")
  right = [answers[query][0] == label for query, label in ground_truth.items()]
  landmark = [r for r, label in zip(right, ground_truth.values()) if label is not None]
  return RecognitionMetrics(
    gap=global_average_precision(answers, ground_truth) if landmark else None,
    accuracy=sum(right) / len(right),
    landmark_accuracy=sum(landmark) / len(landmark) if landmark else None,
    num_queries=len(right),
    num_landmark_queries=len(landmark),
  )


def thresholded(answers: Mapping[str, Answer], min_score: float) -> dict[str, Answer]:
  """The answers with every label whose score is below ``min_score`` turned into "unknown"."""
  return {
    query: (label if label is not None and score >= min_score else None, score)
    for query, (label, score) in answers.items()
  }


@dataclasses.dataclass(frozen=True)
class Calibration:
  """The chosen ``min_score``, its figures, and accuracy at every threshold tried."""

  min_score: float
  metrics: RecognitionMetrics
  accuracy_by_threshold: dict[float, float]


def choose_min_score(
  answers: Mapping[str, Answer], ground_truth: Mapping[str, str | None]
) -> Calibration:
  """The ``recognition_min_score`` that maximises accuracy on a labelled validation set.

  answers: each query's answer with no threshold (min_score 0): its best label and
  score. Accuracy is maximised, not GAP: GAP never rewards "unknown" (turning the
  lowest-scored predictions away only removes terms from its sum), so it is
  highest with no threshold at all; accuracy counts "unknown" as right for a
  non-landmark query and wrong for a landmark one. Every threshold that changes an
  answer is tried (each distinct score, and one above all). Of the thresholds that
  reach the best accuracy, the lowest is taken, then moved to the middle of the
  gap below it (between the highest score it turns away, or 0, and the lowest it
  keeps), so that it sits as far from both as the data allows.
  """
  scores = sorted({score for label, score in answers.values() if label is not None and score > 0})
  candidates = [0.0, *scores, (scores[-1] + 1.0) if scores else 1.0]
  table = {}
  for threshold in candidates:
    table[threshold] = evaluate_recognition(thresholded(answers, threshold), ground_truth).accuracy
  best = max(table.values())
  position = next(i for i, t in enumerate(candidates) if table[t] == best)
  chosen = candidates[position]
  if position > 0:
    chosen = (candidates[position - 1] + chosen) / 2.0
  return Calibration(
    chosen, evaluate_recognition(thresholded(answers, chosen), ground_truth), table
  )
