"""Metrics against hand-computed values."""

import math

import numpy as np
import pytest

from delf_ret.evaluation import metrics as evaluation
from delf_ret.evaluation.metrics import average_precision
from delf_ret.evaluation.metrics import evaluate_original
from delf_ret.evaluation.metrics import evaluate_revisited
from delf_ret.evaluation.metrics import evaluate_split
from delf_ret.evaluation.metrics import positive_ranks


def test_positive_ranks_remove_ignored_first():
  # Ranked: 7 (junk), 3 (pos), 9, 4 (pos) -> after removing 7: 3, 9, 4 -> ranks 0 and 2.
  np.testing.assert_array_equal(positive_ranks([7, 3, 9, 4], [3, 4], [7]), [0, 2])


def test_average_precision_by_hand():
  # Positives at ranks 0 and 2 of 2: ((1 + 1/1) / 2 + (1/2 + 2/3) / 2) / 2 = (1 + 7/12) / 2.
  assert average_precision(np.array([0, 2]), 2) == pytest.approx((1 + 7 / 12) / 2)
  # One positive at rank 1: (0/1 + 1/2) / 2 = 0.25; a second positive never retrieved.
  assert average_precision(np.array([1]), 2) == pytest.approx(0.125)
  assert average_precision(np.array([0, 1, 2]), 3) == pytest.approx(1.0)
  with pytest.raises(ValueError):
    average_precision(np.array([]), 0)


def test_precision_and_recall_at_k():
  metrics = evaluate_split(
    [np.array([5, 1, 2, 3, 4, 0])], [np.array([1, 3, 0])], [np.array([])], ks=(1, 2, 5)
  )
  assert metrics.precision_at == {1: 0.0, 2: 0.5, 5: 0.4}
  assert metrics.recall_at == pytest.approx({1: 0.0, 2: 1 / 3, 5: 2 / 3})


def test_revisited_splits_with_junk_and_empty_queries():
  ranked = [np.array([0, 1, 2, 3, 4]), np.array([4, 3, 2, 1, 0])]
  gnd = [{"easy": [2], "hard": [0], "junk": [1]}, {"easy": [], "hard": [1], "junk": [4]}]
  result = evaluate_revisited(ranked, gnd)
  # Query 0, easy: ignored {1, 0} -> list 2, 3, 4: easy 2 at rank 0 -> AP 1.
  # Query 1 has no easy positives: excluded from the easy mean.
  assert result["easy"].mean_ap == pytest.approx(1.0)
  assert result["easy"].num_queries == 1
  assert math.isnan(result["easy"].ap_per_query[1])
  # Medium: q0 positives {2, 0}, ignore {1}: list 0, 2, 3, 4 -> ranks 0, 1 -> AP 1.
  # q1 positives {1}, ignore {4}: list 3, 2, 1, 0 -> rank 2 -> (2/2... j=0: 0/2 + 1/3) / 2 = 1/6.
  assert result["medium"].ap_per_query == pytest.approx([1.0, 1 / 6])
  assert result["medium"].mean_ap == pytest.approx((1 + 1 / 6) / 2)
  # Hard: q0 positive {0}, ignore {1, 2}: list 0, 3, 4 -> rank 0 -> AP 1; q1 as in medium.
  assert result["hard"].ap_per_query == pytest.approx([1.0, 1 / 6])


def test_original_protocol_good_ok_junk():
  ranked = [np.array([3, 0, 1, 2])]
  gnd = [{"good": [1], "ok": [2], "junk": [3]}]
  # Junk 3 removed -> 0, 1, 2: positives at ranks 1, 2.
  expected = ((0 / 1 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2) / 2
  assert evaluate_original(ranked, gnd).mean_ap == pytest.approx(expected)


def test_interpolated_precision_by_hand():
  # 3 positives at ranks 0, 2, 5: precision 1, 2/3, 1/2 at recall 1/3, 2/3, 1.
  curve = evaluation.interpolated_precision(np.array([0, 2, 5]), 3, (0.0, 0.3, 0.5, 0.7, 1.0))
  np.testing.assert_allclose(curve, [1.0, 1.0, 2 / 3, 0.5, 0.5])
  # A positive never ranked: recall 1 is never reached.
  curve = evaluation.interpolated_precision(np.array([1]), 2, (0.5, 1.0))
  np.testing.assert_allclose(curve, [0.5, 0.0])


def test_split_metrics_carry_the_mean_pr_curve():
  metrics = evaluation.evaluate_split(
    [np.array([0, 1]), np.array([1, 0])],
    [np.array([0]), np.array([0])],
    [np.array([]), np.array([])],
  )
  assert len(metrics.pr_curve) == len(evaluation.RECALL_LEVELS)
  np.testing.assert_allclose(metrics.pr_curve, 0.75)  # (1 + 1/2) / 2 at every level.


def test_precision_at_k_as_revisitop_computes_it():
  # Perfect ranking of 3 positives: kq = min(3, k) -> 1.0 for every k (positives / k gives 0.6
  # at k = 5).
  perfect = evaluate_split(
    [np.array([0, 1, 2, 3, 4])], [np.array([0, 1, 2])], [np.array([])], ks=(1, 3, 5)
  )
  assert perfect.precision_at == {1: 1.0, 3: 1.0, 5: 1.0}
  # Positives at 1-based positions 2 and 4: k=1 -> kq 1 -> 0; k=3 -> kq 3 -> 1/3;
  # k=5 -> kq 4 -> 2/4.
  assert evaluation.precision_at_k(np.array([1, 3]), 1) == 0.0
  assert evaluation.precision_at_k(np.array([1, 3]), 3) == pytest.approx(1 / 3)
  assert evaluation.precision_at_k(np.array([1, 3]), 5) == 0.5
  assert evaluation.precision_at_k(np.array([], np.int64), 5) == 0.0


def test_an_image_listed_twice_counts_once():
  # all_souls_1_good.txt lists all_souls_000091 twice: 2 positives, not 3.
  ranked = [np.array([4, 7, 0, 1])]
  result = evaluate_original(ranked, [{"good": [4, 7, 4], "ok": [], "junk": []}])
  assert result.mean_ap == pytest.approx(1.0)
  assert result.recall_at[1] == pytest.approx(0.5)


@pytest.mark.parametrize(
  "ranked, ks, message",
  [
    ([np.array([0, 1]), np.array([1, 0])], (1,), "2 ranked lists for 1 queries"),
    ([np.array([[0, 1], [1, 0]])], (1,), "1-d array"),
    ([np.array([0.5, 1.0])], (1,), "1-d array"),
    ([np.array([0, 1])], (0,), "at least 1"),
    ([np.array([0, 1, 3])], (1,), r"outside the database \(ids must be 0..2\), e.g. 3"),
    ([np.array([0, -1, 2])], (1,), "outside the database .* e.g. -1"),
  ],
)
def test_bad_rankings_give_clear_errors(ranked, ks, message):
  with pytest.raises(evaluation.RankingError, match=message):
    evaluate_split(ranked, [np.array([0])], [np.array([])], ks=ks, num_database=3)


def test_all_pairs_map_by_hand():
  from delf_ret.evaluation.metrics import all_pairs_map

  scores = np.array(
    [
      [9.0, 0.9, 0.1, 0.2],  # query 0: its positive (1) first: AP 1
      [0.1, 9.0, 0.5, 0.2],  # query 1: 2, 3, then its positive 0 at rank 2: (0/2 + 1/3) / 2
      [0.3, 0.2, 9.0, 0.9],  # query 2: positive 3 first: AP 1
      [0.1, 0.2, 0.3, 9.0],  # query 3: positive 2 first: AP 1 (the diagonal is ignored)
    ]
  )
  assert all_pairs_map(scores, ["a", "a", "b", "b"]) == pytest.approx((3 + 1 / 6) / 4)
  # Only queries 1 and 2 (ranked against all photos).
  assert all_pairs_map(scores, ["a", "a", "b", "b"], [1, 2]) == pytest.approx((1 / 6 + 1) / 2)
  # A photo alone in its label is not a query (and still ranks as a negative).
  assert all_pairs_map(scores[:3, :3], ["a", "a", "c"]) == pytest.approx((1 + 1 / 4) / 2)
  with pytest.raises(ValueError, match="no query has a positive"):
    all_pairs_map(scores[:2, :2], ["a", "b"])
