"""Published-model layout: SavedModels with the official DELF / DELG serving signature, exported
here from delf-ret's own model, extract the same features as the model itself (DELG: and the
same global descriptor, written as .delg_global files by extract_features)."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import BUNDLED_IMAGES
from conftest import installed_script
from conftest import run_command
from conftest import tool_env
from delf_ret import config as config_lib
from delf_ret.errors import ModelFileError


@pytest.fixture(scope="module")
def photo(shared_data):
  from delf_ret.images import load_image
  from delf_ret.images import shrink_to_max_side

  return shrink_to_max_side(load_image(shared_data / "pairs" / "graf1.png"), 400)[0]


def _config(model_path, pca_dir=None):
  return config_lib.parse_config_text(_config_text(model_path))


def _config_text(model_path, global_features=False):
  text = f"""
model_path: "{model_path}"
image_scales: [0.5, 1.0]
max_image_size: 1024
delf_local_config {{ use_pca: false max_feature_num: 300 score_threshold: 0.0 }}
"""
  if global_features:
    text += "use_global_features: true\ndelf_global_config { use_pca: false image_scales_ind: 1 }\n"
  return text


@pytest.fixture(scope="module")
def exported(delf_model, tmp_path_factory):
  """export(delg) -> the model exported with the official DELF (or DELG) signature, once per
  module (each export takes 25-45 s)."""
  from delf_ret.extract.saved_model import export_official_signature

  folders = {}

  def export(delg: bool):
    if delg not in folders:
      folder = tmp_path_factory.mktemp("official") / ("delg" if delg else "delf")
      folders[delg] = export_official_signature(delf_model, folder, delg)
    return folders[delg]

  return export


@pytest.mark.slow  # Exports and runs a SavedModel (25-45 s).
@pytest.mark.parametrize("delg", [False, True])
def test_official_signature_gives_the_features_of_the_model(
  delf_model, tmp_path, photo, delg, exported
):
  from delf_ret.extract.extractor import DelfExtractor

  exported = exported(delg)
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
def test_shrinking_to_max_image_size_maps_box_centres_back_to_original_pixels(photo, exported):
  from delf_ret.extract.extractor import DelfExtractor

  config = _config(exported(False))
  config.max_image_size = 200  # The 400 px photo is halved before the model sees it.
  features = DelfExtractor(config).extract(photo)
  assert features.num_features > 0
  # Centres of cells of the halved image, doubled: inside the original photo's frame.
  assert features.locations[:, 0].max() < photo.shape[0] + 150
  assert features.locations[:, 1].max() < photo.shape[1] + 150
  assert features.locations[:, 1].max() > photo.shape[1] / 2


@pytest.mark.slow  # Exports and runs a SavedModel (25-45 s).
def test_delg_global_output_is_pooled_as_the_official_extractor_does(delf_model, photo, exported):
  """The DELG stand-in's global output is GeM of conv4 per scale; through the official
  extractor's rule it gives the global descriptor of delf-ret's own model, and the local
  features of the run are those of local-only extraction."""
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.extract.global_features import GlobalExtraction
  from delf_ret.features import to_proto

  config = config_lib.parse_config_text(_config_text(exported(True), global_features=True))
  extractor = DelfExtractor(config)
  assert extractor.saved_model is not None and extractor.saved_model.has_global_output
  local, descriptor = GlobalExtraction(extractor).extract_with_global(photo)
  assert to_proto(local) == to_proto(extractor.extract(photo))
  native_config = config_lib.parse_config_text(_config_text("unused.keras", global_features=True))
  native = DelfExtractor(native_config, model=delf_model)
  _, expected = GlobalExtraction(native).extract_with_global(photo)
  assert descriptor.shape == (1024,)
  np.testing.assert_allclose(descriptor, expected, atol=1e-4)
  # A model without a global output (the DELF signature) is refused before any image.
  delf_config = config_lib.parse_config_text(_config_text(exported(False), global_features=True))
  with pytest.raises(ModelFileError, match="no global_descriptors output"):
    GlobalExtraction(DelfExtractor(delf_config))


@pytest.mark.slow  # Runs extract_features (a console script) with a SavedModel.
def test_extract_features_writes_delg_global_files_beside_the_local_ones(
  delf_model, tmp_path, exported
):
  from PIL import Image

  from delf_ret.extract.batch import extract_all
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.extract.global_features import GlobalExtraction
  from delf_ret.features import read_global_descriptor
  from delf_ret.features import to_proto
  from delf_ret.images import load_image
  from delf_ret.images import shrink_to_max_side

  images = tmp_path / "images"
  images.mkdir()
  for name in ("roofs_1", "aero_1"):
    small = shrink_to_max_side(load_image(BUNDLED_IMAGES / f"{name}.jpg"), 160)[0]
    Image.fromarray(small).save(images / f"{name}.png")
  config_path = tmp_path / "delg.pbtxt"
  config_path.write_text(_config_text(exported(True), global_features=True))
  command = [
    installed_script("extract_features"),
    f"--config_path={config_path}",
    f"--images_dir={images}",
    f"--output_dir={tmp_path / 'features'}",
  ]
  result = run_command(command, timeout=600, env=tool_env())
  assert result.returncode == 0, result.stderr[-3000:]
  written = sorted(p.name for p in (tmp_path / "features").iterdir() if p.suffix != ".json")
  assert written == [
    "aero_1.delf",
    "aero_1.delg_global",
    "roofs_1.delf",
    "roofs_1.delg_global",
  ]
  extractor = GlobalExtraction(DelfExtractor(config_lib.parse_config_text(config_path.read_text())))
  for name in ("roofs_1", "aero_1"):
    local, descriptor = extractor.extract_with_global(load_image(images / f"{name}.png"))
    # The .delf file has the bytes of local-only extraction.
    stored = (tmp_path / "features" / f"{name}.delf").read_bytes()
    assert stored == to_proto(local).SerializeToString()
    read = read_global_descriptor(tmp_path / "features" / f"{name}.delg_global")
    np.testing.assert_allclose(read, descriptor, atol=1e-6)
    assert abs(np.linalg.norm(read) - 1.0) < 1e-5
  # Resuming (in process): an image is done when both files exist; a missing .delg_global
  # makes its image run again.
  (tmp_path / "features" / "aero_1.delg_global").unlink()
  lines = []
  paths = sorted(images.iterdir())
  assert not extract_all(extractor, paths, tmp_path / "features", lines.append, with_global=True)
  assert any("roofs_1.png: skipped" in line for line in lines)
  assert any("aero_1.png: " in line and "1024-d global descriptor" in line for line in lines)
  assert (tmp_path / "features" / "aero_1.delg_global").is_file()


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
