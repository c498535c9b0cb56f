r"""Trains one DELF stage: on prepared GLDv2 shards (see prepare_gldv2), or self-supervised.

Usage:
  train_delf --stage tuning --data_dir shards/ --output_dir runs/tuning \
      [--config_path configs/delf_train.pbtxt] [--strategy mirrored --num_devices 2]
  train_delf --stage attention --data_dir shards/ --output_dir runs/attention \
      --init_from runs/tuning
  train_delf --stage selfsup --photos my_photos/ --output_dir runs/selfsup \
      [--config_path configs/delf_default_model.pbtxt]

The selfsup stage needs no labels: --photos is a folder of photos (searched
recursively) or a list file; a cameras.csv in the Strecha layout, in a photo's
folder or one above it, adds epipolar checks; see delf_ret/train/selfsup.py and the config's ``selfsup`` block.

Hyper-parameters come from a DelfTrainingConfig .pbtxt (published defaults
when none is given; single fields with --config_override). Running the same
command again resumes from the last checkpoint. --num_steps stops after that
many more steps (the learning-rate schedule still spans max_steps).
"""

from __future__ import annotations

import math

from absl import flags

from delf_ret import config as config_lib
from delf_ret.cli.common import define_config_flags
from delf_ret.cli.common import log
from delf_ret.cli.common import require_flags
from delf_ret.cli.common import run_tool

FLAGS = flags.FLAGS
flags.DEFINE_enum("stage", None, ["tuning", "attention", "selfsup"], "Training stage.")
flags.DEFINE_string(
  "data_dir", None, "tuning/attention: shards written by prepare_gldv2 or prepare_labelled_photos."
)
flags.DEFINE_string(
  "photos",
  None,
  "selfsup: folder of unlabelled photos (searched recursively) or a list file of photo paths.",
)
flags.DEFINE_string("output_dir", None, "Folder for checkpoints, TensorBoard logs and the model.")
define_config_flags("DelfTrainingConfig .pbtxt (default: published values).", default_model=False)
flags.DEFINE_string("init_from", None, "Attention stage: the tuning stage's output folder.")
flags.DEFINE_enum(
  "strategy",
  "default",
  ["default", "mirrored", "multi_worker"],
  "Distribution: one device, all local devices, or workers from TF_CONFIG.",
)
flags.DEFINE_integer(
  "num_devices",
  0,
  "Local devices for --strategy mirrored (0: all GPUs; without GPUs, N logical CPU devices).",
)
flags.DEFINE_integer("num_steps", None, "Stop after this many more steps (default: max_steps).")


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "stage", "photos" if FLAGS.stage == "selfsup" else "data_dir", "output_dir")
  from delf_ret.train.trainer import make_strategy
  from delf_ret.train.trainer import set_determinism
  from delf_ret.train.trainer import train_stage

  config = config_lib.load_training_config(FLAGS.config_path, FLAGS.config_override)
  set_determinism(config.deterministic, FLAGS.strategy)
  strategy = make_strategy(FLAGS.strategy, FLAGS.num_devices)
  if FLAGS.stage == "selfsup":
    from delf_ret.train.selfsup import train_selfsup

    result = train_selfsup(
      FLAGS.photos, FLAGS.output_dir, config, strategy, num_steps=FLAGS.num_steps, log=log
    )
  else:
    result = train_stage(
      FLAGS.stage,
      FLAGS.data_dir,
      FLAGS.output_dir,
      config,
      strategy,
      init_from=FLAGS.init_from,
      num_steps=FLAGS.num_steps,
      log=log,
    )
  # A run that found its stage finished trains no step and has no loss to report.
  loss = "nothing left to train" if math.isnan(result.loss) else f"loss {result.loss:.4f}"
  print(f"done: {FLAGS.stage} at step {result.step}, {loss}")
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
