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
import os
import pathlib
import zipfile
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


def read_arrays(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Every array of a .npz weights file by name; CompactWeightsError if missing or unreadable."""
  if not path.is_file():
    raise CompactWeightsError(f"{path}: weights file not found")
  try:
    with np.load(path, allow_pickle=False) as data:
      return {name: data[name] for name in data.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
    raise CompactWeightsError(f"{path}: not a readable weights file ({error})") from None


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
  ``delf_ret.model.delf.load_delf_model``); CompactWeightsError if it is not one."""
  path = pathlib.Path(path)
  arrays = read_arrays(path)
  if int(arrays.pop("format_version", -1)) != FORMAT_VERSION or "num_classes" not in arrays:
    raise CompactWeightsError(f"{path}: not a delf-ret compact weights file (format version)")
  num_classes = int(arrays.pop("num_classes"))
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
