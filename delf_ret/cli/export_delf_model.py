r"""Exports a DELF .keras checkpoint as a SavedModel with an extraction signature.

Usage:
  export_delf_model --model_path runs/attention/delf_model.keras --output_dir models/delf_saved
  export_delf_model --model_path runs/selfsup/delf_model.keras --compact_path model/weights.npz

The SavedModel's ``extract`` signature maps (image uint8 [H, W, 3], scales,
score_threshold, max_feature_num) to (locations, scales, scores, descriptors);
see delf_ret/extract/saved_model.py. Point a config's model_path at the folder
to extract with it (same features as the checkpoint). --compact_path writes
the weights as one .npz file instead, convolution kernels in float16 (the
format of the shipped default model, delf_ret/model/compact.py); a config's
model_path can point at it too.
"""

from __future__ import annotations

from absl import app
from absl import flags

from delf_ret.cli.common import require_flags
from delf_ret.cli.common import run_tool

FLAGS = flags.FLAGS
flags.DEFINE_string("model_path", None, "DELF .keras checkpoint (train_delf's delf_model.keras).")
flags.DEFINE_string("output_dir", None, "SavedModel folder to write (replaced if it exists).")
flags.DEFINE_string("compact_path", None, "Compact float16 weights file (.npz) to write.")


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "model_path")
  if not (FLAGS.output_dir or FLAGS.compact_path):
    raise app.UsageError("give --output_dir (SavedModel) and/or --compact_path (.npz)")
  if FLAGS.compact_path and not FLAGS.compact_path.endswith(".npz"):
    raise app.UsageError(f"--compact_path must end in .npz, got {FLAGS.compact_path}")
  # Lazy: TensorFlow, imported once the flags are checked (--help answers at once).
  from delf_ret.model import load_delf_model
  from delf_ret.model.compact import save_compact_weights

  model = load_delf_model(FLAGS.model_path)
  if FLAGS.compact_path:
    save_compact_weights(model, FLAGS.compact_path)
    print(f"done: compact weights in {FLAGS.compact_path}")
  if FLAGS.output_dir:
    from delf_ret.extract.saved_model import export_saved_model  # Lazy: TensorFlow.

    path = export_saved_model(model, FLAGS.output_dir)
    print(f"done: SavedModel with signatures 'extract' and 'serving_default' in {path}")
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
