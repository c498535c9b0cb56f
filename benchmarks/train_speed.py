"""Training speed: milliseconds per step of both stages at batch 8, 321 px crops.

Data: the 17 landmark photos of ../shared/data, written in the GLDv2 layout and
prepared into TFRecord shards (delf_ret.train.gldv2); the backbone starts from
random weights (speed does not depend on them). For each stage it runs
delf_ret.train.trainer.train_stage for --steps steps, timing the steps after
the first (which includes tracing), with the compiled training step
(tf.function) and, as the baseline of the same run, the same step run eagerly
(tf.config.run_functions_eagerly). Reports ms/step and the speed-up.

Usage: python benchmarks/train_speed.py [--steps 6] [--output benchmarks/results/train_speed.json]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import tempfile

from results_io import write_result

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def write_layout(root: pathlib.Path) -> pathlib.Path:
  """GLDv2-layout copy of the shared landmark photos; returns the CSV path."""
  from delf_ret.datasets.labelled import read_labels

  rows = [(path, name) for path, name in read_labels(SHARED / "labels.csv") if name]
  names = sorted({name for _, name in rows})
  images: dict[int, list[str]] = {}
  for number, (path, name) in enumerate(rows):
    image_id = f"{number:016x}"
    target = root / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, target)
    images.setdefault(names.index(name), []).append(image_id)
  csv_path = root / "train_clean.csv"
  csv_path.write_text(
    "landmark_id,images\n"
    + "".join(f"{landmark},{' '.join(ids)}\n" for landmark, ids in images.items())
  )
  return csv_path


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "train_speed.json"))
  args = parser.parse_args()
  import tensorflow as tf

  from delf_ret.config import load_training_config
  from delf_ret.train.gldv2 import prepare_gldv2
  from delf_ret.train.trainer import train_stage

  work = pathlib.Path(tempfile.mkdtemp(prefix="train_speed_"))
  try:
    csv_path = write_layout(work / "gldv2")
    prepare_gldv2(
      csv_path, work / "gldv2" / "train", work / "shards", num_shards=2, log=lambda line: None
    )
    config = load_training_config(
      None,
      [
        f"batch_size={args.batch_size}",
        "image_size=321",
        "backbone_weights=random",
        "summary_every=1000",
        "save_every=1000",
        f"max_steps={args.steps}",
      ],
    )
    results = {}
    for mode in ("eager", "compiled"):
      tf.config.run_functions_eagerly(mode == "eager")
      out = work / mode
      for stage in ("tuning", "attention"):
        result = train_stage(
          stage,
          work / "shards",
          out / stage,
          config,
          init_from=out / "tuning",
          log=lambda line: None,
        )
        results.setdefault(stage, {})[f"{mode}_ms_per_step"] = round(result.ms_per_step, 1)
        print(f"{stage} {mode}: {result.ms_per_step:.0f} ms/step", flush=True)
    tf.config.run_functions_eagerly(False)
    for stage in results.values():
      stage["speedup_compiled_vs_eager"] = round(
        stage["eager_ms_per_step"] / stage["compiled_ms_per_step"], 2
      )
    write_result(
      args.output,
      {
        "benchmark": "train_speed",
        "batch_size": args.batch_size,
        "image_size": 321,
        "timed_steps": args.steps - 1,
        "cpu_cores": os.cpu_count(),
        "weights": "random initialisation (speed does not depend on them)",
        "stages": results,
      },
    )
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
