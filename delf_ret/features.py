"""Local features of an image: in memory, on disk, and the file-name rule.

In memory the features of one image are a :class:`LocalFeatures`; on disk each
feature is a ``DelfFeature`` message with its descriptor as a ``DatumProto``
(``DelfFeatures`` protobuf, published layout). The features of the image with id
``<id>`` are in ``<id>.delf``, and an image's id is its file stem
(``photos/all_souls_000013.jpg`` -> ``all_souls_000013`` ->
``all_souls_000013.delf``); this module is the one place that rule is written.

Reading a feature file does not visit its features one by one in Python: the
files ``write_features`` writes (and the official DELF tools') hold features of
one byte layout each, so :func:`read_features` checks that every feature record
has the first one's layout (its tags, lengths and shape, compared as byte
columns) and takes the values out of the byte array as float32 columns. A file
of any other layout (a field missing from some features, unknown fields, a
descriptor split in parts) is read through the protobuf parser; both give the
same arrays and the same errors.
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
  return _checked_features(locations, scales, descriptors, attention, orientations)


# Field numbers of DelfFeature's float fields (wire type 5, four little-endian bytes).
_FLOAT_FIELDS = {2: "x", 3: "y", 4: "scale", 5: "orientation", 6: "strength"}


class _NotUniform(DelfRetError):
  """A feature file whose features are not all of the first one's byte layout (internal:
  read_features then parses it with protobuf)."""


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
  """(value, position after it) of the protobuf varint at ``pos``."""
  value = shift = 0
  while pos < end and shift < 64:
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if not byte & 0x80:
      return value, pos
  raise _NotUniform


def _field(data: bytes, pos: int, end: int, wire_type: int) -> tuple[int, int, int]:
  """(field number, start, end of its value) of the field at ``pos``, which must have
  ``wire_type`` (2: length-delimited, 5: fixed 32 bits)."""
  key, pos = _varint(data, pos, end)
  if key & 7 != wire_type:
    raise _NotUniform
  size = 4
  if wire_type == 2:
    size, pos = _varint(data, pos, end)
  if pos + size > end:
    raise _NotUniform
  return key >> 3, pos, pos + size


def _feature_layout(data: bytes, start: int, end: int) -> tuple[dict[str, int], int, int, tuple]:
  """The layout of the DelfFeature record data[start:end]: (float field name -> offset of
  its bytes, offset of the descriptor's values, their count, the descriptor's shape), with
  offsets relative to ``start``; _NotUniform unless it is the simple layout (each field
  once, a shaped packed descriptor, nothing unknown)."""
  floats: dict[str, int] = {}
  values = count = -1
  shape: tuple = ()
  pos = start
  while pos < end:
    wire_type = 2 if data[pos] == 0x0A else 5
    number, value_start, pos = _field(data, pos, end, wire_type)
    if number == 1 and values < 0:
      values, count, shape = _descriptor_layout(data, value_start, pos)
    elif number in _FLOAT_FIELDS and _FLOAT_FIELDS[number] not in floats:
      floats[_FLOAT_FIELDS[number]] = value_start - start
    else:
      raise _NotUniform
  if values < 0:
    raise _NotUniform
  return floats, values - start, count, shape


def _descriptor_layout(data: bytes, pos: int, end: int) -> tuple[int, int, tuple]:
  """(offset of the values, their count, shape) of a DatumProto holding its shape, then its
  values as one packed float list."""
  number, shape_start, pos = _field(data, pos, end, 2)
  if number != 1:
    raise _NotUniform
  number, dims_start, dims_end = _field(data, shape_start, pos, 2)
  if number != 1 or dims_end != pos:
    raise _NotUniform
  dims = []
  while dims_start < dims_end:
    dim, dims_start = _varint(data, dims_start, dims_end)
    dims.append(dim)
  number, list_start, list_end = _field(data, pos, end, 2)
  if number != 2 or list_end != end:
    raise _NotUniform
  number, values, values_end = _field(data, list_start, list_end, 2)
  if number != 1 or values_end != list_end or (values_end - values) % 4:
    raise _NotUniform
  count = (values_end - values) // 4
  if not count:
    raise _NotUniform  # Empty descriptors: the parser's error.
  if not 0 < len(dims) <= MAX_DATUM_DIMS or any(d >= 1 << 63 for d in dims):
    raise _NotUniform  # No shape, or a negative dimension: the parser's error.
  if math.prod(dims) != count:
    raise _NotUniform
  return values, count, tuple(dims)


def _uniform_features(data: bytes) -> LocalFeatures | None:
  """The features of a serialized DelfFeatures whose records all have the first one's byte
  layout (see the module docstring), read as byte columns; None for any other file."""
  try:
    if not data or data[0] != 0x0A:
      return None
    size, start = _varint(data, 1, len(data))
    stride = start + size
    if len(data) % stride:
      return None
    floats, values, count, _ = _feature_layout(data, start, stride)
  except _NotUniform:
    return None
  records = np.frombuffer(data, np.uint8).reshape(-1, stride)
  structure = np.ones(stride, bool)  # The bytes every record must share: all but values.
  structure[start + values : start + values + 4 * count] = False
  for offset in floats.values():
    structure[start + offset : start + offset + 4] = False
  if not (records[:, structure] == records[0, structure]).all():
    return None

  def column(offset: int, width: int) -> np.ndarray:
    return records[:, start + offset : start + offset + 4 * width].copy().view("<f4")

  zeros = np.zeros(len(records), np.float32)
  fields = {name: column(offset, 1)[:, 0] for name, offset in floats.items()}
  x, y = fields.get("x", zeros), fields.get("y", zeros)
  return _checked_features(
    np.stack([y, x], axis=1),
    fields.get("scale", zeros),
    column(values, count).astype(np.float32, copy=False),
    fields.get("strength", zeros),
    fields.get("orientation", zeros),
  )


def _checked_features(
  locations: np.ndarray,
  scales: np.ndarray,
  descriptors: np.ndarray,
  attention: np.ndarray,
  orientations: np.ndarray,
) -> LocalFeatures:
  """LocalFeatures of the arrays; FeatureFileError naming the first that holds a NaN or an
  infinity."""
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
  return _parse(path, path.read_bytes(), message, kind)


class _ParseError(FeatureFileError):
  """A file's bytes are not the message it should hold (the message names the file)."""


def _parse(path: pathlib.Path, data: bytes, message, kind: str):
  """``message`` parsed from ``data``, the bytes of ``path``; FeatureFileError otherwise."""
  try:
    message.ParseFromString(data)
  except (DecodeError, ValueError, RuntimeError) as error:
    raise _ParseError(f"{path}: not {kind} ({error})") from None
  return message


def read_features(path: str | os.PathLike) -> LocalFeatures:
  """Reads one image's features; raises FeatureFileError on a bad file.

  Features of one byte layout (every file ``write_features`` writes) are read as byte
  columns, any other file through the protobuf parser (see the module docstring).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FeatureFileError(f"{path}: feature file not found")
  data = path.read_bytes()
  try:
    features = _uniform_features(data)
    if features is None:
      features = from_proto(
        _parse(path, data, delf_features_pb2.DelfFeatures(), "a DELF feature file")
      )
  except _ParseError:
    raise
  except FeatureFileError as error:
    raise FeatureFileError(f"{path}: {error}") from None
  return features


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


def datum_bytes(array: np.ndarray) -> bytes:
  """The bytes of an official DELF ``.datum`` file (DatumProto) of a float array of any shape."""
  array = np.asarray(array, np.float32)
  datum = delf_features_pb2.DatumProto()
  datum.shape.dim.extend(int(d) for d in array.shape)
  datum.float_list.value.extend(array.reshape(-1).tolist())
  return datum.SerializeToString()


def write_datum(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes a float array of any shape as an official DELF ``.datum`` file (DatumProto), atomically."""
  write_bytes_atomic(path, datum_bytes(array))


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


GLOBAL_SUFFIX = ".delg_global"
# Longest global descriptor a .delg_global file may hold (DELG's is 2048-d, before PCA).
MAX_GLOBAL_DIM = 1 << 16


def global_file_name(image_id: str) -> str:
  """The global descriptor file name of an image id: ``<id>.delg_global`` (official DELG)."""
  return f"{image_id}{GLOBAL_SUFFIX}"


def _checked_global(array: np.ndarray, where: str) -> np.ndarray:
  """``array`` as float32 [D]; FeatureFileError unless it is 1-d, 0 < D <= MAX_GLOBAL_DIM
  and finite."""
  if array.ndim != 1 or not 0 < array.shape[0] <= MAX_GLOBAL_DIM:
    raise FeatureFileError(
      f"{where}: a global descriptor is a 1-d array of 1 to {MAX_GLOBAL_DIM} values, "
      f"got shape {list(array.shape)[:8]}"
    )
  _check_finite({"global descriptor values": array}, where)
  return array


def global_descriptor_bytes(array: np.ndarray, where: str) -> bytes:
  """The bytes of the ``.delg_global`` file of one image's global descriptor float [D]
  (those :func:`write_global_descriptor` writes); FeatureFileError naming ``where`` unless
  the array is 1-d, of 1 to MAX_GLOBAL_DIM finite values."""
  return datum_bytes(_checked_global(np.asarray(array, np.float32), where))


def write_global_descriptor(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes one image's global descriptor float [D] as an official DELG ``.delg_global``
  file (a DatumProto of shape [D], as the official ``datum_io.WriteToFile``), atomically.

  Raises FeatureFileError unless the array is 1-d, of 1 to MAX_GLOBAL_DIM finite values.
  """
  write_bytes_atomic(path, global_descriptor_bytes(array, str(path)))


def read_global_descriptor(path: str | os.PathLike) -> np.ndarray:
  """Reads a ``.delg_global`` file (ours or the official DELG tool's): float32 [D].

  Raises FeatureFileError naming the file if it is missing, not a DatumProto, or
  not a 1-d array of 1 to MAX_GLOBAL_DIM finite values. The size is checked before
  parsing, so a huge file is refused without reading it whole.
  """
  path = pathlib.Path(path)
  if path.is_file() and path.stat().st_size > 16 * MAX_GLOBAL_DIM + 64:
    raise FeatureFileError(
      f"{path}: {path.stat().st_size} bytes, more than a global descriptor of at most "
      f"{MAX_GLOBAL_DIM} values takes"
    )
  return _checked_global(read_datum(path), str(path))
