"""In-plane rotation or zoom: inliers between each bundled demo photo and a turned or zoomed copy.

For every photo of delf_ret/demo_data (20 photos, longer side at most 640 px) and every
angle, the photo is rotated about its centre (the canvas grown to hold it, the corners
black); with --transform zoom, for every factor z its centre crop of 1/z of each side is
enlarged back to the photo's size (z = 3: what a photo taken with 3x the focal length
sees). The copy is verified against the original, for
  * the shipped default model with its own config (extraction, matching rule, RANSAC,
    min_inliers): the figures a user gets;
  * the baseline: OpenCV SIFT, 1000 features at the same maximum image side, unit
    descriptors, the 0.8 ratio test and the same RANSAC (as benchmarks/default_model.py).
Per angle (factor): the median inliers of each method, their ratio (default model / SIFT)
and the share of photos whose copy reaches the default config's min_inliers. Angle 0
verifies each photo against itself: the most a method can give.

Usage: python benchmarks/rotation.py [--transform rotation|zoom]
           [--output benchmarks/results/rotation.json (zoom: zoom.json)]
           [--config_path CANDIDATE/delf_config.pbtxt]  (another model in place of the shipped one)
"""

from __future__ import annotations

import argparse
import pathlib

import cv2
import numpy as np
from results_io import write_result
from sift_baseline import sift_features
from sift_baseline import sift_retrieval_config

REPO = pathlib.Path(__file__).resolve().parents[1]
ANGLES = (0, 15, 30, 45, 60, 90, 180)
ZOOMS = (1.5, 2.0, 3.0, 4.0)


def rotated(image: np.ndarray, degrees: float) -> np.ndarray:
  """``image`` uint8 [H, W, 3] rotated counter-clockwise by ``degrees`` about its centre, on a
  canvas grown to hold all of it (black corners)."""
  height, width = image.shape[:2]
  matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
  cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
  new_width, new_height = round(height * sin + width * cos), round(height * cos + width * sin)
  matrix[0, 2] += new_width / 2 - width / 2
  matrix[1, 2] += new_height / 2 - height / 2
  return cv2.warpAffine(image, matrix, (new_width, new_height))


def zoomed(image: np.ndarray, factor: float) -> np.ndarray:
  """The centre crop of ``image`` uint8 [H, W, 3] with sides H / factor and W / factor,
  enlarged back to [H, W, 3] (bilinear)."""
  height, width = image.shape[:2]
  crop_height, crop_width = round(height / factor), round(width / factor)
  top, left = (height - crop_height) // 2, (width - crop_width) // 2
  crop = image[top : top + crop_height, left : left + crop_width]
  return cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--transform", choices=("rotation", "zoom"), default="rotation")
  parser.add_argument("--output", help="default: benchmarks/results/<transform>.json")
  parser.add_argument("--config_path", help="a candidate model's config (default: the shipped one)")
  args = parser.parse_args()
  output = args.output or str(REPO / "benchmarks" / "results" / f"{args.transform}.json")
  if args.transform == "rotation":
    steps, transform, key = ANGLES, rotated, "degrees"
  else:
    steps, transform, key = ZOOMS, zoomed, "zoom"

  from delf_ret.config import load_config
  from delf_ret.default_model import default_config_path
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.images import load_image
  from delf_ret.match import RansacParams
  from delf_ret.match import verify_pair

  config_path = args.config_path or default_config_path()
  config = load_config(config_path)
  extractor = DelfExtractor(config)
  delf_params = RansacParams.from_config(config.retrieval_config)
  sift_params = RansacParams.from_config(sift_retrieval_config(config.retrieval_config))
  min_inliers = config.retrieval_config.min_inliers
  methods = {
    "default_model": (extractor.extract, delf_params),
    "opencv_sift": (
      lambda image: sift_features(image, unit_descriptors=True, max_side=config.max_image_size),
      sift_params,
    ),
  }
  photos = sorted((REPO / "delf_ret" / "demo_data").glob("*.jpg"))
  images = [load_image(path) for path in photos]
  originals = {name: [extract(image) for image in images] for name, (extract, _) in methods.items()}
  rows = []
  for step in steps:
    inliers = {}
    for name, (extract, params) in methods.items():
      inliers[name] = [
        verify_pair(original, extract(transform(image, step)), params).num_inliers
        for image, original in zip(images, originals[name])
      ]
    medians = {name: float(np.median(counts)) for name, counts in inliers.items()}
    row = {
      key: step,
      "median_inliers": medians,
      "default_model_to_sift": round(medians["default_model"] / max(medians["opencv_sift"], 1), 3),
      "share_verified": {
        name: round(float(np.mean(np.asarray(counts) >= min_inliers)), 3)
        for name, counts in inliers.items()
      },
      "inliers": inliers,
    }
    rows.append(row)
    print(step, medians, row["share_verified"], flush=True)
  write_result(
    output,
    {
      "benchmark": args.transform,
      "photos": [path.name for path in photos],
      "min_inliers": min_inliers,
      "weights": (
        "shipped default model (delf_ret/default_model)"
        if args.config_path is None
        else f"the model of {config_path}"
      )
      + "; OpenCV SIFT",
      "rows": rows,
    },
  )


if __name__ == "__main__":
  main()
