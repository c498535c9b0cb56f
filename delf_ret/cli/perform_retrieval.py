r"""Runs a retrieval benchmark: every query against the index, RANSAC reranking, mAP report.

Usage (Revisited ROxford5k / RParis6k):
  perform_retrieval --config_path my.pbtxt --dataset_gnd_path data/roxford5k/gnd_roxford5k.pkl \
      --images_dir data/roxford5k/jpg --index_dir index/ --features_dir features/ \
      --output_dir results/
Original Oxford5k / Paris6k: --dataset_gt_dir data/oxford5k/gt instead of --dataset_gnd_path.

The database images must be indexed first (build_index with the same config;
their feature files are read from --features_dir for reranking). Queries are
cropped to their box, extracted with the config, and cached. Writes to
--output_dir: ranked_lists.json (first-stage and reranked lists), mAP.txt,
metrics.json and pr_<split>.png (delf_ret.retrieval.benchmark.run_benchmark).
Rerunning resumes from the cached queries.
"""

from __future__ import annotations

import pathlib

from absl import flags

from delf_ret.cli.common import define_backend_flag
from delf_ret.cli.common import define_config_flags
from delf_ret.cli.common import define_progress_flag
from delf_ret.cli.common import load_config_from_flags
from delf_ret.cli.common import log
from delf_ret.cli.common import require_flags
from delf_ret.cli.common import run_tool
from delf_ret.evaluation.ground_truth import load_dataset
from delf_ret.retrieval.benchmark import run_benchmark

FLAGS = flags.FLAGS
define_config_flags("DelfConfig .pbtxt (extraction and retrieval_config).")
flags.DEFINE_string("dataset_gnd_path", None, "Revisited ground truth gnd_<dataset>.pkl.")
flags.DEFINE_string("dataset_gt_dir", None, "Original Oxford5k/Paris6k ground-truth folder.")
flags.DEFINE_string("dataset_name", None, "Name in the report (default: from the files).")
flags.DEFINE_string("images_dir", None, "Folder of the dataset images (<name>.jpg).")
flags.DEFINE_string("index_dir", None, "Index of the database images (build_index).")
flags.DEFINE_string("features_dir", None, "Feature files of the database images.")
flags.DEFINE_string("output_dir", None, "Folder for ranked lists, caches and the report.")
define_backend_flag()
define_progress_flag()


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "images_dir", "index_dir", "features_dir", "output_dir")
  config = load_config_from_flags()
  dataset = load_dataset(
    FLAGS.dataset_gnd_path, FLAGS.dataset_gt_dir, FLAGS.images_dir, FLAGS.dataset_name
  )
  benchmark = run_benchmark(
    config,
    dataset,
    FLAGS.index_dir,
    FLAGS.features_dir,
    FLAGS.output_dir,
    backend=FLAGS.backend,
    log=log,
  )
  print((pathlib.Path(FLAGS.output_dir) / "mAP.txt").read_text(), end="")
  log("wrote " + ", ".join(str(path) for path in benchmark.written))
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
