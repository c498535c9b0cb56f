"""The recipe's training views cover the roll and zoom of landmark photos (issue: about 30
degrees of roll, 3x zoom) together with the default model's extraction pyramid."""

import math

from conftest import REPO
from delf_ret import config as config_lib
from delf_ret.default_model import default_config_path


def test_views_and_pyramid_cover_roll_and_zoom():
  training = config_lib.load_training_config(REPO / "configs" / "delf_default_model.pbtxt")
  extraction = config_lib.load_config(default_config_path())
  views = training.selfsup
  # Roll: the views are rotated against each other by up to max_rotation_deg.
  assert views.max_rotation_deg >= 30
  # Zoom: the pyramid spans the 3x; between two of its levels a descriptor must bridge at
  # most half a level step either way, which the views' zoom range covers.
  scales = sorted(extraction.image_scales)
  assert scales[-1] / scales[0] >= 3
  step = max(b / a for a, b in zip(scales, scales[1:]))
  assert views.min_zoom <= 1 / math.sqrt(step) and views.max_zoom >= math.sqrt(step)
