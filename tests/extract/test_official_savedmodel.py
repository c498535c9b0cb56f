"""Published-model layout: SavedModels with the official DELF / DELG serving signature, exported
here from delf-ret's own model, extract the same features as the model itself."""

import numpy as np
import pytest
import tensorflow as tf

from delf_ret import config as config_lib
from delf_ret.model.delf import ModelFileError


@pytest.fixture(scope="module")
def photo(shared_data):
  from delf_ret.images import load_image, shrink_to_max_side
  return shrink_to_max_side(load_image(shared_data / "pairs" / "graf1.png"), 400)[0]


def _config(model_path, pca_dir=None):
  return config_lib.parse_config_text(f"""
model_path: "{model_path}"
image_scales: [0.5, 1.0]
max_image_size: 1024
delf_local_config {{ use_pca: false max_feature_num: 300 score_threshold: 0.0 }}
""")


@pytest.mark.parametrize("delg", [False, True])
def test_official_signature_gives_the_features_of_the_model(delf_model, tmp_path, photo, delg):
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.extract.saved_model import export_official_signature
  exported = export_official_signature(delf_model, tmp_path / ("delg" if delg else "delf"), delg)
  loaded = tf.saved_model.load(str(exported)).signatures["serving_default"]
  names = set(loaded.structured_input_signature[1])
  assert {"input_image", "input_scales", "input_max_feature_num", "input_abs_thres"} <= names
  assert ("input_global_scales_ind" in names) == delg
  native = DelfExtractor(_config(tmp_path / "unused.keras"), model=delf_model).extract(photo)
  official = DelfExtractor(_config(exported)).extract(photo)
  assert official.num_features == native.num_features == 300
  np.testing.assert_allclose(official.locations, native.locations, atol=1e-3)
  np.testing.assert_allclose(official.scales, native.scales)
  np.testing.assert_allclose(official.descriptors, native.descriptors, atol=1e-4)


def test_shrinking_to_max_image_size_maps_box_centres_back_to_original_pixels(
    delf_model, tmp_path, photo):
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.extract.saved_model import export_official_signature
  exported = export_official_signature(delf_model, tmp_path / "delf")
  config = _config(exported)
  config.max_image_size = 200  # The 400 px photo is halved before the model sees it.
  features = DelfExtractor(config).extract(photo)
  assert features.num_features > 0
  # Centres of cells of the halved image, doubled: inside the original photo's frame.
  assert features.locations[:, 0].max() < photo.shape[0] + 150
  assert features.locations[:, 1].max() < photo.shape[1] + 150
  assert features.locations[:, 1].max() > photo.shape[1] / 2


def test_unknown_signature_is_a_clear_error(tmp_path):
  from delf_ret.extract.saved_model import SavedModelExtractor

  class Other(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="pixels")])
    def predict(self, pixels):
      return {"out": pixels * 2.0}

  module = Other()
  tf.saved_model.save(module, str(tmp_path / "other"), signatures={"serving_default": module.predict})
  with pytest.raises(ModelFileError, match=r"no usable signature.*found serving_default\(pixels\)"):
    SavedModelExtractor(tmp_path / "other")
