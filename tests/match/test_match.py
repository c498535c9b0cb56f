"""Putative matching and RANSAC verification against hand-made data."""

import numpy as np
import pytest

from conftest import make_features
from conftest import random_unit_descriptors
from delf_ret.config import ConfigError
from delf_ret.match import DescriptorMatcher
from delf_ret.match import RansacParams
from delf_ret.match import putative_matches
from delf_ret.match import verify_candidates
from delf_ret.match import verify_matches
from delf_ret.match import verify_pair

AFFINE_XY = np.array([[1.1, 0.2, 30.0], [-0.1, 0.9, -12.0], [0.0, 0.0, 1.0]])


def apply_xy(matrix, points_yx):
  xy1 = np.c_[points_yx[:, ::-1], np.ones(len(points_yx))] @ matrix.T
  return (xy1[:, :2] / xy1[:, 2:])[:, ::-1]


def test_nearest_neighbours_by_hand():
  a = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
  b = np.array([[0.9, 0.1], [0.0, 1.9], [5.0, 5.0]], np.float32)
  indices, distances = DescriptorMatcher(a).nearest(b, k=2)
  np.testing.assert_array_equal(indices, [[1, 0], [2, 0], [2, 1]])
  np.testing.assert_allclose(distances[0], [np.sqrt(0.02), np.sqrt(0.82)], rtol=1e-5)
  # Distance threshold 0.8 drops the far point; match rows are (index in A, index in B).
  np.testing.assert_array_equal(putative_matches(a, b, 0.8), [[1, 0], [2, 1]])


def test_nearest_matches_brute_force_and_pads_missing_neighbours():
  rng = np.random.default_rng(3)
  a, b = random_unit_descriptors(rng, 200, 40), random_unit_descriptors(rng, 150, 40)
  squared = ((b[:, None, :].astype(np.float64) - a[None, :, :]) ** 2).sum(-1)
  expected = np.argsort(squared, axis=1, kind="stable")[:, :3]
  indices, distances = DescriptorMatcher(a).nearest(b, k=3)
  np.testing.assert_array_equal(indices, expected)
  np.testing.assert_allclose(
    distances, np.sqrt(np.take_along_axis(squared, expected, 1)), atol=1e-5
  )
  # A has 2 rows, k = 3: the third neighbour is missing.
  indices, distances = DescriptorMatcher(a[:2]).nearest(b[:4], k=3)
  assert (indices[:, 2] == -1).all() and np.isinf(distances[:, 2]).all()
  assert (indices[:, :2] >= 0).all() and np.isfinite(distances[:, :2]).all()
  empty_indices, _ = DescriptorMatcher(np.zeros((0, 40), np.float32)).nearest(b[:4], k=1)
  np.testing.assert_array_equal(empty_indices, [[-1]] * 4)


def test_ratio_and_mutual_tests():
  a = np.array([[0.0, 0.0], [0.1, 0.0]], np.float32)
  b = np.array([[0.04, 0.0], [0.06, 0.0]], np.float32)
  # Ratio: 0.04 / 0.06 = 0.67 for b0, 0.04 / 0.06 for b1: both fail a 0.5 test.
  assert putative_matches(a, b, 0.8, ratio_threshold=0.5).shape == (0, 2)
  assert putative_matches(a, b, 0.8).shape == (2, 2)
  # Mutual: a0's nearest in B is b0, a1's is b1: both mutual.
  np.testing.assert_array_equal(putative_matches(a, b, 0.8, mutual=True), [[0, 0], [1, 1]])
  b2 = np.array([[0.04, 0.0], [0.045, 0.0]], np.float32)  # Both nearest to a0; only b0 mutual.
  np.testing.assert_array_equal(putative_matches(a, b2, 0.8, mutual=True), [[0, 0]])


def test_dimension_mismatch_raises():
  with pytest.raises(ValueError, match="dimensions differ"):
    DescriptorMatcher(np.zeros((3, 40), np.float32)).nearest(np.zeros((2, 128), np.float32))


def affine_with_outliers(n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(points_a, points_b, is_true): n points (y, x) in a 600 px square, mapped by AFFINE_XY,
  60% of points_b then replaced by random points (seed 1)."""
  rng = np.random.default_rng(1)
  points_a = rng.uniform(0, 600, (n, 2))
  points_b = apply_xy(AFFINE_XY, points_a)
  outliers = rng.permutation(n)[: int(0.6 * n)]
  points_b[outliers] = rng.uniform(0, 600, (len(outliers), 2))
  is_true = np.ones(n, bool)
  is_true[outliers] = False
  return points_a, points_b, is_true


@pytest.mark.parametrize(
  "backend, stop_probability", [("opencv", 0.99), ("skimage", 0.99), ("opencv", 1.0)]
)
def test_ransac_recovers_affine_with_60_percent_outliers(backend, stop_probability):
  n = 300
  points_a, points_b, is_true = affine_with_outliers(n)
  # stop_probability 1 (all trials, the official setting) is valid for OpenCV too.
  params = RansacParams(backend=backend, stop_probability=stop_probability)
  result = verify_matches(points_a, points_b, np.stack([np.arange(n)] * 2, axis=1), params)
  found = (result.inliers & is_true).sum()
  assert found >= 0.95 * is_true.sum()
  assert (result.inliers & ~is_true).sum() <= 0.05 * n  # Outliers near the model by chance.
  np.testing.assert_allclose(result.transform, AFFINE_XY, atol=0.05 * np.abs(AFFINE_XY).max())
  again = verify_matches(points_a, points_b, np.stack([np.arange(n)] * 2, axis=1), params)
  np.testing.assert_array_equal(result.inliers, again.inliers)  # Deterministic for a seed.


def test_opencv_and_skimage_backends_agree_on_affine_with_outliers():
  rng = np.random.default_rng(5)
  n = 400
  points_a = rng.uniform(0, 800, (n, 2))
  points_b = apply_xy(AFFINE_XY, points_a) + rng.normal(0, 1.0, (n, 2))
  outliers = rng.permutation(n)[: int(0.7 * n)]
  points_b[outliers] = rng.uniform(0, 800, (len(outliers), 2))
  matches = np.stack([np.arange(n)] * 2, axis=1)
  fast = verify_matches(points_a, points_b, matches, RansacParams(backend="opencv"))
  reference = verify_matches(
    points_a, points_b, matches, RansacParams(backend="skimage", stop_probability=1.0)
  )
  assert abs(fast.num_inliers - reference.num_inliers) <= 0.05 * reference.num_inliers
  assert (fast.inliers == reference.inliers).mean() >= 0.97
  np.testing.assert_allclose(
    fast.transform, reference.transform, atol=0.02 * np.abs(AFFINE_XY).max()
  )
  with pytest.raises(ConfigError, match="ransac_backend"):
    RansacParams(backend="magic")


def test_homography_option():
  homography = np.array([[0.9, 0.1, 20], [0.05, 1.1, -5], [1e-4, 2e-4, 1.0]])
  rng = np.random.default_rng(2)
  points_a = rng.uniform(0, 500, (100, 2))
  result = verify_matches(
    points_a,
    apply_xy(homography, points_a),
    np.stack([np.arange(100)] * 2, axis=1),
    RansacParams(transform="homography", residual_threshold=2.0),
  )
  assert result.num_inliers == 100
  np.testing.assert_allclose(result.transform / result.transform[2, 2], homography, atol=1e-3)


@pytest.mark.parametrize("backend", ["opencv", "skimage"])
@pytest.mark.parametrize("n_matches", [0, 1, 2])
def test_too_few_matches_give_zero_inliers(n_matches, backend):
  points = np.array([[0.0, 0.0], [10.0, 50.0], [40.0, 3.0]])
  result = verify_matches(
    points, points, np.stack([np.arange(n_matches)] * 2, axis=1), RansacParams(backend=backend)
  )
  assert result.num_inliers == 0 and result.transform is None
  assert result.inliers.shape == (n_matches,)


@pytest.mark.parametrize(
  "points",
  [
    np.zeros((12, 2)),  # identical
    np.stack([np.arange(12.0) * 5, np.arange(12.0) * 3 + 1], axis=1),  # collinear
  ],
)
@pytest.mark.parametrize("backend", ["opencv", "skimage"])
def test_degenerate_points_give_zero_inliers(points, backend):
  result = verify_matches(
    points, points + 7, np.stack([np.arange(12)] * 2, axis=1), RansacParams(backend=backend)
  )
  assert result.num_inliers == 0 and result.transform is None


def test_verify_candidates_ranks_true_match_first():
  rng = np.random.default_rng(3)
  descriptors = random_unit_descriptors(rng, 80, 16)
  points = rng.uniform(0, 400, (80, 2))
  query = make_features(points, descriptors)
  same = make_features(apply_xy(AFFINE_XY, points), descriptors + 0.01)
  shuffled = make_features(rng.uniform(0, 400, (80, 2)), descriptors)
  empty = make_features(np.zeros((0, 2)), np.zeros((0, 16)))
  results = verify_candidates(query, [shuffled, same, empty])
  assert results[1].num_inliers == 80
  assert results[0].num_inliers < 10
  assert results[2].num_inliers == 0
  single = verify_pair(query, same)
  np.testing.assert_array_equal(single.inliers, results[1].inliers)


@pytest.mark.parametrize("ratio, mutual", [(None, False), (0.9, False), (None, True)])
def test_batched_candidates_match_exactly_as_pairs_one_by_one(ratio, mutual):
  rng = np.random.default_rng(4)
  descriptors = random_unit_descriptors(rng, 60, 16)
  points = rng.uniform(0, 400, (60, 2))
  query = make_features(points, descriptors)
  candidates = []
  for number in range(37):  # More than two batches of 16.
    if number == 5:
      candidates.append(make_features(np.zeros((0, 2)), np.zeros((0, 16))))
      continue
    keep = rng.permutation(60)[: rng.integers(10, 60)]
    noisy = descriptors[keep] + rng.normal(0, 0.02, (keep.size, 16))
    candidates.append(
      make_features(
        apply_xy(AFFINE_XY, points[keep]) + rng.normal(0, 1, (keep.size, 2)),
        np.vstack([noisy, random_unit_descriptors(rng, 20, 16)])[: keep.size],
      )
    )
  params = RansacParams(distance_threshold=0.5, ratio_threshold=ratio, mutual=mutual)
  timings = {}
  batched = verify_candidates(query, iter(candidates), params, timings, batch_size=16)
  assert set(timings) == {"matching", "ransac"}
  assert len(batched) == len(candidates)
  for candidate, result in zip(candidates, batched):
    alone = verify_pair(query, candidate, params)
    np.testing.assert_array_equal(result.matches, alone.matches)
    np.testing.assert_array_equal(result.inliers, alone.inliers)
  assert sum(r.num_inliers > 5 for r in batched) > 20
