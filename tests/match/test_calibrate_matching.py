"""scripts/calibrate_matching.py: the block it writes into a config, on a hand-built case."""

import importlib.util

from conftest import REPO
from delf_ret.config import parse_config_text


def load_script():
  spec = importlib.util.spec_from_file_location(
    "calibrate_matching", REPO / "scripts" / "calibrate_matching.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


OLD = """model_path: "m.npz"
retrieval_config {
  # Chosen by scripts/calibrate_matching.py on training photos: min_inliers is one more than
  #   ratio 0.85: min_inliers 22, 33.3% of related pairs verified (median 11 inliers)
  match_distance_threshold: 2.0
  match_ratio_threshold: 0.85
  min_inliers: 22
  # Recognition: chosen by recognize --calibrate.
  recognition_min_score: 22.5
}
"""


def figures(min_inliers, related_verified, mutual, method, spread):
  return {
    "distance": 2.0,
    "ratio": 0.8,
    "mutual": mutual,
    "method": method,
    "spread": spread,
    "min_inliers": min_inliers,
    "related_verified": related_verified,
    "related_median": 7.0,
    "unrelated_p99": 3.0,
  }


def test_the_best_combination_is_written_and_other_fields_are_kept():
  script = load_script()
  results = {
    ("ratio 0.8", "RANSAC"): figures(30, 0.2, False, "ransac", 0.0),
    ("ratio 0.8, mutual", "RANSAC, spread 0.02"): figures(9, 0.4, True, "ransac", 0.02),
    ("ratio 0.8, mutual", "MAGSAC++"): figures(12, 0.4, True, "usac_magsac", 0.0),
  }
  best = script.best_of(results)
  assert best == ("ratio 0.8, mutual", "RANSAC, spread 0.02")  # Tie on share: fewer inliers.
  text = script.write_block(OLD, results, best, 150, 1500)
  assert text.count("Chosen by") == 1 and "ratio 0.85" not in text
  assert "#   ratio 0.8, mutual / MAGSAC++: min_inliers 12, 40.0% (median 7)" in text
  assert "# Recognition: chosen by recognize --calibrate." in text
  retrieval = parse_config_text(text).retrieval_config
  assert (round(retrieval.match_ratio_threshold, 4), retrieval.match_mutual) == (0.8, True)
  assert (retrieval.ransac_method, round(retrieval.min_inlier_spread, 4)) == ("ransac", 0.02)
  assert (retrieval.min_inliers, retrieval.rerank_min_inliers) == (9, 9)
  assert retrieval.recognition_min_score == 22.5
  # A config without a retrieval_config block gets one.
  added = script.write_block('model_path: "m.npz"\n', results, best, 150, 1500)
  assert parse_config_text(added).retrieval_config.min_inliers == 9
