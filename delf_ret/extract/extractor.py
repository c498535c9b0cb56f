"""DelfExtractor: image -> DELF local features, driven by one DelfConfig."""

from __future__ import annotations

import os

import numpy as np

from delf_ret.config import MAX_LEVEL_PIXELS
from delf_ret.config import ConfigError
from delf_ret.config import DelfConfig
from delf_ret.errors import DelfRetError
from delf_ret.extract import pca as pca_lib
from delf_ret.extract.geometry import receptive_field_for_layer
from delf_ret.extract.inference import BACKENDS
from delf_ret.extract.saved_model import SavedModelExtractor
from delf_ret.extract.saved_model import is_saved_model
from delf_ret.extract.selection import ScaleOutput
from delf_ret.extract.selection import SelectedFeatures
from delf_ret.extract.selection import select_features
from delf_ret.features import LocalFeatures
from delf_ret.images import load_image
from delf_ret.model.delf import load_delf_model


class ImageTooSmallError(DelfRetError):
  """The image is smaller than the smallest side extraction works with."""


class ImageTooLargeError(DelfRetError):
  """A pyramid level of the image would exceed MAX_LEVEL_PIXELS (see delf_ret.config)."""


def base_resize_factor(height: int, width: int, max_image_size: int, min_image_size: int) -> float:
  """Factor applied before the pyramid so the longer side respects the size limits (-1: none)."""
  longest = max(height, width)
  if max_image_size > 0 and longest > max_image_size:
    return max_image_size / longest
  if min_image_size > 0 and longest < min_image_size:
    return min_image_size / longest
  return 1.0


def pyramid_levels(
  height: int, width: int, config: DelfConfig
) -> list[tuple[float, tuple[float, float], tuple[int, int]]]:
  """(pyramid scale, (y, x) image scale, (h, w) network input size) for each usable level.

  The (y, x) image scale is the level size divided by the original size, so
  keypoints map back exactly to original pixels despite rounding.

  Raises ImageTooSmallError if no level is at least ``min_scaled_side`` on its
  shorter side, and ImageTooLargeError (naming the settings) if a level would
  have more than MAX_LEVEL_PIXELS pixels, before any level reaches the network.
  """
  factor = base_resize_factor(height, width, config.max_image_size, config.min_image_size)
  levels = []
  for scale in config.image_scales:
    total = factor * scale
    size = (max(1, int(round(height * total))), max(1, int(round(width * total))))
    if size[0] * size[1] > MAX_LEVEL_PIXELS:
      raise ImageTooLargeError(
        f"image of {width}x{height} pixels: the pyramid level of image_scales {scale:g} "
        f"(max_image_size {config.max_image_size}) would be {size[1]}x{size[0]} pixels, "
        f"more than the {MAX_LEVEL_PIXELS / 1e6:.1f} megapixels one level may have (about "
        f"4 GB of memory); set max_image_size (e.g. 1024) or lower image_scales"
      )
    if min(size) >= config.min_scaled_side:
      levels.append((float(scale), (size[0] / height, size[1] / width), size))
  if not levels:
    raise ImageTooSmallError(
      f"image of {width}x{height} pixels is too small: no pyramid level reaches "
      f"{config.min_scaled_side} pixels on its shorter side"
    )
  return levels


class DelfExtractor:
  """Extracts DELF features of images with one model and one config.

  Args:
    config: parsed DelfConfig.
    model: a DelfModel; when None, loaded from ``config.model_path``: a .keras
      checkpoint, or a SavedModel folder exported by delf_ret.extract.saved_model
      (then ``backend`` does not apply).
    backend: "compiled" (default, fast) or "eager" (baseline).
  """

  def __init__(self, config: DelfConfig, model=None, backend: str = "compiled"):
    self.config = config
    # The model file the features depend on (None: a model object given by the caller).
    self.model_file = config.model_path if model is None else None
    local = config.delf_local_config
    try:
      self.field = receptive_field_for_layer(local.layer_name)
    except ValueError as error:
      raise ConfigError(str(error)) from None
    if backend not in BACKENDS:
      raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
    self.saved_model = None
    if model is None:
      if not config.model_path:
        raise ConfigError("config has no model_path and no model was given")
      if is_saved_model(config.model_path):
        self.saved_model = SavedModelExtractor(config.model_path)
      else:
        model = load_delf_model(config.model_path)
    self.model = model
    self._run_level = BACKENDS[backend](model) if model is not None else None
    self.pca = None
    if local.use_pca:
      params = local.pca_parameters
      self.pca = pca_lib.load_pca(
        params.mean_path,
        params.projection_matrix_path,
        params.pca_variances_path if params.use_whitening else None,
      )
      if params.pca_dim > self.pca.projection.shape[0]:
        raise ConfigError(
          f"pca_dim {params.pca_dim} exceeds the "
          f"{self.pca.projection.shape[0]} components in the PCA files"
        )

  def extract_raw(self, image: np.ndarray) -> SelectedFeatures:
    """Selected raw conv4 features of an RGB uint8 image [H, W, 3], by decreasing attention."""
    height, width = image.shape[:2]
    local = self.config.delf_local_config
    if self.saved_model is not None:
      factor = base_resize_factor(
        height, width, self.config.max_image_size, self.config.min_image_size
      )
      return self.saved_model.select(
        image,
        pyramid_levels(height, width, self.config),
        factor,
        local.score_threshold,
        local.max_feature_num,
        list(self.config.delf_global_config.image_scales_ind),
      )
    assert self._run_level is not None  # A model is loaded when there is no SavedModel.
    outputs = []
    for scale, total, size in pyramid_levels(height, width, self.config):
      features, attention = self._run_level(image, size)
      outputs.append(ScaleOutput(features, attention, scale, total))
    return select_features(outputs, local.score_threshold, local.max_feature_num, self.field)

  def extract(self, image: np.ndarray) -> LocalFeatures:
    """Final features: selection, L2 norm, PCA (+ whitening), L2 norm."""
    return self.finalize(self.extract_raw(image))

  def finalize(self, raw: SelectedFeatures) -> LocalFeatures:
    """L2 norm, PCA (+ whitening) and L2 norm of selected raw features."""
    descriptors = pca_lib.l2_normalize(raw.descriptors)
    if self.pca is not None:
      params = self.config.delf_local_config.pca_parameters
      descriptors = pca_lib.apply_pca(descriptors, self.pca, params.pca_dim, params.use_whitening)
    return LocalFeatures(
      locations=raw.locations,
      scales=raw.scales,
      descriptors=descriptors,
      attention=raw.attention,
      orientations=np.zeros(raw.attention.shape[0], np.float32),
    )

  def extract_raw_file(self, path: str | os.PathLike) -> SelectedFeatures:
    """Reads an image file (see delf_ret.images) and selects its raw features.

    Raises ImageReadError, ImageTooSmallError or ImageTooLargeError, each naming the file.
    """
    image = load_image(path, max_pixels=self.config.max_image_pixels)
    try:
      return self.extract_raw(image)
    except (ImageTooSmallError, ImageTooLargeError) as error:
      raise type(error)(f"{path}: {error}") from None

  def extract_file(self, path: str | os.PathLike) -> LocalFeatures:
    """Reads an image file and extracts its final features (errors as extract_raw_file)."""
    return self.finalize(self.extract_raw_file(path))
