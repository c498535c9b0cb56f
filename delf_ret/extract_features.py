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
import time

from absl import app, flags

from delf_ret import config as config_lib
from delf_ret.cli_flags import require_flags
from delf_ret.extract.extractor import DelfExtractor, ImageTooSmallError
from delf_ret.feature_io import FEATURE_SUFFIX, write_features
from delf_ret.images import ImageReadError
from delf_ret.inputs import InputError, output_names, resolve_image_inputs

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


def extract_all(extractor: DelfExtractor, image_paths: list[pathlib.Path],
                output_dir: pathlib.Path, log=print) -> list[tuple[pathlib.Path, str]]:
  """Extracts every image whose output is missing; returns (path, reason) of failures."""
  output_dir.mkdir(parents=True, exist_ok=True)
  names = output_names(image_paths, FEATURE_SUFFIX)
  failures = []
  total = len(image_paths)
  start = time.time()
  done = 0
  for i, (path, name) in enumerate(zip(image_paths, names), 1):
    target = output_dir / name
    if target.exists():
      log(f"[{i}/{total}] {path.name}: skipped, {target} exists")
      continue
    try:
      features = extractor.extract_file(path)
    except (ImageReadError, ImageTooSmallError) as error:
      reason = str(error)
      log(f"[{i}/{total}] ERROR {reason}")
      failures.append((path, reason))
      continue
    write_features(target, features)
    done += 1
    rate = (time.time() - start) / done
    log(f"[{i}/{total}] {path.name}: {features.num_features} features "
        f"(dim {features.descriptor_dim}) -> {target} [{rate:.2f} s/image]")
  return failures


def main(argv):
  del argv
  require_flags(FLAGS, "config_path", "output_dir")
  try:
    config = config_lib.load_config(FLAGS.config_path, FLAGS.config_override)
    image_paths = resolve_image_inputs(FLAGS.images_dir, FLAGS.list_images_path)
    output_names(image_paths, FEATURE_SUFFIX)
    extractor = DelfExtractor(config, backend=FLAGS.backend)
  except (config_lib.ConfigError, InputError, FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  failures = extract_all(extractor, image_paths, pathlib.Path(FLAGS.output_dir),
                         log=lambda line: print(line, flush=True))
  if failures:
    print(f"{len(failures)} of {len(image_paths)} images failed:", file=sys.stderr)
    for _, reason in failures:
      print(f"  {reason}", file=sys.stderr)
    return 1
  print(f"done: {len(image_paths)} images, features in {FLAGS.output_dir}")
  return 0


def run():
  app.run(main)


if __name__ == "__main__":
  run()
