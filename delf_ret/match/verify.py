"""Geometric verification of putative matches with RANSAC (OpenCV or scikit-image).

Keypoints come in as (y, x) pixels like everywhere in delf-ret. The fitted
transform is a 3x3 matrix acting on homogeneous (x, y, 1) columns, mapping
image A to image B: the convention of scikit-image, OpenCV and published
ground-truth homographies.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import warnings
from typing import Iterable

import cv2
import numpy as np

from delf_ret.config import RANSAC_METHODS
from delf_ret.config import ConfigError
from delf_ret.config import check_ransac_backend
from delf_ret.config import check_retrieval_value
from delf_ret.features import LocalFeatures
from delf_ret.match.putative import DescriptorMatcher
from delf_ret.protos.delf_config_pb2 import DelfRetrievalConfig
from delf_ret.timing import add_seconds

_ALL_TRIALS_CONFIDENCE = 1.0 - 1e-12
MIN_TRIANGLE_AREA = 1.0  # px^2: a sample with a flatter triangle is degenerate.

# Transform name (config: retrieval_config.ransac_transform) -> points in RANSAC's minimal
# sample.
TRANSFORMS = {"affine": 3, "homography": 4}
# ransac_method (config.RANSAC_METHODS) -> OpenCV's method flag of the same name upper-cased
# (the skimage backend runs "ransac" only).
METHODS = {name: getattr(cv2, name.upper()) for name in RANSAC_METHODS}


def _decimal(value: float) -> float:
  """A float32 config value as the shortest decimal that reads back to it.

  0.8, not 0.800000011920929. Descriptor distances are float32, so comparisons with either value agree.
  """
  return float(str(np.float32(value)))


# The config's matching and RANSAC defaults (protos/delf_config.proto), the only place they are set.
_DEFAULTS = DelfRetrievalConfig()


@dataclasses.dataclass(frozen=True)
class RansacParams:
  """Putative matching and RANSAC parameters.

  Built from a config by :meth:`from_config`; the field defaults are the
  retrieval_config defaults (the published DELF example): L2 distance below
  0.8, no ratio test, affine, 20 px, 1000 trials with no early stop (stop
  probability 1; a value below 1 stops at that confidence: scikit-image's
  stop_probability, OpenCV's confidence), seed 0, classic RANSAC, no spread
  check (min_spread: the least :func:`inlier_spread` of a verified pair).
  """

  distance_threshold: float = _decimal(_DEFAULTS.match_distance_threshold)
  ratio_threshold: float | None = _decimal(_DEFAULTS.match_ratio_threshold) or None
  mutual: bool = _DEFAULTS.match_mutual
  transform: str = _DEFAULTS.ransac_transform
  residual_threshold: float = _decimal(_DEFAULTS.ransac_residual_threshold)  # pixels
  max_trials: int = _DEFAULTS.ransac_max_trials
  stop_probability: float = _DEFAULTS.ransac_stop_probability
  seed: int = _DEFAULTS.ransac_seed
  backend: str = _DEFAULTS.ransac_backend
  method: str = _DEFAULTS.ransac_method
  min_spread: float = _decimal(_DEFAULTS.min_inlier_spread)

  def __post_init__(self):
    check_retrieval_value("ransac_transform", self.transform)
    check_retrieval_value("ransac_backend", self.backend)
    check_retrieval_value("ransac_method", self.method)
    check_ransac_backend(self.backend, self.method)
    check_retrieval_value("min_inlier_spread", self.min_spread)

  @classmethod
  def from_config(cls, retrieval_config: DelfRetrievalConfig) -> "RansacParams":
    """The matching and RANSAC fields of a ``DelfRetrievalConfig`` (ratio 0 means no ratio test)."""
    return cls(
      distance_threshold=_decimal(retrieval_config.match_distance_threshold),
      ratio_threshold=_decimal(retrieval_config.match_ratio_threshold) or None,
      mutual=retrieval_config.match_mutual,
      transform=retrieval_config.ransac_transform,
      residual_threshold=_decimal(retrieval_config.ransac_residual_threshold),
      max_trials=retrieval_config.ransac_max_trials,
      stop_probability=retrieval_config.ransac_stop_probability,
      seed=retrieval_config.ransac_seed,
      backend=retrieval_config.ransac_backend,
      method=retrieval_config.ransac_method,
      min_spread=_decimal(retrieval_config.min_inlier_spread),
    )


@dataclasses.dataclass
class Verification:
  """Result of verifying one pair.

  matches: int64 [M, 2] putative (index in A, index in B).
  inliers: bool [M], RANSAC inlier mask over ``matches``.
  transform: float [3, 3] A -> B on (x, y, 1), or None when none was found.
  """

  matches: np.ndarray
  inliers: np.ndarray
  transform: np.ndarray | None

  @classmethod
  def empty(cls, matches: np.ndarray | None = None) -> "Verification":
    """No inliers and no transform (for ``matches``, or none)."""
    matches = np.zeros((0, 2), np.int64) if matches is None else matches
    return cls(matches, np.zeros(matches.shape[0], bool), None)

  @property
  def num_inliers(self) -> int:
    return int(self.inliers.sum())

  @property
  def num_matches(self) -> int:
    return int(self.matches.shape[0])


def _triangle_area(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> float:
  return 0.5 * abs((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))


def non_degenerate_sample(source: np.ndarray, target: np.ndarray) -> bool:
  """True if no three points of the sample are (nearly) collinear in either image."""
  for points in (source, target):
    for i, j, k in itertools.combinations(range(points.shape[0]), 3):
      if _triangle_area(points[i], points[j], points[k]) < MIN_TRIANGLE_AREA:
        return False
  return True


def _spans_a_plane(points: np.ndarray) -> bool:
  """True if (x, y) points [K, 2] are not all (nearly) on one line or one spot."""
  if points.shape[0] < 3:
    return False
  singular = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
  return bool(singular[-1] > 1.0)  # pixels (root-sum-square spread across the best line)


def _hull_area(points: np.ndarray) -> float:
  """Area (px^2) of the convex hull of points [K, 2]; 0 for fewer than 3."""
  if points.shape[0] < 3:
    return 0.0
  return float(cv2.contourArea(cv2.convexHull(points.astype(np.float32))))


def _box_area(points: np.ndarray) -> float:
  """Area (px^2) of the bounding box of points [K, 2], each side at least 1 px."""
  if points.shape[0] == 0:
    return 1.0
  sides = np.maximum(points.max(axis=0) - points.min(axis=0), 1.0)
  return float(sides[0] * sides[1])


def inlier_spread(
  inliers_a: np.ndarray, inliers_b: np.ndarray, keypoints_a: np.ndarray, keypoints_b: np.ndarray
) -> float:
  """How far the inliers spread: the smaller, over the two images, of the area of the
  inliers' convex hull over the area of the bounding box of all that image's keypoints.

  inliers_*: the inliers' points [K, 2] in each image; keypoints_*: every keypoint of that
  image [N, 2] (pixels, either coordinate order). From 0 (a bundle of matches along parallel
  lines, one small patch) to 1 (the inliers cover the whole keypoint area of both images).
  """
  return min(
    _hull_area(inliers_a) / _box_area(keypoints_a),
    _hull_area(inliers_b) / _box_area(keypoints_b),
  )


def _skimage_ransac(source: np.ndarray, target: np.ndarray, params: RansacParams):
  """(3x3 transform, inlier mask) or (None, None) with scikit-image's RANSAC."""
  # Lazy: scikit-image (1-3 s to import, an extra) only where its backend runs; OpenCV is
  # the default.
  try:
    from skimage.measure import ransac
    from skimage.transform import AffineTransform
    from skimage.transform import ProjectiveTransform
  except ImportError:
    raise ConfigError(
      "ransac_backend 'skimage' needs scikit-image, which is not installed: "
      "pip install 'delf-ret[skimage]' (or use the default backend, opencv)"
    ) from None

  model_class = AffineTransform if params.transform == "affine" else ProjectiveTransform
  min_samples = TRANSFORMS[params.transform]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
      model, inliers = ransac(
        (source, target),
        model_class,
        min_samples=min_samples,
        residual_threshold=params.residual_threshold,
        max_trials=params.max_trials,
        stop_probability=params.stop_probability,
        is_data_valid=non_degenerate_sample,
        rng=np.random.default_rng(params.seed),
      )
    except (ValueError, np.linalg.LinAlgError, ZeroDivisionError):
      return None, None
  if model is None or inliers is None:
    return None, None
  return np.asarray(model.params, np.float64), np.asarray(inliers, bool)


def _opencv_ransac(source: np.ndarray, target: np.ndarray, params: RansacParams):
  """(3x3 transform, inlier mask) or (None, None) with OpenCV's RANSAC or USAC (seeded)."""
  cv2.setRNGSeed(params.seed)
  method = METHODS[params.method]
  src, dst = source.astype(np.float32), target.astype(np.float32)
  # OpenCV needs a confidence below 1; this close to 1 it runs all max_trials iterations, which
  # is what stop_probability 1 means (scikit-image's default, the official DELF setting).
  confidence = min(params.stop_probability, _ALL_TRIALS_CONFIDENCE)
  try:
    if params.transform == "affine":
      model, mask = cv2.estimateAffine2D(
        src,
        dst,
        method=method,
        ransacReprojThreshold=params.residual_threshold,
        maxIters=params.max_trials,
        confidence=confidence,
        refineIters=10,
      )
      matrix = None if model is None else np.vstack([model, [0.0, 0.0, 1.0]])
    else:
      matrix, mask = cv2.findHomography(
        src,
        dst,
        method,
        params.residual_threshold,
        maxIters=params.max_trials,
        confidence=confidence,
      )
  except cv2.error:
    return None, None
  if matrix is None or mask is None:
    return None, None
  inliers = mask.ravel().astype(bool)
  # OpenCV can return a model of a degenerate (collinear, repeated) inlier set.
  if not (_spans_a_plane(source[inliers]) and _spans_a_plane(target[inliers])):
    return None, None
  return np.asarray(matrix, np.float64), inliers


RANSAC_BACKENDS = {"opencv": _opencv_ransac, "skimage": _skimage_ransac}


def verify_matches(
  locations_a: np.ndarray,
  locations_b: np.ndarray,
  matches: np.ndarray,
  params: RansacParams = RansacParams(),
) -> Verification:
  """RANSAC on putative matches between keypoints (y, x) [N_A, 2] and [N_B, 2].

  Fewer matches than the transform's minimal sample, or degenerate point sets
  (collinear, identical), give zero inliers and no transform, never an error; so do
  inliers whose :func:`inlier_spread` (against all keypoints of each image) is below
  params.min_spread. The backend (params.backend) is OpenCV or scikit-image.
  """
  min_samples = TRANSFORMS[params.transform]
  matches = np.asarray(matches, np.int64).reshape(-1, 2)
  none = Verification.empty(matches)
  if matches.shape[0] < min_samples:
    return none
  source = np.asarray(locations_a, np.float64)[matches[:, 0]][:, ::-1]  # (x, y)
  target = np.asarray(locations_b, np.float64)[matches[:, 1]][:, ::-1]
  transform, inliers = RANSAC_BACKENDS[params.backend](source, target, params)
  if transform is None or not np.all(np.isfinite(transform)):
    return none
  if params.min_spread > 0:
    keypoints_a = np.asarray(locations_a, np.float64)
    keypoints_b = np.asarray(locations_b, np.float64)
    if inlier_spread(source[inliers], target[inliers], keypoints_a, keypoints_b) < (
      params.min_spread
    ):
      return none
  return Verification(matches, inliers, transform)


def verify_pair(
  features_a: LocalFeatures,
  features_b: LocalFeatures,
  params: RansacParams = RansacParams(),
  matcher: DescriptorMatcher | None = None,
  timings: dict[str, float] | None = None,
) -> Verification:
  """Putative matching then RANSAC for one pair (``matcher`` built on A may be reused).

  timings: if given, the seconds spent are added to its "matching" and "ransac" entries.
  """
  if features_a.num_features == 0 or features_b.num_features == 0:
    return Verification.empty()
  start = time.perf_counter()
  matcher = matcher or DescriptorMatcher(features_a.descriptors)
  matches = matcher.match(
    features_b.descriptors, params.distance_threshold, params.ratio_threshold, params.mutual
  )
  add_seconds(timings, "matching", start)
  start = time.perf_counter()
  verification = verify_matches(features_a.locations, features_b.locations, matches, params)
  add_seconds(timings, "ransac", start)
  return verification


def verify_candidates(
  query: LocalFeatures,
  candidates: Iterable[LocalFeatures],
  params: RansacParams = RansacParams(),
  timings: dict[str, float] | None = None,
  batch_size: int = 32,
) -> list[Verification]:
  """Verifies one query against many candidates; same results as verify_pair on each.

  The query's search structure is built once, and the putative matches of
  ``batch_size`` candidates at a time come from one search (candidates are
  taken from the iterable one batch at a time). timings: as in verify_pair,
  summed over the candidates.
  """
  start = time.perf_counter()
  matcher = DescriptorMatcher(query.descriptors) if query.num_features else None
  add_seconds(timings, "matching", start)
  results = []
  iterator = iter(candidates)
  while batch := list(itertools.islice(iterator, batch_size)):
    if matcher is None:
      results += [verify_pair(query, candidate, params) for candidate in batch]
      continue
    start = time.perf_counter()
    all_matches = matcher.match_many(
      [c.descriptors for c in batch],
      params.distance_threshold,
      params.ratio_threshold,
      params.mutual,
    )
    add_seconds(timings, "matching", start)
    for candidate, matches in zip(batch, all_matches):
      start = time.perf_counter()
      if candidate.num_features == 0:
        results.append(Verification.empty())
      else:
        results.append(verify_matches(query.locations, candidate.locations, matches, params))
      add_seconds(timings, "ransac", start)
  return results
