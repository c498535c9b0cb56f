r"""Matches two images (or two DELF feature files) and verifies the matches with RANSAC.

Usage:
  match_images IMAGE_OR_FEATURES_1 IMAGE_OR_FEATURES_2 --output_image matches.png \
      [--config_path my.pbtxt] [--output_json matches.json] [--distance_threshold 0.7]
  # The official DELF example's flags work too:
  match_images --image_1_path a.jpg --image_2_path b.jpg \
      --features_1_path a.delf --features_2_path b.delf --output_image matches.png
  (without --features_*_path, the two images are extracted with the config).

Images are read and their features extracted with --config_path, by default
the shipped default model's config (delf_ret/default_model: a model trained
by delf-ret's self-supervised stage, see its MODEL_CARD.md). For .delf
inputs, pass the images to draw with --image_paths. Matching and RANSAC
settings are the config's retrieval_config; each flag below overrides one of
its fields. Prints the number of putative matches and RANSAC
inliers.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from absl import app
from absl import flags

from delf_ret import config as config_lib
from delf_ret.atomic import write_bytes_atomic
from delf_ret.cli.common import config_default_help
from delf_ret.cli.common import define_config_flags
from delf_ret.cli.common import load_config_from_flags
from delf_ret.cli.common import print_error
from delf_ret.cli.common import run_tool
from delf_ret.features import check_same_dimension
from delf_ret.features import is_feature_file
from delf_ret.features import read_features
from delf_ret.images import load_image
from delf_ret.match import RansacParams
from delf_ret.match import verify_pair

FLAGS = flags.FLAGS
define_config_flags("DelfConfig for extracting features of image inputs, and matching settings.")
flags.DEFINE_string("output_image", None, "PNG to write: both images and the inlier lines.")
flags.DEFINE_string("output_json", None, "JSON to write: matches, inlier mask and transform.")
flags.DEFINE_list("image_paths", [], "Images to draw when the inputs are .delf feature files.")
flags.DEFINE_string(
  "image_1_path",
  None,
  "Official DELF flag: first image (drawn; extracted "
  "when --features_1_path is not given). Instead of the positional inputs.",
)
flags.DEFINE_string("image_2_path", None, "Official DELF flag: second image.")
flags.DEFINE_string(
  "features_1_path", None, "Official DELF flag: .delf features of the first image."
)
flags.DEFINE_string(
  "features_2_path", None, "Official DELF flag: .delf features of the second image."
)

# Flag -> the retrieval_config field it overrides (unset flags keep the config's value).
MATCH_FLAGS = {
  "distance_threshold": "match_distance_threshold",
  "ratio_threshold": "match_ratio_threshold",
  "mutual": "match_mutual",
  "transform": "ransac_transform",
  "residual_threshold": "ransac_residual_threshold",
  "max_trials": "ransac_max_trials",
  "stop_probability": "ransac_stop_probability",
  "seed": "ransac_seed",
  "ransac_backend": "ransac_backend",
}
flags.DEFINE_float("distance_threshold", None, "Max descriptor L2 distance of a putative match.")
flags.DEFINE_float("ratio_threshold", None, "Lowe ratio test threshold (0: off).")
flags.DEFINE_boolean("mutual", None, "Keep only mutual nearest neighbours.")
flags.DEFINE_enum("transform", None, ["affine", "homography"], "RANSAC model.")
flags.DEFINE_float("residual_threshold", None, "RANSAC inlier threshold in pixels.")
flags.DEFINE_integer("max_trials", None, "RANSAC iterations.")
flags.DEFINE_float(
  "stop_probability", None, "RANSAC stops early at this confidence (1.0: always max_trials)."
)
flags.DEFINE_integer("seed", None, "RANSAC random seed.")
flags.DEFINE_enum(
  "ransac_backend",
  None,
  ["opencv", "skimage"],
  "RANSAC implementation: OpenCV (fast) or scikit-image (as the official code).",
)
for _flag, _field in MATCH_FLAGS.items():
  FLAGS[_flag].help += config_default_help(f"retrieval_config.{_field}")


def match_overrides() -> list[str]:
  """``retrieval_config.<field>=<value>`` for each matching flag given on the command line."""
  return [
    f"retrieval_config.{field}={getattr(FLAGS, flag)}"
    for flag, field in MATCH_FLAGS.items()
    if getattr(FLAGS, flag) is not None
  ]


def load_match_config() -> config_lib.DelfConfig:
  """--config_path (or the default model's config) with the overrides and matching flags."""
  return load_config_from_flags(extra_overrides=match_overrides())


def _extractor(config: config_lib.DelfConfig):
  # Lazy: TensorFlow, imported once the flags are checked (--help answers at once).
  from delf_ret.extract.extractor import DelfExtractor

  return DelfExtractor(config)


def official_inputs(positional: list[str]) -> tuple[list[str], list[str]]:
  """(inputs, images to draw) from the official flags, or (positional, --image_paths).

  The official example's flags name the images (--image_1_path, --image_2_path)
  and optionally their feature files (--features_1_path, --features_2_path).
  """
  official = [FLAGS.image_1_path, FLAGS.image_2_path, FLAGS.features_1_path, FLAGS.features_2_path]
  if not any(official):
    return positional, list(FLAGS.image_paths)
  if positional:
    raise app.UsageError(
      "give the inputs either as two arguments or with --image_1_path/"
      "--image_2_path (and --features_1_path/--features_2_path), not both"
    )
  images, features = official[:2], official[2:]
  if any(features):
    if not all(features):
      raise app.UsageError("give both --features_1_path and --features_2_path")
    if any(images) and not all(images):
      raise app.UsageError("give both --image_1_path and --image_2_path")
    return features, [path for path in images if path]
  if not all(images):
    raise app.UsageError("give both --image_1_path and --image_2_path")
  return images, []


def main(argv: list[str]) -> int:
  names, image_paths = official_inputs(argv[1:])
  inputs = [pathlib.Path(arg) for arg in names]
  if len(inputs) != 2:
    raise app.UsageError("give exactly two inputs: images or .delf feature files")
  config = load_match_config()
  features, extractor = [], None
  draw_paths: list[str | pathlib.Path | None] = []
  for i, path in enumerate(inputs):
    if is_feature_file(path):
      features.append(read_features(path))
      draw_paths.append(image_paths[i] if len(image_paths) == 2 else None)
    else:
      extractor = extractor or _extractor(config)
      features.append(extractor.extract_file(path))
      draw_paths.append(path)
  check_same_dimension(features[0], features[1], str(inputs[0]), str(inputs[1]))
  if FLAGS.output_image and None in draw_paths:
    return print_error(
      "--output_image with .delf inputs needs the images: --image_paths=IMAGE1,"
      "IMAGE2 (or --image_1_path and --image_2_path)"
    )
  params = RansacParams.from_config(config.retrieval_config)
  result = verify_pair(features[0], features[1], params)
  print(
    f"features: {features[0].num_features} and {features[1].num_features}; "
    f"putative matches: {result.num_matches}; inliers: {result.num_inliers}"
  )
  inlier_pairs = result.matches[result.inliers]
  if FLAGS.output_image:
    images = [load_image(path) for path in draw_paths if path is not None]  # None: refused above.
    from delf_ret.evaluation.visualize import draw_matches  # Lazy: matplotlib.

    draw_matches(
      FLAGS.output_image,
      images[0],
      images[1],
      features[0].locations[inlier_pairs[:, 0]],
      features[1].locations[inlier_pairs[:, 1]],
      f"{inputs[0].name} - {inputs[1].name}: {result.num_inliers} inliers "
      f"of {result.num_matches} putative matches ({params.transform})",
    )
    print(f"wrote {FLAGS.output_image}")
  if FLAGS.output_json:
    report = {
      "inputs": [str(p) for p in inputs],
      "num_features": [features[0].num_features, features[1].num_features],
      "num_putative_matches": result.num_matches,
      "num_inliers": result.num_inliers,
      "matches": result.matches.tolist(),
      "inliers": result.inliers.tolist(),
      "transform_xy": None if result.transform is None else result.transform.tolist(),
      "locations_yx": [
        features[0].locations[result.matches[:, 0]].tolist(),
        features[1].locations[result.matches[:, 1]].tolist(),
      ],
      "params": dataclasses.asdict(params),
    }
    write_bytes_atomic(FLAGS.output_json, json.dumps(report, indent=1).encode())
    print(f"wrote {FLAGS.output_json}")
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
