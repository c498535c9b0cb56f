"""The Python steps of the default-model recipe (scripts/train_default_model.sh).

The script calls this module around its training stages
(configs/delf_default_model.pbtxt):

  python -m delf_ret.train.recipe selfsup-photos DATA_DIR LISTING
      lists every photo of DATA_DIR's training folders (SELFSUP_FOLDERS) for
      the self-supervised stage;
  python -m delf_ret.train.recipe pca-photos MODEL_DIR TRAIN_DIR
      copies the default extraction config into MODEL_DIR (delf_config.pbtxt)
      and lists every third training photo for the PCA in
      MODEL_DIR/../pca_photos.txt;
  python -m delf_ret.train.recipe facts OUTPUT_DIR SECONDS DATA_DIR [--selfsup_model F]
      writes OUTPUT_DIR/default_model/TRAINING.json: each stage's steps and
      wall time (from its time file), SECONDS (the
      script's wall time this run), the date and what an exact rerun must
      match (CPU model, core count, library versions);
  python -m delf_ret.train.recipe validate CONFIG SHARDS_DIR [--output JSON] [--pipeline_only]
      a model's figures on the validation photos of labelled shards (see
      delf_ret.train.validation), to choose between variants on training data;
      --pipeline_only: the retrieval figures alone (votes, reranked).

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
STAGES = ("selfsup", "tuning", "attention")
# The training folders of the shared data layout the self-supervised stage reads.
SELFSUP_FOLDERS = ("train", "train_sequences", "train_objects", "train_landmarks")


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


def write_selfsup_photos(data_dir: str | os.PathLike, listing: str | os.PathLike) -> int:
  """Lists (absolute paths, one per line) every photo of the training folders of ``data_dir``
  (SELFSUP_FOLDERS that exist) for the self-supervised stage; returns how many."""
  data_dir = pathlib.Path(data_dir)
  folders = [data_dir / name for name in SELFSUP_FOLDERS if (data_dir / name).is_dir()]
  if not folders:
    raise RecipeError(f"{data_dir}: none of the training folders {', '.join(SELFSUP_FOLDERS)}")
  photos = [photo for folder in folders for photo in list_training_photos(folder)]
  write_bytes_atomic(pathlib.Path(listing), "".join(f"{p.resolve()}\n" for p in photos).encode())
  return len(photos)


def _stage_times(output_dir: pathlib.Path, selfsup_model: str | None) -> dict:
  """{stage: {"step", "seconds"}} from each stage's time file; the selfsup stage is
  {"model": selfsup_model} when the recipe started from an existing model, the tuning
  stage {"skipped": true} when it never ran (``--no_tuning``: no tuning folder)."""
  stages: dict[str, dict] = {}
  for stage in STAGES:
    time_file = output_dir / stage / f"{stage}_time.json"
    if stage == "selfsup" and selfsup_model:
      stages[stage] = {"model": str(selfsup_model)}
    elif stage == "tuning" and not (output_dir / stage).exists():
      stages[stage] = {"skipped": True}
    elif time_file.is_file():
      stages[stage] = json.loads(time_file.read_text())
    else:
      raise RecipeError(f"{time_file} not found: the {stage} stage has not saved yet")
  return stages


def write_training_facts(
  output_dir: str | os.PathLike,
  seconds: int,
  data_dir: str | os.PathLike,
  selfsup_model: str | None = None,
) -> dict:
  """Writes ``output_dir``/default_model/TRAINING.json and returns its facts.

  seconds: the script's wall time this run (seconds); each stage's steps and training
  seconds over all runs come from its time file (``<stage>/<stage>_time.json``).
  selfsup_model: the model the tuning stage started from when the selfsup stage was skipped.
  """
  output_dir, data_dir = pathlib.Path(output_dir), pathlib.Path(data_dir)
  stages = _stage_times(output_dir, selfsup_model)
  trained = [times for times in stages.values() if "step" in times]
  # What an exact rerun must match: CPU model, core count, library versions.
  facts = {
    "stages": stages,
    "training_steps": sum(times["step"] for times in trained),
    "training_wall_seconds": round(sum(times["seconds"] for times in trained), 1),
    "script_wall_seconds_this_run": seconds,
    "finished": time.strftime("%Y-%m-%d"),
    "train_folders": [name for name in SELFSUP_FOLDERS if (data_dir / name).is_dir()],
    **environment(),
  }
  write_bytes_atomic(
    output_dir / "default_model" / FACTS_FILE, (json.dumps(facts, indent=2) + "\n").encode()
  )
  return facts


def validate_command(
  config_path: str,
  shards_dir: str,
  output: str | None,
  overrides: list[str],
  pipeline_only: bool = False,
) -> dict:
  """``validate``: the figures of delf_ret.train.validation.validate_model, also written to
  ``output`` (JSON) when given, with the config path and overrides."""
  # Lazy: validation reads shards with TensorFlow and extracts with the model.
  from delf_ret.train.validation import validate_model

  config = load_config(config_path, overrides)
  figures = {
    "config": str(pathlib.Path(config_path).resolve()),
    "overrides": overrides,
    **validate_model(
      config,
      shards_dir,
      log=lambda line: print(line, file=sys.stderr),
      pipeline_only=pipeline_only,
    ),
  }
  if output:
    write_bytes_atomic(pathlib.Path(output), (json.dumps(figures, indent=2) + "\n").encode())
  return figures


def main(argv: list[str]) -> int:
  """The script's entry point (the commands of the module docstring); prints 'error: ...' and returns 1 on a package error."""
  parser = argparse.ArgumentParser(prog="python -m delf_ret.train.recipe")
  commands = parser.add_subparsers(dest="command", required=True)
  pca = commands.add_parser("pca-photos", help="default config + PCA photo list")
  pca.add_argument("model_dir")
  pca.add_argument("train_dir")
  listing = commands.add_parser("selfsup-photos", help="list the unlabelled training photos")
  listing.add_argument("data_dir")
  listing.add_argument("listing")
  facts = commands.add_parser("facts", help="write TRAINING.json")
  facts.add_argument("output_dir")
  facts.add_argument("seconds", type=int)
  facts.add_argument("data_dir")
  facts.add_argument("--selfsup_model", help="the model tuning started from (selfsup skipped)")
  validate = commands.add_parser("validate", help="figures on labelled validation photos")
  validate.add_argument("config_path", help="the model's extraction config (.pbtxt)")
  validate.add_argument("shards_dir", help="shards written by prepare_labelled_photos")
  validate.add_argument("--output", help="also write the figures to this JSON file")
  validate.add_argument(
    "--config_override", action="append", default=[], help="FIELD=VALUE, repeatable"
  )
  validate.add_argument(
    "--pipeline_only",
    action="store_true",
    help="only the retrieval figures (votes, reranked), not the all-pairs ones; with "
    "--config_override=retrieval_config.rerank_top_n=0 a quick screen of the votes",
  )
  args = parser.parse_args(argv)
  try:
    if args.command == "pca-photos":
      write_pca_photos(args.model_dir, args.train_dir)
    elif args.command == "selfsup-photos":
      count = write_selfsup_photos(args.data_dir, args.listing)
      print(f"{count} training photos listed in {args.listing}")
    elif args.command == "validate":
      print(
        json.dumps(
          validate_command(
            args.config_path,
            args.shards_dir,
            args.output,
            args.config_override,
            args.pipeline_only,
          )
        )
      )
    else:
      written = write_training_facts(
        args.output_dir, args.seconds, args.data_dir, args.selfsup_model
      )
      print(json.dumps(written))
  except DelfRetError as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
