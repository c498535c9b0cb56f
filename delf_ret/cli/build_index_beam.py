r"""Builds the index of a feature folder in shards, in parallel, as an Apache Beam pipeline.

Usage:
  # The in-process runner with 2 worker processes, then the shards merged into index/:
  build_index_beam --config_path my.pbtxt --features_dir features/ --index_dir index/ \
      --beam_pipeline_options="--direct_num_workers=2 --direct_running_mode=multi_processing"
  # Record image paths and labels (the feature files must exist; nothing is extracted):
  build_index_beam --config_path my.pbtxt --features_dir features/ --index_dir index/ \
      --images_dir photos/ --labels_csv labels.csv
  # Only the shards (e.g. built on a cluster); merge them later with merge_index:
  build_index_beam --config_path my.pbtxt --features_dir features/ --shards_dir shards/ \
      --shards_only
  merge_index --shards_dir shards/ --index_dir index/ --features_dir features/
  # The ASMK or global first stage (retrieval_config.first_stage) instead of the votes index:
  build_index_beam --config_path my.pbtxt --features_dir features/ --index_dir index/ \
      --config_override=retrieval_config.first_stage=asmk

What it does: trains the index's quantiser once on a sample of the feature files
(here, as build_index does), plans shards of --images_per_shard consecutive
feature files (sorted by name; each image's slot is its place in that order, so
the index does not depend on the number of shards), builds them as a Beam
pipeline (one shard per element), then merges them into a new --index_dir
(faiss merge_from for IVF-PQ; the result searches like build_index's index of the
same files). --shards_dir (default: <index_dir>.shards) holds the quantiser and
shards; it is removed after the merge unless --keep_shards. A killed run resumes:
finished shards are kept. The index type and its parameters come from the
config's retrieval_config. With first_stage "asmk" the ASMK codebook is trained once
(on build_index's sample) and the shards aggregated over it; with "global" the
shards hold the .delg_global descriptors and the whitening is learned once, at the
merge, on all of them (delf_ret.retrieval.stage_shards); either ranks like build_index's
index of the same files. Image paths and labels are recorded by every first stage, as
build_index records them (a votes index in its meta.json, the others in
<index_dir>/records.json). The packed feature store (<index_dir>/features/, reranking's
reader) is written as build_index writes it. Needs the beam extra:
pip install 'delf-ret[beam]'.
Exit status 1 if some feature files failed (they are listed), 2 on unusable input.
"""

from __future__ import annotations

import shlex

from absl import flags

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
from delf_ret.features import image_id_of
from delf_ret.index import IndexParams
from delf_ret.index.beam_pipeline import build_index_beam
from delf_ret.index.beam_pipeline import require_beam_for_index
from delf_ret.index.builder import descriptor_dim
from delf_ret.index.builder import list_feature_files
from delf_ret.index.labels import read_image_labels
from delf_ret.retrieval.first_stage import configured_stage
from delf_ret.retrieval.indexing import sync_database_store
from delf_ret.retrieval.stage_shards import build_stage_sharded

FLAGS = flags.FLAGS
define_config_flags("DelfConfig .pbtxt (retrieval_config: the index type and parameters).")
define_image_flags(
  "database images whose absolute paths the index records (optional; their feature files "
  "must be in --features_dir, nothing is extracted)"
)
flags.DEFINE_string("features_dir", None, "Folder of the .delf feature files to index.")
flags.DEFINE_string("index_dir", None, "Folder of the new index (not with --shards_only).")
flags.DEFINE_string(
  "shards_dir", None, "Folder of the quantiser and the shards. Default: <index_dir>.shards."
)
flags.DEFINE_integer("images_per_shard", 1000, "Feature files per shard (one pipeline element).")
flags.DEFINE_string(
  "labels_csv", None, "CSV file of image,label rows recorded in the index (as build_index's)."
)
flags.DEFINE_string(
  "beam_pipeline_options",
  "",
  "Apache Beam pipeline options, as one string of command-line words (the tensorflow-datasets "
  'convention), e.g. "--direct_num_workers=2 --direct_running_mode=multi_processing" or '
  '"--runner=FlinkRunner --flink_master=host:8081". No runner or DirectRunner: the '
  "in-process runner.",
)
flags.DEFINE_boolean(
  "shards_only", False, "Build the shards and stop; merge them later with merge_index."
)
flags.DEFINE_boolean("keep_shards", False, "Keep --shards_dir after merging.")
flags.DEFINE_boolean(
  "on_disk",
  False,
  "Merge into on-disk inverted lists (IVF-PQ without pq_fast_scan; a read-only index), "
  "for an index larger than memory; see merge_index.",
)
define_progress_flag()


def _image_paths(feature_ids: set[str]) -> dict:
  """Image id -> image file of the images given (--images_dir / --list_images_path)."""
  if not (FLAGS.images_dir or FLAGS.list_images_path):
    return {}
  paths = {image_id_of(path): path for path in image_paths_from_flags()}
  unindexed = sorted(set(paths) - feature_ids)
  if unindexed:
    log(
      f"warning: {len(unindexed)} images have no feature file in {FLAGS.features_dir} "
      f"(e.g. {unindexed[0]}); extract them first (extract_features_beam)"
    )
  return paths


def _labels(feature_ids: set[str]) -> dict[str, str] | None:
  """Image id -> label of --labels_csv (None without it); every image it names must have a
  feature file."""
  if not FLAGS.labels_csv:
    return None
  labels = read_image_labels(FLAGS.labels_csv)
  labels.check_known(feature_ids)
  return labels.labels


def _shards_dir() -> str:
  return FLAGS.shards_dir or f"{FLAGS.index_dir.rstrip('/')}.shards"


def main(argv: list[str]) -> int:
  del argv
  config = load_config_from_flags()
  stage = configured_stage(config.retrieval_config)
  require_beam_for_index()
  require_flags(FLAGS, "features_dir")
  if FLAGS.shards_only == bool(FLAGS.index_dir):
    raise InputError("give --index_dir, or --shards_only with --shards_dir (not both)")
  if FLAGS.shards_only:
    require_flags(FLAGS, "shards_dir")
  if FLAGS.on_disk and stage != "votes":
    raise InputError(f"--on_disk merges IVF-PQ votes indexes, not first_stage {stage!r}")
  paths = list_feature_files(FLAGS.features_dir)
  feature_ids = {image_id_of(path) for path in paths}
  labels = _labels(feature_ids)
  if stage != "votes":
    image_ids, failures = build_stage_sharded(
      paths,
      FLAGS.index_dir,
      _shards_dir(),
      config.retrieval_config,
      FLAGS.images_per_shard,
      beam_argv=shlex.split(FLAGS.beam_pipeline_options),
      keep_shards=FLAGS.keep_shards,
      log=log,
      image_paths=_image_paths(feature_ids),
      labels=labels,
    )
    if image_ids is not None:
      sync_database_store(FLAGS.index_dir, FLAGS.features_dir, image_ids, log)
    return report_failures(failures, "feature files")
  local = config.delf_local_config
  index, failures = build_index_beam(
    paths,
    FLAGS.index_dir,
    _shards_dir(),
    IndexParams.from_config(config.retrieval_config),
    dim=local.pca_parameters.pca_dim if local.use_pca else descriptor_dim(paths),
    images_per_shard=FLAGS.images_per_shard,
    beam_argv=shlex.split(FLAGS.beam_pipeline_options),
    image_paths=_image_paths(feature_ids),
    labels=labels,
    keep_shards=FLAGS.keep_shards,
    on_disk=FLAGS.on_disk,
    log=log,
  )
  if index is not None:
    sync_database_store(FLAGS.index_dir, FLAGS.features_dir, index.image_ids(), log)
  return report_failures(failures, "feature files")


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
