"""Global descriptors: GeM and DELG's multi-scale rule against numpy by hand, both whitenings
against their defining properties and a direct numpy computation, and .delg_global files in
the official DELG layout. (Official-signature SavedModels: tests/extract/
test_official_savedmodel.py, which shares their export.)"""

import struct

import numpy as np
import pytest

from delf_ret import config as config_lib
from delf_ret.extract import global_features as gf
from delf_ret.extract.pca import PcaModel
from delf_ret.features import FeatureFileError
from delf_ret.features import read_global_descriptor
from delf_ret.features import write_global_descriptor
from delf_ret.protos import delf_features_pb2


def _unit(v):
  v = np.asarray(v, np.float64)
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


# GeM and the multi-scale rule -----------------------------------------------------------------


def test_gem_is_the_generalised_mean_of_each_channel():
  feature_map = np.array(
    [[[1.0, 0.0], [2.0, 4.0], [3.0, -1.0]], [[0.5, 2.0], [0.0, 1.0], [6.0, 3.0]]], np.float32
  )  # [H 2, W 3, C 2]
  eps = 1e-6
  channel0 = [1.0, 2.0, 3.0, 0.5, eps, 6.0]  # 0 is clamped to eps
  channel1 = [eps, 4.0, eps, 2.0, 1.0, 3.0]  # so is -1
  by_hand = [np.mean(np.power(c, 3.0)) ** (1.0 / 3.0) for c in (channel0, channel1)]
  np.testing.assert_allclose(gf.gem(feature_map), by_hand, rtol=1e-6)
  np.testing.assert_allclose(gf.gem(feature_map, p=1.0), [np.mean(channel0), np.mean(channel1)])
  # p = 1 is average pooling of a positive map; a larger p moves towards the maximum.
  positive = np.abs(feature_map) + 0.5
  np.testing.assert_allclose(gf.gem(positive, p=1.0), positive.mean(axis=(0, 1)), rtol=1e-6)
  assert np.all(gf.gem(positive, p=50.0) > gf.gem(positive, p=3.0))
  with pytest.raises(gf.GlobalFeatureError, match="empty"):
    gf.gem(np.zeros((0, 3, 2)))


def test_multiscale_rule_normalises_each_scale_sums_then_normalises():
  per_scale = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 10.0]], np.float32)
  expected = _unit(np.array([0.6, 0.8, 1.0]))  # Unit rows summed: the scale's norm has no say.
  np.testing.assert_allclose(gf.multiscale_descriptor(per_scale), expected, rtol=1e-6)
  maps = [np.full((2, 2, 3), 1.0, np.float32), np.arange(12, dtype=np.float32).reshape(2, 2, 3)]
  by_hand = _unit(sum(_unit(gf.gem(m)) for m in maps))
  np.testing.assert_allclose(gf.global_descriptor(maps), by_hand, rtol=1e-6)
  with pytest.raises(gf.GlobalFeatureError, match="NaN"):
    gf.multiscale_descriptor(np.array([[np.nan, 1.0]]))


def test_multiscale_rule_with_pca_follows_the_official_apply_pca_and_whitening():
  rng = np.random.default_rng(1)
  per_scale = rng.random((3, 6)).astype(np.float32)
  model = PcaModel(
    mean=rng.normal(size=6).astype(np.float32),
    projection=np.linalg.qr(rng.normal(size=(6, 6)))[0].astype(np.float32),
    variances=np.array([4.0, 3.0, 2.0, 1.0, 0.5, 0.1], np.float32),
  )
  pca = gf.GlobalPca(model, dim=4, use_whitening=True)
  rows = _unit(per_scale)
  projected = (rows - model.mean) @ model.projection[:4].T / np.sqrt(model.variances[:4])
  expected = _unit(_unit(projected).sum(axis=0))
  np.testing.assert_allclose(gf.multiscale_descriptor(per_scale, pca), expected, atol=1e-6)


def _delg_config(extra=""):
  return config_lib.parse_config_text(f"""
model_path: "unused.keras"
image_scales: [0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0]
use_global_features: true
delf_global_config {{ use_pca: false {extra} }}
""")


def test_global_scales_are_the_configured_indices_of_image_scales():
  assert gf.global_scale_indices(_delg_config("image_scales_ind: [5, 3, 4]")) == [3, 4, 5]
  assert gf.global_scale_indices(_delg_config()) == list(range(7))  # Empty: every scale.
  for bad in ("image_scales_ind: [7]", "image_scales_ind: [-1]", "image_scales_ind: [3, 3]"):
    with pytest.raises(config_lib.ConfigError, match="image_scales_ind"):
      gf.global_scale_indices(_delg_config(bad))
  config = _delg_config("image_scales_ind: [3, 4, 5]")
  # Levels of an image whose 0.25 level was too small: the global scales are positions 2-4.
  assert gf.level_positions([0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0], config) == [2, 3, 4]
  with pytest.raises(gf.GlobalFeatureError, match="too small for every global scale"):
    gf.level_positions([2.0], config)


def test_global_pca_settings_are_checked(tmp_path):
  config = _delg_config("image_scales_ind: [4]")
  assert gf.load_global_pca(config) is None
  config.delf_global_config.use_pca = True
  with pytest.raises(config_lib.ConfigError, match="pca_parameters.mean_path"):
    gf.load_global_pca(config)
  np.save(tmp_path / "mean.npy", np.zeros(8, np.float32))
  np.save(tmp_path / "projection.npy", np.eye(8, dtype=np.float32)[:4])
  params = config.delf_global_config.pca_parameters
  params.mean_path, params.projection_matrix_path = (
    str(tmp_path / "mean.npy"),
    str(tmp_path / "projection.npy"),
  )
  params.pca_dim = 5
  with pytest.raises(config_lib.ConfigError, match="pca_dim 5 must be 1 to the 4"):
    gf.load_global_pca(config)
  params.pca_dim = 3
  loaded = gf.load_global_pca(config)
  assert loaded is not None and loaded.dim == 3 and not loaded.use_whitening


# Whitening -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database():
  """60 correlated 12-d descriptors, not centred."""
  rng = np.random.default_rng(7)
  return (rng.normal(size=(60, 12)) @ rng.normal(size=(12, 12)) + 2.0).astype(np.float32)


def test_pca_whitening_gives_the_database_identity_covariance(database):
  mean, projection = gf.learn_pca_whitening(database)
  assert projection.shape == (12, 12)
  whitened = (database - mean) @ projection.T
  np.testing.assert_allclose(whitened.mean(axis=0), 0, atol=1e-4)
  np.testing.assert_allclose(whitened.T @ whitened / len(database), np.eye(12), atol=1e-4)
  # Directly (cirtorch's pcawhitenlearn): eigen-decomposition of the covariance / N, directions
  # by decreasing eigenvalue, scaled by 1 / sqrt(eigenvalue); the same up to each row's sign.
  centred = database.astype(np.float64) - database.mean(axis=0)
  values, vectors = np.linalg.eigh(centred.T @ centred / len(database))
  order = np.argsort(values)[::-1]
  direct = vectors[:, order].T / np.sqrt(values[order])[:, None]
  signs = np.sign(np.sum(direct * projection, axis=1))
  np.testing.assert_allclose(projection, direct * signs[:, None], rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(mean, database.mean(axis=0), rtol=1e-6)


def test_pca_whitening_of_fewer_descriptors_than_dimensions_keeps_the_non_zero_variances(
  database,
):
  mean, projection = gf.learn_pca_whitening(database[:5])
  assert projection.shape == (4, 12)  # 5 descriptors span 4 directions around their mean.
  whitened = (database[:5] - mean) @ projection.T
  np.testing.assert_allclose(whitened.T @ whitened / 5, np.eye(4), atol=1e-3)
  with pytest.raises(gf.GlobalFeatureError, match="all equal"):
    gf.learn_pca_whitening(np.ones((4, 3)))


def test_learned_whitening_whitens_matching_pair_differences(database):
  rng = np.random.default_rng(3)
  # 40 pairs: each query's positive is a noisy copy of it, along an anisotropic noise.
  queries = np.arange(0, 40)
  positives = np.arange(60, 100)
  noise = rng.normal(size=(40, 12)) @ np.diag(np.linspace(0.05, 1.0, 12))
  x = np.concatenate([database, database[queries] + noise]).astype(np.float32)
  mean, projection = gf.learn_whitening(x, queries, positives)
  assert projection.shape == (12, 12)
  np.testing.assert_allclose(mean, x[queries].mean(axis=0), rtol=1e-5)
  differences = (x[queries] - x[positives]) @ projection.T
  np.testing.assert_allclose(differences.T @ differences / 40, np.eye(12), atol=1e-3)
  # In that space the centred descriptors are rotated onto their principal directions.
  spread = ((x - mean) @ projection.T).T @ ((x - mean) @ projection.T)
  off_diagonal = spread - np.diag(np.diag(spread))
  assert np.abs(off_diagonal).max() < 1e-3 * np.abs(spread).max()
  assert np.all(np.diff(np.diag(spread)) <= 1e-3 * np.abs(spread).max())
  # Directly (cirtorch's whitenlearn): inverse Cholesky factor of the difference covariance,
  # then the eigenvectors of the whitened scatter; the same up to each row's sign.
  d = (x[queries] - x[positives]).astype(np.float64)
  inverse_root = np.linalg.inv(np.linalg.cholesky(d.T @ d / 40))
  centred = (x - x[queries].mean(axis=0)).astype(np.float64) @ inverse_root.T
  values, vectors = np.linalg.eigh(centred.T @ centred)
  direct = vectors[:, np.argsort(values)[::-1]].T @ inverse_root
  signs = np.sign(np.sum(direct * projection, axis=1))
  np.testing.assert_allclose(projection, direct * signs[:, None], rtol=1e-3, atol=1e-3)


def test_learned_whitening_refuses_bad_pairs(database):
  with pytest.raises(gf.GlobalFeatureError, match="as many query as positive"):
    gf.learn_whitening(database, [0, 1], [2])
  with pytest.raises(gf.GlobalFeatureError, match="pair indices must be in 0 to 59"):
    gf.learn_whitening(database, [0], [60])
  # Fewer pairs than dimensions: regularised (a small multiple of the identity), still finite.
  _, projection = gf.learn_whitening(database, [0, 1], [2, 3])
  assert np.all(np.isfinite(projection))


def test_apply_whitening_projects_and_normalises(database):
  mean, projection = gf.learn_pca_whitening(database)
  out = gf.apply_whitening(database, mean, projection, dim=5)
  expected = _unit((database - mean) @ projection[:5].T)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(
    gf.apply_whitening(database[0], mean, projection, 5), out[0], atol=1e-6
  )
  assert gf.apply_whitening(database, mean, projection).shape == (60, 12)
  with pytest.raises(gf.GlobalFeatureError, match="dim 13 must be 1 to 12"):
    gf.apply_whitening(database, mean, projection, 13)
  with pytest.raises(gf.GlobalFeatureError, match="does not fit descriptors of dimension 11"):
    gf.apply_whitening(database[:, :11], mean, projection)


# .delg_global files ---------------------------------------------------------------------------


def test_delg_global_round_trip(tmp_path):
  descriptor = _unit(np.random.default_rng(0).normal(size=2048)).astype(np.float32)
  write_global_descriptor(tmp_path / "a.delg_global", descriptor)
  read = read_global_descriptor(tmp_path / "a.delg_global")
  assert read.dtype == np.float32 and read.shape == (2048,)
  np.testing.assert_array_equal(read, descriptor)


def test_delg_global_file_is_the_official_datum_layout(tmp_path):
  descriptor = np.array([0.5, -0.25, 0.125, 1.0], np.float32)
  # The official datum_io.WriteToFile: a DatumProto with shape [D] and the values as floats.
  datum = delf_features_pb2.DatumProto()
  datum.float_list.value.extend(descriptor.astype(float).flat)
  datum.shape.dim.extend(descriptor.shape)
  official = datum.SerializeToString()
  # The same bytes spelled out: shape (field 1) {dim packed [4]}, float_list (field 2) {value
  # packed}.
  floats = struct.pack("<4f", *descriptor)
  assert official == bytes([0x0A, 3, 0x0A, 1, 4, 0x12, 18, 0x0A, 16]) + floats
  (tmp_path / "official.delg_global").write_bytes(official)
  np.testing.assert_array_equal(
    read_global_descriptor(tmp_path / "official.delg_global"), descriptor
  )
  write_global_descriptor(tmp_path / "ours.delg_global", descriptor)
  assert (tmp_path / "ours.delg_global").read_bytes() == official


def test_delg_global_files_that_are_not_one_finite_vector_are_refused(tmp_path):
  with pytest.raises(FeatureFileError, match="1-d array"):
    write_global_descriptor(tmp_path / "a.delg_global", np.ones((2, 3)))
  with pytest.raises(FeatureFileError, match="NaN or infinite"):
    write_global_descriptor(tmp_path / "a.delg_global", np.array([1.0, np.inf]))
  assert not (tmp_path / "a.delg_global").exists()
  datum = delf_features_pb2.DatumProto()
  datum.shape.dim.extend([2, 2])
  datum.float_list.value.extend([1.0, 2.0, 3.0, 4.0])
  (tmp_path / "matrix.delg_global").write_bytes(datum.SerializeToString())
  with pytest.raises(FeatureFileError, match=r"matrix.delg_global: .*shape \[2, 2\]"):
    read_global_descriptor(tmp_path / "matrix.delg_global")
  (tmp_path / "junk.delg_global").write_bytes(b"\xff\xff\xff")
  with pytest.raises(FeatureFileError, match="junk.delg_global"):
    read_global_descriptor(tmp_path / "junk.delg_global")
  with pytest.raises(FeatureFileError, match="not found"):
    read_global_descriptor(tmp_path / "missing.delg_global")
  (tmp_path / "huge.delg_global").write_bytes(b"\0" * (17 << 16))
  with pytest.raises(FeatureFileError, match="more than a global descriptor"):
    read_global_descriptor(tmp_path / "huge.delg_global")


# delf-ret's own model ---------------------------------------------------------------------------


@pytest.mark.slow  # Compiles the model's level function (a few seconds).
def test_own_model_global_descriptor_is_gem_of_the_conv4_maps_at_the_global_scales(delf_model):
  import tensorflow as tf

  from conftest import BUNDLED_IMAGES
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.extract.inference import resize_image
  from delf_ret.features import to_proto
  from delf_ret.images import load_image
  from delf_ret.images import shrink_to_max_side

  image = shrink_to_max_side(load_image(BUNDLED_IMAGES / "graffiti_1.jpg"), 160)[0]
  config = config_lib.parse_config_text("""
model_path: "unused.keras"
image_scales: [0.5, 0.7071, 1.0]
max_image_size: 1024
use_global_features: true
delf_global_config { use_pca: false image_scales_ind: [1, 2] }
delf_local_config { use_pca: false max_feature_num: 50 score_threshold: 0.0 }
""")
  extractor = DelfExtractor(config, model=delf_model)
  local, descriptor = gf.GlobalExtraction(extractor).extract_with_global(image)
  assert descriptor.shape == (1024,) and descriptor.dtype == np.float32
  assert to_proto(local) == to_proto(extractor.extract(image))  # Local features unchanged.
  maps = []
  for scale in (0.7071, 1.0):
    size = [max(1, round(side * scale)) for side in image.shape[:2]]
    features, _ = delf_model.feature_maps(resize_image(image, size)[None], training=False)
    maps.append(tf.squeeze(features, 0).numpy())
  by_hand = _unit(sum(_unit(gf.gem(m)) for m in maps))
  np.testing.assert_allclose(descriptor, by_hand, atol=2e-4)
