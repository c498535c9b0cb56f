r"""Learns the descriptor PCA (mean, projection, variances) from a set of images.

Usage:
  python -m delf_ret.learn_pca --config_path configs/my.pbtxt \
      --images_dir photos/ --output_dir pca/

Raw descriptors are extracted with the config (PCA off), L2-normalised, and a
full PCA is fitted with scikit-learn. Writes pca_mean.npy, pca_projection.npy
and pca_variances.npy to OUTPUT_DIR (each atomically) and prints the
pca_parameters block to paste into the config.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

from delf_ret import config as config_lib
from delf_ret.cli_flags import require_flags
from delf_ret.extract import pca as pca_lib
from delf_ret.extract.extractor import DelfExtractor
from delf_ret.extract.pca_training import extract_raw_features, stack_normalized, without_pca
from delf_ret.errors import InputError
from delf_ret.inputs import resolve_image_inputs

FLAGS = flags.FLAGS
flags.DEFINE_string("config_path", None, "DelfConfig .pbtxt file (its PCA settings are ignored).")
flags.DEFINE_multi_string("config_override", [], "Override one config field (repeatable).")
flags.DEFINE_string("images_dir", None, "Folder of images.")
flags.DEFINE_string("list_images_path", None, "Text file with one image path per line.")
flags.DEFINE_string("output_dir", None, "Folder for the PCA .npy files.")
flags.DEFINE_integer("max_images", 0, "Use at most this many images (0: all).")

def main(argv):
  del argv
  require_flags(FLAGS, "config_path", "output_dir")
  try:
    config = without_pca(config_lib.load_config(FLAGS.config_path, FLAGS.config_override))
    image_paths = resolve_image_inputs(FLAGS.images_dir, FLAGS.list_images_path)
    extractor = DelfExtractor(config)
  except (config_lib.ConfigError, InputError, FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  if FLAGS.max_images > 0:
    image_paths = image_paths[:FLAGS.max_images]
  raw, failures = extract_raw_features(extractor, image_paths,
                                       log=lambda line: print(line, flush=True))
  try:
    descriptors = stack_normalized(raw)
    model = pca_lib.learn_pca(descriptors)
  except ValueError as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  paths = pca_lib.pca_paths(pathlib.Path(FLAGS.output_dir))
  pca_lib.save_pca(model, *paths)
  print(f"learned PCA from {descriptors.shape[0]} descriptors of {len(raw)} images "
        f"({model.projection.shape[0]} components)")
  print("pca_parameters {")
  print(f'  mean_path: "{paths[0]}"\n  projection_matrix_path: "{paths[1]}"')
  print(f'  pca_variances_path: "{paths[2]}"\n  pca_dim: 40\n  use_whitening: false\n}}')
  if failures:
    print(f"{len(failures)} images failed and were left out", file=sys.stderr)
    return 1
  return 0


def run():
  app.run(main)


if __name__ == "__main__":
  run()
