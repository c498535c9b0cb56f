"""Global descriptors (DELG-style): GeM pooling, the multi-scale rule, and whitening.

One image -> one L2-normalised float32 vector [D], compared by inner product.

* From delf-ret's own models: GeM pooling (generalised mean, p = 3, activations
  clamped at eps = 1e-6, as the official DELG ``gem_pooling``) of the ResNet50
  conv4 feature map (the map the local features come from, 1024 channels) at
  each global scale.
* From official DELG SavedModels: their ``global_descriptors`` output, one raw
  descriptor per global scale (delf_ret.extract.saved_model).

Either way the per-scale descriptors [S, D] become one descriptor by the official
DELG extractor's rule: each scale's descriptor L2-normalised, optionally PCA'd
(``delf_global_config.use_pca``: projection, whitening by the variances, then
L2-normalised again), summed over scales, and the sum L2-normalised.

The global scales are ``image_scales[i]`` for each ``i`` of
``delf_global_config.image_scales_ind`` (all image_scales when it is empty, as
the official extractor); DELG's are 0.7071, 1.0 and 1.4142 (indices 3, 4, 5 of its
seven scales). A scale whose level delf-ret skips as too small
(``min_scaled_side``) is left out; an image none of whose global scales is usable
raises GlobalFeatureError.

Whitening of global descriptors learned on a database, numpy only (the
conventions of cnnimageretrieval-pytorch's ``pcawhitenlearn`` / ``whitenlearn``,
rows as descriptors here):

* :func:`learn_pca_whitening` (no labels): mean and the principal directions
  scaled by 1 / sqrt(variance), so the whitened database has identity
  covariance (covariance normalised by N).
* :func:`learn_whitening` (matching pairs, Radenovic et al.'s learned
  whitening): the covariance of matching-pair differences is whitened to the
  identity (inverse Cholesky factor), then the database is rotated onto its
  principal directions in that space (decreasing variance).
* :func:`apply_whitening`: centre, project on the first ``dim`` directions,
  L2-normalise.

This module imports no TensorFlow at import time: only :class:`GlobalExtraction`,
which runs a model, loads it (through the extractor it is given).
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING
from typing import Callable

import numpy as np

from delf_ret.config import ConfigError
from delf_ret.config import DelfConfig
from delf_ret.errors import DelfRetError
from delf_ret.errors import ModelFileError
from delf_ret.extract import pca as pca_lib
from delf_ret.features import LocalFeatures
from delf_ret.images import load_image

if TYPE_CHECKING:
  from delf_ret.extract.extractor import DelfExtractor

GEM_POWER = 3.0  # DELG's GeM power.
GEM_EPSILON = 1e-6  # Activations are clamped at this before the power (official gem_pooling).
# Relative size below which a variance counts as zero in learn_pca_whitening (N <= D).
RANK_TOLERANCE = 1e-10


class GlobalFeatureError(DelfRetError):
  """A global descriptor cannot be computed or whitening cannot be learned or applied."""


def gem(feature_map: np.ndarray, p: float = GEM_POWER, eps: float = GEM_EPSILON) -> np.ndarray:
  """GeM pooling of a feature map [H, W, C] (or [N, C] cells): float32 [C].

  ``(mean over cells of max(x, eps) ** p) ** (1 / p)`` per channel; p = 1 is average
  pooling of the clamped map. Computed in float64.
  """
  cells = np.asarray(feature_map, np.float64)
  cells = cells.reshape(-1, cells.shape[-1])
  if cells.shape[0] == 0 or cells.shape[1] == 0:
    raise GlobalFeatureError(f"GeM of an empty feature map of shape {list(feature_map.shape)}")
  if p <= 0:
    raise GlobalFeatureError(f"GeM power must be positive, got {p}")
  pooled = np.mean(np.maximum(cells, eps) ** p, axis=0) ** (1.0 / p)
  return pooled.astype(np.float32)


@dataclasses.dataclass
class GlobalPca:
  """PCA of per-scale global descriptors (``delf_global_config.pca_parameters``)."""

  model: pca_lib.PcaModel
  dim: int
  use_whitening: bool


def multiscale_descriptor(per_scale: np.ndarray, pca: GlobalPca | None = None) -> np.ndarray:
  """The official DELG rule: per-scale descriptors float [S, D] -> one float32 [D'] descriptor.

  Each row L2-normalised; with ``pca`` projected to ``pca.dim`` (whitened by the
  variances if asked) and L2-normalised again; rows summed; the sum L2-normalised.
  """
  per_scale = np.asarray(per_scale, np.float32)
  if per_scale.ndim != 2 or not per_scale.shape[0] or not per_scale.shape[1]:
    raise GlobalFeatureError(
      f"per-scale global descriptors must be [S, D] with S, D > 0, got {list(per_scale.shape)}"
    )
  if not np.all(np.isfinite(per_scale)):
    raise GlobalFeatureError("per-scale global descriptors hold NaN or infinite values")
  rows = pca_lib.l2_normalize(per_scale)
  if pca is not None:
    try:
      rows = pca_lib.apply_pca(rows, pca.model, pca.dim, pca.use_whitening)
    except pca_lib.PcaError as error:
      raise GlobalFeatureError(f"delf_global_config.pca_parameters: {error}") from None
  return pca_lib.l2_normalize(rows.sum(axis=0, keepdims=True))[0]


def global_descriptor(
  feature_maps: list[np.ndarray],
  p: float = GEM_POWER,
  eps: float = GEM_EPSILON,
  pca: GlobalPca | None = None,
) -> np.ndarray:
  """GeM of each scale's feature map [H_s, W_s, C], then :func:`multiscale_descriptor`:
  float32 [C] (or [pca.dim]), unit L2 norm."""
  if not feature_maps:
    raise GlobalFeatureError("no feature map to pool: no global scale")
  return multiscale_descriptor(np.stack([gem(m, p, eps) for m in feature_maps]), pca)


def global_scale_indices(config: DelfConfig) -> list[int]:
  """Indices into ``image_scales`` of the global scales (``delf_global_config.image_scales_ind``;
  all scales when empty); ConfigError naming the field for an index out of range or repeated."""
  count = len(config.image_scales)
  indices = list(config.delf_global_config.image_scales_ind) or list(range(count))
  bad = [i for i in indices if not 0 <= i < count]
  if bad or len(set(indices)) != len(indices):
    raise ConfigError(
      f"delf_global_config.image_scales_ind {indices} must be distinct indices into the "
      f"{count} image_scales (0 to {count - 1})"
    )
  return sorted(indices)


def load_global_pca(config: DelfConfig) -> GlobalPca | None:
  """The PCA of ``delf_global_config`` when ``use_pca`` (files as for local PCA), else None.

  Raises ConfigError naming the field when a file is missing or does not fit ``pca_dim``.
  """
  settings = config.delf_global_config
  if not settings.use_pca:
    return None
  params = settings.pca_parameters
  if not params.mean_path or not params.projection_matrix_path:
    raise ConfigError(
      "delf_global_config.use_pca needs pca_parameters.mean_path and projection_matrix_path "
      "(or set delf_global_config { use_pca: false })"
    )
  try:
    model = pca_lib.load_pca(
      params.mean_path,
      params.projection_matrix_path,
      params.pca_variances_path if params.use_whitening else None,
    )
  except pca_lib.PcaError as error:
    raise ConfigError(f"delf_global_config.pca_parameters: {error}") from None
  if not 0 < params.pca_dim <= model.projection.shape[0]:
    raise ConfigError(
      f"delf_global_config.pca_parameters.pca_dim {params.pca_dim} must be 1 to the "
      f"{model.projection.shape[0]} components in the PCA files"
    )
  return GlobalPca(model, params.pca_dim, params.use_whitening)


def level_positions(level_scales: list[float], config: DelfConfig) -> list[int]:
  """Positions in ``level_scales`` (the scales of an image's usable pyramid levels, in
  image_scales order) of the global scales; GlobalFeatureError when none is usable."""
  wanted = [float(config.image_scales[i]) for i in global_scale_indices(config)]
  # Compared as the config stores them (float32).
  wanted32 = {np.float32(scale) for scale in wanted}
  positions = [i for i, scale in enumerate(level_scales) if np.float32(scale) in wanted32]
  if not positions:
    raise GlobalFeatureError(
      f"the image is too small for every global scale {wanted} (no level of at least "
      f"min_scaled_side {config.min_scaled_side} pixels)"
    )
  return positions


class GlobalExtraction:
  """Local features and the global descriptor of images, with one extractor and its config.

  ``extractor`` is a delf_ret.extract.extractor.DelfExtractor. With an official DELG
  SavedModel both come from one run of its signature (its ``global_descriptors`` at
  the global scales); with a delf-ret model the global descriptor is GeM over the
  conv4 maps of the global scales (the model runs once more for those scales).
  Raises ConfigError for bad global settings and ModelFileError for a SavedModel
  without a global output, before any image.
  """

  def __init__(self, extractor: DelfExtractor) -> None:
    self.extractor = extractor
    self.config: DelfConfig = extractor.config
    self.model_file = extractor.model_file
    global_scale_indices(self.config)  # A bad index is a ConfigError before any image.
    self.pca = load_global_pca(self.config)
    saved_model = extractor.saved_model
    if saved_model is not None and not saved_model.has_global_output:
      raise ModelFileError(
        f"{saved_model.path}: this SavedModel has no global_descriptors output (not an "
        f"official DELG model); global descriptors need a DELG SavedModel or a delf-ret "
        f".keras / .npz model (or set use_global_features: false)"
      )
    self._run_level: Callable | None = None  # The compiled level function, made when needed.

  def extract_with_global(self, image: np.ndarray) -> tuple[LocalFeatures, np.ndarray]:
    """(local features, global descriptor float32 [D], unit norm) of an RGB uint8 image
    [H, W, 3]; the local features are those of ``extractor.extract(image)``."""
    # Lazy: TensorFlow (the extractor and inference modules), only where a model runs;
    # the rest of this module (whitening) is used without TensorFlow.
    from delf_ret.extract.extractor import base_resize_factor
    from delf_ret.extract.extractor import pyramid_levels

    config = self.config
    height, width = image.shape[:2]
    levels = pyramid_levels(height, width, config)
    positions = level_positions([scale for scale, _, _ in levels], config)
    saved_model = self.extractor.saved_model
    if saved_model is not None:
      local = config.delf_local_config
      raw, per_scale = saved_model.select_with_global(
        image,
        levels,
        base_resize_factor(height, width, config.max_image_size, config.min_image_size),
        local.score_threshold,
        local.max_feature_num,
        positions,
      )
      assert per_scale is not None  # has_global_output was checked in __init__.
      return self.extractor.finalize(raw), multiscale_descriptor(per_scale, self.pca)
    features = self.extractor.extract(image)
    maps = [self._feature_map(image, levels[i][2]) for i in positions]
    return features, global_descriptor(maps, pca=self.pca)

  def extract_file_with_global(self, path: str | os.PathLike) -> tuple[LocalFeatures, np.ndarray]:
    """Reads an image file (delf_ret.images) and extracts both; errors name the file."""
    image = load_image(path, max_pixels=self.config.max_image_pixels)
    try:
      return self.extract_with_global(image)
    except DelfRetError as error:  # E.g. ImageTooSmallError, which cannot name the file.
      raise type(error)(f"{path}: {error}") from None

  def _feature_map(self, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The conv4 feature map float32 [h, w, 1024] of ``image`` resized to ``size`` (h, w)."""
    if self._run_level is None:
      # Lazy: TensorFlow; the compiled level function of delf_ret.extract.inference.
      from delf_ret.extract.inference import compiled_level_function

      self._run_level = compiled_level_function(self.extractor.model)
    return self._run_level(image, size)[0]


# Whitening --------------------------------------------------------------------


def _descriptors(x: np.ndarray, what: str, least: int = 2) -> np.ndarray:
  """``x`` as float64 [N, D] with N >= least, finite; GlobalFeatureError otherwise."""
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[0] < least or not x.shape[1]:
    raise GlobalFeatureError(
      f"{what} must be [N, D] with at least {least} rows, got shape {list(x.shape)}"
    )
  if not np.all(np.isfinite(x)):
    raise GlobalFeatureError(f"{what} hold NaN or infinite values")
  return x


def learn_pca_whitening(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """PCA-whitening learned without labels from database descriptors x [N, D].

  Returns (mean float32 [D], projection float32 [K, D]): rows are the principal
  directions by decreasing variance, each divided by the square root of its
  variance (covariance normalised by N, as cirtorch's ``pcawhitenlearn``), so
  ``(x - mean) @ projection.T`` has identity covariance. K is the number of
  directions of non-zero variance (at most min(N - 1, D)). Signs: each direction's
  largest-magnitude coordinate is positive (deterministic).
  """
  x = _descriptors(x, "descriptors")
  mean = x.mean(axis=0)
  _, singular, directions = np.linalg.svd(x - mean, full_matrices=False)
  variances = singular**2 / x.shape[0]
  keep = variances > RANK_TOLERANCE * max(float(variances.max()), np.finfo(float).tiny)
  if not keep.any():
    raise GlobalFeatureError("descriptors are all equal: no direction to whiten")
  directions, variances = directions[keep], variances[keep]
  largest = np.abs(directions).argmax(axis=1)
  directions *= np.sign(directions[np.arange(len(directions)), largest])[:, None]
  projection = directions / np.sqrt(variances)[:, None]
  return mean.astype(np.float32), projection.astype(np.float32)


def _regularised_cholesky(s: np.ndarray) -> np.ndarray:
  """Lower Cholesky factor of s [D, D], with the smallest of 0, 1e-10, 1e-9, ... times the
  identity added that makes s positive definite (cirtorch's ``cholesky``)."""
  alpha = 0.0
  for _ in range(40):
    try:
      return np.linalg.cholesky(s + alpha * np.eye(s.shape[0]))
    except np.linalg.LinAlgError:
      alpha = 1e-10 if alpha == 0.0 else alpha * 10
  raise GlobalFeatureError("the covariance of matching-pair differences is not usable")


def learn_whitening(
  x: np.ndarray, query_indices: np.ndarray, positive_indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Learned whitening from matching pairs (x[query_indices[i]], x[positive_indices[i]]).

  x: float [N, D] descriptors (e.g. of verified training pairs). As cirtorch's
  ``whitenlearn``: the mean is that of the query descriptors; the covariance S of
  the pair differences (normalised by the number of pairs) is whitened by the
  inverse of its Cholesky factor L (L^-1 S L^-T = I); the descriptors of x,
  centred and whitened so, are rotated onto their principal directions (by
  decreasing variance). Returns (mean float32 [D], projection float32 [D, D]),
  used as ``(x - mean) @ projection.T``: pair differences get identity covariance and
  the centred x a diagonal one. Needs at least D pairs for S to be full rank
  (otherwise a small multiple of the identity is added to it, as cirtorch does).
  """
  x = _descriptors(x, "descriptors", least=1)
  queries = np.asarray(query_indices, np.int64).reshape(-1)
  positives = np.asarray(positive_indices, np.int64).reshape(-1)
  if not len(queries) or queries.shape != positives.shape:
    raise GlobalFeatureError(
      f"need as many query as positive indices, at least one: got {len(queries)} "
      f"and {len(positives)}"
    )
  n = x.shape[0]
  if min(queries.min(), positives.min()) < 0 or max(queries.max(), positives.max()) >= n:
    raise GlobalFeatureError(f"pair indices must be in 0 to {n - 1}")
  mean = x[queries].mean(axis=0)
  differences = x[queries] - x[positives]
  s = differences.T @ differences / len(queries)
  inverse_root = np.linalg.inv(_regularised_cholesky(s))  # inverse_root S inverse_root^T = I
  whitened = (x - mean) @ inverse_root.T
  variances, rotation = np.linalg.eigh(whitened.T @ whitened)
  rotation = rotation[:, np.argsort(variances)[::-1]]
  largest = np.abs(rotation).argmax(axis=0)
  rotation *= np.sign(rotation[largest, np.arange(rotation.shape[1])])[None, :]
  return mean.astype(np.float32), (rotation.T @ inverse_root).astype(np.float32)


def apply_whitening(
  x: np.ndarray, mean: np.ndarray, projection: np.ndarray, dim: int | None = None
) -> np.ndarray:
  """Whitened descriptors float32 [N, dim]: ``(x - mean) @ projection[:dim].T``, each row
  L2-normalised (all K rows of the projection when ``dim`` is None). x may be one [D] vector
  (then the result is [dim])."""
  single = np.ndim(x) == 1
  x = np.atleast_2d(np.asarray(x, np.float32))
  mean = np.asarray(mean, np.float32)
  projection = np.asarray(projection, np.float32)
  if projection.ndim != 2 or mean.shape != (projection.shape[1],) or x.shape[1] != mean.shape[0]:
    raise GlobalFeatureError(
      f"whitening of shape mean {list(mean.shape)}, projection {list(projection.shape)} "
      f"does not fit descriptors of dimension {x.shape[1]}"
    )
  dim = projection.shape[0] if dim is None else dim
  if not 0 < dim <= projection.shape[0]:
    raise GlobalFeatureError(f"whitening dim {dim} must be 1 to {projection.shape[0]}")
  whitened = pca_lib.l2_normalize((x - mean) @ projection[:dim].T)
  return whitened[0] if single else whitened
