"""Global Average Precision, accuracy and the choice of recognition_min_score, by hand."""

import pytest

from delf_ret.evaluation.ground_truth import GroundTruthError
from delf_ret.evaluation.recognition import choose_min_score
from delf_ret.evaluation.recognition import evaluate_recognition
from delf_ret.evaluation.recognition import global_average_precision
from delf_ret.evaluation.recognition import thresholded

# q3 shows no landmark; q4 is answered "unknown"; q2 and q5 tie at score 40.
GROUND_TRUTH = {"q1": "A", "q2": "B", "q3": None, "q4": "C", "q5": "A"}
ANSWERS = {
  "q1": ("A", 50.0),
  "q2": ("A", 40.0),
  "q3": ("B", 45.0),
  "q4": (None, 10.0),
  "q5": ("A", 40.0),
}


def test_gap_by_hand_with_a_non_landmark_query_unknown_and_a_tie():
  # Sorted by score, ties by query id: q1 right (1/1), q3 wrong, q2 wrong, q5 right (2/4);
  # M = 4 landmark queries (q4's "unknown" is no prediction but counts in M).
  assert global_average_precision(ANSWERS, GROUND_TRUTH) == pytest.approx((1 + 2 / 4) / 4)
  # Renamed q0, the right answer wins the tie (before q2): (1 + 2 / 3) / 4.
  renamed = {"q0" if k == "q5" else k: v for k, v in ANSWERS.items()}
  truth = {"q0" if k == "q5" else k: v for k, v in GROUND_TRUTH.items()}
  assert global_average_precision(renamed, truth) == pytest.approx((1 + 2 / 3) / 4)


def test_gap_false_positive_on_a_non_landmark_query_costs_precision():
  truth = {"a": "A", "n": None}
  assert global_average_precision({"a": ("A", 10.0), "n": (None, 0.0)}, truth) == 1.0
  # A confident wrong answer on the non-landmark query comes first: the right one has P = 1/2.
  assert global_average_precision({"a": ("A", 10.0), "n": ("B", 20.0)}, truth) == 0.5
  assert global_average_precision({"a": ("A", 10.0), "n": ("B", 5.0)}, truth) == 1.0
  # A query without an answer is no prediction.
  assert global_average_precision({}, truth) == 0.0


def test_gap_refuses_queries_without_ground_truth_and_no_landmark():
  with pytest.raises(GroundTruthError, match="no ground truth"):
    global_average_precision({"x": ("A", 1.0)}, {"a": "A"})
  with pytest.raises(GroundTruthError, match="at least one query with a landmark"):
    global_average_precision({"n": ("A", 1.0)}, {"n": None})


def test_accuracies_count_unknown_right_only_for_non_landmark_queries():
  metrics = evaluate_recognition(ANSWERS, GROUND_TRUTH)
  assert metrics.accuracy == pytest.approx(2 / 5)  # q1, q5
  assert metrics.landmark_accuracy == pytest.approx(2 / 4)
  assert (metrics.num_queries, metrics.num_landmark_queries) == (5, 4)
  unknown_right = evaluate_recognition({"n": (None, 0.0), "a": ("A", 3.0)}, {"n": None, "a": "A"})
  assert unknown_right.accuracy == 1.0 and unknown_right.gap == 1.0
  only_distractors = evaluate_recognition({"n": (None, 0.0)}, {"n": None})
  assert only_distractors.gap is None and only_distractors.accuracy == 1.0
  with pytest.raises(GroundTruthError, match="no answer"):
    evaluate_recognition({}, {"a": "A"})


def test_thresholded_turns_low_scores_into_unknown():
  assert thresholded(ANSWERS, 45.0) == {
    "q1": ("A", 50.0),
    "q2": (None, 40.0),
    "q3": ("B", 45.0),
    "q4": (None, 10.0),
    "q5": (None, 40.0),
  }


def test_choose_min_score_maximises_accuracy_in_the_middle_of_the_gap():
  truth = {"a": "A", "b": None, "c": "C", "d": None}
  answers = {"a": ("A", 30.0), "b": ("B", 10.0), "c": ("C", 40.0), "d": ("D", 8.0)}
  calibration = choose_min_score(answers, truth)
  # 0 and 8: 2/4; 10: d unknown, 3/4; 30: b unknown too, 4/4; 40: a lost, 3/4; 41: 2/4.
  assert calibration.accuracy_by_threshold == {
    0.0: 0.5,
    8.0: 0.5,
    10.0: 0.75,
    30.0: 1.0,
    40.0: 0.75,
    41.0: 0.5,
  }
  # Between the highest score turned away (10) and the lowest kept (30).
  assert calibration.min_score == 20.0
  assert calibration.metrics.accuracy == 1.0 and calibration.metrics.gap == 1.0
  # GAP alone would never prefer a threshold: it is highest at 0.
  assert global_average_precision(answers, truth) >= global_average_precision(
    thresholded(answers, 20.0), truth
  )
