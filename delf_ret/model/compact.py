"""Compact DELF weights: one ``.npz`` file, large tensors stored as float16.

Used for the checkpoint shipped inside the package (at most 25 MB). Tensors of
more than ``FLOAT16_MIN_SIZE`` values (convolution kernels) are stored in
float16; small ones (biases, batch-norm statistics, whose variances can fall
below float16's range) stay float32. Loading (``delf_ret.model.delf.load_delf_model``
on a .npz file) rebuilds the architecture and casts everything back to float32;
no pickles are involved.

The file format only, in numpy: delf_ret.model.delf imports this module (to
load a .npz file), not the reverse.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pathlib
import zipfile
import zlib
from typing import Any
from typing import Sequence

import numpy as np

from delf_ret.atomic import atomic_write
from delf_ret.errors import ModelFileError

FLOAT16_MIN_SIZE = 4096
FORMAT_VERSION = 1


class CompactWeightsError(ModelFileError):
  """A compact weights file is missing, damaged or does not fit the DELF architecture."""


def save_compact_weights(model: Any, path: str | os.PathLike) -> None:
  """Writes every weight of a DelfModel to ``path`` (.npz), atomically."""
  arrays: dict[str, Any] = {
    "format_version": np.array(FORMAT_VERSION),
    "num_classes": np.array(model.num_classes),
  }
  for index, variable in enumerate(model.weights):
    value = np.asarray(variable.numpy())
    if value.size > FLOAT16_MIN_SIZE:
      value = value.astype(np.float16)
    arrays[f"w{index:04d}:{variable.path}"] = value
  with atomic_write(path) as handle:
    np.savez_compressed(handle, **arrays)


# What the arrays of one weights file may inflate to. A DELF model is 9 M backbone and
# attention parameters plus 2 x 1025 per class; with GLDv2's 203,094 landmarks (the most of any
# published training set) its float16 kernels take 0.85 GB, so 1 GiB bounds every real file
# while a 2 MB file can no longer make the reader inflate gigabytes.
MAX_INFLATED_BYTES = 1 << 30
# Classes of the classifier heads: GLDv2 (full) has 203,094 landmarks.
MAX_CLASSES = 250_000


_HEADER_READERS = {
  (1, 0): np.lib.format.read_array_header_1_0,
  (2, 0): np.lib.format.read_array_header_2_0,
}


def _check_members(path: pathlib.Path) -> None:
  """CompactWeightsError unless every member is a .npy whose header fits its declared size and
  the declared sizes together stay under MAX_INFLATED_BYTES, read before anything inflates.

  The zip reader stops each member at its declared size, so the check bounds what loading
  inflates.
  """
  with zipfile.ZipFile(path) as archive:
    members = archive.infolist()
    total = sum(member.file_size for member in members)
    if total > MAX_INFLATED_BYTES:
      raise CompactWeightsError(
        f"{path}: its arrays would inflate to {total / 2**20:.0f} MiB, more than the "
        f"{MAX_INFLATED_BYTES >> 20} MiB a weights file may hold"
      )
    for member in members:
      with archive.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        if version not in _HEADER_READERS:
          raise CompactWeightsError(f"{path}: array {member.filename} has .npy version {version}")
        shape, _, dtype = _HEADER_READERS[version](handle)
      if math.prod(shape) * dtype.itemsize > member.file_size:
        raise CompactWeightsError(
          f"{path}: array {member.filename} declares shape {shape} of {dtype}, more than "
          f"its {member.file_size} bytes"
        )


def read_arrays(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Every array of a .npz weights file by name; CompactWeightsError if missing or unreadable,
  or if its declared sizes exceed MAX_INFLATED_BYTES (checked before inflating)."""
  if not path.is_file():
    raise CompactWeightsError(f"{path}: weights file not found")
  try:
    _check_members(path)
    with np.load(path, allow_pickle=False) as data:
      return {name: data[name] for name in data.files}
  except (
    OSError,
    ValueError,
    EOFError,
    TypeError,
    OverflowError,
    MemoryError,
    zipfile.BadZipFile,
    zlib.error,
  ) as error:
    raise CompactWeightsError(f"{path}: not a readable weights file ({error})") from None


def _scalar_int(arrays: dict[str, np.ndarray], name: str, path: pathlib.Path) -> int | None:
  """The integer stored as array ``name`` (None if absent); CompactWeightsError if not one."""
  if name not in arrays:
    return None
  value = arrays.pop(name)
  if value.shape != () or value.dtype.kind not in "iu":
    raise CompactWeightsError(
      f"{path}: {name} must be one integer, got a {value.dtype} array of shape {value.shape}"
    )
  return int(value)


@dataclasses.dataclass(frozen=True)
class CompactWeights:
  """The tensors of a compact weights file, in the order of the model's ``weights``."""

  path: pathlib.Path
  num_classes: int
  tensors: list[tuple[str, np.ndarray]]

  def values_for(self, variables: Sequence[Any]) -> list[np.ndarray]:
    """float32 values for a model's ``weights`` (same count and shapes), for ``set_weights``."""
    if len(self.tensors) != len(variables):
      raise CompactWeightsError(
        f"{self.path}: {len(self.tensors)} tensors, the DELF model has {len(variables)}"
      )
    values = []
    for (name, value), variable in zip(self.tensors, variables):
      if tuple(value.shape) != tuple(variable.shape):
        raise CompactWeightsError(
          f"{self.path}: tensor {name} has shape {value.shape}, "
          f"{variable.path} needs {tuple(variable.shape)}"
        )
      values.append(value.astype(np.float32))
    return values


def read_compact_weights(path: str | os.PathLike) -> CompactWeights:
  """Reads a file written by :func:`save_compact_weights` (the model is built by
  ``delf_ret.model.delf.load_delf_model``); CompactWeightsError if it is not one, or if
  num_classes is missing, not in 1..MAX_CLASSES, or disagrees with the classifier tensors
  (checked before any model is built)."""
  path = pathlib.Path(path)
  arrays = read_arrays(path)
  if _scalar_int(arrays, "format_version", path) != FORMAT_VERSION:
    raise CompactWeightsError(f"{path}: not a delf-ret compact weights file (format version)")
  num_classes = _scalar_int(arrays, "num_classes", path)
  if num_classes is None:
    raise CompactWeightsError(f"{path}: not a delf-ret compact weights file (no num_classes)")
  if not 1 <= num_classes <= MAX_CLASSES:
    raise CompactWeightsError(f"{path}: num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
  for name, value in arrays.items():
    if "classifier" in name and (value.ndim == 0 or value.shape[-1] != num_classes):
      raise CompactWeightsError(
        f"{path}: tensor {name} has shape {value.shape}, num_classes is {num_classes}"
      )
  return CompactWeights(path, num_classes, [(name, arrays[name]) for name in sorted(arrays)])


def weights_digest(path: str | os.PathLike) -> str:
  """SHA-256 (hex) of a compact weights file's tensors as stored (kernels float16-rounded):
  names, dtypes, shapes and values.

  Two files of the same weights give the same digest although their bytes
  differ (the zip records when it was written): what tells a bit-identical
  retraining apart.
  """
  digest = hashlib.sha256()
  for name, value in sorted(read_arrays(pathlib.Path(path)).items()):
    value = np.ascontiguousarray(value)
    digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()
