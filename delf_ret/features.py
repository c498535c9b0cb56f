"""Local features of an image: in memory, on disk, and the file-name rule.

In memory the features of one image are a :class:`LocalFeatures`; on disk each
feature is a ``DelfFeature`` message with its descriptor as a ``DatumProto``
(``DelfFeatures`` protobuf, published layout). The features of the image with id
``<id>`` are in ``<id>.delf``, and an image's id is its file stem
(``photos/all_souls_000013.jpg`` -> ``all_souls_000013`` ->
``all_souls_000013.delf``); this module is the one place that rule is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import Callable

import numpy as np
from google.protobuf.message import DecodeError

from delf_ret.atomic import write_bytes_atomic
from delf_ret.errors import DelfRetError
from delf_ret.errors import InputError
from delf_ret.protos import delf_features_pb2

FEATURE_SUFFIX = ".delf"
# A .datum array has at most this many dimensions (numpy's limit is 64; DELF writes 1 or 2).
MAX_DATUM_DIMS = 8


class FeatureFileError(DelfRetError):
  """A feature file is missing, corrupt or inconsistent."""


def image_id_of(path: str | os.PathLike) -> str:
  """The image id of an image or feature file: its file name without the suffix."""
  return pathlib.Path(path).stem


def feature_file_name(image_id: str) -> str:
  """The feature file name of an image id: ``<id>.delf``."""
  return f"{image_id}{FEATURE_SUFFIX}"


def is_feature_file(path: str | os.PathLike) -> bool:
  """True for a path with the feature file suffix."""
  return pathlib.Path(path).suffix == FEATURE_SUFFIX


def feature_file_names(image_paths: list[pathlib.Path]) -> list[str]:
  """The feature file name of each image; raises InputError on two images with one id."""
  names = [feature_file_name(image_id_of(path)) for path in image_paths]
  seen: dict[str, pathlib.Path] = {}
  for path, name in zip(image_paths, names):
    if name in seen:
      raise InputError(f"{seen[name]} and {path} would both write {name}; rename one")
    seen[name] = path
  return names


def feature_loader(features_dir: str | os.PathLike) -> Callable[[str], LocalFeatures]:
  """A function reading ``features_dir/<image id>.delf`` for an image id."""
  features_dir = pathlib.Path(features_dir)
  return lambda image_id: read_features(features_dir / feature_file_name(image_id))


@dataclasses.dataclass
class LocalFeatures:
  """Local features of one image.

  Attributes:
    locations: float32 [N, 2], keypoint centres (y, x) in original-image pixels.
    scales: float32 [N], pyramid scale of each feature.
    descriptors: float32 [N, D].
    attention: float32 [N], attention scores.
    orientations: float32 [N] (radians; 0 for DELF).
  """

  locations: np.ndarray
  scales: np.ndarray
  descriptors: np.ndarray
  attention: np.ndarray
  orientations: np.ndarray

  def __post_init__(self):
    self.locations = np.asarray(self.locations, np.float32).reshape(-1, 2)
    n = self.locations.shape[0]
    self.scales = np.asarray(self.scales, np.float32).reshape(n)
    self.attention = np.asarray(self.attention, np.float32).reshape(n)
    self.orientations = np.asarray(self.orientations, np.float32).reshape(n)
    descriptors = np.asarray(self.descriptors, np.float32)
    self.descriptors = descriptors.reshape(n, -1) if descriptors.size else descriptors.reshape(n, 0)

  @property
  def num_features(self) -> int:
    return self.locations.shape[0]

  @property
  def descriptor_dim(self) -> int:
    return self.descriptors.shape[1]


def to_proto(features: LocalFeatures) -> delf_features_pb2.DelfFeatures:
  """Builds the ``DelfFeatures`` message of one image."""
  message = delf_features_pb2.DelfFeatures()
  dim = features.descriptor_dim
  for i in range(features.num_features):
    feature = message.feature.add()
    feature.y = features.locations[i, 0]
    feature.x = features.locations[i, 1]
    feature.scale = features.scales[i]
    feature.orientation = features.orientations[i]
    feature.strength = features.attention[i]
    feature.descriptor.shape.dim.append(dim)
    feature.descriptor.float_list.value.extend(features.descriptors[i].tolist())
  return message


def _datum_shape(datum: delf_features_pb2.DatumProto, what: str) -> tuple[int, ...]:
  """The stored shape of a DatumProto; FeatureFileError unless its values fill it exactly.

  The product is taken over Python integers, so no shape overflows into a false match.
  """
  shape = tuple(int(d) for d in datum.shape.dim)
  count = len(datum.float_list.value)
  if len(shape) > MAX_DATUM_DIMS or any(d < 0 for d in shape) or math.prod(shape) != count:
    raise FeatureFileError(f"{what}: {count} values do not fill the shape {list(shape)[:8]}")
  return shape


def _check_finite(arrays: dict[str, np.ndarray], where: str) -> None:
  """FeatureFileError naming the first array that holds a NaN or an infinity."""
  for name, array in arrays.items():
    if not np.all(np.isfinite(array)):
      raise FeatureFileError(f"{where}: {name} hold NaN or infinite values")


def from_proto(message: delf_features_pb2.DelfFeatures) -> LocalFeatures:
  """Reads the arrays out of a ``DelfFeatures`` message.

  Raises FeatureFileError when a descriptor's values do not fill its stored
  shape, descriptors differ in dimension or have none, or any value is NaN or
  infinite.
  """
  n = len(message.feature)
  locations = np.empty((n, 2), np.float32)
  scales = np.empty(n, np.float32)
  attention = np.empty(n, np.float32)
  orientations = np.empty(n, np.float32)
  rows = []
  for i, feature in enumerate(message.feature):
    locations[i] = (feature.y, feature.x)
    scales[i] = feature.scale
    attention[i] = feature.strength
    orientations[i] = feature.orientation
    _datum_shape(feature.descriptor, f"feature {i}'s descriptor")
    rows.append(np.asarray(feature.descriptor.float_list.value, np.float32))
  dims = {row.shape[0] for row in rows}
  if len(dims) > 1:
    raise FeatureFileError(f"descriptors of different dimensions in one file: {sorted(dims)}")
  if dims == {0}:
    raise FeatureFileError(f"{n} features with zero-dimensional (empty) descriptors")
  descriptors = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
  _check_finite(
    {
      "locations": locations,
      "scales": scales,
      "attention scores": attention,
      "orientations": orientations,
      "descriptors": descriptors,
    },
    "features",
  )
  return LocalFeatures(locations, scales, descriptors, attention, orientations)


def write_features(path: str | os.PathLike, features: LocalFeatures) -> None:
  """Writes one image's features to ``path`` atomically."""
  write_bytes_atomic(path, to_proto(features).SerializeToString())


def _parse_file(path: pathlib.Path, message, missing: str, kind: str):
  """``message`` parsed from the bytes of ``path``; FeatureFileError naming the file otherwise.

  missing / kind: how the error calls a missing file ("<path>: <missing> not found")
  and what the file should have been ("<path>: not <kind> (<parser's reason>)").
  """
  if not path.is_file():
    raise FeatureFileError(f"{path}: {missing} not found")
  try:
    message.ParseFromString(path.read_bytes())
  except (DecodeError, ValueError, RuntimeError) as error:
    raise FeatureFileError(f"{path}: not {kind} ({error})") from None
  return message


def read_features(path: str | os.PathLike) -> LocalFeatures:
  """Reads one image's features; raises FeatureFileError on a bad file."""
  path = pathlib.Path(path)
  message = _parse_file(
    path, delf_features_pb2.DelfFeatures(), "feature file", "a DELF feature file"
  )
  try:
    return from_proto(message)
  except FeatureFileError as error:
    raise FeatureFileError(f"{path}: {error}") from None


def check_same_dimension(
  first: LocalFeatures,
  second: LocalFeatures,
  first_name: str = "first",
  second_name: str = "second",
) -> None:
  """Raises FeatureFileError if two non-empty feature sets differ in descriptor dimension."""
  if first.num_features and second.num_features and first.descriptor_dim != second.descriptor_dim:
    raise FeatureFileError(
      f"descriptor dimensions differ: {first_name} has {first.descriptor_dim}, "
      f"{second_name} has {second.descriptor_dim} (were they extracted with the same "
      f"PCA settings?)"
    )


DATUM_SUFFIX = ".datum"


def write_datum(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes a float array of any shape as an official DELF ``.datum`` file (DatumProto), atomically."""
  array = np.asarray(array, np.float32)
  datum = delf_features_pb2.DatumProto()
  datum.shape.dim.extend(int(d) for d in array.shape)
  datum.float_list.value.extend(array.reshape(-1).tolist())
  write_bytes_atomic(path, datum.SerializeToString())


def read_datum(path: str | os.PathLike) -> np.ndarray:
  """Reads an official DELF ``.datum`` file: float32 array of the stored shape.

  Raises FeatureFileError naming the file if it is missing, not a DatumProto,
  its values do not fill its shape (at most MAX_DATUM_DIMS dimensions), or a
  value is NaN or infinite.
  """
  path = pathlib.Path(path)
  datum = _parse_file(path, delf_features_pb2.DatumProto(), "file", "a .datum file")
  shape = _datum_shape(datum, str(path))
  values = np.asarray(datum.float_list.value, np.float32).reshape(shape)
  _check_finite({"values": values}, str(path))
  return values
