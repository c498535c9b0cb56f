"""Matching quality on the real image pairs of ../shared/data/pairs.

For each pair: putative matches and RANSAC inliers (delf_ret.match, affine,
20 px) for
  * DELF features of the model that is available: a randomly initialised
    DELF model (seed 0; no pretrained weights exist offline), full 7-scale
    pyramid, longer side capped at 1024 px, top 1000 by attention, raw 1024-d
    L2-normalised descriptors; putative matches by the 0.8 distance test
    (published default) and, as a second variant, by a 0.8 ratio test;
  * the classical baseline: OpenCV SIFT (1000 features) with the 0.8 ratio
    test and the same RANSAC.
For graf1/graf3, the ground-truth homography H1to3p gives the number of correct
inliers (reprojection error below 10 px and below 20 px) and the inlier precision
(share below 10 px), scored like benchmarks/default_model.py (its pair_row).

Usage: python benchmarks/match_quality.py [--output benchmarks/results/match_quality.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
from default_model import PAIRS
from default_model import pair_row
from default_model import read_homography
from results_io import write_result
from sift_baseline import sift_features

REPO = pathlib.Path(__file__).resolve().parents[1]
PAIRS_DIR = REPO.parent / "shared" / "data" / "pairs"
CONFIG = """
image_scales: [0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0]
delf_local_config { use_pca: false max_feature_num: 1000 score_threshold: 0.0 }
max_image_size: 1024
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pairs_dir", default=str(PAIRS_DIR))
  parser.add_argument(
    "--output", default=str(REPO / "benchmarks" / "results" / "match_quality.json")
  )
  args = parser.parse_args()

  from delf_ret.config import parse_config_text
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.images import load_image
  from delf_ret.match import RansacParams
  from delf_ret.model import DelfModel

  pairs_dir = pathlib.Path(args.pairs_dir)
  extractor = DelfExtractor(parse_config_text(CONFIG), model=DelfModel(num_classes=1, seed=0))
  delf_distance = RansacParams(distance_threshold=0.8)
  delf_ratio = RansacParams(distance_threshold=np.inf, ratio_threshold=0.8)
  sift_ratio = RansacParams(distance_threshold=np.inf, ratio_threshold=0.8)
  results = {
    "weights": "DELF: random initialisation, seed 0 (no pretrained weights available)",
    "ransac": "affine, residual 20 px, max 1000 trials, stop at 0.99, seed 0",
    "correct_px": 10.0,
    "pairs": {},
  }
  for name_a, name_b in PAIRS:
    image_a, image_b = load_image(pairs_dir / name_a), load_image(pairs_dir / name_b)
    homography = read_homography(pairs_dir / "H1to3p.xml") if name_a == "graf1.png" else None
    delf_a, delf_b = extractor.extract(image_a), extractor.extract(image_b)
    sift_a, sift_b = sift_features(image_a), sift_features(image_b)
    row = {
      "delf_random_distance_0.8": pair_row(delf_a, delf_b, delf_distance, homography),
      "delf_random_ratio_0.8": pair_row(delf_a, delf_b, delf_ratio, homography),
      "opencv_sift_ratio_0.8": pair_row(sift_a, sift_b, sift_ratio, homography),
    }
    results["pairs"][f"{name_a}/{name_b}"] = row
    print(name_a, name_b, json.dumps(row), flush=True)
  write_result(args.output, results)


if __name__ == "__main__":
  main()
