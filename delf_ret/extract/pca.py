"""PCA of local descriptors: learning and applying (numpy), files (.npy).

Descriptor arrays are float32 [N, D]. A PCA model is three arrays:
mean [D], projection [K, D] (rows = principal directions by decreasing
variance) and variances [K].
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from delf_ret.atomic import atomic_write
from delf_ret.errors import DelfRetError
from delf_ret.features import DATUM_SUFFIX
from delf_ret.features import FeatureFileError
from delf_ret.features import read_datum
from delf_ret.features import write_datum

WHITENING_EPSILON = 1e-12
PCA_FILE_NAMES = ("pca_mean.npy", "pca_projection.npy", "pca_variances.npy")


class PcaError(DelfRetError):
  """PCA files are missing or inconsistent, or a PCA cannot be learned or applied."""


@dataclasses.dataclass
class PcaModel:
  mean: np.ndarray  # [D]
  projection: np.ndarray  # [K, D]
  variances: np.ndarray  # [K]


def l2_normalize(vectors: np.ndarray, epsilon: float = 1e-12) -> np.ndarray:
  """Row-wise L2 normalisation of [N, D]; zero rows stay zero."""
  vectors = np.asarray(vectors, dtype=np.float32)
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  return vectors / np.maximum(norms, epsilon)


def learn_pca(descriptors: np.ndarray) -> PcaModel:
  """Fits a full PCA to descriptors [N, D] (N >= 2): min(N, D) components.

  The SVD of the centred descriptors (float64), as scikit-learn's PCA with the full
  solver computes it: variances are squared singular values / (N - 1), and each
  direction's sign makes its largest-magnitude coordinate positive (deterministic).
  """
  descriptors = np.asarray(descriptors, dtype=np.float64)
  if descriptors.ndim != 2 or descriptors.shape[0] < 2:
    raise PcaError(f"need at least 2 descriptors of shape [N, D], got {descriptors.shape}")
  mean = descriptors.mean(axis=0)
  _, singular, directions = np.linalg.svd(descriptors - mean, full_matrices=False)
  largest = np.abs(directions).argmax(axis=1)
  directions *= np.sign(directions[np.arange(len(directions)), largest])[:, None]
  return PcaModel(
    mean=mean.astype(np.float32),
    projection=directions.astype(np.float32),
    variances=(singular**2 / (descriptors.shape[0] - 1)).astype(np.float32),
  )


def apply_pca(
  descriptors: np.ndarray, model: PcaModel, dim: int, use_whitening: bool = False
) -> np.ndarray:
  """Projects descriptors [N, D] to [N, dim], optionally whitens, then L2-normalises."""
  if dim > model.projection.shape[0]:
    raise PcaError(f"pca_dim {dim} exceeds the {model.projection.shape[0]} learned components")
  if descriptors.shape[1] != model.mean.shape[0]:
    raise PcaError(
      f"descriptors have dimension {descriptors.shape[1]}, "
      f"the PCA model expects {model.mean.shape[0]}"
    )
  projected = (descriptors - model.mean) @ model.projection[:dim].T
  if use_whitening:
    if not np.all(np.isfinite(model.variances[:dim])) or np.any(model.variances[:dim] < 0):
      raise PcaError(
        "whitening needs the PCA variances (finite, not negative); the model has none or bad ones"
      )
    projected = projected / np.sqrt(model.variances[:dim] + WHITENING_EPSILON)
  return l2_normalize(projected)


def read_array(path: str | os.PathLike) -> np.ndarray:
  """A float32 array from a ``.npy`` file or an official DELF ``.datum`` file (by extension)."""
  path = pathlib.Path(path)
  if path.suffix == DATUM_SUFFIX:
    try:
      return read_datum(path)
    except FeatureFileError as error:
      raise PcaError(str(error)) from None
  try:
    return np.load(path, allow_pickle=False).astype(np.float32)
  except (ValueError, OSError, EOFError, TypeError) as error:
    raise PcaError(f"{path} is not a readable .npy array ({error})") from None


def write_array(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes ``array`` atomically as ``.datum`` (official DELF format) or ``.npy``, by extension."""
  if pathlib.Path(path).suffix == DATUM_SUFFIX:
    write_datum(path, array)
    return
  with atomic_write(path) as handle:
    np.save(handle, np.asarray(array, np.float32))


def save_pca(
  model: PcaModel,
  mean_path: str | os.PathLike,
  projection_path: str | os.PathLike,
  variances_path: str | os.PathLike,
) -> None:
  """Writes the three arrays, each atomically, as .npy or official .datum files (by extension)."""
  for array, path in (
    (model.mean, mean_path),
    (model.projection, projection_path),
    (model.variances, variances_path),
  ):
    write_array(path, array)


def pca_paths(folder: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  """Standard (mean, projection, variances) file paths inside ``folder``."""
  mean, projection, variances = (pathlib.Path(folder) / name for name in PCA_FILE_NAMES)
  return mean, projection, variances


def load_pca(
  mean_path: str | os.PathLike,
  projection_path: str | os.PathLike,
  variances_path: str | os.PathLike | None = None,
) -> PcaModel:
  """Reads a PCA model from .npy or official .datum files; variances may be absent (no whitening).

  Shapes: mean [D], projection [K, D] (rows: principal directions), variances [K].
  """
  arrays = {}
  named_paths = [("mean", mean_path), ("projection", projection_path)]
  if variances_path:
    named_paths.append(("variances", variances_path))
  for name, given in named_paths:
    path = pathlib.Path(given)
    if not path.is_file():
      raise PcaError(f"PCA {name} file not found: {path}")
    try:
      arrays[name] = read_array(path)
    except PcaError as error:
      raise PcaError(f"PCA {name} file: {error}") from None
    if not np.all(np.isfinite(arrays[name])):
      raise PcaError(f"PCA {name} file {path} holds NaN or infinite values")
  mean, projection = arrays["mean"], arrays["projection"]
  variances = arrays.get("variances", np.full(projection.shape[0], np.nan, np.float32))
  if mean.ndim != 1 or projection.ndim != 2 or projection.shape[1] != mean.shape[0]:
    raise PcaError(f"PCA files disagree: mean {mean.shape}, projection {projection.shape}")
  if variances.shape != (projection.shape[0],):
    raise PcaError(
      f"PCA variances shape {variances.shape} does not match projection {projection.shape}"
    )
  if variances_path and np.any(variances < 0):
    raise PcaError(f"PCA variances file {variances_path} holds negative variances")
  return PcaModel(mean=mean, projection=projection, variances=variances)
