"""Figures on the validation photos of labelled shards (variant choice on training data)."""

import dataclasses
import json
import sys

import numpy as np
import pytest

from conftest import BUNDLED_IMAGES
from conftest import run_command
from conftest import tool_env
from delf_ret.config import load_config
from delf_ret.default_model import default_config_path
from delf_ret.match import RansacParams
from delf_ret.match import verify_pair
from delf_ret.train.pair_verification import PairVerifier
from delf_ret.train.validation import inlier_matrix
from delf_ret.train.validation import pipeline_figures
from delf_ret.train.validation import pipeline_scores
from delf_ret.train.validation import validation_figures


def test_figures_of_a_hand_built_inlier_matrix():
  # Photos 0, 1 of label 0; 2, 3 of label 1. Pair (0, 1): 30 inliers, (2, 3): 5;
  # unrelated pairs: (0, 2) 12, (1, 3) 7, the others 0.
  inliers = np.zeros((4, 4), np.int64)
  for (a, b), count in {(0, 1): 30, (2, 3): 5, (0, 2): 12, (1, 3): 7}.items():
    inliers[a, b] = inliers[b, a] = count
  figures = validation_figures(inliers, [0, 0, 1, 1], min_inliers=10)
  # Queries: 0 ranks 1 first (AP 1); 1 ranks 0 first (AP 1); 2 ranks 0 (12) before 3 (5):
  # AP (0/1 + 1/2) / 2 = 0.25; 3 ranks 1 (7) before 2 (5): AP 0.25.
  assert figures["map_by_inliers"] == pytest.approx(100 * 2.5 / 4)
  assert (figures["related_pairs"], figures["related_verified_share"]) == (2, 0.5)
  assert figures["related_median_inliers"] == 17.5
  assert (figures["unrelated_pairs"], figures["unrelated_verified"]) == (4, 1)
  assert figures["unrelated_max_inliers"] == 12
  assert "unseen" not in figures
  # Label 1 held out of training: its photos 2 and 3 are the unseen queries (AP 0.25 each),
  # ranked against all photos; their one pair (5 inliers) does not reach 10.
  unseen = validation_figures(inliers, [0, 0, 1, 1], min_inliers=10, unseen=[1])["unseen"]
  assert unseen == {
    "labels": [1],
    "queries": 2,
    "map_by_inliers": 25.0,
    "related_verified_share": 0.0,
  }
  alone = validation_figures(inliers, [0, 1, 2, 3], min_inliers=10)
  assert (alone["map_by_inliers"], alone["queries"], alone["related_pairs"]) == (None, 0, 0)
  assert alone["unrelated_verified"] == 2  # (0, 1) with 30 and (0, 2) with 12


def test_pipeline_figures_run_votes_then_reranking_without_the_query_itself():
  from conftest import make_features
  from conftest import random_unit_descriptors
  from delf_ret.config import DelfRetrievalConfig

  rng = np.random.default_rng(0)
  points = rng.uniform(0, 300, (40, 2))
  a, b = random_unit_descriptors(rng, 40, 8), random_unit_descriptors(rng, 40, 8)
  # Photos 0, 1: one scene (same descriptors, shifted); 2, 3: another; 4: nothing.
  features = [
    make_features(points, a),
    make_features(points + [5.0, 9.0], a),
    make_features(points, b),
    make_features(points[:30] + [12.0, 3.0], b[:30]),
    make_features(np.zeros((0, 2)), np.zeros((0, 8), np.float32)),
  ]
  config = DelfRetrievalConfig(neighbors_per_descriptor=2, rerank_top_n=3)
  votes, reranked = pipeline_scores(features, config)
  # By votes each query's scene partner is in the first two places (5 or 4, beside the
  # query itself, which is indexed too); reranking skips the query, so the verified partner
  # comes first (5). Photo 4 has no features: never listed, never a query (0).
  partners = ((0, 1), (1, 0), (2, 3), (3, 2))
  assert all(votes[q, d] >= 4 for q, d in partners)
  assert all(reranked[q, d] == 5 for q, d in partners)
  assert np.all(votes[4] == 0) and np.all(votes[:, 4] == 0)
  figures = pipeline_figures(votes, reranked, [0, 0, 1, 1, 2], unseen=[1])
  assert figures == {
    "votes_map": 100.0,
    "reranked_map": 100.0,
    "unseen_votes_map": 100.0,
    "unseen_reranked_map": 100.0,
  }
  # Labels that pair photos of different scenes: their partner ranks below the real one.
  crossed = pipeline_figures(votes, reranked, [0, 1, 0, 1, 2])
  assert crossed["votes_map"] < 100 and "unseen_votes_map" not in crossed


@pytest.fixture(scope="module")
def bundled_features():
  """The shipped default model's features of six bundled photos (three pairs of one scene)
  at 256 px, and its retrieval_config's RansacParams."""
  from delf_ret.extract.extractor import DelfExtractor

  config = load_config(default_config_path(), ["max_image_size=256"])
  extractor = DelfExtractor(config)
  names = ["graffiti_1", "graffiti_3", "leuven_a", "leuven_b", "roofs_1", "roofs_2"]
  features = [extractor.extract_file(BUNDLED_IMAGES / f"{name}.jpg") for name in names]
  return features, RansacParams.from_config(config.retrieval_config)


@pytest.mark.slow  # Extracts six photos with the default model, starts worker processes (~11 s).
def test_inlier_matrix_on_two_workers_equals_the_serial_loop(bundled_features):
  features, params = bundled_features
  count = len(features)
  expected = np.zeros((count, count), np.int64)
  for a in range(count):
    for b in range(a + 1, count):
      expected[a, b] = expected[b, a] = verify_pair(features[a], features[b], params).num_inliers
  assert expected[0, 1] > 0 and expected[2, 3] > 0  # Verified pairs of one scene.
  lines = []
  parallel = inlier_matrix(features, params, workers=2, log=lines.append)
  np.testing.assert_array_equal(parallel, expected)
  np.testing.assert_array_equal(inlier_matrix(features, params, workers=1), expected)
  assert lines[-1] == "validation: verified 15/15 pairs" and len(lines) <= 10
  # Several verifiers at once, one pool for two calls (scripts/calibrate_matching.py): each
  # column is verify_pair's, whichever worker verified the pair.
  all_params = [params, dataclasses.replace(params, method="ransac", min_spread=0.02)]
  pairs = [(5, 4), (0, 1), (3, 2), (0, 5)]
  with PairVerifier(features, workers=2) as pool:
    for _ in range(2):
      counts = pool.inliers(pairs, all_params)
      assert counts.tolist() == [
        [verify_pair(features[a], features[b], p).num_inliers for p in all_params] for a, b in pairs
      ]
  with pytest.raises(ValueError, match="workers must be at least 1"):
    PairVerifier(features, workers=0)


@pytest.mark.slow  # Retrieval over six photos, worker processes (~8 s).
def test_pipeline_scores_on_two_workers_equal_retrieve_query_by_query(bundled_features):
  from delf_ret.index import LocalFeatureIndex
  from delf_ret.retrieval.ranking import retrieve

  features, _ = bundled_features
  overrides = ["retrieval_config.rerank_top_n=3", "retrieval_config.rerank_min_inliers=5"]
  config = load_config(default_config_path(), overrides).retrieval_config
  count = len(features)
  index = LocalFeatureIndex(features[0].descriptors.shape[1])
  for i, feature in enumerate(features):
    index.add(str(i), feature.descriptors)
  expected_votes, expected_reranked = np.zeros((count, count)), np.zeros((count, count))
  for query in range(count):
    result = retrieve(
      features[query], index, lambda name: features[int(name)], config, {"v": {str(query)}}
    )
    for scores, listing in ((expected_votes, result.ranked), (expected_reranked, result.reranked)):
      for position, entry in enumerate(listing):
        scores[query, int(entry.image_id)] = count - position
  # Reranking changed some list (a verified partner moved up): the check below can fail.
  assert not np.array_equal(np.argsort(-expected_votes), np.argsort(-expected_reranked))
  lines = []
  votes, reranked = pipeline_scores(features, config, workers=2, log=lines.append)
  np.testing.assert_array_equal(votes, expected_votes)
  np.testing.assert_array_equal(reranked, expected_reranked)
  assert lines[-1] == "validation: reranking verified 18/18 pairs"
  # With the all-pairs matrix, the pairs of a query before its candidate come from it.
  inliers = inlier_matrix(features, RansacParams.from_config(config), workers=1)
  lines = []
  votes, reranked = pipeline_scores(features, config, 1, lines.append, inliers)
  np.testing.assert_array_equal(reranked, expected_reranked)
  assert lines[-1].startswith("validation: reranking verified ") and "/18 " not in lines[-1]
  # One pool of 2 workers serving both (as validate_model does), left open by them.
  with PairVerifier(features, 2) as verifier:
    shared = inlier_matrix(features, RansacParams.from_config(config), verifier=verifier)
    np.testing.assert_array_equal(shared, inliers)
    votes, reranked = pipeline_scores(features, config, inliers=shared, verifier=verifier)
    np.testing.assert_array_equal(reranked, expected_reranked)
    pairs = np.array([[0, 1]])
    assert verifier.inliers(pairs, [RansacParams.from_config(config)])[0, 0] == inliers[0, 1]


@pytest.mark.slow  # Prepares shards of 15 photos and extracts 9 with the default model (~20 s).
def test_validate_command_on_labelled_shards(tmp_path, shared_data):
  from test_labelled_photos import photo_folder

  from delf_ret.train.labelled import prepare_labelled_photos

  photo_folder(tmp_path / "photos", shared_data)
  # At most 320 px: the default model extracts each validation photo at up to 1024 px and 5
  # scales; on the full-size photos that was about a third of this test's CPU time.
  from PIL import Image

  for path in (tmp_path / "photos").glob("*/*.jpg"):
    with Image.open(path) as photo:
      small = photo.convert("RGB")
    small.thumbnail((320, 320))
    small.save(path, quality=95)
  prepare_labelled_photos(
    tmp_path / "photos" / "labels.csv",
    tmp_path / "shards",
    num_shards=2,
    validation_share=0.4,
    holdout_labels=1,
    log=lambda line: None,
  )
  output = tmp_path / "figures.json"
  args = ["-m", "delf_ret.train.recipe", "validate", str(default_config_path())]
  result = run_command(
    [sys.executable, *args, str(tmp_path / "shards"), "--output", str(output)],
    timeout=600,
    env=tool_env(),
  )
  assert result.returncode == 0, result.stderr[-2000:]
  figures = json.loads(output.read_text())
  assert figures == json.loads(result.stdout.strip().splitlines()[-1])
  # The held-out label's 5 photos and 2 of each other label's 5.
  assert (figures["photos"], figures["labels"]) == (9, 3)
  assert (figures["related_pairs"], figures["unrelated_pairs"]) == (10 + 1 + 1, 36 - 12)
  assert 0 <= figures["map_by_inliers"] <= 100
  assert figures["unseen"]["queries"] == 5 and len(figures["unseen"]["labels"]) == 1
  assert 0 <= figures["unseen"]["map_by_inliers"] <= 100
  assert set(figures["pipeline"]) == {
    "votes_map",
    "reranked_map",
    "unseen_votes_map",
    "unseen_reranked_map",
  }
  assert all(0 <= value <= 100 for value in figures["pipeline"].values())
  # The quick screen: the votes alone, no all-pairs verification.
  screen = run_command(
    [
      sys.executable,
      *args,
      str(tmp_path / "shards"),
      "--pipeline_only",
      "--config_override=retrieval_config.rerank_top_n=0",
    ],
    timeout=600,
    env=tool_env(),
  )
  assert screen.returncode == 0, screen.stderr[-2000:]
  quick = json.loads(screen.stdout.strip().splitlines()[-1])
  assert "map_by_inliers" not in quick and (quick["photos"], quick["labels"]) == (9, 3)
  votes = figures["pipeline"]["votes_map"], figures["pipeline"]["unseen_votes_map"]
  assert (quick["pipeline"]["votes_map"], quick["pipeline"]["unseen_votes_map"]) == votes
  assert quick["pipeline"]["reranked_map"] == quick["pipeline"]["votes_map"]
  assert "reranking verified" not in screen.stderr
  missing = run_command(
    [sys.executable, *args, str(tmp_path / "nowhere")], timeout=120, env=tool_env()
  )
  assert missing.returncode == 1
  assert missing.stderr.strip().splitlines()[-1] == (
    f"error: {tmp_path / 'nowhere'}: no validation-*.tfrecord shards (write them with "
    "prepare_labelled_photos)"
  )
