r"""Writes GLDv2 (clean) training images into sharded TFRecord files with a stratified split.

Usage:
  prepare_gldv2 --csv_path gldv2/train_clean.csv --train_dir gldv2/train \
      --output_dir shards/ [--num_shards 128] [--validation_share 0.2] [--seed 0]

Finished shards are kept when the command is run again (resume). Unreadable
images are listed and skipped; the exit status is then 1.
"""

from __future__ import annotations

from absl import flags

from delf_ret.cli.common import log
from delf_ret.cli.common import report_failures
from delf_ret.cli.common import require_flags
from delf_ret.cli.common import run_tool
from delf_ret.train.gldv2 import prepare_gldv2

FLAGS = flags.FLAGS
flags.DEFINE_string("csv_path", None, "train_clean.csv (columns landmark_id,images).")
flags.DEFINE_string("train_dir", None, "Folder holding train/<a>/<b>/<c>/<id>.jpg.")
flags.DEFINE_string("output_dir", None, "Folder for the shards, label_map.csv and split.json.")
flags.DEFINE_integer("num_shards", 128, "Training shards (validation: a quarter, at least 1).")
flags.DEFINE_float("validation_share", 0.2, "Share of each landmark's images for validation.")
flags.DEFINE_integer("seed", 0, "Seed of the split.")


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "csv_path", "train_dir", "output_dir")
  failures = prepare_gldv2(
    FLAGS.csv_path,
    FLAGS.train_dir,
    FLAGS.output_dir,
    FLAGS.num_shards,
    FLAGS.validation_share,
    FLAGS.seed,
    log=log,
  )
  if report_failures(failures, "images (skipped)"):
    return 1
  print(f"done: shards in {FLAGS.output_dir}")
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
