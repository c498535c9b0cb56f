"""Training views for the self-supervised stage (numpy + OpenCV, no TensorFlow).

Every training example is a pair of square views (``crop_size`` pixels) of real
photos with a list of corresponding feature-map cells:

* homographic pairs: one photo, two views related by a random homography
  (rotation, scale, perspective, translation) plus independent photometric
  changes (brightness, contrast, gamma, colour, blur, noise);
* real pairs: two overlapping photos of one scene (consecutive frames of a
  sequence) whose correspondences were found by OpenCV SIFT + RANSAC on the
  fundamental matrix, and, where ground-truth cameras are known (the Strecha
  sequences), kept only when they lie on the true epipolar line.

Cell geometry comes from :mod:`delf_ret.geometry` (the extractor's receptive
field function): the cell at index ``i`` of a view has centre
``stride * i - padding + (size - 1) / 2`` pixels. Points are (y, x) pixels;
homographies act on (x, y, 1).

A batch is a pure function of (seed, step), so a resumed run sees the same
batches as an uninterrupted one without checkpointing any iterator.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Sequence

import cv2
import numpy as np

from delf_ret.errors import DelfRetError
from delf_ret.extract.geometry import RESNET50_CONV4, ReceptiveField, keypoint_centers
from delf_ret.images import (
  IMAGE_SUFFIXES,
  ImageReadError,
  load_image,
  read_image_list,
  shrink_to_max_side,
)

# Natural photos that ship inside scikit-image and load without a network.
SKIMAGE_PHOTOS = (
  "astronaut",
  "coffee",
  "chelsea",
  "rocket",
  "camera",
  "coins",
  "moon",
  "brick",
  "grass",
  "gravel",
)


class TrainingDataError(DelfRetError):
  """The training photos cannot be read or are too few."""


@dataclasses.dataclass(frozen=True)
class ViewSettings:
  """How views are made (all from the training config; see protos/delf_train_config.proto).

  crop_size: side of each square view, pixels (a multiple of the stride).
  min_photo_scale, max_photo_scale: the photo is resized so that its shorter
    side is crop_size times a factor drawn in this range.
  max_rotation_deg, min_zoom, max_zoom, max_perspective, max_shift: the random
    homography between the two views (degrees; zoom factors; perspective terms
    in 1/pixels relative to the view side; shift as a fraction of the side).
  brightness, contrast, gamma, colour: ranges of the photometric changes
    (added fraction of 255; multiplicative factors 1 +- value; exponent
    exp(+- value); per-channel gain 1 +- value).
  blur_probability, noise_std: Gaussian blur chance; Gaussian noise sigma in
    grey levels (drawn uniformly up to this).
  """

  crop_size: int = 192
  min_photo_scale: float = 1.0
  max_photo_scale: float = 2.0
  max_rotation_deg: float = 30.0
  min_zoom: float = 0.7
  max_zoom: float = 1.4
  max_perspective: float = 0.3
  max_shift: float = 0.125
  brightness: float = 0.15
  contrast: float = 0.3
  gamma: float = 0.3
  colour: float = 0.1
  blur_probability: float = 0.25
  noise_std: float = 6.0


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


@dataclasses.dataclass
class RealPair:
  """Two overlapping photos (indices into the photo list) and their matches.

  matches: float32 [M, 4] of (ya, xa, yb, xb) pixels of the loaded photos.
  """

  index_a: int
  index_b: int
  matches: np.ndarray


# ---------------------------------------------------------------------------
# Photos


def list_training_photos(source: str | os.PathLike) -> list[pathlib.Path]:
  """Photo paths of a folder (searched recursively, sorted) or a list file.

  A list file holds one path per line, relative to the list file's folder
  unless absolute (delf_ret.images.read_image_list). Raises TrainingDataError
  for a missing source or a folder without photos.
  """
  source = pathlib.Path(source)
  if source.is_file():
    return read_image_list(source)
  if not source.is_dir():
    raise TrainingDataError(f"{source}: training photos not found (a folder or a list file)")
  paths = sorted(
    p
    for p in source.rglob("*")
    if p.is_file()
    and p.suffix.lower() in IMAGE_SUFFIXES
    and not any(part.startswith(".") for part in p.relative_to(source).parts)
  )
  if not paths:
    raise TrainingDataError(f"{source}: no photos found")
  return paths


def load_training_photos(
  paths: Sequence[pathlib.Path], max_side: int, min_side: int
) -> tuple[list[np.ndarray], list[pathlib.Path], list[str]]:
  """Loads photos (RGB uint8, longer side <= max_side); skips unreadable or small ones.

  Returns (photos, their paths, one error line per skipped file).
  """
  photos, kept, skipped = [], [], []
  for path in paths:
    try:
      image, _ = shrink_to_max_side(load_image(path), max_side)
    except ImageReadError as error:
      skipped.append(str(error))
      continue
    if min(image.shape[:2]) < min_side:
      skipped.append(f"{path}: {image.shape[1]}x{image.shape[0]} is smaller than {min_side} px")
      continue
    photos.append(np.ascontiguousarray(image))
    kept.append(pathlib.Path(path))
  return photos, kept, skipped


def skimage_photos(max_side: int) -> list[np.ndarray]:
  """The natural photos bundled with scikit-image (no network), as RGB uint8."""
  import skimage.data

  photos = []
  for name in SKIMAGE_PHOTOS:
    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=2)
    photos.append(
      shrink_to_max_side(np.ascontiguousarray(image[..., :3].astype(np.uint8)), max_side)[0]
    )
  return photos


# ---------------------------------------------------------------------------
# Geometry (pure functions)


def grid_side(crop_size: int, field: ReceptiveField = RESNET50_CONV4) -> int:
  """Cells per side of the feature map of a square view (crop_size a multiple of the stride)."""
  if crop_size % field.stride:
    raise ValueError(f"crop_size {crop_size} is not a multiple of the stride {field.stride}")
  return crop_size // field.stride


def cell_centres(side: int, field: ReceptiveField = RESNET50_CONV4) -> np.ndarray:
  """(y, x) pixel centres [side * side, 2] of a square feature map's cells, row-major."""
  rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
  return keypoint_centers(np.stack([rows.ravel(), cols.ravel()], axis=1), 1.0, field)


def apply_homography(transform: np.ndarray, points_yx: np.ndarray) -> np.ndarray:
  """Maps (y, x) points [N, 2] through a 3x3 transform acting on (x, y, 1)."""
  points = np.asarray(points_yx, np.float64).reshape(-1, 2)
  homogeneous = np.concatenate([points[:, ::-1], np.ones((len(points), 1))], axis=1)
  mapped = homogeneous @ np.asarray(transform, np.float64).T
  with np.errstate(divide="ignore", invalid="ignore"):
    xy = mapped[:, :2] / mapped[:, 2:3]
  xy[~np.isfinite(xy).all(axis=1) | (mapped[:, 2] <= 0)] = np.nan
  return xy[:, ::-1]


def nearest_cells(
  points_yx: np.ndarray, side: int, field: ReceptiveField = RESNET50_CONV4
) -> np.ndarray:
  """Flat index [N] of the cell whose centre is nearest each (y, x) point, -1 off the map."""
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
  """For each cell of view A, the flat index of the view-B cell its centre maps to (or -1).

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
  """Cell targets [side * side] from point correspondences in view pixels ((y, x) [M, 2] each).

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


def random_homography(rng: np.random.Generator, size: int, settings: ViewSettings) -> np.ndarray:
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


def photometric(rng: np.random.Generator, image: np.ndarray, settings: ViewSettings) -> np.ndarray:
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
  settings: ViewSettings,
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
  settings: ViewSettings,
  field: ReceptiveField = RESNET50_CONV4,
) -> TrainingPair:
  """Crops of two overlapping photos around a random match, each at its own random scale."""
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
  settings: ViewSettings,
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
      real = real_pairs[rng.integers(len(real_pairs))]
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
      pairs.append(homography_pair(rng, photos[rng.integers(len(photos))], settings))
  return {
    "view_a": np.stack([p.view_a for p in pairs]),
    "view_b": np.stack([p.view_b for p in pairs]),
    "targets_ab": np.stack([p.targets_ab for p in pairs]).astype(np.int32),
    "targets_ba": np.stack([p.targets_ba for p in pairs]).astype(np.int32),
  }


# ---------------------------------------------------------------------------
# Real pairs: SIFT + RANSAC, optionally checked against ground-truth cameras


def _camera_rows(path: str | os.PathLike) -> list[list[float]]:
  rows = [
    [float(v) for v in line.split()]
    for line in pathlib.Path(path).read_text().splitlines()
    if line.strip()
  ]
  if len(rows) < 9 or any(len(row) != 3 for row in rows[:8]) or len(rows[8]) != 2:
    raise TrainingDataError(
      f"{path}: not a Strecha camera file (9 rows: K, distortion, R, t, size)"
    )
  return rows


def read_strecha_camera(path: str | os.PathLike) -> np.ndarray:
  """3x4 projection matrix P = K [R^T | -R^T t] of a Strecha ``.camera`` file."""
  rows = _camera_rows(path)
  intrinsics, rotation, centre = np.array(rows[0:3]), np.array(rows[4:7]), np.array(rows[7])
  return intrinsics @ np.concatenate([rotation.T, (-rotation.T @ centre)[:, None]], axis=1)


def fundamental_from_projections(p_a: np.ndarray, p_b: np.ndarray) -> np.ndarray:
  """F with x_b^T F x_a = 0 for (x, y, 1) pixels, from two 3x4 projection matrices."""
  _, _, vt = np.linalg.svd(p_a)
  centre_a = vt[-1]
  epipole = p_b @ centre_a
  cross = np.array(
    [[0, -epipole[2], epipole[1]], [epipole[2], 0, -epipole[0]], [-epipole[1], epipole[0], 0]]
  )
  return cross @ p_b @ np.linalg.pinv(p_a)


def epipolar_distance(fundamental: np.ndarray, matches: np.ndarray) -> np.ndarray:
  """Symmetric point-to-epipolar-line distance [M] (pixels) of (ya, xa, yb, xb) matches."""
  a = np.concatenate([matches[:, [1, 0]], np.ones((len(matches), 1))], axis=1)
  b = np.concatenate([matches[:, [3, 2]], np.ones((len(matches), 1))], axis=1)
  lines_b = a @ fundamental.T
  lines_a = b @ fundamental
  residual = np.abs(np.sum(b * lines_b, axis=1))
  return 0.5 * (
    residual / np.maximum(np.hypot(lines_b[:, 0], lines_b[:, 1]), 1e-12)
    + residual / np.maximum(np.hypot(lines_a[:, 0], lines_a[:, 1]), 1e-12)
  )


def sift_keypoints(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
  """OpenCV SIFT of an RGB uint8 photo: (x, y) float32 [K, 2] and descriptors [K, 128] or None."""
  keys, descriptors = cv2.SIFT_create(nfeatures=4000).detectAndCompute(
    cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY), None
  )
  return np.float32([k.pt for k in keys]).reshape(-1, 2), descriptors


def sift_matches(
  sift_a: tuple[np.ndarray, np.ndarray | None],
  sift_b: tuple[np.ndarray, np.ndarray | None],
  ratio: float = 0.8,
  ransac_px: float = 1.5,
  seed: int = 0,
) -> np.ndarray:
  """Ratio-test matches of two photos' SIFT kept by RANSAC on the fundamental matrix.

  sift_a, sift_b: :func:`sift_keypoints` of each photo. Returns float32
  [M, 4] (ya, xa, yb, xb).
  """
  (xy_a, desc_a), (xy_b, desc_b) = sift_a, sift_b
  if desc_a is None or desc_b is None or len(xy_a) < 8 or len(xy_b) < 8:
    return np.zeros((0, 4), np.float32)
  pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc_a, desc_b, k=2)
  good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < ratio * m[1].distance]
  if len(good) < 8:
    return np.zeros((0, 4), np.float32)
  matched_a = xy_a[[m.queryIdx for m in good]]
  matched_b = xy_b[[m.trainIdx for m in good]]
  cv2.setRNGSeed(seed)
  _, mask = cv2.findFundamentalMat(matched_a, matched_b, cv2.USAC_MAGSAC, ransac_px, 0.999, 10000)
  if mask is None:
    return np.zeros((0, 4), np.float32)
  keep = mask.ravel().astype(bool)
  return np.concatenate([matched_a[keep][:, ::-1], matched_b[keep][:, ::-1]], axis=1).astype(
    np.float32
  )


def find_real_pairs(
  photos: Sequence[np.ndarray],
  paths: Sequence[pathlib.Path],
  max_gap: int,
  min_matches: int,
  cameras: dict[pathlib.Path, np.ndarray],
  max_epipolar_px: float,
  log=print,
) -> list[RealPair]:
  """Overlapping photo pairs among neighbours (by sorted name) of each folder.

  Photos i and j of one folder with 0 < j - i <= max_gap are matched with
  SIFT + RANSAC; pairs keeping at least ``min_matches`` matches are kept. Where
  both photos have ground-truth cameras (3x4 projection matrices, at the
  loaded photos' resolution), matches farther than ``max_epipolar_px`` from the
  true epipolar line are dropped too.
  """
  by_folder: dict[pathlib.Path, list[int]] = {}
  for index, path in enumerate(paths):
    by_folder.setdefault(pathlib.Path(path).parent, []).append(index)
  pairs = []
  for folder, indices in sorted(by_folder.items()):
    kept = 0
    sift = {index: sift_keypoints(photos[index]) for index in indices}
    for position, index_a in enumerate(indices):
      for index_b in indices[position + 1 : position + 1 + max_gap]:
        matches = sift_matches(sift[index_a], sift[index_b])
        projection_a = cameras.get(pathlib.Path(paths[index_a]))
        projection_b = cameras.get(pathlib.Path(paths[index_b]))
        if len(matches) and projection_a is not None and projection_b is not None:
          fundamental = fundamental_from_projections(projection_a, projection_b)
          matches = matches[epipolar_distance(fundamental, matches) <= max_epipolar_px]
        if len(matches) >= min_matches:
          pairs.append(RealPair(index_a, index_b, matches))
          kept += 1
    log(f"real pairs: {kept} in {folder}")
  return pairs


def strecha_cameras(
  paths: Sequence[pathlib.Path], photos: Sequence[np.ndarray], train_root: pathlib.Path
) -> dict[pathlib.Path, np.ndarray]:
  """Projection matrices of photos listed in a ``cameras.csv`` (Strecha layout) under the root.

  The CSV rows are ``image,scene,camera_file`` relative to the CSV's parent
  folder; row 9 of a camera file is the image size the camera refers to, so
  each matrix is rescaled to the loaded photo's size.
  """
  import csv

  wanted = {pathlib.Path(p).resolve(): i for i, p in enumerate(paths)}
  cameras = {}
  for table in sorted(pathlib.Path(train_root).rglob("cameras.csv")):
    with open(table, newline="") as handle:
      for row in csv.DictReader(handle):
        base = pathlib.Path(os.path.dirname(table.parent))  # The folder above the CSV's.
        image = (base / row["image"]).resolve()
        camera_file = base / row["camera_file"]
        if image not in wanted or not camera_file.is_file():
          continue
        width = _camera_rows(camera_file)[8][0]
        photo = photos[wanted[image]]
        factor = photo.shape[1] / width
        cameras[pathlib.Path(paths[wanted[image]])] = _scale_matrix(factor) @ read_strecha_camera(
          camera_file
        )
  return cameras
