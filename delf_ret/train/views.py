"""Training views of the self-supervised stage (numpy + OpenCV, no TensorFlow).

Every training example is a pair of square views (``crop_size`` pixels) of real
photos with a list of corresponding feature-map cells:

* homographic pairs: one photo, two views related by a random homography
  (rotation, scale, perspective, translation) plus independent photometric
  changes (brightness, contrast, gamma, colour, blur, noise);
* real pairs (:mod:`delf_ret.train.real_pairs`): crops of two overlapping
  photos of one scene around their verified correspondences.

Cell geometry comes from :mod:`delf_ret.extract.geometry` (the extractor's
receptive field function): the cell at index ``i`` of a view has centre
``stride * i - padding + (size - 1) / 2`` pixels. Points are (y, x) pixels;
homographies act on (x, y, 1).

A batch is a pure function of (seed, step), so a resumed run sees the same
batches as an uninterrupted one without checkpointing any iterator.

The view settings are the training config's ``selfsup`` block itself (a
``SelfSupervisedConfig`` message; its proto defaults are the only defaults):
crop_size (view side, pixels, a multiple of the stride); min_photo_scale,
max_photo_scale (the photo's shorter side is resized to crop_size times a
factor in this range); max_rotation_deg, min_zoom, max_zoom, max_perspective,
max_shift (the random homography between two views: degrees, zoom factors,
perspective terms in 1/pixels relative to the view side, shift as a fraction of
the side); brightness, contrast, gamma, colour (added fraction of 255,
factors 1 +- value, exponent exp(+- value), per-channel gain 1 +- value);
blur_probability, noise_std (Gaussian blur chance, noise sigma in grey levels
drawn uniformly up to this).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import cv2
import numpy as np

from delf_ret.extract.geometry import RESNET50_CONV4
from delf_ret.extract.geometry import ReceptiveField
from delf_ret.extract.geometry import apply_homography
from delf_ret.extract.geometry import keypoint_centers
from delf_ret.protos.delf_train_config_pb2 import SelfSupervisedConfig
from delf_ret.train.real_pairs import RealPair


@dataclasses.dataclass
class TrainingPair:
  """Two views and their cell correspondences.

  view_a, view_b: uint8 [S, S, 3] RGB.
  targets_ab: int32 [n * n]: for each cell of view A (row-major), the flat
    index of its corresponding cell in view B, or -1.
  targets_ba: int32 [n * n], the same from B to A.
  """

  view_a: np.ndarray
  view_b: np.ndarray
  targets_ab: np.ndarray
  targets_ba: np.ndarray


# ---------------------------------------------------------------------------
# Geometry (pure functions)


def grid_side(crop_size: int, field: ReceptiveField = RESNET50_CONV4) -> int:
  """Cells per side of the feature map of a square view (crop_size pixels, a multiple of the
  stride)."""
  if crop_size % field.stride:
    raise ValueError(f"crop_size {crop_size} is not a multiple of the stride {field.stride}")
  return crop_size // field.stride


def cell_centres(side: int, field: ReceptiveField = RESNET50_CONV4) -> np.ndarray:
  """(y, x) pixel centres [side * side, 2] of a square feature map's cells, row-major."""
  rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
  return keypoint_centers(np.stack([rows.ravel(), cols.ravel()], axis=1), 1.0, field)


def nearest_cells(
  points_yx: np.ndarray, side: int, field: ReceptiveField = RESNET50_CONV4
) -> np.ndarray:
  """Flat index int32 [N] of the cell whose centre is nearest each (y, x) pixel point [N, 2],
  -1 off the side x side map."""
  offset = -field.padding + (field.size - 1) / 2.0
  with np.errstate(invalid="ignore"):
    index = np.round((np.asarray(points_yx, np.float64) - offset) / field.stride)
  valid = np.isfinite(index).all(axis=1) & (index >= 0).all(axis=1) & (index < side).all(axis=1)
  flat = np.full(len(index), -1, np.int32)
  flat[valid] = (index[valid, 0] * side + index[valid, 1]).astype(np.int32)
  return flat


def homography_targets(
  a_to_b: np.ndarray,
  side: int,
  valid_a: np.ndarray | None = None,
  field: ReceptiveField = RESNET50_CONV4,
) -> np.ndarray:
  """For each cell of view A, the flat index of the view-B cell its centre maps to (or -1):
  int32 [side * side].

  a_to_b: 3x3 homography from view-A (x, y) pixels to view-B pixels.
  valid_a: optional bool [side * side]; cells marked False get -1.
  """
  targets = nearest_cells(apply_homography(a_to_b, cell_centres(side, field)), side, field)
  if valid_a is not None:
    targets[~valid_a] = -1
  return targets


def match_targets(
  points_a: np.ndarray, points_b: np.ndarray, side: int, field: ReceptiveField = RESNET50_CONV4
) -> np.ndarray:
  """Cell targets int32 [side * side] from point correspondences in view pixels ((y, x) [M, 2]
  each).

  Each A cell takes the B cell of its first correspondence; correspondences
  with either end off its map are dropped.
  """
  cells_a = nearest_cells(points_a, side, field)
  cells_b = nearest_cells(points_b, side, field)
  keep = (cells_a >= 0) & (cells_b >= 0)
  targets = np.full(side * side, -1, np.int32)
  # Reversed so that the first correspondence of a cell is written last and wins.
  targets[cells_a[keep][::-1]] = cells_b[keep][::-1]
  return targets


def random_homography(
  rng: np.random.Generator, size: int, settings: SelfSupervisedConfig
) -> np.ndarray:
  """A random 3x3 homography on (x, y, 1) about the centre of a square view of ``size`` px."""
  centre = (size - 1) / 2.0
  to_centre = np.array([[1, 0, -centre], [0, 1, -centre], [0, 0, 1]], np.float64)
  angle = np.deg2rad(rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg))
  zoom = np.exp(rng.uniform(np.log(settings.min_zoom), np.log(settings.max_zoom)))
  cos, sin = np.cos(angle) * zoom, np.sin(angle) * zoom
  similarity = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], np.float64)
  perspective = np.eye(3)
  perspective[2, :2] = rng.uniform(-settings.max_perspective, settings.max_perspective, 2) / size
  shift = rng.uniform(-settings.max_shift, settings.max_shift, 2) * size
  back = np.array([[1, 0, centre + shift[0]], [0, 1, centre + shift[1]], [0, 0, 1]], np.float64)
  return back @ perspective @ similarity @ to_centre


# ---------------------------------------------------------------------------
# Views


def photometric(
  rng: np.random.Generator, image: np.ndarray, settings: SelfSupervisedConfig
) -> np.ndarray:
  """Random brightness, contrast, gamma, colour gains, blur and noise of an RGB uint8 image."""
  out = image.astype(np.float32) / 255.0
  out = out * (1.0 + rng.uniform(-settings.colour, settings.colour, 3)).astype(np.float32)
  mean = out.mean()
  out = (out - mean) * rng.uniform(1 - settings.contrast, 1 + settings.contrast) + mean
  out = out + rng.uniform(-settings.brightness, settings.brightness)
  out = np.clip(out, 0.0, 1.0) ** np.exp(rng.uniform(-settings.gamma, settings.gamma))
  out = out * 255.0
  if rng.random() < settings.blur_probability:
    out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.5))
  if settings.noise_std > 0:
    out = out + rng.normal(0.0, rng.uniform(0, settings.noise_std), out.shape).astype(np.float32)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _warp(photo: np.ndarray, photo_to_view: np.ndarray, size: int) -> np.ndarray:
  return cv2.warpPerspective(
    photo,
    photo_to_view,
    (size, size),
    flags=cv2.INTER_LINEAR,
    borderMode=cv2.BORDER_CONSTANT,
    borderValue=(127, 127, 127),
  )


def _inside(points_yx: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return (
    np.isfinite(points_yx).all(axis=1)
    & (points_yx[:, 0] >= 0)
    & (points_yx[:, 1] >= 0)
    & (points_yx[:, 0] <= shape[0] - 1)
    & (points_yx[:, 1] <= shape[1] - 1)
  )


def _scale_matrix(factor: float) -> np.ndarray:
  return np.diag([factor, factor, 1.0])


def homography_pair(
  rng: np.random.Generator,
  photo: np.ndarray,
  settings: SelfSupervisedConfig,
  field: ReceptiveField = RESNET50_CONV4,
) -> TrainingPair:
  """Two views of one photo: a random crop and its random homographic warp."""
  size = settings.crop_size
  side = grid_side(size, field)
  factor = (
    size * rng.uniform(settings.min_photo_scale, settings.max_photo_scale) / min(photo.shape[:2])
  )
  height, width = photo.shape[0] * factor, photo.shape[1] * factor
  top = rng.uniform(0, max(0.0, height - size))
  left = rng.uniform(0, max(0.0, width - size))
  photo_to_a = np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1]]) @ _scale_matrix(factor)
  a_to_b = random_homography(rng, size, settings)
  photo_to_b = a_to_b @ photo_to_a
  view_a = photometric(rng, _warp(photo, photo_to_a, size), settings)
  view_b = photometric(rng, _warp(photo, photo_to_b, size), settings)
  centres = cell_centres(side, field)
  # A cell corresponds only where both ends show the photo (not the grey border).
  valid_a = _inside(apply_homography(np.linalg.inv(photo_to_a), centres), photo.shape)
  valid_b = _inside(apply_homography(np.linalg.inv(photo_to_b), centres), photo.shape)
  targets_ab = homography_targets(a_to_b, side, valid_a, field)
  targets_ba = homography_targets(np.linalg.inv(a_to_b), side, valid_b, field)
  return TrainingPair(view_a, view_b, targets_ab, targets_ba)


def real_pair_views(
  rng: np.random.Generator,
  photo_a: np.ndarray,
  photo_b: np.ndarray,
  matches: np.ndarray,
  settings: SelfSupervisedConfig,
  field: ReceptiveField = RESNET50_CONV4,
) -> TrainingPair:
  """Crops of two overlapping photos around a random match, each at its own random scale.

  matches: float32 [M, 4] (ya, xa, yb, xb) pixels of the two photos.
  """
  size = settings.crop_size
  side = grid_side(size, field)
  base = size * rng.uniform(settings.min_photo_scale, settings.max_photo_scale)
  factor_a = base / min(photo_a.shape[:2])
  zoom = np.exp(rng.uniform(np.log(settings.min_zoom), np.log(settings.max_zoom)))
  factor_b = base * zoom / min(photo_b.shape[:2])
  anchor = matches[rng.integers(len(matches))]
  views, transforms = [], []
  for photo, factor, point in ((photo_a, factor_a, anchor[:2]), (photo_b, factor_b, anchor[2:])):
    # The anchor lands at a random place of the middle half of the crop.
    where = rng.uniform(0.25 * size, 0.75 * size, 2)
    top, left = point * factor - where
    transform = np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1]]) @ _scale_matrix(factor)
    views.append(photometric(rng, _warp(photo, transform, size), settings))
    transforms.append(transform)
  points_a = apply_homography(transforms[0], matches[:, :2])
  points_b = apply_homography(transforms[1], matches[:, 2:])
  order = rng.permutation(len(matches))
  points_a, points_b = points_a[order], points_b[order]
  return TrainingPair(
    views[0],
    views[1],
    match_targets(points_a, points_b, side, field),
    match_targets(points_b, points_a, side, field),
  )


def make_batch(
  seed: int,
  step: int,
  num_pairs: int,
  real_fraction: float,
  photos: Sequence[np.ndarray],
  real_pairs: Sequence[RealPair],
  settings: SelfSupervisedConfig,
) -> dict[str, np.ndarray]:
  """The batch of a step: a pure function of (seed, step).

  Returns view_a, view_b uint8 [P, S, S, 3] and targets_ab, targets_ba int32
  [P, n * n]. The first round(P * real_fraction) pairs are real pairs (when any
  exist), the rest homographic.
  """
  rng = np.random.default_rng([seed, step])
  num_real = int(round(num_pairs * real_fraction)) if real_pairs else 0
  pairs = []
  for index in range(num_pairs):
    if index < num_real:
      real = real_pairs[int(rng.integers(len(real_pairs)))]
      if rng.random() < 0.5:
        pairs.append(
          real_pair_views(rng, photos[real.index_a], photos[real.index_b], real.matches, settings)
        )
      else:
        swapped = real.matches[:, [2, 3, 0, 1]]
        pairs.append(
          real_pair_views(rng, photos[real.index_b], photos[real.index_a], swapped, settings)
        )
    else:
      pairs.append(homography_pair(rng, photos[int(rng.integers(len(photos)))], settings))
  return {
    "view_a": np.stack([p.view_a for p in pairs]),
    "view_b": np.stack([p.view_b for p in pairs]),
    "targets_ab": np.stack([p.targets_ab for p in pairs]).astype(np.int32),
    "targets_ba": np.stack([p.targets_ba for p in pairs]).astype(np.int32),
  }
