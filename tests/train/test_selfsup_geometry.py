"""Geometry of the self-supervised views against hand-computed values."""

import numpy as np
import pytest

from delf_ret.train import selfsup_data as sd


def test_grid_and_cell_centres():
  assert sd.grid_side(192) == 12
  with pytest.raises(ValueError):
    sd.grid_side(200)
  # ResNet50 conv4: centre = 16 i - 145 + (291 - 1) / 2 = 16 i.
  np.testing.assert_allclose(sd.cell_centres(2), [[0, 0], [0, 16], [16, 0], [16, 16]])


def test_apply_homography_takes_and_returns_y_x():
  shift = np.array([[1, 0, 5], [0, 1, -3], [0, 0, 1]], float)  # x + 5, y - 3
  np.testing.assert_allclose(sd.apply_homography(shift, [[10, 20]]), [[7, 25]])
  behind = np.array([[1, 0, 0], [0, 1, 0], [0, 0, -1]], float)  # w < 0: not a valid image point
  assert np.isnan(sd.apply_homography(behind, [[1, 1]])).all()


def test_nearest_cells_rounds_and_drops_points_off_the_map():
  cells = sd.nearest_cells(
    np.array([[7.9, 8.1], [0, 0], [48, 47.5], [-9, 0], [64, 0], [np.nan, 0]]), side=4
  )
  # (7.9, 8.1) / 16 -> (0.49, 0.51) -> cell (0, 1); (48, 47.5) -> (3, 3).
  np.testing.assert_array_equal(cells, [1, 0, 15, -1, -1, -1])


def test_translation_moves_cells_by_whole_strides():
  # x' = x - 32, y' = y + 16: cell (r, c) of A is cell (r + 1, c - 2) of B.
  a_to_b = np.array([[1, 0, -32], [0, 1, 16], [0, 0, 1]], float)
  targets = sd.homography_targets(a_to_b, side=4)
  expected = np.full(16, -1)
  for row in range(3):
    for col in range(2, 4):
      expected[row * 4 + col] = (row + 1) * 4 + (col - 2)
  np.testing.assert_array_equal(targets, expected)


def test_zoom_and_rotation():
  zoom = np.diag([2.0, 2.0, 1.0])  # (y, x) -> (2y, 2x)
  targets = sd.homography_targets(zoom, side=4)
  assert targets[1 * 4 + 1] == 2 * 4 + 2  # centre (16, 16) -> (32, 32)
  assert targets[2 * 4 + 2] == -1  # (32, 32) -> (64, 64): off a 4 x 4 map
  # 90 degrees about (24, 24): x' = 48 - y, y' = x, so cell (r, c) -> (c, 3 - r).
  rotation = np.array([[0, -1, 48], [1, 0, 0], [0, 0, 1]], float)
  targets = sd.homography_targets(rotation, side=4)
  for row in range(4):
    for col in range(4):
      assert targets[row * 4 + col] == col * 4 + (3 - row)
  valid = np.ones(16, bool)
  valid[5] = False
  assert sd.homography_targets(rotation, side=4, valid_a=valid)[5] == -1


def test_match_targets_first_correspondence_wins():
  points_a = np.array([[0, 0], [1, 1], [16, 16], [100, 100]], float)
  points_b = np.array([[0, 16], [32, 32], [0, 0], [0, 0]], float)
  targets = sd.match_targets(points_a, points_b, side=4)
  assert targets[0] == 1  # (0, 0) -> (0, 16); the later (1, 1) -> (32, 32) is ignored
  assert targets[5] == 0
  assert (targets >= 0).sum() == 2  # (100, 100) is off the map


def test_epipolar_distance_of_a_sideways_camera_pair():
  # Two cameras with focal 100 and principal point (50, 50), the second moved
  # sideways along x: epipolar lines are the image rows, y_b = y_a.
  intrinsics = np.array([[100, 0, 50], [0, 100, 50], [0, 0, 1]], float)
  p_a = intrinsics @ np.hstack([np.eye(3), np.zeros((3, 1))])
  p_b = intrinsics @ np.hstack([np.eye(3), np.array([[-1.0], [0], [0]])])
  fundamental = sd.fundamental_from_projections(p_a, p_b)
  matches = np.array([[20, 30, 20, 10], [20, 30, 23, 10]], float)  # (ya, xa, yb, xb)
  np.testing.assert_allclose(sd.epipolar_distance(fundamental, matches), [0, 3], atol=1e-9)


def test_strecha_camera_file(tmp_path):
  path = tmp_path / "0000.jpg.camera"
  path.write_text("100 0 50\n0 100 40\n0 0 1\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n0 0 -2\n100 80\n")
  projection = sd.read_strecha_camera(path)
  # R = I, camera centre (0, 0, -2): P = K [I | (0, 0, 2)]; the world origin is 2 in front.
  np.testing.assert_allclose(projection @ [0, 0, 0, 1], [100, 80, 2])
  path.write_text("1 2\n")
  with pytest.raises(sd.TrainingDataError, match="camera file"):
    sd.read_strecha_camera(path)


def test_homography_pair_targets_follow_the_warp():
  rng = np.random.default_rng(3)
  photo = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
  settings = sd.ViewSettings(crop_size=96)
  pair = sd.homography_pair(np.random.default_rng(0), photo, settings)
  assert pair.view_a.shape == pair.view_b.shape == (96, 96, 3)
  assert pair.targets_ab.shape == (36,) and (pair.targets_ab >= 0).sum() > 5
  assert pair.targets_ba.shape == (36,) and (pair.targets_ba >= 0).sum() > 5


def test_batches_are_a_function_of_seed_and_step():
  rng = np.random.default_rng(1)
  photos = [rng.integers(0, 255, (200, 260, 3), dtype=np.uint8) for _ in range(3)]
  matches = np.array([[50, 60, 55, 70], [100, 120, 104, 128], [150, 30, 150, 41]], np.float32)
  real = [sd.RealPair(0, 1, matches)]
  settings = sd.ViewSettings(crop_size=64)
  first = sd.make_batch(7, 3, 4, 0.5, photos, real, settings)
  again = sd.make_batch(7, 3, 4, 0.5, photos, real, settings)
  other = sd.make_batch(7, 4, 4, 0.5, photos, real, settings)
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  assert not np.array_equal(first["view_a"], other["view_a"])
  assert first["view_a"].shape == (4, 64, 64, 3) and first["targets_ab"].shape == (4, 16)
  # The real pairs' anchor match is inside both crops, so it gives a target.
  assert (first["targets_ab"][:2] >= 0).any(axis=1).all()


def test_photo_list_file_and_errors(tmp_path):
  (tmp_path / "a.jpg").write_bytes(b"x")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.PNG").write_bytes(b"x")
  (tmp_path / "notes.txt").write_text("x")
  assert [p.name for p in sd.list_training_photos(tmp_path)] == ["a.jpg", "b.PNG"]
  listing = tmp_path / "list.txt"
  listing.write_text("# photos\nsub/b.PNG\n\n")
  assert sd.list_training_photos(listing) == [tmp_path / "sub" / "b.PNG"]
  with pytest.raises(sd.TrainingDataError, match="not found"):
    sd.list_training_photos(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(sd.TrainingDataError, match="no photos"):
    sd.list_training_photos(tmp_path / "empty")
