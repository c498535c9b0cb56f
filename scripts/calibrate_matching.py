"""Chooses a model's putative-matching rule on training photos only, and writes it into its config.

Positive pairs: overlapping photos of the training set (neighbours in a
sequence with ground-truth cameras, e.g. the Strecha photos); negative pairs:
photos of unrelated folders (e.g. COCO scenes against the building sequences).
For each candidate rule (the published 0.8 distance test, tighter distance
tests, Lowe's ratio test) and RANSAC stopping rule (all trials, as the official
code, or an early stop at 0.99 confidence), features of the config are matched
and verified with the config's RANSAC otherwise; the combination that best
separates the two kinds of pair (median inliers of positives over the 95th
percentile of negatives, plus one) is written into the config's
retrieval_config. Never run it on evaluation sets.

Usage: python scripts/calibrate_matching.py CONFIG.pbtxt TRAIN_DIR [--pairs 24] [--dry_run]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import pathlib
import re

import numpy as np

# (label, match_distance_threshold, match_ratio_threshold); 2.0 turns the distance test off
# for unit descriptors. Each is tried with every RANSAC stopping rule of STOPS.
RULES = [
  ("distance 0.8", 0.8, 0.0),
  ("distance 0.7", 0.7, 0.0),
  ("distance 0.6", 0.6, 0.0),
  ("distance 0.5", 0.5, 0.0),
  ("distance 0.4", 0.4, 0.0),
  ("distance 0.35", 0.35, 0.0),
  ("distance 0.3", 0.3, 0.0),
  ("ratio 0.9", 2.0, 0.9),
  ("ratio 0.8", 2.0, 0.8),
]
# (label, ransac_stop_probability): all trials (the official code) or OpenCV's early stop.
STOPS = [("all trials", 1.0), ("early stop 0.99", 0.99)]


def training_pairs(train_dir: pathlib.Path, count: int) -> tuple[list, list]:
  """(positive pairs, negative pairs) of photo paths, deterministic."""
  sequences: dict[str, list[pathlib.Path]] = {}
  for table in sorted(train_dir.rglob("cameras.csv")):
    with open(table, newline="") as handle:
      for row in csv.DictReader(handle):
        path = table.parent.parent / row["image"]
        sequences.setdefault(str(path.parent), []).append(path)
  positives = []
  for photos in sequences.values():
    photos = sorted(photos)
    positives += [
      (photos[i], photos[i + gap]) for gap in (1, 2, 3) for i in range(0, len(photos) - gap, 3)
    ]
  rng = np.random.default_rng(0)
  positives = [positives[i] for i in sorted(rng.permutation(len(positives))[:count])]
  sequence_photos = sorted(p for photos in sequences.values() for p in photos)
  others = sorted(
    p
    for p in train_dir.rglob("*.jpg")
    if str(p.parent) not in sequences and p.parent.name != "cameras"
  )
  negatives = [
    (others[i], sequence_photos[j])
    for i, j in zip(
      rng.permutation(len(others))[:count], rng.permutation(len(sequence_photos))[:count]
    )
  ]
  return positives, negatives


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("config_path")
  parser.add_argument("train_dir")
  parser.add_argument("--pairs", type=int, default=24, help="positive and negative pairs each")
  parser.add_argument("--dry_run", action="store_true", help="print, do not write the config")
  args = parser.parse_args()

  from delf_ret import config as config_lib
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.match import RansacParams
  from delf_ret.match import verify_pair

  config_path = pathlib.Path(args.config_path)
  config = config_lib.load_config(config_path)
  extractor = DelfExtractor(config)
  positives, negatives = training_pairs(pathlib.Path(args.train_dir), args.pairs)
  if not positives or not negatives:
    print(
      f"best: none (calibration skipped: {len(positives)} overlapping and {len(negatives)} "
      f"unrelated training pairs; the config keeps its matching rule)"
    )
    return
  cache = {}

  def features(path):
    if path not in cache:
      cache[path] = extractor.extract_file(path)
    return cache[path]

  results = {}
  for (rule, distance, ratio), (stop_label, stop) in itertools.product(RULES, STOPS):
    label = f"{rule}, {stop_label}"
    retrieval = config_lib.DelfConfig().retrieval_config
    retrieval.CopyFrom(config.retrieval_config)
    retrieval.match_distance_threshold, retrieval.match_ratio_threshold = distance, ratio
    retrieval.ransac_stop_probability = stop
    params = RansacParams.from_config(retrieval)
    counts = {
      kind: [verify_pair(features(a), features(b), params).num_inliers for a, b in pairs]
      for kind, pairs in (("positive", positives), ("negative", negatives))
    }
    separation = float(
      np.median(counts["positive"]) / (np.percentile(counts["negative"], 95) + 1.0)
    )
    results[label] = {
      "distance": distance,
      "ratio": ratio,
      "stop_probability": stop,
      "separation": round(separation, 3),
      "positive_median": round(float(np.median(counts["positive"])), 1),
      "negative_p95": round(float(np.percentile(counts["negative"], 95)), 1),
    }
    print(label, json.dumps(results[label]), flush=True)
  best = max(results, key=lambda label: results[label]["separation"])
  print(f"best: {best}")
  if args.dry_run:
    return
  text = config_path.read_text()
  table = "".join(
    f"  #   {label}: median inliers {r['positive_median']:g} (overlapping), 95th "
    f"percentile {r['negative_p95']:g} (unrelated), ratio {r['separation']:g}\n"
    for label, r in results.items()
  )
  block = (
    f"retrieval_config {{\n  # Chosen by scripts/calibrate_matching.py on training photos: "
    f"{best} separates\n  # {len(positives)} overlapping from {len(negatives)} unrelated "
    f"training pairs best:\n{table}"
    f"  match_distance_threshold: {results[best]['distance']}\n"
    f"  match_ratio_threshold: {results[best]['ratio']}\n"
    f"  ransac_stop_probability: {results[best]['stop_probability']}\n}}\n"
  )
  text = re.sub(r"retrieval_config \{.*?\n\}\n", lambda _: block, text, flags=re.S)
  config_path.write_text(text)
  print(f"wrote {config_path}")


if __name__ == "__main__":
  main()
