import numpy as np
import pytest

from delf_ret.extract.geometry import RESNET50_CONV4
from delf_ret.extract.geometry import ReceptiveField
from delf_ret.extract.geometry import apply_homography
from delf_ret.extract.geometry import keypoint_centers
from delf_ret.extract.geometry import receptive_field_for_layer


def test_resnet50_conv4_centres_by_hand():
  # centre = (16 * i - 145 + (291 - 1) / 2) / scale = 16 * i / scale.
  cells = np.array([[0, 0], [1, 2], [3, 5]])
  np.testing.assert_array_equal(keypoint_centers(cells, 1.0), [[0, 0], [16, 32], [48, 80]])
  np.testing.assert_array_equal(keypoint_centers(cells, 0.5), [[0, 0], [32, 64], [96, 160]])
  np.testing.assert_allclose(keypoint_centers(cells, 2.0), [[0, 0], [8, 16], [24, 40]])


def test_small_field_centres_by_hand():
  field = ReceptiveField(size=11, stride=4, padding=3)
  # (4 * i - 3 + 5) / 2: i = 1 -> 3, i = 2 -> 5, i = 0 -> 1.
  np.testing.assert_allclose(
    keypoint_centers(np.array([[1, 2], [0, 0]]), 2.0, field), [[3, 5], [1, 1]]
  )


def test_per_axis_scale():
  centres = keypoint_centers(np.array([[2, 2]]), (0.5, 0.25))
  np.testing.assert_allclose(centres, [[64, 128]])


def test_invalid_scale_and_layer():
  with pytest.raises(ValueError, match="positive"):
    keypoint_centers(np.array([[0, 0]]), 0.0)
  with pytest.raises(ValueError, match="unsupported layer_name"):
    receptive_field_for_layer("conv5_block3_out")
  assert receptive_field_for_layer("conv4_block6_out") == RESNET50_CONV4


def test_apply_homography_takes_and_returns_y_x():
  shift = np.array([[1, 0, 5], [0, 1, -3], [0, 0, 1]], float)  # x + 5, y - 3
  np.testing.assert_allclose(apply_homography(shift, [[10, 20]]), [[7, 25]])
  behind = np.array([[1, 0, 0], [0, 1, 0], [0, 0, -1]], float)  # w < 0: not a valid image point
  assert np.isnan(apply_homography(behind, [[1, 1]])).all()
  at_infinity = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]], float)  # w = x = 0 for x = 0
  assert np.isnan(apply_homography(at_infinity, [[4, 0]])).all()
