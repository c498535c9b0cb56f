r"""Exports a DELF .keras checkpoint as a SavedModel with an extraction signature.

Usage:
  export_delf_model --model_path runs/attention/delf_model.keras --output_dir models/delf_saved

The SavedModel's ``extract`` signature maps (image uint8 [H, W, 3], scales,
score_threshold, max_feature_num) to (locations, scales, scores, descriptors);
see delf_ret/extract/saved_model.py. Point a config's model_path at the folder
to extract with it (same features as the checkpoint).
"""

from __future__ import annotations

from absl import flags

from delf_ret.cli.common import require_flags, run_tool

FLAGS = flags.FLAGS
flags.DEFINE_string("model_path", None, "DELF .keras checkpoint (train_delf's delf_model.keras).")
flags.DEFINE_string("output_dir", None, "SavedModel folder to write (replaced if it exists).")


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "model_path", "output_dir")
  from delf_ret.extract.saved_model import export_saved_model
  from delf_ret.model import load_delf_model
  model = load_delf_model(FLAGS.model_path)
  path = export_saved_model(model, FLAGS.output_dir)
  print(f"done: SavedModel with signatures 'extract' and 'serving_default' in {path}")
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
