"""Views of the self-supervised stage against hand-computed values (geometry, pairs, batches)."""

import numpy as np
import pytest

from delf_ret.protos.delf_train_config_pb2 import SelfSupervisedConfig
from delf_ret.train import views
from delf_ret.train.real_pairs import RealPair


def test_grid_and_cell_centres():
  assert views.grid_side(192) == 12
  with pytest.raises(ValueError):
    views.grid_side(200)
  # ResNet50 conv4: centre = 16 i - 145 + (291 - 1) / 2 = 16 i.
  np.testing.assert_allclose(views.cell_centres(2), [[0, 0], [0, 16], [16, 0], [16, 16]])


def test_nearest_cells_rounds_and_drops_points_off_the_map():
  cells = views.nearest_cells(
    np.array([[7.9, 8.1], [0, 0], [48, 47.5], [-9, 0], [64, 0], [np.nan, 0]]), side=4
  )
  # (7.9, 8.1) / 16 -> (0.49, 0.51) -> cell (0, 1); (48, 47.5) -> (3, 3).
  np.testing.assert_array_equal(cells, [1, 0, 15, -1, -1, -1])


def test_translation_moves_cells_by_whole_strides():
  # x' = x - 32, y' = y + 16: cell (r, c) of A is cell (r + 1, c - 2) of B.
  a_to_b = np.array([[1, 0, -32], [0, 1, 16], [0, 0, 1]], float)
  targets = views.homography_targets(a_to_b, side=4)
  expected = np.full(16, -1)
  for row in range(3):
    for col in range(2, 4):
      expected[row * 4 + col] = (row + 1) * 4 + (col - 2)
  np.testing.assert_array_equal(targets, expected)


def test_zoom_and_rotation():
  zoom = np.diag([2.0, 2.0, 1.0])  # (y, x) -> (2y, 2x)
  targets = views.homography_targets(zoom, side=4)
  assert targets[1 * 4 + 1] == 2 * 4 + 2  # centre (16, 16) -> (32, 32)
  assert targets[2 * 4 + 2] == -1  # (32, 32) -> (64, 64): off a 4 x 4 map
  # 90 degrees about (24, 24): x' = 48 - y, y' = x, so cell (r, c) -> (c, 3 - r).
  rotation = np.array([[0, -1, 48], [1, 0, 0], [0, 0, 1]], float)
  targets = views.homography_targets(rotation, side=4)
  for row in range(4):
    for col in range(4):
      assert targets[row * 4 + col] == col * 4 + (3 - row)
  valid = np.ones(16, bool)
  valid[5] = False
  assert views.homography_targets(rotation, side=4, valid_a=valid)[5] == -1


def test_match_targets_first_correspondence_wins():
  points_a = np.array([[0, 0], [1, 1], [16, 16], [100, 100]], float)
  points_b = np.array([[0, 16], [32, 32], [0, 0], [0, 0]], float)
  targets = views.match_targets(points_a, points_b, side=4)
  assert targets[0] == 1  # (0, 0) -> (0, 16); the later (1, 1) -> (32, 32) is ignored
  assert targets[5] == 0
  assert (targets >= 0).sum() == 2  # (100, 100) is off the map


def test_homography_pair_targets_follow_the_warp():
  rng = np.random.default_rng(3)
  photo = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
  settings = SelfSupervisedConfig(crop_size=96)
  pair = views.homography_pair(np.random.default_rng(0), photo, settings)
  assert pair.view_a.shape == pair.view_b.shape == (96, 96, 3)
  assert pair.targets_ab.shape == (36,) and (pair.targets_ab >= 0).sum() > 5
  assert pair.targets_ba.shape == (36,) and (pair.targets_ba >= 0).sum() > 5


def test_batches_are_a_function_of_seed_and_step():
  rng = np.random.default_rng(1)
  photos = [rng.integers(0, 255, (200, 260, 3), dtype=np.uint8) for _ in range(3)]
  matches = np.array([[50, 60, 55, 70], [100, 120, 104, 128], [150, 30, 150, 41]], np.float32)
  real = [RealPair(0, 1, matches)]
  settings = SelfSupervisedConfig(crop_size=64)
  first = views.make_batch(7, 3, 4, 0.5, photos, real, settings)
  again = views.make_batch(7, 3, 4, 0.5, photos, real, settings)
  other = views.make_batch(7, 4, 4, 0.5, photos, real, settings)
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  assert not np.array_equal(first["view_a"], other["view_a"])
  assert first["view_a"].shape == (4, 64, 64, 3) and first["targets_ab"].shape == (4, 16)
  # The real pairs' anchor match is inside both crops, so it gives a target.
  assert (first["targets_ab"][:2] >= 0).any(axis=1).all()
