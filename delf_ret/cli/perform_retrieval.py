r"""Runs a retrieval benchmark: every query against the index, RANSAC reranking, mAP report.

Usage (Revisited ROxford5k / RParis6k):
  perform_retrieval --config_path my.pbtxt --dataset_gnd_path data/roxford5k/gnd_roxford5k.pkl \
      --images_dir data/roxford5k/jpg --index_dir index/ --features_dir features/ \
      --output_dir results/
Original Oxford5k / Paris6k: --dataset_gt_dir data/oxford5k/gt instead of --dataset_gnd_path.
The official DELG command line works too, on the feature files of extract_features
--image_set query / index (the index is then built in OUTPUT_DIR/index):
  perform_retrieval --dataset_file_path gnd_roxford5k.mat --query_features_dir features/query \
      --index_features_dir features/index --use_geometric_verification --output_dir results/

The database images must be indexed first (build_index with the same config;
their feature files are read from --features_dir for reranking), or, without
--index_dir, they are indexed from --features_dir. The first stage is the config's
retrieval_config.first_stage: "votes", "asmk" or "global" (the index must have been
built for it; "global" needs use_global_features: true and the database's .delg_global
files, and extracts each query's global descriptor too). Reranking and the metrics are
the same for all three. Queries are cropped to their
box, extracted with the config, and cached (or read from --query_features_dir).
Writes to --output_dir: ranked_lists.json (first-stage and reranked lists), mAP.txt,
metrics.json and pr_<split>.png (delf_ret.retrieval.benchmark.run_benchmark).
Rerunning resumes from the cached queries.
"""

from __future__ import annotations

import json
import pathlib
from typing import Callable

import numpy as np
from absl import flags

from delf_ret.atomic import write_bytes_atomic
from delf_ret.cli.common import define_backend_flag
from delf_ret.cli.common import define_config_flags
from delf_ret.cli.common import define_progress_flag
from delf_ret.cli.common import load_config_from_flags
from delf_ret.cli.common import log
from delf_ret.cli.common import require_flags
from delf_ret.cli.common import run_tool
from delf_ret.config import DelfConfig
from delf_ret.errors import InputError
from delf_ret.evaluation.ground_truth import RetrievalDataset
from delf_ret.evaluation.ground_truth import load_dataset
from delf_ret.extract.settings import SETTINGS_FILE
from delf_ret.extract.settings import check_database_features
from delf_ret.extract.settings import extraction_settings
from delf_ret.features import LocalFeatures
from delf_ret.features import feature_file_name
from delf_ret.features import global_file_name
from delf_ret.retrieval.benchmark import run_benchmark
from delf_ret.retrieval.first_stage import FirstStageIndex
from delf_ret.retrieval.first_stage import QueryExtract
from delf_ret.retrieval.first_stage import configured_stage
from delf_ret.retrieval.first_stage import open_first_stage
from delf_ret.retrieval.first_stage import query_extractor
from delf_ret.retrieval.indexing import database_feature_loader
from delf_ret.retrieval.indexing import database_feature_paths
from delf_ret.retrieval.indexing import index_first_stage

FLAGS = flags.FLAGS
define_config_flags("DelfConfig .pbtxt (extraction and retrieval_config).")
flags.DEFINE_string("dataset_gnd_path", None, "Revisited ground truth gnd_<dataset>.pkl or .mat.")
flags.DEFINE_alias("dataset_file_path", "dataset_gnd_path")
flags.DEFINE_string("dataset_gt_dir", None, "Original Oxford5k/Paris6k ground-truth folder.")
flags.DEFINE_string("dataset_name", None, "Name in the report (default: from the files).")
flags.DEFINE_string(
  "images_dir",
  None,
  "Folder of the dataset images (<name>.jpg); not needed for queries "
  "read from --query_features_dir.",
)
flags.DEFINE_string(
  "index_dir",
  None,
  "Index of the database images (build_index). Default: built, or resumed, in "
  "OUTPUT_DIR/index from the database feature files of --features_dir.",
)
flags.DEFINE_string("features_dir", None, "Feature files of the database images.")
flags.DEFINE_alias("index_features_dir", "features_dir")
flags.DEFINE_string(
  "query_features_dir",
  None,
  "Feature files <query>.delf of the query images, cropped to their boxes "
  "(extract_features --image_set query): read instead of extracting the queries.",
)
flags.DEFINE_boolean(
  "use_geometric_verification",
  None,
  "Rerank the top of each ranked list with RANSAC (the official DELG flag); "
  "--nouse_geometric_verification ranks by descriptor votes only "
  "(retrieval_config.rerank_top_n=0). Default: the config's rerank_top_n.",
)
flags.DEFINE_string("output_dir", None, "Folder for ranked lists, caches and the report.")
define_backend_flag()
define_progress_flag()


def _config() -> DelfConfig:
  """The config, with --use_geometric_verification applied: False ranks by votes only
  (rerank_top_n 0); True reranks (a config without reranking gets the proto's rerank_top_n)."""
  config = load_config_from_flags()
  rerank_top_n = config.retrieval_config.rerank_top_n
  if FLAGS.use_geometric_verification is False and rerank_top_n != 0:
    return load_config_from_flags(extra_overrides=["retrieval_config.rerank_top_n=0"])
  if FLAGS.use_geometric_verification and rerank_top_n == 0:
    default = type(config.retrieval_config)().rerank_top_n
    return load_config_from_flags(extra_overrides=[f"retrieval_config.rerank_top_n={default}"])
  return config


def _index_features(config: DelfConfig, dataset: RetrievalDataset) -> FirstStageIndex:
  """The first stage of the dataset's database feature files (--features_dir), built or
  resumed in OUTPUT_DIR/index. Raises InputError when a database image has no feature file."""
  feature_paths, missing = database_feature_paths(dataset, FLAGS.features_dir)
  if missing:
    raise InputError(
      f"{len(missing)} of {len(dataset.imlist)} database images of {dataset.name} have no "
      f"feature file in {FLAGS.features_dir}, e.g. {missing[0][0]}; extract them "
      f"(extract_features --image_set index) or give the index with --index_dir"
    )
  local = config.delf_local_config
  return index_first_stage(
    pathlib.Path(FLAGS.output_dir) / "index",
    FLAGS.features_dir,
    config,
    feature_paths=feature_paths,
    dim=local.pca_parameters.pca_dim if local.use_pca else None,  # Fixed by the config's PCA.
    log=log,
  ).stage


def _read_query_features(
  dataset: RetrievalDataset, with_global: bool
) -> Callable[[np.ndarray], LocalFeatures]:
  """Puts the query feature files of --query_features_dir into run_benchmark's query cache
  (OUTPUT_DIR/query_features), dropping the cached lists (OUTPUT_DIR/ranked) of a query whose
  features changed; returns the query extractor, which is then never called."""
  folder, output_dir = pathlib.Path(FLAGS.query_features_dir), pathlib.Path(FLAGS.output_dir)
  paths = [folder / feature_file_name(name) for name in dataset.qimlist]
  if with_global:  # The global first stage also needs each query's .delg_global file.
    paths += [folder / global_file_name(name) for name in dataset.qimlist]
  missing = [path for path in paths if not path.is_file()]
  if missing:
    raise InputError(
      f"{len(missing)} of {len(paths)} query feature files of {dataset.name} are missing, "
      f"e.g. {missing[0]}; extract them with extract_features --image_set query"
    )
  try:  # Query features of other extraction settings than the database's are refused.
    recorded = json.loads((folder / SETTINGS_FILE).read_text())
  except (OSError, UnicodeDecodeError, ValueError):
    recorded = None
  check_database_features(FLAGS.features_dir, recorded if isinstance(recorded, dict) else None)
  for name, path in zip([*dataset.qimlist, *dataset.qimlist], paths):
    data, cached = path.read_bytes(), output_dir / "query_features" / path.name
    if cached.is_file() and cached.read_bytes() == data:
      continue
    write_bytes_atomic(cached, data)
    (output_dir / "ranked" / f"{name}.json").unlink(missing_ok=True)
    # The cache no longer holds only features of recorded settings: a later run that
    # extracts its queries recomputes them.
    (cached.parent / SETTINGS_FILE).unlink(missing_ok=True)

  def extract(image: np.ndarray) -> LocalFeatures:
    raise InputError(f"a query without a feature file in {folder}")

  return extract


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "features_dir", "output_dir")
  if not FLAGS.query_features_dir:
    require_flags(FLAGS, "images_dir")
  config = _config()
  with_global = configured_stage(config.retrieval_config) == "global"
  dataset = load_dataset(
    FLAGS.dataset_gnd_path, FLAGS.dataset_gt_dir, FLAGS.images_dir, FLAGS.dataset_name
  )
  index_dir = FLAGS.index_dir or pathlib.Path(FLAGS.output_dir) / "index"
  if FLAGS.index_dir:
    stage = open_first_stage(FLAGS.index_dir, config.retrieval_config)
  else:
    stage = _index_features(config, dataset)
  extract: QueryExtract | None = None
  if FLAGS.query_features_dir:
    extract = _read_query_features(dataset, with_global)
  elif with_global:  # Queries give (features, global descriptor); same settings as the database.
    check_database_features(FLAGS.features_dir, extraction_settings(config, config.model_path))
    extract = query_extractor(config, FLAGS.backend)
  benchmark = run_benchmark(
    config,
    dataset,
    stage,
    FLAGS.features_dir,
    FLAGS.output_dir,
    extract=extract,
    backend=FLAGS.backend,
    log=log,
    load_features=database_feature_loader(index_dir, FLAGS.features_dir, log),
  )
  print((pathlib.Path(FLAGS.output_dir) / "mAP.txt").read_text(), end="")
  log("wrote " + ", ".join(str(path) for path in benchmark.written))
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
