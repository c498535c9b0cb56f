r"""Writes your own labelled photos into the TFRecord shards the tuning and attention stages read.

Usage:
  prepare_labelled_photos --labels_csv photos/labels.csv --output_dir shards/ \
      [--images_dir photos/] [--label_column label] [--num_shards 16] \
      [--validation_share 0.2] [--seed 0] [--min_images_per_label 2] [--holdout_labels 0]

The CSV has a header row with the columns ``image`` (a path relative to
--images_dir, by default the CSV's folder) and ``label`` (or the column named
by --label_column); e.g.

  image,label
  eiffel/001.jpg,eiffel_tower
  eiffel/002.jpg,eiffel_tower
  louvre/001.jpg,louvre

Rows with an empty label are skipped; labels with fewer than
--min_images_per_label photos are left out (both reported). A bad row (path
outside the folder, a photo listed twice, a missing file) stops the command
with one error naming the CSV and the line. The split is stratified per
label; label_map.csv maps each label to its class index and split.json records
the settings. Finished shards are kept when the command is run again with the
same inputs (resume). Unreadable photos are listed and skipped; the exit status
is then 1. Then: train_delf --stage tuning --data_dir shards/ ... With
--validation_share 1 every photo goes to validation: a labelled set to measure
models on (python -m delf_ret.train.recipe validate), no training shards.
"""

from __future__ import annotations

from absl import flags

from delf_ret.cli.common import log
from delf_ret.cli.common import report_failures
from delf_ret.cli.common import require_flags
from delf_ret.cli.common import run_tool
from delf_ret.train.labelled import prepare_labelled_photos

FLAGS = flags.FLAGS
flags.DEFINE_string("labels_csv", None, "CSV with a header and the columns image,label.")
flags.DEFINE_string(
  "images_dir", None, "Folder the CSV's image paths are relative to (default: the CSV's folder)."
)
flags.DEFINE_string("label_column", "label", "Column of the labels, e.g. landmark.")
flags.DEFINE_string("output_dir", None, "Folder for the shards, label_map.csv and split.json.")
flags.DEFINE_integer("num_shards", 16, "Training shards (validation: a quarter, at least 1).")
flags.DEFINE_float(
  "validation_share",
  0.2,
  "Share of each label's photos for validation; 1: all of them, no training shards "
  "(a set for `python -m delf_ret.train.recipe validate`).",
)
flags.DEFINE_integer("seed", 0, "Seed of the split and of the order of the photos in the shards.")
flags.DEFINE_integer(
  "min_images_per_label", 2, "Labels with fewer photos are left out (and reported)."
)
flags.DEFINE_integer(
  "holdout_labels",
  0,
  "This many labels (seeded choice) go wholly to validation: landmarks training never sees.",
)


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "labels_csv", "output_dir")
  failures = prepare_labelled_photos(
    FLAGS.labels_csv,
    FLAGS.output_dir,
    images_dir=FLAGS.images_dir,
    label_column=FLAGS.label_column,
    num_shards=FLAGS.num_shards,
    validation_share=FLAGS.validation_share,
    seed=FLAGS.seed,
    min_images_per_label=FLAGS.min_images_per_label,
    log=log,
    holdout_labels=FLAGS.holdout_labels,
  )
  if report_failures(failures, "photos (skipped)"):
    return 1
  print(f"done: shards in {FLAGS.output_dir}")
  print(f"next: train_delf --stage tuning --data_dir {FLAGS.output_dir} --output_dir runs/tuning")
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
