"""Demo: the whole retrieval pipeline with the default model, offline, on real photos.

Usage:
  delf_demo [--output_dir demo_output] [--data_dir ../shared/data] [--config_path my.pbtxt]

Data: the labelled landmark photos and distractors of the shared data folder
(--data_dir, else $DELF_RET_SHARED_DATA, else ../shared/data from the current
folder) when it holds labels.csv, else the labelled photos bundled with the
package (delf_ret/demo_data: 7 places with 2 photos each and 6 distractors).
Model: the default model shipped in delf_ret/default_model (see its
MODEL_CARD.md), or --config_path.

Steps, all written to --output_dir: features of every photo (features/, reused
by a second run) -> index (index/) -> every labelled photo as a query, ranked by
the config's first stage (retrieval_config.first_stage: descriptor votes, ASMK or
global descriptors), then RANSAC-reranked (retrieval/: ranked_lists.json, mAP.txt,
metrics.json, pr_<split>.png) -> top_results.png (three queries and their top
results) -> matches_<pair>.png (verified matches of two image pairs). Prints the
mAP before and after reranking, the seconds per step and the output folder.
An output folder belongs to one data set (recorded in its demo_data.json): a run on
other photos removes what the demo wrote there and starts clean, saying so.
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib

from absl import flags

from delf_ret.cli.common import define_backend_flag
from delf_ret.cli.common import define_config_flags
from delf_ret.cli.common import define_progress_flag
from delf_ret.cli.common import load_config_from_flags
from delf_ret.cli.common import log
from delf_ret.cli.common import run_tool

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "demo_output", "Folder for every file the demo writes.")
flags.DEFINE_string(
  "data_dir",
  None,
  "Shared data folder with labels.csv (default: "
  "$DELF_RET_SHARED_DATA or ../shared/data when present, else the bundled "
  "photos).",
)
define_config_flags("DelfConfig .pbtxt.")
define_backend_flag()
define_progress_flag()


def _data():
  # Lazy: matplotlib (the demo's figures), loaded only when the demo runs.
  from delf_ret.retrieval.demo import bundled_demo_data
  from delf_ret.retrieval.demo import shared_demo_data

  folder = FLAGS.data_dir or os.environ.get("DELF_RET_SHARED_DATA", "../shared/data")
  if (pathlib.Path(folder) / "labels.csv").is_file():
    return shared_demo_data(folder)
  if FLAGS.data_dir:
    raise FileNotFoundError(f"{folder}: no labels.csv (image,landmark) in this folder")
  return bundled_demo_data(str(importlib.resources.files("delf_ret") / "demo_data"))


def main(argv: list[str]) -> int:
  del argv
  # Lazy: TensorFlow and matplotlib, imported once the flags are parsed.
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.retrieval.demo import run_demo

  config = load_config_from_flags()
  data = _data()
  output_dir = pathlib.Path(FLAGS.output_dir)
  log(f"data: {data.name} ({data.labels_csv})")
  log(f"model: {config.model_path}")
  summary = run_demo(
    config, data, output_dir, DelfExtractor(config, backend=FLAGS.backend), log=log
  )
  print(
    "\nmAP (%)              " + "  ".join(f"{split:>8}" for split in summary.mean_ap["first_stage"])
  )
  first = config.retrieval_config.first_stage
  for stage, label in (("first_stage", first), ("reranked", "after RANSAC reranking")):
    print(
      f"  {label:<22}"
      + "  ".join(
        f"{value:8.2f}" if value == value else f"{'n/a':>8}"
        for value in summary.mean_ap[stage].values()
      )
    )
  for name, (inliers, matches) in summary.match_inliers.items():
    print(f"matches {name}: {inliers} RANSAC inliers of {matches} putative matches")
  # Per query: the stage seconds recorded when each query was computed (the figure the
  # "seconds per query" line above totals), also on a rerun that reuses them.
  per_query = summary.run.stage_seconds.get("total", summary.run.seconds_per_query)
  print(
    "seconds: "
    + ", ".join(f"{step} {value:.0f}" for step, value in summary.seconds.items())
    + f" ({per_query:.3f} s per query, as computed; a rerun reuses the cached queries)"
  )
  print("pictures: " + ", ".join(str(path) for path in summary.pictures))
  print(f"output folder: {output_dir.resolve()}")
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
