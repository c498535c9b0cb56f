"""Vote aggregation, ranking and reranking on hand-made data."""

import numpy as np
import pytest

from conftest import make_features
from conftest import random_unit_descriptors
from delf_ret.config import ConfigError
from delf_ret.config import DelfRetrievalConfig
from delf_ret.index import LocalFeatureIndex
from delf_ret.retrieval.ranking import RankedImage
from delf_ret.retrieval.ranking import aggregate_votes
from delf_ret.retrieval.ranking import is_verified
from delf_ret.retrieval.ranking import rank_database
from delf_ret.retrieval.ranking import rerank


def test_aggregate_votes_by_hand():
  slots = np.array([[0, 0, 1], [1, -1, 2]])
  distances = np.array([[0.0, 0.1, 1.0], [0.5, np.inf, 3.0]])
  assert aggregate_votes(slots, distances, "count") == {0: 1.0, 1: 2.0, 2: 1.0}
  # Similarity 1 - d2/2: slot 0 -> 1.0; slot 1 -> 0.5 + 0.75; slot 2 -> max(0, -0.5) = 0.
  assert aggregate_votes(slots, distances, "similarity") == pytest.approx({0: 1.0, 1: 1.25, 2: 0.0})
  with pytest.raises(ValueError):
    aggregate_votes(slots, distances, "sum")


def test_vectorised_votes_equal_a_per_descriptor_loop():
  rng = np.random.default_rng(5)
  slots = rng.integers(-1, 12, size=(300, 10))
  distances = np.sort(rng.uniform(0.0, 2.5, size=(300, 10)), axis=1)
  for weighting in ("count", "similarity"):
    expected = {}
    for row_slots, row_distances in zip(slots, distances):
      seen = set()
      for slot, distance in zip(row_slots, row_distances):
        if slot >= 0 and slot not in seen:
          seen.add(slot)
          vote = 1.0 if weighting == "count" else max(0.0, 1.0 - distance / 2.0)
          expected[int(slot)] = expected.get(int(slot), 0.0) + vote
    assert aggregate_votes(slots, distances, weighting) == pytest.approx(expected)


def test_rank_then_rerank_puts_geometrically_consistent_image_first():
  rng = np.random.default_rng(0)
  descriptors = random_unit_descriptors(rng, 60, 8)
  points = rng.uniform(0, 300, (60, 2))
  query = make_features(points, descriptors)
  database = {
    # Same descriptors, scrambled geometry: many votes, no consistent transform.
    "decoy": make_features(rng.uniform(0, 300, (60, 2)), descriptors),
    # Same scene shifted by (10, 20): same descriptors, consistent geometry.
    "match": make_features(points[:40] + [10.0, 20.0], descriptors[:40]),
    "other": make_features(rng.uniform(0, 300, (30, 2)), rng.normal(size=(30, 8))),
  }
  index = LocalFeatureIndex(8)
  for name, feats in database.items():
    index.add(name, feats.descriptors)
  ranked = rank_database(
    index,
    query.descriptors,
    DelfRetrievalConfig(neighbors_per_descriptor=2, vote_weighting="count"),
  )
  assert [entry.image_id for entry in ranked[:2]] == ["decoy", "match"]
  reranked = rerank(
    query, ranked, database.__getitem__, DelfRetrievalConfig(rerank_top_n=10, min_inliers=10)
  )
  assert reranked[0].image_id == "match" and reranked[0].inliers == 40
  assert reranked[1].image_id == "decoy" and reranked[1].inliers < 10
  config = DelfRetrievalConfig(min_inliers=10)
  assert is_verified(reranked[0], config) and not is_verified(reranked[1], config)


def _partial_copies():
  """A query (30 random points) and candidates a-d holding its first 0, 6, 12, 12 features
  (RANSAC keeps all of them: 0, 6, 12, 12 inliers), ranked a, b, c, d, e by the first stage."""
  rng = np.random.default_rng(2)
  query = make_features(rng.uniform(0, 300, (30, 2)), random_unit_descriptors(rng, 30, 8))
  part = {
    name: make_features(query.locations[:n], query.descriptors[:n])
    for name, n in (("a", 0), ("b", 6), ("c", 12), ("d", 12))
  }
  ranked = [
    RankedImage(name, score) for name, score in (("a", 9), ("b", 8), ("c", 7), ("d", 7), ("e", 6))
  ]
  return query, part, ranked


@pytest.mark.parametrize("rerank_min_inliers", [0, 1])
def test_rerank_orders_by_inliers_below_min_inliers_as_the_official_code(rerank_min_inliers):
  # The official reranking sorts by (inliers, first-stage score) with no threshold:
  # min_inliers only says which are verified, it does not change the order.
  query, part, ranked = _partial_copies()
  config = DelfRetrievalConfig(
    rerank_top_n=4, min_inliers=50, rerank_min_inliers=rerank_min_inliers
  )
  out = rerank(query, ranked, part.__getitem__, config)
  assert [(e.image_id, e.inliers) for e in out] == [
    ("c", 12),  # Ties on inliers and score keep the first-stage order.
    ("d", 12),
    ("b", 6),
    ("a", 0),
    ("e", None),
  ]
  assert not any(is_verified(e, config) for e in out)


@pytest.mark.parametrize(
  "line, order",
  [
    (6, ["c", "d", "b", "a", "e"]),  # b's 6 inliers reach the line: it moves above a.
    (7, ["c", "d", "a", "b", "e"]),  # Only c and d move up; a and b keep their order.
    (13, ["a", "b", "c", "d", "e"]),  # None reaches 13: the first-stage order.
  ],
)
def test_rerank_min_inliers_moves_up_only_candidates_reaching_it(line, order):
  query, part, ranked = _partial_copies()
  config = DelfRetrievalConfig(rerank_top_n=4, rerank_min_inliers=line)
  out = rerank(query, ranked, part.__getitem__, config)
  assert [e.image_id for e in out] == order
  assert {e.image_id: e.inliers for e in out} == {"a": 0, "b": 6, "c": 12, "d": 12, "e": None}
  with pytest.raises(ConfigError, match="rerank_min_inliers"):
    rerank(query, ranked, part.__getitem__, DelfRetrievalConfig(rerank_min_inliers=-1))


def test_rerank_keeps_first_stage_order_below_threshold_and_tail():
  query = make_features(np.zeros((0, 2)), np.zeros((0, 8)))
  ranked = [RankedImage(name, score) for name, score in (("a", 5), ("b", 4), ("c", 3))]
  out = rerank(query, ranked, lambda name: query, DelfRetrievalConfig(rerank_top_n=2))
  assert [e.image_id for e in out] == ["a", "b", "c"]
  assert [e.inliers for e in out] == [0, 0, None]


def test_ranked_indices_put_unvoted_images_last_and_drop_ids_outside_the_database():
  from delf_ret.evaluation.ground_truth import RetrievalDataset
  from delf_ret.retrieval.dataset_runner import not_in_database
  from delf_ret.retrieval.dataset_runner import ranked_indices

  dataset = RetrievalDataset("toy", "revisited", ["a", "b", "c", "d"], ["q"], [{}])
  entries = [RankedImage("c", 5.0), RankedImage("q", 4.0), RankedImage("a", 1.0)]
  np.testing.assert_array_equal(ranked_indices(entries, dataset), [2, 0, 1, 3])
  assert not_in_database(entries, dataset) == ["q"]


def _counting_loader(features):
  loaded = []

  def load(name):
    loaded.append(name)
    return features

  return load, loaded


def test_junk_skipping_changes_which_candidates_are_verified_and_pairs_are_verified_once():
  rng = np.random.default_rng(1)
  query = make_features(rng.uniform(0, 300, (30, 2)), random_unit_descriptors(rng, 30, 8))
  ranked = [RankedImage(name, score) for name, score in (("j", 9), ("a", 8), ("b", 7), ("c", 6))]
  config = DelfRetrievalConfig(rerank_top_n=2)
  load, loaded = _counting_loader(query)  # Every candidate is the query itself: 30 inliers.
  plain = rerank(query, ranked, load, config)
  assert loaded == ["j", "a"]
  assert [(e.image_id, e.inliers) for e in plain] == [
    ("j", 30),
    ("a", 30),
    ("b", None),
    ("c", None),
  ]
  load, loaded = _counting_loader(query)
  verified = {}
  skipped = rerank(query, ranked, load, config, skip={"j"}, verified=verified)
  assert loaded == ["a", "b"]  # j is junk for this split: a and b are the top 2 verified.
  assert [(e.image_id, e.inliers) for e in skipped] == [
    ("a", 30),
    ("b", 30),
    ("j", None),
    ("c", None),
  ]
  # Another split with other junk reuses the verified pairs: only c is new.
  again = rerank(query, ranked, load, config, skip={"j", "a"}, verified=verified)
  assert loaded == ["a", "b", "c"] and verified == {"a": 30, "b": 30, "c": 30}
  assert [e.image_id for e in again[:2]] == ["b", "c"]


def test_splits_reranked_separately_are_scored_each_by_its_own_list():
  from delf_ret.evaluation.ground_truth import RetrievalDataset
  from delf_ret.retrieval.dataset_runner import evaluate_results
  from delf_ret.retrieval.ranking import RetrievalResult

  gnd = [{"easy": np.array([1]), "hard": np.array([2]), "junk": np.array([], np.int64)}]
  dataset = RetrievalDataset("toy", "revisited", ["a", "b", "c", "d"], ["q"], gnd)
  entries = lambda *names: [RankedImage(n, 1.0) for n in names]
  result = RetrievalResult(
    entries("a", "b", "c", "d"),
    entries("a", "b", "c", "d"),
    {
      "easy": entries("b", "a", "c", "d"),
      "medium": entries("a", "b", "c"),
      "hard": entries("c", "a", "b", "d"),
    },
    {},
  )
  lines = []
  scored = evaluate_results(dataset, [result], log=lines.append)
  assert scored["reranked"]["easy"].mean_ap == pytest.approx(1.0)  # b first.
  assert scored["reranked"]["hard"].mean_ap == pytest.approx(1.0)  # c first.
  # Medium: b and c at ranks 2 and 3; revisitop's trapezoid AP = (0 + 1/2) / 4 + (1/2 + 2/3) / 4.
  assert scored["reranked"]["medium"].mean_ap == pytest.approx(5 / 12)
  # First stage, easy: b at rank 2 (c, hard, ignored): (0 + 1/2) / 2.
  assert scored["first_stage"]["easy"].mean_ap == pytest.approx(1 / 4)
  assert lines == []
  outside = RetrievalResult(entries("q", "b", "c"), entries("q", "b", "c"))
  scored = evaluate_results(dataset, [outside], log=lines.append)
  assert scored["first_stage"]["medium"].mean_ap == pytest.approx(1.0)  # q dropped, not negative.
  assert len(lines) == 1 and "dropped 1 ranked images" in lines[0] and "q" in lines[0]
