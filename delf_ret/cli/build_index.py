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
  # With labels (for recognition): rows image,label (an empty label: unlabelled);
  # rerun with another labels file to relabel indexed images.
  build_index --config_path my.pbtxt --images_dir photos/ --labels_csv labels.csv \
      --features_dir features/ --index_dir index/
  # Remove images by id (feature file stem); nothing is added in this run:
  build_index --config_path my.pbtxt --index_dir index/ --remove_images a,b

The index type and its parameters come from the config's retrieval_config, and so does
the first stage it is built for (retrieval_config.first_stage): "votes" (the faiss index
of local descriptors, in --index_dir), "asmk" (ASMK / ASMK*, codebook trained at the
first build, in INDEX_DIR/asmk) or "global" (global descriptors, from the .delg_global
files that extraction with use_global_features: true writes, PCA-whitened, in
INDEX_DIR/global). Adding and removing images keeps the configured stage in step; a
folder built for another first stage is refused. The .delf files are always needed:
reranking reads them. Paths and labels (--labels_csv) are recorded whatever the stage
(asmk and global: in INDEX_DIR/records.json).
The index is saved every --save_every images; running the same command again
after an interruption skips the images already indexed, and running it with
new images adds them without retraining. The model loads only when an image has no
feature file of the config's settings (a repeated build loads none). The index
records each image's absolute path when images are given (--images_dir /
--list_images_path; from feature files alone no path is recorded), and the labels
of --labels_csv.
Exit status 1 if some images or
feature files failed (they are listed), 2 on unusable input.
"""

from __future__ import annotations

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
from delf_ret.errors import InputError
from delf_ret.evaluation.ground_truth import load_dataset
from delf_ret.features import image_id_of
from delf_ret.index.builder import remove_images
from delf_ret.index.labels import read_image_labels
from delf_ret.retrieval.first_stage import check_stage
from delf_ret.retrieval.first_stage import query_extractor
from delf_ret.retrieval.first_stage import remove_from_first_stage
from delf_ret.retrieval.indexing import check_labels_known
from delf_ret.retrieval.indexing import database_feature_paths
from delf_ret.retrieval.indexing import database_image_paths
from delf_ret.retrieval.indexing import index_first_stage
from delf_ret.retrieval.indexing import missing_feature_files
from delf_ret.retrieval.indexing import remove_from_database_store

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
flags.DEFINE_string(
  "labels_csv",
  None,
  "CSV file of image,label rows (header optional; an image is named by its file name or "
  "id, an empty label marks an unlabelled image): each listed image's label is recorded "
  "in the index, also for images already indexed. Every listed image must be indexed "
  "or among the images to index.",
)
flags.DEFINE_list("remove_images", [], "Image ids to remove from the index (nothing is added).")
flags.DEFINE_integer("save_every", 500, "Save the index after every this many added images.")
define_backend_flag()
define_progress_flag()


def _inputs(dataset) -> dict:
  """What index_database indexes: images (with --images_dir / --list_images_path, or a
  dataset's database images) or feature files (a dataset's, or every file of --features_dir).

  dataset: a RetrievalDataset whose database list is indexed, or None.
  """
  if dataset is not None:
    log(
      f"{dataset.name}: indexing its {len(dataset.imlist)} database images (its "
      f"{len(dataset.qimlist)} query images only where the database lists them)"
    )
    if not FLAGS.images_dir:
      feature_paths, missing = database_feature_paths(dataset, FLAGS.features_dir)
      return {"feature_paths": feature_paths, "missing": missing}
    return {"images": database_image_paths(dataset)}
  if FLAGS.images_dir or FLAGS.list_images_path:
    return {"images": image_paths_from_flags()}
  return {}


def _warn_outside(stage, dataset) -> None:
  """Logs a warning when the index holds images outside the dataset's database list."""
  database = set(dataset.imlist)
  outside = sorted(name for name in stage.image_ids() if name not in database)
  if outside:
    log(
      f"warning: the index also holds {len(outside)} images outside {dataset.name}'s "
      f"database list (e.g. {outside[0]}); remove them with --remove_images"
    )


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "index_dir")
  config = load_config_from_flags()
  if FLAGS.remove_images:
    if FLAGS.labels_csv:
      raise InputError("--labels_csv labels images to index; run it without --remove_images")
    if check_stage(FLAGS.index_dir, config.retrieval_config) == "votes":
      remove_images(FLAGS.index_dir, FLAGS.remove_images, log=log)
    else:
      remove_from_first_stage(
        FLAGS.index_dir, FLAGS.remove_images, config.retrieval_config, log=log
      )
    remove_from_database_store(FLAGS.index_dir, FLAGS.remove_images, log=log)
    return 0
  require_flags(FLAGS, "features_dir")
  check_stage(FLAGS.index_dir, config.retrieval_config)  # Another stage's folder: refused first.
  labels = read_image_labels(FLAGS.labels_csv) if FLAGS.labels_csv else None
  dataset = None
  if FLAGS.dataset_gnd_path or FLAGS.dataset_gt_dir:
    if FLAGS.list_images_path or FLAGS.recursive:
      raise InputError(
        "give the images of a dataset with --images_dir (its database list names them), "
        "without --list_images_path or --recursive"
      )
    dataset = load_dataset(FLAGS.dataset_gnd_path, FLAGS.dataset_gt_dir, FLAGS.images_dir)
  inputs = _inputs(dataset)
  missing = inputs.pop("missing", [])
  if "images" in inputs:
    images = inputs["images"]
    # A bad labels row is refused before the model loads (index_first_stage checks it again).
    ids = [image_id_of(path) for path in images]
    check_labels_known(FLAGS.index_dir, config.retrieval_config, labels, ids)
    count = missing_feature_files(images, FLAGS.features_dir, config.use_global_features)
    done = f" (the other {len(images) - count} have theirs)" if count < len(images) else ""
    log(f"extracting features of {count} images into {FLAGS.features_dir}{done}")
    # The model (TensorFlow) loads only when an image needs extracting (indexing.ModelOnDemand).
    inputs["extract"] = query_extractor(config, backend=FLAGS.backend)
  local = config.delf_local_config
  indexed = index_first_stage(
    FLAGS.index_dir,
    FLAGS.features_dir,
    config,
    dim=local.pca_parameters.pca_dim if local.use_pca else None,  # Fixed by the config's PCA.
    overwrite=FLAGS.overwrite,
    save_every=FLAGS.save_every,
    log=log,
    labels=labels,
    **inputs,
  )
  if dataset is not None:
    _warn_outside(indexed.stage, dataset)
  return report_failures([*missing, *indexed.failures], "inputs")


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
