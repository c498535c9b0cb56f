"""Compact DELF weights: one ``.npz`` file, large tensors stored as float16.

Used for the checkpoint shipped inside the package (at most 25 MB). Tensors of
more than ``FLOAT16_MIN_SIZE`` values (convolution kernels) are stored in
float16; small ones (biases, batch-norm statistics, whose variances can fall
below float16's range) stay float32. Loading rebuilds the architecture and
casts everything back to float32; no pickles are involved.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import zipfile

import numpy as np

from delf_ret.atomic import atomic_write
from delf_ret.model.delf import ModelFileError

FLOAT16_MIN_SIZE = 4096
FORMAT_VERSION = 1


class CompactWeightsError(ModelFileError):
  """A compact weights file is missing, damaged or does not fit the DELF architecture."""


def save_compact_weights(model, path: str | os.PathLike) -> None:
  """Writes every weight of a DelfModel to ``path`` (.npz), atomically."""
  arrays = {"format_version": np.array(FORMAT_VERSION), "num_classes": np.array(model.num_classes)}
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


def load_compact_weights(path: str | os.PathLike):
  """Rebuilds a DelfModel from a file written by :func:`save_compact_weights`."""
  from delf_ret.model.delf import DelfModel

  path = pathlib.Path(path)
  arrays = read_arrays(path)
  if int(arrays.pop("format_version", -1)) != FORMAT_VERSION:
    raise CompactWeightsError(f"{path}: not a delf-ret compact weights file (format version)")
  model = DelfModel(num_classes=int(arrays.pop("num_classes")))
  names = sorted(arrays)
  if len(names) != len(model.weights):
    raise CompactWeightsError(
      f"{path}: {len(names)} tensors, the DELF model has {len(model.weights)}"
    )
  values = []
  for name, variable in zip(names, model.weights):
    value = arrays[name]
    if tuple(value.shape) != tuple(variable.shape):
      raise CompactWeightsError(
        f"{path}: tensor {name} has shape {value.shape}, "
        f"{variable.path} needs {tuple(variable.shape)}"
      )
    values.append(value.astype(np.float32))
  model.set_weights(values)
  return model


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
