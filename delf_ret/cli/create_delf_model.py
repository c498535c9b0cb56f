r"""Writes a new (untrained) DELF model checkpoint.

Usage:
  create_delf_model --output_path model.keras \
      --backbone_weights imagenet|random|/path/resnet50_notop.h5 [--seed 0]

"imagenet" uses the standard Keras weight loading (cache or download). The
attention head and classifiers start random; train them with the training
tools, or use the checkpoint as is for tests and demos (its features are those
of an untrained attention head).
"""

from __future__ import annotations

from absl import flags

from delf_ret.cli.common import require_flags
from delf_ret.cli.common import run_tool

FLAGS = flags.FLAGS
flags.DEFINE_string("output_path", None, "Where to write the .keras checkpoint.")
flags.DEFINE_string(
  "backbone_weights", "imagenet", "'imagenet', 'random', or a local ResNet50 (no top) weights file."
)
flags.DEFINE_integer("num_classes", 1, "Number of landmark classes of the classifier heads.")
flags.DEFINE_integer("seed", 0, "Random seed for the randomly initialised weights.")


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "output_path")
  # Lazy: TensorFlow, imported once the flags are checked (--help answers at once).
  from delf_ret.model import DelfModel
  from delf_ret.model import save_delf_model

  weights = None if FLAGS.backbone_weights == "random" else FLAGS.backbone_weights
  model = DelfModel(num_classes=FLAGS.num_classes, backbone_weights=weights, seed=FLAGS.seed)
  save_delf_model(model, FLAGS.output_path)
  print(f"wrote {FLAGS.output_path} (backbone: {FLAGS.backbone_weights}, seed {FLAGS.seed})")
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
