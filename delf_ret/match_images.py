r"""Matches two images (or two DELF feature files) and verifies the matches with RANSAC.

Usage:
  match_images IMAGE_OR_FEATURES_1 IMAGE_OR_FEATURES_2 --output_image matches.png \
      [--config_path my.pbtxt] [--output_json matches.json]

Images are read and their features extracted with --config_path. Without a
config, a demo model is used: randomly initialised weights (seed 0; no
pretrained weights are bundled), raw 1024-d descriptors, configs/delf_demo.pbtxt
otherwise. For .delf inputs, pass the images to draw with --image_paths.
Prints the number of putative matches and RANSAC inliers.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
from absl import app, flags

from delf_ret import config as config_lib
from delf_ret.atomic import write_bytes_atomic
from delf_ret.features import (FeatureFileError, check_same_dimension, is_feature_file,
                               read_features)
from delf_ret.images import ImageReadError, load_image
from delf_ret.match import RansacParams, verify_pair

FLAGS = flags.FLAGS
flags.DEFINE_string("config_path", None, "DelfConfig for extracting features of image inputs.")
flags.DEFINE_multi_string("config_override", [], "Override one config field (repeatable).")
flags.DEFINE_string("output_image", None, "PNG to write: both images and the inlier lines.")
flags.DEFINE_string("output_json", None, "JSON to write: matches, inlier mask and transform.")
flags.DEFINE_list("image_paths", [], "Images to draw when the inputs are .delf feature files.")
flags.DEFINE_float("distance_threshold", 0.8, "Max descriptor L2 distance of a putative match.")
flags.DEFINE_float("ratio_threshold", 0.0, "Lowe ratio test threshold (0: off).")
flags.DEFINE_boolean("mutual", False, "Keep only mutual nearest neighbours.")
flags.DEFINE_enum("transform", "affine", ["affine", "homography"], "RANSAC model.")
flags.DEFINE_float("residual_threshold", 20.0, "RANSAC inlier threshold in pixels.")
flags.DEFINE_integer("max_trials", 1000, "RANSAC iterations.")
flags.DEFINE_float("stop_probability", 0.99,
                   "RANSAC stops early at this confidence (1.0: always max_trials).")
flags.DEFINE_integer("seed", 0, "RANSAC random seed.")

REPO_DIR = pathlib.Path(__file__).resolve().parent.parent


def _extractor():
  from delf_ret.extract.extractor import DelfExtractor
  if FLAGS.config_path:
    return DelfExtractor(config_lib.load_config(FLAGS.config_path, FLAGS.config_override))
  from delf_ret.model import DelfModel
  print("no --config_path: using a randomly initialised DELF model (seed 0), raw descriptors")
  config = config_lib.load_config(REPO_DIR / "configs" / "delf_demo.pbtxt",
                                  ["delf_local_config.use_pca=false", *FLAGS.config_override])
  return DelfExtractor(config, model=DelfModel(num_classes=1, seed=0))


def main(argv):
  inputs = [pathlib.Path(arg) for arg in argv[1:]]
  if len(inputs) != 2:
    raise app.UsageError("give exactly two inputs: images or .delf feature files")
  try:
    features, draw_paths, extractor = [], [], None
    for i, path in enumerate(inputs):
      if is_feature_file(path):
        features.append(read_features(path))
        draw_paths.append(FLAGS.image_paths[i] if len(FLAGS.image_paths) == 2 else None)
      else:
        extractor = extractor or _extractor()
        features.append(extractor.extract_file(path))
        draw_paths.append(path)
    check_same_dimension(features[0], features[1], str(inputs[0]), str(inputs[1]))
  except (FeatureFileError, ImageReadError, config_lib.ConfigError, FileNotFoundError,
          ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  params = RansacParams(distance_threshold=FLAGS.distance_threshold,
                        ratio_threshold=FLAGS.ratio_threshold or None, mutual=FLAGS.mutual,
                        transform=FLAGS.transform, residual_threshold=FLAGS.residual_threshold,
                        max_trials=FLAGS.max_trials,
                        stop_probability=FLAGS.stop_probability, seed=FLAGS.seed)
  result = verify_pair(features[0], features[1], params)
  print(f"features: {features[0].num_features} and {features[1].num_features}; "
        f"putative matches: {result.num_matches}; inliers: {result.num_inliers}")
  inlier_pairs = result.matches[result.inliers]
  if FLAGS.output_image:
    if None in draw_paths:
      print("error: --output_image with .delf inputs needs --image_paths=IMAGE1,IMAGE2",
            file=sys.stderr)
      return 2
    try:
      images = [load_image(path) for path in draw_paths]
    except ImageReadError as error:
      print(f"error: {error}", file=sys.stderr)
      return 2
    from delf_ret.evaluation.visualize import draw_matches
    draw_matches(FLAGS.output_image, images[0], images[1],
                 features[0].locations[inlier_pairs[:, 0]],
                 features[1].locations[inlier_pairs[:, 1]],
                 f"{inputs[0].name} - {inputs[1].name}: {result.num_inliers} inliers "
                 f"of {result.num_matches} putative matches ({FLAGS.transform})")
    print(f"wrote {FLAGS.output_image}")
  if FLAGS.output_json:
    report = {
        "inputs": [str(p) for p in inputs],
        "num_features": [features[0].num_features, features[1].num_features],
        "num_putative_matches": result.num_matches, "num_inliers": result.num_inliers,
        "matches": result.matches.tolist(), "inliers": result.inliers.tolist(),
        "transform_xy": None if result.transform is None else result.transform.tolist(),
        "locations_yx": [features[0].locations[result.matches[:, 0]].tolist(),
                         features[1].locations[result.matches[:, 1]].tolist()],
        "params": {k: getattr(params, k) for k in params.__dataclass_fields__},
    }
    write_bytes_atomic(FLAGS.output_json, json.dumps(report, indent=1).encode())
    print(f"wrote {FLAGS.output_json}")
  return 0


def run():
  app.run(main)


if __name__ == "__main__":
  run()
