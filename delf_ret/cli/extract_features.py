r"""Extracts DELF features of images into one feature file per image.

Usage:
  extract_features --config_path configs/my.pbtxt \
      --images_dir photos/ --output_dir features/
The official DELG command line works too: the query images of a Revisited dataset,
each cropped to its box (as the official tool and perform_retrieval crop them), or
its index (database) images:
  extract_features --delf_config_path my.pbtxt --dataset_file_path gnd_roxford5k.mat \
      --images_dir roxford5k/jpg --image_set query --output_features_dir features/query

Each image's features go to OUTPUT_DIR/<image stem>.delf (DelfFeatures
protobuf), written atomically. With use_global_features: true in the config, its
global descriptor goes beside it to OUTPUT_DIR/<image stem>.delg_global (the
official DELG file: a DatumProto of the descriptor; docs/global.md): the output
of an official DELG SavedModel, or GeM pooling of a delf-ret model's conv4 map at
the delf_global_config.image_scales_ind scales. Images whose files exist are skipped,
so an interrupted run resumes when the same command is run again. Unreadable
images are reported one line each; the exit status is 1 if any failed.
"""

from __future__ import annotations

import os
import pathlib
import typing
from typing import TYPE_CHECKING

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
from delf_ret.errors import DelfRetError
from delf_ret.errors import InputError
from delf_ret.evaluation.ground_truth import RetrievalDataset
from delf_ret.evaluation.ground_truth import load_dataset
from delf_ret.extract.global_features import GlobalExtraction
from delf_ret.extract.settings import nothing_left
from delf_ret.features import LocalFeatures
from delf_ret.features import feature_file_names
from delf_ret.images import crop_to_box
from delf_ret.images import load_image

if TYPE_CHECKING:
  import numpy as np

  from delf_ret.extract.extractor import DelfExtractor

FLAGS = flags.FLAGS
define_config_flags()
flags.DEFINE_alias("delf_config_path", "config_path")
define_image_flags()
flags.DEFINE_string("output_dir", None, "Folder for the .delf feature files.")
flags.DEFINE_alias("output_features_dir", "output_dir")
flags.DEFINE_string(
  "dataset_file_path",
  None,
  "Revisited ground truth (gnd_<dataset>.pkl or .mat): extract its --image_set, the "
  "images <name>.jpg of --images_dir (the official DELG flag).",
)
flags.DEFINE_enum(
  "image_set",
  "query",
  ["query", "index"],
  "With --dataset_file_path: its query images, each cropped to its box, or its index "
  "(database) images (the official DELG flag).",
)
flags.DEFINE_boolean(
  "overwrite",
  False,
  "Delete and recompute feature files of --output_dir "
  "that were made with other settings (otherwise such a folder is refused).",
)
define_backend_flag()
define_progress_flag()


class QueryCrops:
  """What extract_all needs of an extractor, for the query images of a dataset: each query
  image cropped to its box (x1, y1, x2, y2 pixels, delf_ret.images.crop_to_box), then
  extracted, as perform_retrieval extracts its queries."""

  def __init__(
    self,
    extractor: DelfExtractor,
    dataset: RetrievalDataset,
    global_extraction: GlobalExtraction | None = None,
  ):
    self.config = extractor.config
    self.model_file = extractor.model_file
    self._extractor = extractor
    self._global = global_extraction
    self._boxes = {
      dataset.image_path(name): dataset.gnd[number].get("bbx")
      for number, name in enumerate(dataset.qimlist)
    }

  def _cropped(self, path: str | os.PathLike):
    image = load_image(path, max_pixels=self.config.max_image_pixels)
    box = self._boxes.get(pathlib.Path(path))
    if box is not None and len(box) == 4:
      image = crop_to_box(image, box)
    return image

  def extract_file(self, path: str | os.PathLike) -> LocalFeatures:
    image = self._cropped(path)
    try:
      return self._extractor.extract(image)
    except DelfRetError as error:  # E.g. ImageTooSmallError, which cannot name the file.
      raise type(error)(f"{path}: {error}") from None

  def extract_file_with_global(self, path: str | os.PathLike) -> tuple[LocalFeatures, np.ndarray]:
    """Local features and global descriptor of the cropped query (with_global runs)."""
    assert self._global is not None
    image = self._cropped(path)
    try:
      return self._global.extract_with_global(image)
    except DelfRetError as error:
      raise type(error)(f"{path}: {error}") from None


def _dataset_images() -> tuple[RetrievalDataset, list[pathlib.Path]]:
  """The dataset of --dataset_file_path and the image files of its --image_set."""
  if FLAGS.list_images_path or not FLAGS.images_dir:
    raise InputError("give the images of --dataset_file_path with --images_dir")
  if FLAGS.recursive:
    raise InputError("--recursive does not apply to a dataset's images (--dataset_file_path)")
  dataset = load_dataset(FLAGS.dataset_file_path, None, FLAGS.images_dir)
  names = dataset.qimlist if FLAGS.image_set == "query" else dataset.imlist
  log(f"{dataset.name}: {len(names)} {FLAGS.image_set} images")
  return dataset, [dataset.image_path(name) for name in names]


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "output_dir")
  config = load_config_from_flags()
  dataset = None
  if FLAGS.dataset_file_path:
    dataset, image_paths = _dataset_images()
  else:
    image_paths = image_paths_from_flags()
  feature_file_names(image_paths)  # Two images with one id are refused before any work.
  with_global = config.use_global_features
  if not FLAGS.overwrite and nothing_left(FLAGS.output_dir, config, image_paths):
    print(
      f"done: nothing left to do, all {len(image_paths)} feature files are in "
      f"{FLAGS.output_dir} with the same settings"
    )
    return 0
  # Lazy: TensorFlow, imported once the flags are checked (--help answers at once).
  from delf_ret.extract.batch import extract_all
  from delf_ret.extract.extractor import DelfExtractor

  extractor = DelfExtractor(config, backend=FLAGS.backend)
  global_extraction = GlobalExtraction(extractor) if with_global else None
  if dataset is not None and FLAGS.image_set == "query":
    extractor = typing.cast("DelfExtractor", QueryCrops(extractor, dataset, global_extraction))
  elif global_extraction is not None:
    extractor = typing.cast("DelfExtractor", global_extraction)
  failures = extract_all(
    extractor,
    image_paths,
    pathlib.Path(FLAGS.output_dir),
    log=log,
    overwrite=FLAGS.overwrite,
    with_global=with_global,
  )
  if report_failures(failures, f"of {len(image_paths)} images"):
    return 1
  print(f"done: {len(image_paths)} images, features in {FLAGS.output_dir}")
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
