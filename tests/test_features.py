import numpy as np
import pytest

from delf_ret.features import FeatureFileError
from delf_ret.features import LocalFeatures
from delf_ret.features import check_same_dimension
from delf_ret.features import read_features
from delf_ret.features import write_features


def random_features(n=50, dim=40, seed=0):
  rng = np.random.default_rng(seed)
  return LocalFeatures(
    locations=rng.uniform(0, 1000, (n, 2)),
    scales=rng.choice([0.5, 1.0], n),
    descriptors=rng.normal(size=(n, dim)),
    attention=rng.uniform(0, 200, n),
    orientations=np.zeros(n),
  )


def test_round_trip_is_bit_exact(tmp_path):
  features = random_features()
  write_features(tmp_path / "a.delf", features)
  loaded = read_features(tmp_path / "a.delf")
  for name in ("locations", "scales", "descriptors", "attention", "orientations"):
    assert getattr(loaded, name).dtype == np.float32
    assert getattr(loaded, name).tobytes() == getattr(features, name).tobytes(), name
  assert not list(tmp_path.glob("*.tmp"))


def test_empty_feature_set_round_trips(tmp_path):
  write_features(tmp_path / "e.delf", random_features(n=0))
  loaded = read_features(tmp_path / "e.delf")
  assert loaded.num_features == 0 and loaded.locations.shape == (0, 2)


def test_published_layout_y_then_x(tmp_path):
  from delf_ret.protos import delf_features_pb2

  write_features(
    tmp_path / "a.delf", LocalFeatures([[10.0, 20.0]], [0.5], [[1.0, 2.0]], [150.0], [0.0])
  )
  message = delf_features_pb2.DelfFeatures.FromString((tmp_path / "a.delf").read_bytes())
  feature = message.feature[0]
  assert (feature.y, feature.x, feature.scale, feature.strength) == (10.0, 20.0, 0.5, 150.0)
  assert list(feature.descriptor.shape.dim) == [2]
  assert list(feature.descriptor.float_list.value) == [1.0, 2.0]


def test_bad_files_give_clear_errors(tmp_path):
  with pytest.raises(FeatureFileError, match="not found"):
    read_features(tmp_path / "missing.delf")
  (tmp_path / "junk.delf").write_bytes(b"\xff\xfe not a protobuf \x00\x01")
  with pytest.raises(FeatureFileError, match="not a DELF feature file"):
    read_features(tmp_path / "junk.delf")


def test_mismatched_dimensions_are_reported():
  with pytest.raises(FeatureFileError, match="40.*128"):
    check_same_dimension(random_features(dim=40), random_features(dim=128))
  check_same_dimension(random_features(dim=40), random_features(n=0, dim=0))
