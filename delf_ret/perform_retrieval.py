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
metrics.json and pr_<split>.png. Rerunning resumes from the cached queries.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

from delf_ret import config as config_lib
from delf_ret.cli_flags import require_flags
from delf_ret.evaluation.ground_truth import read_original_gt, read_revisited_gnd
from delf_ret.evaluation.ground_truth import GroundTruthError
from delf_ret.evaluation.metrics import DEFAULT_KS
from delf_ret.features import FeatureFileError, feature_loader
from delf_ret.images import ImageReadError
from delf_ret.index import LocalFeatureIndex, LocalIndexError

FLAGS = flags.FLAGS
flags.DEFINE_string("config_path", None, "DelfConfig .pbtxt (extraction and retrieval_config).")
flags.DEFINE_multi_string("config_override", [], "Override one config field (repeatable).")
flags.DEFINE_string("dataset_gnd_path", None, "Revisited ground truth gnd_<dataset>.pkl.")
flags.DEFINE_string("dataset_gt_dir", None, "Original Oxford5k/Paris6k ground-truth folder.")
flags.DEFINE_string("dataset_name", None, "Name in the report (default: from the files).")
flags.DEFINE_string("images_dir", None, "Folder of the dataset images (<name>.jpg).")
flags.DEFINE_string("index_dir", None, "Index of the database images (build_index).")
flags.DEFINE_string("features_dir", None, "Feature files of the database images.")
flags.DEFINE_string("output_dir", None, "Folder for ranked lists, caches and the report.")
flags.DEFINE_enum("backend", "compiled", ["compiled", "eager"], "Extraction network back-end.")


def load_dataset():
  if bool(FLAGS.dataset_gnd_path) == bool(FLAGS.dataset_gt_dir):
    raise GroundTruthError("give exactly one of --dataset_gnd_path and --dataset_gt_dir")
  if FLAGS.dataset_gnd_path:
    return read_revisited_gnd(FLAGS.dataset_gnd_path, FLAGS.images_dir, FLAGS.dataset_name)
  return read_original_gt(FLAGS.dataset_gt_dir, FLAGS.images_dir,
                          FLAGS.dataset_name or pathlib.Path(FLAGS.dataset_gt_dir).name)


def main(argv):
  del argv
  require_flags(FLAGS, "config_path", "images_dir", "index_dir", "features_dir", "output_dir")
  from delf_ret.retrieval.ranking import dataset_runner as runner
  from delf_ret.evaluation.report import write_report
  from delf_ret.retrieval.ranking import use_search_settings

  log = lambda line: print(line, flush=True)  # noqa: E731
  output_dir = pathlib.Path(FLAGS.output_dir)
  try:
    config = config_lib.load_config(FLAGS.config_path, FLAGS.config_override)
    dataset = load_dataset()
    index = LocalFeatureIndex.load(FLAGS.index_dir)
    use_search_settings(index, config.retrieval_config)
    runner.check_database_indexed(dataset, index)
    log(f"{dataset.name} ({dataset.protocol} protocol): {len(dataset.qimlist)} queries, "
        f"{len(dataset.imlist)} database images; index of {len(index)} images")
    extractor = None

    def extract(image):
      nonlocal extractor
      if extractor is None:
        from delf_ret.extract.extractor import DelfExtractor
        extractor = DelfExtractor(config, backend=FLAGS.backend)
      return extractor.extract(image)

    results = runner.run_queries(dataset, index, feature_loader(FLAGS.features_dir),
                                 extract, config.retrieval_config, output_dir, log)
  except (config_lib.ConfigError, GroundTruthError, LocalIndexError, FeatureFileError,
          ImageReadError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  runner.write_ranked_lists(output_dir / "ranked_lists.json", dataset, results)
  ks = tuple(config.retrieval_config.eval_ks) or DEFAULT_KS
  metrics = runner.evaluate_results(dataset, results, ks)
  written = write_report(output_dir, dataset.name, dataset.protocol, dataset.qimlist, metrics)
  print((output_dir / "mAP.txt").read_text(), end="")
  log("wrote " + ", ".join(str(path) for path in [output_dir / "ranked_lists.json", *written]))
  return 0


def run():
  app.run(main)


if __name__ == "__main__":
  run()
