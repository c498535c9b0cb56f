"""The classical baseline of the benchmarks: OpenCV SIFT keypoints and descriptors."""

from __future__ import annotations

import numpy as np


def sift_features(
  image: np.ndarray,
  num_features: int = 1000,
  unit_descriptors: bool = False,
  max_side: int | None = None,
):
  """SIFT features of an RGB uint8 image [H, W, 3] as LocalFeatures ((y, x) original pixels).

  unit_descriptors: L2-normalise the 128-d descriptors (for an index of unit
  vectors). max_side: downscale the image first so its longer side is at most
  this many pixels; keypoints are still reported in original pixels.
  """
  import cv2

  from delf_ret.features import LocalFeatures

  gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
  factor = 1.0
  if max_side and max(gray.shape) > max_side:
    factor = max_side / max(gray.shape)
    gray = cv2.resize(
      gray,
      (round(gray.shape[1] * factor), round(gray.shape[0] * factor)),
      interpolation=cv2.INTER_AREA,
    )
  keypoints, descriptors = cv2.SIFT_create(nfeatures=num_features).detectAndCompute(gray, None)
  n = len(keypoints)
  locations = np.array([(k.pt[1], k.pt[0]) for k in keypoints], np.float32).reshape(n, 2) / factor
  descriptors = np.zeros((0, 128), np.float32) if descriptors is None else descriptors
  if unit_descriptors and n:
    descriptors = descriptors / np.maximum(
      np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12
    )
  return LocalFeatures(
    locations,
    [k.size / factor for k in keypoints],
    descriptors,
    [k.response for k in keypoints],
    np.zeros(n),
  )


def sift_retrieval_config(retrieval_config):
  """A copy of a DelfRetrievalConfig with the SIFT baseline's matching rule (distance < 2,
  i.e. none, the 0.8 ratio test, no mutual check); RANSAC, min_inliers and reranking stay."""
  from delf_ret import config as config_lib

  sift_retrieval = config_lib.DelfConfig().retrieval_config
  sift_retrieval.CopyFrom(retrieval_config)
  config_lib.apply_overrides(
    sift_retrieval,
    ["match_distance_threshold=2.0", "match_ratio_threshold=0.8", "match_mutual=false"],
  )
  return sift_retrieval
