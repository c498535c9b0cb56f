"""Receptive-field geometry: where a feature-map cell sits in the input image.

Pure numpy, no TensorFlow. Coordinates are (y, x) in pixels.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
  """Receptive field of one cell of a convolutional feature map, in pixels.

  Attributes:
    size: side of the (square) receptive field.
    stride: distance between neighbouring cells, in input pixels.
    padding: how far the first cell's field starts before pixel 0.
  """

  size: int
  stride: int
  padding: int


# ResNet50 cut at conv4_block6_out (stride 16), as used by DELF.
RESNET50_CONV4 = ReceptiveField(size=291, stride=16, padding=145)

# "resnet_v1_50/block3" is the official name of the same ResNet50 stage (delf_ret.config
# reports, when a config uses it, that delf-ret's network ends it at stride 16).
RECEPTIVE_FIELDS = {"conv4_block6_out": RESNET50_CONV4, "resnet_v1_50/block3": RESNET50_CONV4}


def receptive_field_for_layer(layer_name: str) -> ReceptiveField:
  """Returns the receptive field of a supported backbone layer."""
  try:
    return RECEPTIVE_FIELDS[layer_name]
  except KeyError:
    raise ValueError(
      f"unsupported layer_name {layer_name!r}; supported: {sorted(RECEPTIVE_FIELDS)}"
    ) from None


def keypoint_centers(
  cell_indices: np.ndarray,
  scale: float | tuple[float, float],
  field: ReceptiveField = RESNET50_CONV4,
) -> np.ndarray:
  """Maps feature-map cell indices to keypoint centres in original-image pixels.

  centre = (stride * index - padding + (size - 1) / 2) / scale

  Args:
    cell_indices: integer array [N, 2] of (row, column) cell indices.
    scale: factor by which the original image was resized before the network
      ran (e.g. 0.5 for a half-size pyramid level), one number or a (y, x)
      pair when the two axes were resized by slightly different factors.
    field: receptive field of the feature map.

  Returns:
    float32 array [N, 2] of (y, x) centres in original-image pixels.
  """
  scales = np.asarray(scale, dtype=np.float64)
  if np.any(scales <= 0):
    raise ValueError(f"scale must be positive, got {scale}")
  indices = np.asarray(cell_indices, dtype=np.float64).reshape(-1, 2)
  centres = field.stride * indices - field.padding + (field.size - 1) / 2.0
  return (centres / scales).astype(np.float32)


def apply_homography(transform: np.ndarray, points_yx: np.ndarray) -> np.ndarray:
  """Maps (y, x) pixel points [N, 2] through a 3x3 transform acting on (x, y, 1).

  Returns float64 [N, 2] (y, x) pixels; a point mapped to infinity or behind
  the camera (homogeneous w <= 0) becomes NaN.
  """
  points = np.asarray(points_yx, np.float64).reshape(-1, 2)
  homogeneous = np.concatenate([points[:, ::-1], np.ones((len(points), 1))], axis=1)
  mapped = homogeneous @ np.asarray(transform, np.float64).T
  with np.errstate(divide="ignore", invalid="ignore"):
    xy = mapped[:, :2] / mapped[:, 2:3]
  xy[~np.isfinite(xy).all(axis=1) | (mapped[:, 2] <= 0)] = np.nan
  return xy[:, ::-1]
