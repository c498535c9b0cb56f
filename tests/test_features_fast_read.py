"""read_features' byte-column reader gives exactly what the protobuf parser gives, or defers to it."""

import numpy as np
import pytest

from delf_ret import features as features_module
from delf_ret.features import FeatureFileError
from delf_ret.features import LocalFeatures
from delf_ret.features import from_proto
from delf_ret.features import read_features
from delf_ret.features import to_proto
from delf_ret.features import write_features
from delf_ret.protos import delf_features_pb2

FIELDS = ("locations", "scales", "descriptors", "attention", "orientations")


def parsed(data: bytes) -> LocalFeatures:
  """The features of a file's bytes through the protobuf parser (the reference)."""
  return from_proto(delf_features_pb2.DelfFeatures.FromString(data))


def assert_same(first: LocalFeatures, second: LocalFeatures) -> None:
  for name in FIELDS:
    a, b = getattr(first, name), getattr(second, name)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape, name
    assert a.tobytes() == b.tobytes(), name


def odd_features(n: int, dim: int, seed: int) -> LocalFeatures:
  """Values whose float32 bits must survive: negative zeros, subnormals, huge, negative."""
  rng = np.random.default_rng(seed)
  descriptors = rng.normal(size=(n, dim)).astype(np.float32)
  descriptors.flat[::7] = -0.0
  descriptors.flat[1::11] = np.float32(1e-40)  # Subnormal.
  descriptors.flat[2::13] = np.float32(3e38)
  return LocalFeatures(
    rng.uniform(-5, 5000, (n, 2)),
    rng.uniform(0, 2, n),
    descriptors,
    -rng.uniform(0, 9, n),
    [0.0] * n,
  )


@pytest.mark.parametrize("n, dim", [(1, 1), (3, 40), (1000, 40), (200, 1024)])
def test_byte_columns_equal_the_parser_and_round_trip_bytes(tmp_path, n, dim):
  features = odd_features(n, dim, seed=n + dim)
  path = tmp_path / "a.delf"
  write_features(path, features)
  data = path.read_bytes()
  fast = features_module._uniform_features(data)
  assert fast is not None  # The layout write_features writes is read as byte columns.
  assert_same(fast, parsed(data))
  assert_same(read_features(path), features)
  write_features(tmp_path / "b.delf", read_features(path))
  assert (tmp_path / "b.delf").read_bytes() == data  # Byte-identical round trip.


def mixed_layout_files() -> dict[str, bytes]:
  """Valid files whose features do not share one byte layout (or have no features)."""
  base = to_proto(odd_features(4, 8, seed=1))
  files = {"empty": b""}
  message = delf_features_pb2.DelfFeatures()
  message.CopyFrom(base)
  message.feature[2].ClearField("orientation")  # One feature without a field.
  files["field missing in one"] = message.SerializeToString()
  message = delf_features_pb2.DelfFeatures()
  message.CopyFrom(base)
  for feature in message.feature:
    feature.ClearField("x")  # All without x (read as 0): one layout, fewer fields.
  files["x missing in all"] = message.SerializeToString()
  message = delf_features_pb2.DelfFeatures()
  message.CopyFrom(base)
  message.feature[1].descriptor.shape.dim[:] = [2, 4]  # Another shape, same values.
  files["shape differs"] = message.SerializeToString()
  # A record of another length, with a field delf-ret does not know (7, a float).
  data = base.SerializeToString()
  files["unknown field"] = data + bytes([0x0A, 0x05, 0x3D]) + b"\x00\x00\x80\x3f"
  # The descriptor's values in two packed chunks (parsers concatenate them).
  values = list(base.feature[0].descriptor.float_list.value)
  chunk = delf_features_pb2.FloatList(value=values[:3]).SerializeToString()
  rest = delf_features_pb2.FloatList(value=values[3:]).SerializeToString()
  datum = delf_features_pb2.DatumProto()
  datum.shape.dim.append(8)
  descriptor = datum.SerializeToString() + bytes([0x12, len(chunk)]) + chunk
  descriptor += bytes([0x12, len(rest)]) + rest
  record = bytes([0x0A, len(descriptor)]) + descriptor
  record += delf_features_pb2.DelfFeature(x=1, y=2, scale=1, strength=3).SerializeToString()
  files["descriptor in two parts"] = bytes([0x0A, len(record)]) + record
  return files


def test_other_layouts_are_read_by_the_parser(tmp_path):
  for name, data in mixed_layout_files().items():
    path = tmp_path / "f.delf"
    path.write_bytes(data)
    if name not in ("x missing in all",):
      assert features_module._uniform_features(data) is None, name
    try:
      expected = parsed(data)
    except FeatureFileError as error:
      with pytest.raises(FeatureFileError) as raised:
        read_features(path)
      assert str(raised.value) == f"{path}: {error}", name
      continue
    assert_same(read_features(path), expected)


def test_bad_values_give_the_parser_errors(tmp_path):
  path = tmp_path / "nan.delf"
  features = odd_features(5, 4, seed=2)
  features.descriptors[3, 1] = np.nan
  path.write_bytes(to_proto(features).SerializeToString())
  with pytest.raises(FeatureFileError, match=f"^{path}: features: descriptors hold NaN"):
    read_features(path)
  with pytest.raises(FeatureFileError, match="^features: descriptors hold NaN"):
    parsed(path.read_bytes())
  # Values that do not fill the stored shape, in every feature (one layout).
  message = to_proto(odd_features(3, 4, seed=3))
  for feature in message.feature:
    feature.descriptor.shape.dim[:] = [5]
  path.write_bytes(message.SerializeToString())
  with pytest.raises(FeatureFileError, match="4 values do not fill the shape \\[5\\]"):
    read_features(path)
  path.write_bytes(message.SerializeToString()[:-3])  # Cut inside the last feature.
  with pytest.raises(FeatureFileError, match=f"^{path}: not a DELF feature file"):
    read_features(path)
