"""The Python steps of the default-model recipe (scripts/train_default_model.sh).

The script trains the self-supervised stage with configs/delf_default_model.pbtxt,
exports the compact weights, then calls this module:

  python -m delf_ret.train.recipe pca-photos MODEL_DIR TRAIN_DIR
      copies the default extraction config into MODEL_DIR (delf_config.pbtxt)
      and lists every third training photo for the PCA in
      MODEL_DIR/../pca_photos.txt;
  python -m delf_ret.train.recipe facts OUTPUT_DIR SECONDS TRAIN_DIR
      writes OUTPUT_DIR/default_model/TRAINING.json: the training steps and
      wall time (from the self-supervised run's time file), SECONDS (the
      script's wall time this run), the date and what an exact rerun must
      match (CPU model, core count, library versions);
  python -m delf_ret.train.recipe validate CONFIG SHARDS_DIR [--output JSON]
      a model's figures on the validation photos of labelled shards (see
      delf_ret.train.validation), to choose between variants on training data.

No TensorFlow is imported, except by ``validate``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

from delf_ret.atomic import write_bytes_atomic
from delf_ret.config import load_config
from delf_ret.default_model import default_config_path
from delf_ret.errors import DelfRetError
from delf_ret.provenance import environment
from delf_ret.train.photos import list_training_photos

PCA_PHOTOS_FILE = "pca_photos.txt"
FACTS_FILE = "TRAINING.json"
# The self-supervised stage's record of its steps and training seconds (selfsup.TIME_FILE).
SELFSUP_TIME_FILE = pathlib.Path("selfsup") / "selfsup_time.json"


class RecipeError(DelfRetError):
  """A recipe step is missing its input (the training run's time file...)."""


def write_pca_photos(model_dir: str | os.PathLike, train_dir: str | os.PathLike) -> pathlib.Path:
  """Copies the default extraction config into ``model_dir`` and writes the list of every
  third training photo (absolute paths) beside it; returns the list's path."""
  model_dir = pathlib.Path(model_dir)
  shutil.copyfile(default_config_path(), model_dir / "delf_config.pbtxt")
  photos = list_training_photos(train_dir)[::3]
  listing = model_dir.parent / PCA_PHOTOS_FILE
  listing.write_text("".join(f"{p.resolve()}\n" for p in photos))
  return listing


def write_training_facts(
  output_dir: str | os.PathLike, seconds: int, train_dir: str | os.PathLike
) -> dict:
  """Writes ``output_dir``/default_model/TRAINING.json and returns its facts.

  seconds: the script's wall time this run (seconds); the training steps and
  training wall seconds over all runs come from the self-supervised run's time file.
  """
  output_dir = pathlib.Path(output_dir)
  time_file = output_dir / SELFSUP_TIME_FILE
  if not time_file.is_file():
    raise RecipeError(f"{time_file} not found: the self-supervised stage has not saved yet")
  timing = json.loads(time_file.read_text())
  # What an exact rerun must match: CPU model, core count, library versions.
  facts = {
    "training_steps": timing["step"],
    "training_wall_seconds": timing["seconds"],
    "script_wall_seconds_this_run": seconds,
    "finished": time.strftime("%Y-%m-%d"),
    "train_dir": pathlib.Path(train_dir).name,
    **environment(),
  }
  write_bytes_atomic(
    output_dir / "default_model" / FACTS_FILE, (json.dumps(facts, indent=2) + "\n").encode()
  )
  return facts


def validate_command(
  config_path: str, shards_dir: str, output: str | None, overrides: list[str]
) -> dict:
  """``validate``: the figures of delf_ret.train.validation.validate_model, also written to
  ``output`` (JSON) when given, with the config path and overrides."""
  # Lazy: validation reads shards with TensorFlow and extracts with the model.
  from delf_ret.train.validation import validate_model

  config = load_config(config_path, overrides)
  figures = {
    "config": str(pathlib.Path(config_path).resolve()),
    "overrides": overrides,
    **validate_model(config, shards_dir, log=lambda line: print(line, file=sys.stderr)),
  }
  if output:
    write_bytes_atomic(pathlib.Path(output), (json.dumps(figures, indent=2) + "\n").encode())
  return figures


def main(argv: list[str]) -> int:
  """The script's entry point: ``pca-photos MODEL_DIR TRAIN_DIR``, ``facts OUTPUT_DIR
  SECONDS TRAIN_DIR`` or ``validate CONFIG SHARDS_DIR``; prints 'error: ...' and returns 1 on a package error."""
  parser = argparse.ArgumentParser(prog="python -m delf_ret.train.recipe")
  commands = parser.add_subparsers(dest="command", required=True)
  pca = commands.add_parser("pca-photos", help="default config + PCA photo list")
  pca.add_argument("model_dir")
  pca.add_argument("train_dir")
  facts = commands.add_parser("facts", help="write TRAINING.json")
  facts.add_argument("output_dir")
  facts.add_argument("seconds", type=int)
  facts.add_argument("train_dir")
  validate = commands.add_parser("validate", help="figures on labelled validation photos")
  validate.add_argument("config_path", help="the model's extraction config (.pbtxt)")
  validate.add_argument("shards_dir", help="shards written by prepare_labelled_photos")
  validate.add_argument("--output", help="also write the figures to this JSON file")
  validate.add_argument(
    "--config_override", action="append", default=[], help="FIELD=VALUE, repeatable"
  )
  args = parser.parse_args(argv)
  try:
    if args.command == "pca-photos":
      write_pca_photos(args.model_dir, args.train_dir)
    elif args.command == "validate":
      print(
        json.dumps(
          validate_command(args.config_path, args.shards_dir, args.output, args.config_override)
        )
      )
    else:
      print(json.dumps(write_training_facts(args.output_dir, args.seconds, args.train_dir)))
  except DelfRetError as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
