"""Verification options that make it say no: OpenCV's USAC methods and the inliers' spread."""

import cv2
import numpy as np
import pytest
from test_match import AFFINE_XY
from test_match import affine_with_outliers
from test_match import apply_xy

from delf_ret import config as config_lib
from delf_ret.config import RANSAC_METHODS
from delf_ret.config import ConfigError
from delf_ret.config import DelfRetrievalConfig
from delf_ret.config import load_config
from delf_ret.default_model import default_config_path
from delf_ret.match import RansacParams
from delf_ret.match import verify_matches
from delf_ret.match.verify import METHODS
from delf_ret.match.verify import RANSAC_BACKENDS
from delf_ret.match.verify import TRANSFORMS
from delf_ret.match.verify import inlier_spread

SQUARE = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]])  # box: 10000 px^2


def test_inlier_spread_by_hand():
  # A: a 50 x 50 square of inliers in a 100 x 100 keypoint box: 2500 / 10000 = 0.25.
  square = np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0], [20.0, 20.0]])
  # B: a right triangle with legs 40 and 50 (area 1000) in a 200 x 100 box: 1000 / 20000.
  triangle = np.array([[0.0, 0.0], [40.0, 0.0], [0.0, 50.0]])
  wide = np.array([[0.0, 0.0], [200.0, 100.0]])
  assert inlier_spread(square, triangle, SQUARE, wide) == pytest.approx(0.05)
  assert inlier_spread(square, square, SQUARE, SQUARE) == pytest.approx(0.25)
  # Parallel lines' worth of collinear inliers, or two points: no area.
  line = np.stack([np.arange(10.0) * 10, np.arange(10.0) * 5], axis=1)
  assert inlier_spread(line, square, SQUARE, SQUARE) == 0.0
  assert inlier_spread(square[:2], square[:2], SQUARE, SQUARE) == 0.0


def _patch_and_scatter(rng):
  """Keypoints over 600 x 600 px in A and B (B: A under AFFINE_XY); matches: 30 true ones
  inside one 40 x 40 px patch of A, then 30 true ones spread over the whole image."""
  n = 200
  points_a = rng.uniform(0, 600, (n, 2))
  points_a[:30] = rng.uniform(300, 340, (30, 2))
  points_b = apply_xy(AFFINE_XY, points_a)
  patch = np.stack([np.arange(30)] * 2, axis=1)
  spread = np.stack([np.arange(30, 60)] * 2, axis=1)
  return points_a, points_b, patch, spread


def test_min_spread_turns_away_inliers_in_one_small_patch():
  points_a, points_b, patch, spread = _patch_and_scatter(np.random.default_rng(4))
  # The patch's hull is under 40 x 40 = 1600 px^2 of a box of about 600 x 600: spread < 0.005.
  loose, strict = RansacParams(), RansacParams(min_spread=0.05)
  assert verify_matches(points_a, points_b, patch, loose).num_inliers == 30
  rejected = verify_matches(points_a, points_b, patch, strict)
  assert rejected.num_inliers == 0 and rejected.transform is None
  assert rejected.num_matches == 30
  # The same number of true matches spread over the photos passes.
  assert verify_matches(points_a, points_b, spread, strict).num_inliers == 30


@pytest.mark.parametrize("method", ["usac_magsac", "usac_accurate", "usac_default"])
def test_usac_methods_recover_affine_with_60_percent_outliers(method):
  n = 300
  points_a, points_b, is_true = affine_with_outliers(n)
  matches = np.stack([np.arange(n)] * 2, axis=1)
  for transform in ("affine", "homography"):
    params = RansacParams(method=method, transform=transform)
    result = verify_matches(points_a, points_b, matches, params)
    assert (result.inliers & is_true).sum() >= 0.95 * is_true.sum()
    assert (result.inliers & ~is_true).sum() <= 0.05 * n
    transform_found = result.transform / result.transform[2, 2]
    np.testing.assert_allclose(transform_found, AFFINE_XY, atol=0.05 * np.abs(AFFINE_XY).max())
    again = verify_matches(points_a, points_b, matches, params)
    np.testing.assert_array_equal(result.inliers, again.inliers)  # Deterministic for a seed.


def test_options_come_from_the_config_and_bad_values_are_refused():
  defaults = RansacParams.from_config(DelfRetrievalConfig())
  assert (defaults.method, defaults.min_spread) == ("ransac", 0.0)
  params = RansacParams.from_config(
    DelfRetrievalConfig(ransac_method="usac_magsac", min_inlier_spread=0.02)
  )
  assert (params.method, params.min_spread) == ("usac_magsac", 0.02)
  with pytest.raises(ConfigError, match="ransac_method"):
    RansacParams(method="lmeds")
  with pytest.raises(ConfigError, match="ransac_backend 'opencv'"):
    RansacParams(method="usac_magsac", backend="skimage")
  with pytest.raises(ConfigError, match="min_inlier_spread"):
    RansacParams(min_spread=1.5)
  with pytest.raises(ConfigError, match="ransac_transform"):
    RansacParams(transform="similarity")
  with pytest.raises(ConfigError, match="ransac_backend"):
    RansacParams(backend="pydegensac")


def test_a_config_with_a_method_its_backend_cannot_run_is_refused():
  overrides = ["retrieval_config.ransac_backend=skimage"]
  assert load_config(
    default_config_path(), overrides=[*overrides, "retrieval_config.ransac_method=ransac"]
  )
  with pytest.raises(ConfigError, match="ransac_backend 'opencv'") as error:
    load_config(default_config_path(), overrides=overrides)
  assert "\n" not in str(error.value)


def test_each_ransac_method_of_the_config_runs_with_its_own_opencv_flag():
  # config.RANSAC_METHODS is the one list of names (config-file values, RansacParams.method);
  # verify.METHODS gives each OpenCV's flag of the same name.
  assert tuple(METHODS) == RANSAC_METHODS
  assert len(set(METHODS.values())) == len(METHODS)
  assert (METHODS["ransac"], METHODS["usac_magsac"]) == (cv2.RANSAC, cv2.USAC_MAGSAC)
  for name in RANSAC_METHODS:
    assert RansacParams.from_config(DelfRetrievalConfig(ransac_method=name)).method == name
  # The transforms and backends verify.py runs are the config's choices.
  assert set(TRANSFORMS) == set(config_lib._CHOICES["ransac_transform"])
  assert set(RANSAC_BACKENDS) == set(config_lib._CHOICES["ransac_backend"])
