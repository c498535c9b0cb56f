r"""Builds (or extends) the faiss index of the database images' local descriptors.

Usage:
  # From images: extracts the missing feature files, then indexes them.
  build_index --config_path my.pbtxt --images_dir photos/ \
      --features_dir features/ --index_dir index/
  # From feature files already extracted (every .delf file of the folder):
  build_index --config_path my.pbtxt --features_dir features/ --index_dir index/
  # Remove images by id (feature file stem); nothing is added in this run:
  build_index --config_path my.pbtxt --index_dir index/ --remove_images a,b

The index type and its parameters come from the config's retrieval_config.
The index is saved every --save_every images; running the same command again
after an interruption skips the images already indexed, and running it with
new images adds them without retraining. Exit status 1 if some images or
feature files failed (they are listed), 2 on unusable input.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

from delf_ret import config as config_lib
from delf_ret.cli_flags import report_failures, require_flags
from delf_ret.errors import InputError
from delf_ret.features import FeatureFileError, feature_file_names
from delf_ret.index import IndexParams, LocalFeatureIndex, LocalIndexError
from delf_ret.index.builder import build_index, list_feature_files
from delf_ret.inputs import resolve_image_inputs

FLAGS = flags.FLAGS
flags.DEFINE_string("config_path", None, "DelfConfig .pbtxt (extraction and retrieval_config).")
flags.DEFINE_multi_string("config_override", [], "Override one config field (repeatable).")
flags.DEFINE_string("images_dir", None, "Folder of database images to extract and index.")
flags.DEFINE_string("list_images_path", None, "Text file with one database image path per line.")
flags.DEFINE_string("features_dir", None,
                    "Folder of .delf feature files (written here when images are given).")
flags.DEFINE_string("index_dir", None, "Folder of the index (created or extended).")
flags.DEFINE_list("remove_images", [], "Image ids to remove from the index (nothing is added).")
flags.DEFINE_integer("save_every", 500, "Save the index after every this many added images.")
flags.DEFINE_enum("backend", "compiled", ["compiled", "eager"], "Extraction network back-end.")


def _remove(index_dir: pathlib.Path, image_ids: list[str]) -> int:
  index = LocalFeatureIndex.load(index_dir)
  unknown = [image_id for image_id in image_ids if image_id not in index]
  if unknown:
    print(f"error: not in the index: {', '.join(unknown)}", file=sys.stderr)
    return 2
  for image_id in image_ids:
    index.delete(image_id)
  index.compact()
  index.save(index_dir)
  print(f"removed {len(image_ids)} images; {len(index)} images left in {index_dir}")
  return 0


def _feature_paths(config, log) -> tuple[list[pathlib.Path], list[tuple[pathlib.Path, str]]]:
  """The feature files to index, extracting images first when images are given."""
  features_dir = pathlib.Path(FLAGS.features_dir)
  if not (FLAGS.images_dir or FLAGS.list_images_path):
    return list_feature_files(features_dir), []
  from delf_ret.extract.batch import extract_all
  from delf_ret.extract.extractor import DelfExtractor

  image_paths = resolve_image_inputs(FLAGS.images_dir, FLAGS.list_images_path)
  names = feature_file_names(image_paths)
  log(f"extracting features of {len(image_paths)} images into {features_dir}")
  failures = extract_all(DelfExtractor(config, backend=FLAGS.backend), image_paths, features_dir,
                         log)
  failed = {path for path, _ in failures}
  paths = [features_dir / name for path, name in zip(image_paths, names) if path not in failed]
  if not paths:
    raise InputError("no image could be extracted")
  return paths, failures


def main(argv):
  del argv
  require_flags(FLAGS, "config_path", "index_dir")
  log = lambda line: print(line, flush=True)  # noqa: E731
  index_dir = pathlib.Path(FLAGS.index_dir)
  try:
    config = config_lib.load_config(FLAGS.config_path, FLAGS.config_override)
    if FLAGS.remove_images:
      return _remove(index_dir, FLAGS.remove_images)
    require_flags(FLAGS, "features_dir")
    paths, failures = _feature_paths(config, log)
    retrieval = config.retrieval_config
    _, index_failures = build_index(paths, index_dir, IndexParams.from_config(retrieval),
                                    train_sample_size=retrieval.train_sample_size,
                                    save_every=FLAGS.save_every, log=log)
  except (config_lib.ConfigError, InputError, LocalIndexError, FeatureFileError,
          FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  return report_failures(failures + index_failures, "inputs")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
