"""Matching speed for one verified pair of 1000 x 1000 features.

Times, in the same run on the same correspondences:
  * the nearest-neighbour step (delf_ret.match.DescriptorMatcher, exact, 40-d);
  * RANSAC (delf_ret.match.verify_matches: scikit-image, affine, 20 px,
    1000 trials) against cv2.estimateAffine2D (RANSAC, 20 px, 1000 iterations,
    confidence 0.99, its default early stop) from opencv-python-headless.
Data: random unit 40-d descriptors; 300 of the 1000 B features are an affine
image of A's with small noise (a real-looking 30% inlier rate).

Usage: python benchmarks/match_speed.py [--output benchmarks/results/match_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import numpy as np
from results_io import write_result

REPO = pathlib.Path(__file__).resolve().parents[1]


def timed(function, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = function()
    times.append(time.perf_counter() - start)
  return result, 1000 * float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "match_speed.json"))
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  import cv2

  from delf_ret.match import DescriptorMatcher
  from delf_ret.match import RansacParams
  from delf_ret.match import verify_matches

  rng = np.random.default_rng(0)
  n, dim, n_true = 1000, 40, 300
  desc_a = rng.normal(size=(n, dim)).astype(np.float32)
  desc_a /= np.linalg.norm(desc_a, axis=1, keepdims=True)
  desc_b = rng.normal(size=(n, dim)).astype(np.float32)
  desc_b[:n_true] = desc_a[:n_true] + 0.02 * rng.normal(size=(n_true, dim))
  desc_b /= np.linalg.norm(desc_b, axis=1, keepdims=True)
  loc_a = rng.uniform(0, 800, (n, 2))
  affine = np.array([[1.1, 0.2, 30.0], [-0.1, 0.9, -12.0]])
  loc_b = rng.uniform(0, 800, (n, 2))
  loc_b[:n_true] = (np.c_[loc_a[:n_true, ::-1], np.ones(n_true)] @ affine.T)[:, ::-1]
  loc_b[:n_true] += rng.normal(scale=1.0, size=(n_true, 2))

  # Nearest neighbour: build on A once, query B (what one verified pair costs).
  matches, nn_ms = timed(lambda: DescriptorMatcher(desc_a).match(desc_b, 0.8), args.repeats)
  # Same correspondences for both RANSACs: every B feature's nearest A neighbour.
  indices, _ = DescriptorMatcher(desc_a).nearest(desc_b, 1)
  all_matches = np.stack([indices[:, 0], np.arange(n)], axis=1)
  params = RansacParams()  # Early stop at 0.99 confidence, as OpenCV.
  ours, ours_ms = timed(lambda: verify_matches(loc_a, loc_b, all_matches, params), args.repeats)
  all_trials = RansacParams(stop_probability=1.0)
  full, full_ms = timed(lambda: verify_matches(loc_a, loc_b, all_matches, all_trials), 3)
  src = loc_a[all_matches[:, 0]][:, ::-1].astype(np.float32)
  dst = loc_b[all_matches[:, 1]][:, ::-1].astype(np.float32)
  cv2.setRNGSeed(0)
  (cv_model, cv_inliers), cv_ms = timed(
    lambda: cv2.estimateAffine2D(
      src, dst, method=cv2.RANSAC, ransacReprojThreshold=20.0, maxIters=1000, confidence=0.99
    ),
    args.repeats,
  )
  result = {
    "features_per_image": n,
    "descriptor_dim": dim,
    "true_correspondences": n_true,
    "cpus": os.cpu_count(),
    "repeats_median_of": args.repeats,
    "nearest_neighbour_ms": round(nn_ms, 3),
    "putative_matches_at_0.8": int(matches.shape[0]),
    "ransac_correspondences": int(all_matches.shape[0]),
    "delf_ret_ransac_ms": round(ours_ms, 3),
    "delf_ret_ransac_inliers": ours.num_inliers,
    "delf_ret_ransac_all_1000_trials_ms": round(full_ms, 3),
    "delf_ret_ransac_all_1000_trials_inliers": full.num_inliers,
    "opencv_estimateAffine2D_ms": round(cv_ms, 3),
    "opencv_inliers": int(cv_inliers.sum()) if cv_inliers is not None else 0,
    "ransac_time_ratio_delf_ret_over_opencv": round(ours_ms / cv_ms, 2),
    "verified_pair_ms": round(nn_ms + ours_ms, 3),
    "note": (
      "both RANSACs stop early at 99% confidence; scikit-image's loop is Python, "
      "OpenCV's is C++. The all-trials figure is scikit-image without early stop."
    ),
  }
  print(json.dumps(result, indent=1))
  write_result(args.output, result)


if __name__ == "__main__":
  main()
