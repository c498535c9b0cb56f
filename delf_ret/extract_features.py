r"""Extracts DELF features of images into one feature file per image.

Usage:
  python -m delf_ret.extract_features --config_path configs/my.pbtxt \
      --images_dir photos/ --output_dir features/

Each image's features go to OUTPUT_DIR/<image stem>.delf (DelfFeatures
protobuf), written atomically. Images whose feature file exists are skipped,
so an interrupted run resumes when the same command is run again. Unreadable
images are reported one line each; the exit status is 1 if any failed.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

from delf_ret import config as config_lib
from delf_ret.cli_flags import report_failures, require_flags
from delf_ret.extract.batch import extract_all
from delf_ret.extract.extractor import DelfExtractor
from delf_ret.errors import InputError
from delf_ret.features import feature_file_names
from delf_ret.inputs import resolve_image_inputs

FLAGS = flags.FLAGS
flags.DEFINE_string("config_path", None, "DelfConfig .pbtxt file.")
flags.DEFINE_multi_string("config_override", [],
                          "Override one config field, e.g. "
                          "delf_local_config.max_feature_num=500 (repeatable).")
flags.DEFINE_string("images_dir", None, "Folder of images (not recursive).")
flags.DEFINE_string("list_images_path", None,
                    "Text file with one image path per line (relative to the file).")
flags.DEFINE_string("output_dir", None, "Folder for the .delf feature files.")
flags.DEFINE_enum("backend", "compiled", ["compiled", "eager"],
                  "Network back-end: compiled graph (fast) or eager (baseline).")


def main(argv):
  del argv
  require_flags(FLAGS, "config_path", "output_dir")
  try:
    config = config_lib.load_config(FLAGS.config_path, FLAGS.config_override)
    image_paths = resolve_image_inputs(FLAGS.images_dir, FLAGS.list_images_path)
    feature_file_names(image_paths)
    extractor = DelfExtractor(config, backend=FLAGS.backend)
  except (config_lib.ConfigError, InputError, FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  failures = extract_all(extractor, image_paths, pathlib.Path(FLAGS.output_dir),
                         log=lambda line: print(line, flush=True))
  if report_failures(failures, f"of {len(image_paths)} images"):
    return 1
  print(f"done: {len(image_paths)} images, features in {FLAGS.output_dir}")
  return 0


def run():
  app.run(main)


if __name__ == "__main__":
  run()
