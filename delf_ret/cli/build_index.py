r"""Builds (or extends) the faiss index of the database images' local descriptors.

Usage:
  # From images: extracts the missing feature files, then indexes them.
  build_index --config_path my.pbtxt --images_dir photos/ \
      --features_dir features/ --index_dir index/
  # From feature files already extracted (every .delf file of the folder):
  build_index --config_path my.pbtxt --features_dir features/ --index_dir index/
  # Exactly the database list of a benchmark (Revisited gnd pkl or original gt folder):
  # its query images are not indexed unless the dataset lists them in its database.
  build_index --config_path my.pbtxt --dataset_gnd_path gnd_roxford5k.pkl \
      --images_dir roxford5k/jpg --features_dir features/ --index_dir index/
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

from absl import flags

from delf_ret.cli.common import (
  define_backend_flag,
  define_config_flags,
  define_progress_flag,
  load_config_from_flags,
  log,
  report_failures,
  require_flags,
  run_tool,
)
from delf_ret.cli.inputs import define_image_flags, image_paths_from_flags
from delf_ret.config import DelfConfig
from delf_ret.errors import InputError
from delf_ret.features import feature_file_names
from delf_ret.index import IndexParams
from delf_ret.index.builder import build_index, list_feature_files, remove_images

FLAGS = flags.FLAGS
define_config_flags("DelfConfig .pbtxt (extraction and retrieval_config).")
define_image_flags("database images to extract and index")
flags.DEFINE_string(
  "features_dir", None, "Folder of .delf feature files (written here when images are given)."
)
flags.DEFINE_string("index_dir", None, "Folder of the index (created or extended).")
flags.DEFINE_string(
  "dataset_gnd_path",
  None,
  "Revisited ground truth gnd_<dataset>.pkl: index exactly its database list "
  "(imlist) from --images_dir or, without it, from --features_dir.",
)
flags.DEFINE_string(
  "dataset_gt_dir",
  None,
  "Original Oxford5k/Paris6k ground-truth folder: index exactly its database "
  "images (needs --images_dir).",
)
flags.DEFINE_boolean(
  "overwrite",
  False,
  "Delete and recompute feature files of --features_dir "
  "that were made with other settings (otherwise such a folder is refused).",
)
flags.DEFINE_list("remove_images", [], "Image ids to remove from the index (nothing is added).")
flags.DEFINE_integer("save_every", 500, "Save the index after every this many added images.")
define_backend_flag()
define_progress_flag()


def _feature_paths(
  config: DelfConfig, dataset
) -> tuple[list[pathlib.Path], list[tuple[pathlib.Path, str]]]:
  """The feature files to index, extracting images first when images are given.

  dataset: a RetrievalDataset whose database list is indexed, or None.
  """
  features_dir = pathlib.Path(FLAGS.features_dir)
  if dataset is not None:
    from delf_ret.retrieval.dataset_runner import database_feature_paths, database_image_paths

    log(
      f"{dataset.name}: indexing its {len(dataset.imlist)} database images (its "
      f"{len(dataset.qimlist)} query images only where the database lists them)"
    )
    if not FLAGS.images_dir:
      return database_feature_paths(dataset, features_dir)
    image_paths = database_image_paths(dataset)
  elif not (FLAGS.images_dir or FLAGS.list_images_path):
    return list_feature_files(features_dir), []
  else:
    image_paths = image_paths_from_flags()
  from delf_ret.extract.batch import extract_all
  from delf_ret.extract.extractor import DelfExtractor

  names = feature_file_names(image_paths)
  log(f"extracting features of {len(image_paths)} images into {features_dir}")
  failures = extract_all(
    DelfExtractor(config, backend=FLAGS.backend),
    image_paths,
    features_dir,
    log,
    overwrite=FLAGS.overwrite,
  )
  failed = {path for path, _ in failures}
  paths = [features_dir / name for path, name in zip(image_paths, names) if path not in failed]
  if not paths:
    raise InputError("no image could be extracted")
  return paths, failures


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "index_dir")
  config = load_config_from_flags()
  if FLAGS.remove_images:
    remove_images(FLAGS.index_dir, FLAGS.remove_images, log=log)
    return 0
  require_flags(FLAGS, "features_dir")
  dataset = None
  if FLAGS.dataset_gnd_path or FLAGS.dataset_gt_dir:
    from delf_ret.evaluation.ground_truth import load_dataset

    if FLAGS.list_images_path:
      raise InputError("give the images of a dataset with --images_dir, not --list_images_path")
    dataset = load_dataset(FLAGS.dataset_gnd_path, FLAGS.dataset_gt_dir, FLAGS.images_dir)
  paths, failures = _feature_paths(config, dataset)
  local = config.delf_local_config
  dim = local.pca_parameters.pca_dim if local.use_pca else None  # The config fixes it with PCA.
  index, index_failures = build_index(
    paths,
    FLAGS.index_dir,
    IndexParams.from_config(config.retrieval_config),
    save_every=FLAGS.save_every,
    log=log,
    dim=dim,
  )
  if dataset is not None:
    database = set(dataset.imlist)
    outside = sorted(name for name in index.slot_names.values() if name not in database)
    if outside:
      log(
        f"warning: the index also holds {len(outside)} images outside {dataset.name}'s "
        f"database list (e.g. {outside[0]}); remove them with --remove_images"
      )
  return report_failures(failures + index_failures, "inputs")


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
