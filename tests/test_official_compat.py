"""Files of official DELF/DELG users: their configs load unchanged, with one warning per setting
delf-ret does not act on."""

import logging

import pytest

from conftest import REPO
from delf_ret import config as config_lib

OFFICIAL = REPO / "tests" / "data" / "official_configs"


def test_official_delf_example_config_loads_unchanged(caplog):
  with caplog.at_level(logging.WARNING):
    config = config_lib.load_config(OFFICIAL / "delf_config_example.pbtxt")
  local = config.delf_local_config
  assert list(config.image_scales) == pytest.approx([0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0])
  assert local.layer_name == "resnet_v1_50/block3" and local.iou_threshold == 1.0
  assert local.pca_parameters.mean_path.endswith("parameters/delf_v1_20171026/pca/mean.datum")
  assert config.model_path.startswith(str(OFFICIAL))  # Resolved against the config's folder.
  warnings = [r.getMessage() for r in caplog.records]
  # iou_threshold 1.0 (no suppression) is what delf-ret does: no warning for it.
  assert len(warnings) == 1 and "layer_name 'resnet_v1_50/block3'" in warnings[0]
  from delf_ret.extract.geometry import RESNET50_CONV4
  from delf_ret.extract.geometry import receptive_field_for_layer

  assert receptive_field_for_layer(local.layer_name) == RESNET50_CONV4


def test_official_delg_config_loads_and_reports_global_features(caplog):
  with caplog.at_level(logging.WARNING):
    config = config_lib.load_config(OFFICIAL / "r50delg_gldv2clean_config.pbtxt")
  assert config.use_local_features and config.use_global_features
  assert list(config.delf_global_config.image_scales_ind) == [3, 4, 5]
  assert config.max_image_size == 1024 and config.delf_local_config.score_threshold == (
    pytest.approx(454.6)
  )
  warnings = [r.getMessage() for r in caplog.records]
  assert len(warnings) == 1 and warnings[0].endswith(
    'every tool ranks with local features unless retrieval_config.first_stage is "global"'
  )


@pytest.mark.parametrize(
  "override, field",
  [
    ("delf_local_config.iou_threshold=0.8", "delf_local_config.iou_threshold 0.8 is ignored"),
    ("delf_local_config.use_resized_coordinates=true", "use_resized_coordinates is ignored"),
    ("use_square_images=true", "use_square_images is ignored"),
    ("use_local_features=false", "use_local_features false is ignored"),
  ],
)
def test_each_setting_not_acted_on_is_named_once(caplog, override, field):
  with caplog.at_level(logging.WARNING):
    config_lib.load_config(OFFICIAL / "r50delg_gldv2clean_config.pbtxt", [override])
  messages = [r.getMessage() for r in caplog.records]
  assert sum(field in m for m in messages) == 1


def test_iou_threshold_out_of_range_is_refused():
  with pytest.raises(config_lib.ConfigError, match="iou_threshold must be in"):
    config_lib.load_config(
      OFFICIAL / "delf_config_example.pbtxt", ["delf_local_config.iou_threshold=1.5"]
    )
