"""Published-model layout: SavedModels with the official DELF / DELG serving signature, exported
here from delf-ret's own model, extract the same features as the model itself."""

import numpy as np
import pytest
import tensorflow as tf

from delf_ret import config as config_lib
from delf_ret.errors import ModelFileError


@pytest.fixture(scope="module")
def photo(shared_data):
  from delf_ret.images import load_image
  from delf_ret.images import shrink_to_max_side

  return shrink_to_max_side(load_image(shared_data / "pairs" / "graf1.png"), 400)[0]


def _config(model_path, pca_dir=None):
  return config_lib.parse_config_text(f"""
model_path: "{model_path}"
image_scales: [0.5, 1.0]
max_image_size: 1024
delf_local_config {{ use_pca: false max_feature_num: 300 score_threshold: 0.0 }}
""")


@pytest.mark.slow  # Exports and runs a SavedModel (25-45 s).
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


@pytest.mark.slow  # Exports and runs a SavedModel (25-45 s).
def test_shrinking_to_max_image_size_maps_box_centres_back_to_original_pixels(
  delf_model, tmp_path, photo
):
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
  tf.saved_model.save(
    module, str(tmp_path / "other"), signatures={"serving_default": module.predict}
  )
  with pytest.raises(ModelFileError, match=r"no usable signature.*found serving_default\(pixels\)"):
    SavedModelExtractor(tmp_path / "other")


def test_tf1_graph_with_the_official_tensor_names(tmp_path):
  """The official TF1 DELF module: no signature, tensors named input_image:0 ... boxes:0 ..."""
  from delf_ret.extract.extractor import DelfExtractor

  graph = tf.Graph()
  with graph.as_default():
    image = tf.compat.v1.placeholder(tf.uint8, [None, None, 3], name="input_image")
    scales = tf.compat.v1.placeholder(tf.float32, [None], name="input_scales")
    tf.compat.v1.placeholder(tf.int32, [], name="input_max_feature_num")
    tf.compat.v1.placeholder(tf.float32, [], name="input_abs_thres")
    # Two features whose boxes are centred at (y, x) = (10, 20) and at the image centre.
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    centres = tf.stack([tf.constant([10.0, 20.0]), size / 2.0])
    tf.identity(tf.concat([centres - 8.0, centres + 8.0], axis=1), name="boxes")
    tf.identity(tf.ones([2, 6]) * tf.reduce_mean(scales), name="features")
    tf.identity(tf.stack([scales[0], scales[-1]]), name="scales")
    tf.identity(tf.constant([[5.0], [3.0]]), name="scores")
    with tf.compat.v1.Session(graph=graph) as session:
      builder = tf.compat.v1.saved_model.Builder(str(tmp_path / "tf1"))
      builder.add_meta_graph_and_variables(session, [tf.compat.v1.saved_model.SERVING])
      builder.save()
  config = _config(tmp_path / "tf1")
  config.max_image_size = 100  # A 200 x 300 image is shrunk to 67 x 100 first.
  features = DelfExtractor(config).extract(np.zeros((200, 300, 3), np.uint8))
  assert features.num_features == 2
  ratio = np.array([67 / 200, 100 / 300])
  np.testing.assert_allclose(features.locations[0], np.array([10.0, 20.0]) / ratio, rtol=1e-5)
  np.testing.assert_allclose(features.locations[1], [100.0, 150.0], atol=1.5)
  np.testing.assert_allclose(features.attention, [5.0, 3.0])
