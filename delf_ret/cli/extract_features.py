r"""Extracts DELF features of images into one feature file per image.

Usage:
  extract_features --config_path configs/my.pbtxt \
      --images_dir photos/ --output_dir features/

Each image's features go to OUTPUT_DIR/<image stem>.delf (DelfFeatures
protobuf), written atomically. Images whose feature file exists are skipped,
so an interrupted run resumes when the same command is run again. Unreadable
images are reported one line each; the exit status is 1 if any failed.
"""

from __future__ import annotations

import pathlib

from absl import flags

from delf_ret.cli.common import define_backend_flag
from delf_ret.cli.common import define_config_flags
from delf_ret.cli.common import define_progress_flag
from delf_ret.cli.common import load_config_from_flags
from delf_ret.cli.common import log
from delf_ret.cli.common import report_failures
from delf_ret.cli.common import require_flags
from delf_ret.cli.common import run_tool
from delf_ret.cli.inputs import define_image_flags
from delf_ret.cli.inputs import image_paths_from_flags
from delf_ret.features import feature_file_names

FLAGS = flags.FLAGS
define_config_flags()
define_image_flags()
flags.DEFINE_string("output_dir", None, "Folder for the .delf feature files.")
flags.DEFINE_boolean(
  "overwrite",
  False,
  "Delete and recompute feature files of --output_dir "
  "that were made with other settings (otherwise such a folder is refused).",
)
define_backend_flag()
define_progress_flag()


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "output_dir")
  config = load_config_from_flags()
  image_paths = image_paths_from_flags()
  feature_file_names(image_paths)  # Two images with one id are refused before any work.
  # Lazy: TensorFlow, imported once the flags are checked (--help answers at once).
  from delf_ret.extract.batch import extract_all
  from delf_ret.extract.extractor import DelfExtractor

  extractor = DelfExtractor(config, backend=FLAGS.backend)
  failures = extract_all(
    extractor, image_paths, pathlib.Path(FLAGS.output_dir), log=log, overwrite=FLAGS.overwrite
  )
  if report_failures(failures, f"of {len(image_paths)} images"):
    return 1
  print(f"done: {len(image_paths)} images, features in {FLAGS.output_dir}")
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
