"""Choosing features from per-scale feature maps (pure numpy, no TensorFlow)."""

from __future__ import annotations

import dataclasses

import numpy as np

from delf_ret.extract.geometry import ReceptiveField
from delf_ret.extract.geometry import keypoint_centers


@dataclasses.dataclass
class ScaleOutput:
  """Network output at one pyramid level.

  Attributes:
    features: float32 [h, w, C] feature map.
    attention: float32 [h, w] attention scores.
    scale: pyramid scale of this level.
    image_scale: (y, x) factors from original image to network input: the
      network input size divided by the original size on each axis (pyramid
      scale times any max/min image-size resize, after rounding to pixels).
  """

  features: np.ndarray
  attention: np.ndarray
  scale: float
  image_scale: tuple[float, float]


@dataclasses.dataclass
class SelectedFeatures:
  """Raw (not normalised) selected features, sorted by decreasing attention.

  locations [N, 2] (y, x) original pixels; scales [N]; descriptors [N, C];
  attention [N].
  """

  locations: np.ndarray
  scales: np.ndarray
  descriptors: np.ndarray
  attention: np.ndarray


def select_features(
  levels: list[ScaleOutput], score_threshold: float, max_feature_num: int, field: ReceptiveField
) -> SelectedFeatures:
  """Keeps cells with attention >= threshold at every level, then the top ``max_feature_num``.

  Ties in attention keep the order (level order, then row-major cell order).
  """
  locations, scales, descriptors, scores = [], [], [], []
  channels = levels[0].features.shape[-1] if levels else 0
  for level in levels:
    rows, cols = np.nonzero(level.attention >= score_threshold)
    locations.append(keypoint_centers(np.stack([rows, cols], axis=1), level.image_scale, field))
    scales.append(np.full(rows.shape[0], level.scale, np.float32))
    descriptors.append(level.features[rows, cols])
    scores.append(level.attention[rows, cols])
  if not levels:
    return SelectedFeatures(
      np.zeros((0, 2), np.float32),
      np.zeros(0, np.float32),
      np.zeros((0, channels), np.float32),
      np.zeros(0, np.float32),
    )
  scores_all = np.concatenate(scores).astype(np.float32)
  order = np.argsort(-scores_all, kind="stable")[:max_feature_num]
  return SelectedFeatures(
    locations=np.concatenate(locations)[order],
    scales=np.concatenate(scales)[order],
    descriptors=np.concatenate(descriptors).astype(np.float32)[order],
    attention=scores_all[order],
  )
