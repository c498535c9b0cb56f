"""Match pictures of huge images stay small; the lines still join the same points."""

import numpy as np
from PIL import Image

from delf_ret.evaluation.visualize import MAX_CANVAS_SIDE
from delf_ret.evaluation.visualize import draw_matches


def test_match_picture_of_two_40000_pixel_wide_images_is_bounded(tmp_path):
  wide = np.full((1000, 40000, 3), 200, np.uint8)
  points = np.array([[500.0, 20000.0], [100.0, 39000.0]])
  draw_matches(tmp_path / "m.png", wide, wide, points, points, "two wide images")
  with Image.open(tmp_path / "m.png") as picture:
    assert max(picture.size) <= MAX_CANVAS_SIDE + 100  # The title strip adds a little height.
  assert (tmp_path / "m.png").stat().st_size < 5_000_000


def test_small_pictures_keep_their_size(tmp_path):
  image = np.full((120, 160, 3), 90, np.uint8)
  draw_matches(
    tmp_path / "s.png", image, image, np.array([[10.0, 10.0]]), np.array([[20.0, 30.0]]), "small"
  )
  with Image.open(tmp_path / "s.png") as picture:
    assert picture.size[0] == 320
