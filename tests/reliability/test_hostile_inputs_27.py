"""Issue 27 items 13-16, the library side: feature and .datum files, extraction settings,
configs, pyramid sizes, compact weights, official-signature SavedModels and downloads. Each
hostile input is built here and refused with the package's one-line error."""

import http.server
import io
import threading
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import make_features
from conftest import random_unit_descriptors
from delf_ret.config import ConfigError
from delf_ret.config import load_config
from delf_ret.datasets.download import DownloadError
from delf_ret.datasets.download import download_dataset
from delf_ret.datasets.download import download_file
from delf_ret.default_model import default_config_path
from delf_ret.errors import InputError
from delf_ret.extract.settings import SETTINGS_FILE
from delf_ret.extract.settings import check_database_features
from delf_ret.extract.settings import check_feature_folder
from delf_ret.features import FeatureFileError
from delf_ret.features import read_datum
from delf_ret.features import read_features
from delf_ret.features import to_proto
from delf_ret.model.compact import CompactWeightsError
from delf_ret.model.compact import read_arrays
from delf_ret.model.compact import read_compact_weights
from delf_ret.protos import delf_features_pb2


def _one_line(error: BaseException, name: str) -> None:
  assert "\n" not in str(error) and name in str(error)


# Feature and .datum files (items 14, 15).


def _delf(path, rows, shape=None):
  message = delf_features_pb2.DelfFeatures()
  for i, row in enumerate(rows):
    feature = message.feature.add(y=float(i), x=1.0, scale=1.0, strength=1.0)
    feature.descriptor.shape.dim.append(len(row) if shape is None else shape)
    feature.descriptor.float_list.value.extend(row)
  path.write_bytes(message.SerializeToString())
  return path


def test_features_with_zero_dimensional_descriptors_are_refused(tmp_path):
  for name in ("a.delf", "b.delf"):
    with pytest.raises(FeatureFileError, match="zero-dimensional") as caught:
      read_features(_delf(tmp_path / name, [[], [], []]))
    _one_line(caught.value, name)


def test_a_delf_whose_shape_disagrees_with_its_data_is_refused(tmp_path):
  with pytest.raises(FeatureFileError, match="do not fill the shape") as caught:
    read_features(_delf(tmp_path / "a.delf", [[1.0, 0.0], [0.0, 1.0]], shape=3))
  _one_line(caught.value, "a.delf")


@pytest.mark.parametrize("field", ["descriptors", "locations"])
def test_nan_in_a_delf_is_refused(tmp_path, field):
  rng = np.random.default_rng(0)
  points, descriptors = rng.uniform(0, 50, (4, 2)), random_unit_descriptors(rng, 4, 8)
  (points if field == "locations" else descriptors)[1, 1] = np.nan
  path = tmp_path / "a.delf"
  path.write_bytes(to_proto(make_features(points, descriptors)).SerializeToString())
  with pytest.raises(FeatureFileError, match=f"{field} hold NaN") as caught:
    read_features(path)
  _one_line(caught.value, "a.delf")


def test_a_datum_whose_shape_product_overflows_is_refused(tmp_path):
  datum = delf_features_pb2.DatumProto()
  datum.shape.dim.extend([2**62, 4])  # 2**64: int64 products wrap to 0, the value count.
  (tmp_path / "mean.datum").write_bytes(datum.SerializeToString())
  with pytest.raises(FeatureFileError, match="do not fill the shape") as caught:
    read_datum(tmp_path / "mean.datum")
  _one_line(caught.value, "mean.datum")


# Extraction settings and configs (items 13, 14).

_SETTINGS = {"config": "image_scales: 1.0\n", "files": {"model": "0" * 64}}


@pytest.mark.parametrize("content", ["[1, 2]", "3", '"text"', '{"config": 5}'])
def test_an_extraction_settings_record_that_is_not_an_object_is_unreadable(tmp_path, content):
  (tmp_path / "a.delf").write_bytes(b"")
  (tmp_path / SETTINGS_FILE).write_bytes(content.encode("latin1"))
  check_database_features(tmp_path, _SETTINGS)  # An unreadable record: nothing to compare.
  with pytest.raises(InputError, match="made with other settings"):
    check_feature_folder(tmp_path, _SETTINGS, overwrite=False, log=lambda line: None)


def test_neighbors_per_descriptor_has_an_upper_bound():
  with pytest.raises(ConfigError, match="neighbors_per_descriptor must be at most 2048"):
    load_config(default_config_path(), ["retrieval_config.neighbors_per_descriptor=100000000"])


def test_a_config_file_that_is_not_utf8_is_refused(tmp_path):
  (tmp_path / "bad.pbtxt").write_bytes(b"image_scales: 1.0 # \xff\xfe\n")
  with pytest.raises(ConfigError, match="not a UTF-8 text file") as caught:
    load_config(tmp_path / "bad.pbtxt")
  _one_line(caught.value, "bad.pbtxt")


def test_image_scales_30_is_refused_when_the_config_loads():
  with pytest.raises(ConfigError, match="image_scales 30 with max_image_size 1024"):
    load_config(default_config_path(), ["image_scales=0.5,30"])


@pytest.mark.slow  # Loads the default model and decodes a 4200 x 4200 PNG (20 s).
def test_pyramid_levels_over_the_pixel_bound_are_refused_before_the_network(tmp_path):
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.extract.extractor import ImageTooLargeError

  # 17.6 megapixels: under the decoding limit, over the 16.8 of one pyramid level.
  Image.new("RGB", (4200, 4200), (120, 130, 140)).save(tmp_path / "huge.png")
  assert (tmp_path / "huge.png").stat().st_size < 1 << 20
  config = load_config(default_config_path(), ["max_image_size=-1", "image_scales=1.0"])
  extractor = DelfExtractor(config)
  with pytest.raises(ImageTooLargeError, match="max_image_size -1") as caught:
    extractor.extract_file(tmp_path / "huge.png")
  _one_line(caught.value, "huge.png")
  # image_scales 30 on a 320-px photo, in a config object nobody validated.
  config.max_image_size, config.image_scales[:] = 1024, [1.0, 30.0]
  with pytest.raises(ImageTooLargeError, match="image_scales 30"):
    extractor.extract_raw(np.zeros((320, 240, 3), np.uint8))


# Compact weights (items 14, 16).


def _weights(tmp_path, **changes):
  arrays = read_arrays(default_config_path().parent / "delf_default.npz")
  arrays.update(changes)
  arrays = {name: value for name, value in arrays.items() if value is not None}
  np.savez(tmp_path / "w.npz", **arrays)
  return tmp_path / "w.npz"


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"num_classes": None}, "no num_classes"),
    ({"num_classes": np.array(10**9)}, "num_classes must be in 1..250000"),
    ({"num_classes": np.array("ten")}, "num_classes must be one integer"),
    ({"num_classes": np.array([1, 2])}, "num_classes must be one integer"),
    ({"num_classes": np.array(7)}, "classifier/kernel has shape"),
  ],
)
def test_weights_with_a_bad_num_classes_are_refused_before_a_model_is_built(
  tmp_path, changes, message
):
  with pytest.raises(CompactWeightsError, match=message) as caught:
    read_compact_weights(_weights(tmp_path, **changes))
  _one_line(caught.value, "w.npz")


@pytest.mark.slow  # Compresses 1.1 GiB of zeros (3 s).
def test_a_small_npz_that_inflates_past_the_bound_is_refused_before_inflating(tmp_path):
  path = tmp_path / "bomb.npz"
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(
    header, {"descr": "<f4", "fortran_order": False, "shape": (9 << 25,)}
  )
  zeros = bytes(64 << 20)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
    with archive.open("w0000.npy", "w", force_zip64=True) as member:
      member.write(header.getvalue())
      for _ in range(18):  # 1.125 GiB of zeros.
        member.write(zeros)
  assert path.stat().st_size < 8 << 20
  with pytest.raises(CompactWeightsError, match="would inflate to") as caught:
    read_compact_weights(path)
  _one_line(caught.value, "bomb.npz")


# Official-signature SavedModels (items 14, 15).


def _official_model(path, boxes, features, scales):
  import tensorflow as tf

  class Lying(tf.Module):
    @tf.function(
      input_signature=[
        tf.TensorSpec([None, None, 3], tf.uint8, name="input_image"),
        tf.TensorSpec([None], tf.float32, name="input_scales"),
        tf.TensorSpec([], tf.int32, name="input_max_feature_num"),
        tf.TensorSpec([], tf.float32, name="input_abs_thres"),
      ]
    )
    def serve(self, input_image, input_scales, input_max_feature_num, input_abs_thres):
      return {
        "boxes": tf.constant(boxes, tf.float32),
        "features": tf.constant(features, tf.float32),
        "scales": tf.constant(scales, tf.float32),
        "scores": tf.ones([len(scales), 1], tf.float32),
      }

  module = Lying()
  tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
  return path


@pytest.mark.slow  # Saves and loads two SavedModels (15 s).
def test_official_models_returning_inconsistent_outputs_are_refused(tmp_path):
  from delf_ret.errors import ModelFileError
  from delf_ret.extract.saved_model import SavedModelExtractor

  image = np.zeros((64, 64, 3), np.uint8)
  levels = [(1.0, (1.0, 1.0), (64, 64))]
  box = [[0.0, 0.0, 10.0, 10.0]]
  unrequested = _official_model(tmp_path / "scales", box, np.ones((1, 8)), [7.0])
  with pytest.raises(ModelFileError, match=r"scales \[7.0\], which were not requested") as caught:
    SavedModelExtractor(unrequested).select(image, levels, 1.0, 0.0, 10)
  _one_line(caught.value, "scales")
  rows = _official_model(tmp_path / "rows", box, np.ones((3, 1024)), [1.0])
  with pytest.raises(ModelFileError, match="features of shape \\[3, 1024\\] for 1 boxes"):
    SavedModelExtractor(rows).select(image, levels, 1.0, 0.0, 10)


# Downloads (item 16).


class _Endless(http.server.BaseHTTPRequestHandler):
  """An endless body without a length, sent as 206 for any Range (a server that never ends)."""

  delay = 0.0

  def log_message(self, *args):
    pass

  def do_GET(self):
    requested = self.headers.get("Range")
    self.send_response(206 if requested else 200)
    if requested:
      start = requested.removeprefix("bytes=").rstrip("-")
      self.send_header("Content-Range", f"bytes {start}-/*")
    self.end_headers()
    try:
      while True:
        self.wfile.write(b"x" * 65536)
        time.sleep(self.delay)
    except OSError:
      pass


@pytest.fixture
def endless_server():
  servers = []

  def start(delay=0.0):
    handler = type("Handler", (_Endless,), {"delay": delay})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    servers.append(server)
    return f"http://127.0.0.1:{server.server_port}/file.tgz"

  yield start
  for server in servers:
    server.shutdown()


def test_an_endless_body_stops_at_the_size_limit_and_its_part_is_deleted(tmp_path, endless_server):
  target = tmp_path / "file.tgz"
  with pytest.raises(DownloadError, match="more than 1048576 bytes") as caught:
    download_file(endless_server(), target, log=lambda line: None, max_bytes=1 << 20)
  _one_line(caught.value, "file.tgz")
  assert not target.exists() and not target.with_name("file.tgz.part").exists()


def test_a_full_part_file_is_not_appended_to(tmp_path, endless_server):
  target = tmp_path / "file.tgz"
  part = target.with_name("file.tgz.part")
  part.write_bytes(b"y" * (1 << 20))
  lines = []
  with pytest.raises(DownloadError, match="more than 1048576 bytes"):
    download_file(endless_server(), target, log=lines.append, max_bytes=1 << 20)
  assert any("restarting" in line for line in lines) and not part.exists()


def test_a_download_has_an_overall_time_limit(tmp_path, endless_server):
  target = tmp_path / "file.tgz"
  start = time.monotonic()
  with pytest.raises(DownloadError, match="not finished after 1 s"):
    download_file(endless_server(delay=0.2), target, log=lambda line: None, max_seconds=1.0)
  assert time.monotonic() - start < 10
  assert target.with_name("file.tgz.part").exists()  # Kept, to resume.


def test_a_sha256_for_a_file_the_dataset_does_not_have_is_an_error(tmp_path):
  with pytest.raises(DownloadError, match="gnd_roxford5k.pkl, which oxford5k does not have"):
    download_dataset(
      "oxford5k",
      tmp_path,
      mirror_url="http://127.0.0.1:9",
      log=lambda line: None,
      sha256={"gnd_roxford5k.pkl": "0" * 64},
    )
