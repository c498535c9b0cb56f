r"""Learns the descriptor PCA (mean, projection, variances) from a set of images.

Usage:
  learn_pca --config_path configs/my.pbtxt --images_dir photos/ --output_dir pca/

Raw descriptors are extracted with the config (PCA off), L2-normalised, and a
full PCA is fitted with numpy, one SVD (delf_ret.extract.pca_training). Writes
pca_mean.npy, pca_projection.npy and pca_variances.npy to OUTPUT_DIR (each
atomically) and prints the pca_parameters block to paste into the config.
Exit status 1 if some images could not be used (they are left out).
"""

from __future__ import annotations

import sys

from absl import flags

from delf_ret.cli.common import define_backend_flag
from delf_ret.cli.common import define_config_flags
from delf_ret.cli.common import define_progress_flag
from delf_ret.cli.common import load_config_from_flags
from delf_ret.cli.common import log
from delf_ret.cli.common import require_flags
from delf_ret.cli.common import run_tool
from delf_ret.cli.inputs import define_image_flags
from delf_ret.cli.inputs import image_paths_from_flags

FLAGS = flags.FLAGS
define_config_flags("DelfConfig .pbtxt file (its PCA settings are ignored).")
define_image_flags()
flags.DEFINE_string("output_dir", None, "Folder for the PCA .npy files.")
flags.DEFINE_integer("max_images", 0, "Use at most this many images (0: all).")
define_backend_flag()
define_progress_flag()


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "output_dir")
  # Lazy: TensorFlow, imported once the flags are checked (--help answers at once).
  from delf_ret.extract.pca_training import learn_pca_from_images
  from delf_ret.extract.pca_training import without_pca

  config = without_pca(load_config_from_flags())
  image_paths = image_paths_from_flags()
  if FLAGS.max_images > 0:
    image_paths = image_paths[: FLAGS.max_images]
  learned = learn_pca_from_images(
    config, image_paths, FLAGS.output_dir, backend=FLAGS.backend, log=log
  )
  mean, projection, variances = learned.paths
  pca = config.delf_local_config.pca_parameters
  print(
    f"learned PCA from {learned.num_descriptors} descriptors of {len(learned.raw)} images "
    f"({learned.model.projection.shape[0]} components)"
  )
  print("pca_parameters {")
  print(f'  mean_path: "{mean}"\n  projection_matrix_path: "{projection}"')
  print(
    f'  pca_variances_path: "{variances}"\n  pca_dim: {pca.pca_dim}\n'
    f"  use_whitening: {str(pca.use_whitening).lower()}\n}}"
  )
  if learned.failures:
    print(f"{len(learned.failures)} images failed and were left out", file=sys.stderr)
    return 1
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
