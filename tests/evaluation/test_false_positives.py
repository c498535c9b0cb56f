"""The false-positive count of verification on a hand-built case."""

from delf_ret.evaluation.false_positives import count_false_positives
from delf_ret.evaluation.false_positives import pair_kind


def test_pair_kinds():
  assert pair_kind("bridge", "bridge") is None
  assert pair_kind("bridge", "") == "landmark-distractor"
  assert pair_kind(None, "tower") == "landmark-distractor"
  assert pair_kind("", None) == "distractor-distractor"
  assert pair_kind("bridge", "tower") == "landmark-landmark"


def test_counts_on_a_hand_built_case():
  # Two bridge photos, one tower photo, three distractors: 15 pairs, 1 related.
  groups = {"b1": "bridge", "b2": "bridge", "t1": "tower", "d1": "", "d2": None, "d3": ""}
  inliers = {
    ("b1", "b2"): 80,  # related: never counted, however many inliers
    ("b1", "d1"): 12,  # landmark-distractor, accepted at 10
    ("t1", "d3"): 10,  # exactly min_inliers: accepted
    ("b2", "d2"): 9,  # one short: rejected
    ("d1", "d2"): 30,  # distractor-distractor, accepted
    ("b2", "t1"): 11,  # landmark-landmark, accepted
  }
  calls = []

  def inliers_of(a, b):
    calls.append((a, b))
    return inliers.get((a, b), 0)

  result = count_false_positives(groups, inliers_of, min_inliers=10)
  assert len(calls) == 14 and ("b1", "b2") not in calls
  assert result.pairs == {
    "landmark-distractor": 9,
    "distractor-distractor": 3,
    "landmark-landmark": 2,
  }
  assert result.accepted["landmark-distractor"] == [("b1", "d1", 12), ("t1", "d3", 10)]
  assert result.accepted["distractor-distractor"] == [("d1", "d2", 30)]
  assert result.accepted["landmark-landmark"] == [("b2", "t1", 11)]
  assert (result.count(), result.count("landmark-distractor")) == (4, 2)
  assert count_false_positives(groups, inliers_of, min_inliers=31).count() == 0
  assert result.to_json()["accepted"] == {
    "landmark-distractor": 2,
    "distractor-distractor": 1,
    "landmark-landmark": 1,
  }
