"""Real pairs: epipolar geometry and Strecha cameras against hand-computed values."""

import numpy as np
import pytest

from delf_ret.train import real_pairs
from delf_ret.train.photos import TrainingDataError


def test_epipolar_distance_of_a_sideways_camera_pair():
  # Two cameras with focal 100 and principal point (50, 50), the second moved
  # sideways along x: epipolar lines are the image rows, y_b = y_a.
  intrinsics = np.array([[100, 0, 50], [0, 100, 50], [0, 0, 1]], float)
  p_a = intrinsics @ np.hstack([np.eye(3), np.zeros((3, 1))])
  p_b = intrinsics @ np.hstack([np.eye(3), np.array([[-1.0], [0], [0]])])
  fundamental = real_pairs.fundamental_from_projections(p_a, p_b)
  matches = np.array([[20, 30, 20, 10], [20, 30, 23, 10]], float)  # (ya, xa, yb, xb)
  np.testing.assert_allclose(real_pairs.epipolar_distance(fundamental, matches), [0, 3], atol=1e-9)


def test_strecha_camera_file(tmp_path):
  path = tmp_path / "0000.jpg.camera"
  path.write_text("100 0 50\n0 100 40\n0 0 1\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n0 0 -2\n100 80\n")
  projection = real_pairs.read_strecha_camera(path)
  # R = I, camera centre (0, 0, -2): P = K [I | (0, 0, 2)]; the world origin is 2 in front.
  np.testing.assert_allclose(projection @ [0, 0, 0, 1], [100, 80, 2])
  path.write_text("1 2\n")
  with pytest.raises(TrainingDataError, match="camera file"):
    real_pairs.read_strecha_camera(path)


def test_unrelated_photos_whose_fundamental_fit_opencv_rejects_give_no_matches(shared_data):
  # Two ImageNet birds: OpenCV's USAC_MAGSAC raised "!model.empty()" on their ratio-test
  # matches (at the selfsup stage's 640 px), which stopped a recipe run.
  from delf_ret.train.photos import load_training_photos

  folder = shared_data / "train_objects"
  names = ["n01820546_lorikeet.jpg", "n01824575_coucal.jpg"]
  if not all((folder / name).is_file() for name in names):
    pytest.skip("train_objects photos not in ../shared/data")
  photos, _, _ = load_training_photos([folder / name for name in names], 640, 192)
  sift = [real_pairs.sift_keypoints(photo) for photo in photos]
  matches = real_pairs.sift_matches(*sift)
  assert matches.shape == (0, 4) and matches.dtype == np.float32
