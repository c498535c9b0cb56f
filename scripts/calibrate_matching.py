"""Chooses a model's matching rule and min_inliers on training photos only; writes them into its config.

Verification must say no to unrelated photos. Related training pairs (neighbours
within a scene or camera sequence, two photos of one landmark) and unrelated ones (photos of different folders or
of different landmarks / object classes) come from delf_ret.train.calibration. For each
candidate putative-matching rule (distance tests, Lowe's ratio test), every pair is
matched and verified with the config's RANSAC; min_inliers is set just above the most
inliers any unrelated pair reaches, and the rule that lets the largest share of
related pairs through at that threshold is written into the config's
retrieval_config with its min_inliers. Never run it on evaluation sets.

Usage: python scripts/calibrate_matching.py CONFIG.pbtxt TRAIN_DIR [TRAIN_DIR ...]
           [--related 150] [--unrelated 1500] [--dry_run]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re

import numpy as np

# (label, match_distance_threshold, match_ratio_threshold); 2.0 turns the distance test off
# for unit descriptors.
RULES = [
  ("distance 0.8", 0.8, 0.0),
  ("distance 0.6", 0.6, 0.0),
  ("distance 0.5", 0.5, 0.0),
  ("distance 0.45", 0.45, 0.0),
  ("distance 0.4", 0.4, 0.0),
  ("distance 0.35", 0.35, 0.0),
  ("ratio 0.9", 2.0, 0.9),
  ("ratio 0.85", 2.0, 0.85),
  ("ratio 0.8", 2.0, 0.8),
]


def evaluate_rules(config, features, related, unrelated) -> dict:
  """{rule label: its figures} for every rule of RULES (prints one JSON line each)."""
  from delf_ret import config as config_lib
  from delf_ret.match import RansacParams
  from delf_ret.match import verify_pair
  from delf_ret.train.calibration import threshold_above

  results = {}
  for rule, distance, ratio in RULES:
    retrieval = config_lib.DelfConfig().retrieval_config
    retrieval.CopyFrom(config.retrieval_config)
    retrieval.match_distance_threshold, retrieval.match_ratio_threshold = distance, ratio
    params = RansacParams.from_config(retrieval)
    counts = {
      kind: [verify_pair(features(a), features(b), params).num_inliers for a, b in pairs]
      for kind, pairs in (("related", related), ("unrelated", unrelated))
    }
    min_inliers = threshold_above(counts["unrelated"])
    results[rule] = {
      "distance": distance,
      "ratio": ratio,
      "min_inliers": min_inliers,
      "related_verified": round(float(np.mean(np.array(counts["related"]) >= min_inliers)), 3),
      "related_median": float(np.median(counts["related"])),
      "unrelated_p99": round(float(np.percentile(counts["unrelated"], 99)), 1),
    }
    print(rule, json.dumps(results[rule]), flush=True)
  return results


def config_block(results: dict, best: str, num_related: int, num_unrelated: int) -> str:
  """The retrieval_config block written into the config, with the table of every rule."""
  table = "".join(
    f"  #   {label}: min_inliers {r['min_inliers']}, {100 * r['related_verified']:.1f}% of "
    f"related pairs verified (median {r['related_median']:g} inliers)\n"
    for label, r in results.items()
  )
  chosen = results[best]
  return (
    f"retrieval_config {{\n  # Chosen by scripts/calibrate_matching.py on training photos: "
    f"min_inliers is one more than\n  # the most inliers of {num_unrelated} unrelated "
    f"training pairs; {best} verifies the most of\n  # {num_related} related pairs "
    f"at its threshold:\n{table}"
    f"  match_distance_threshold: {chosen['distance']}\n"
    f"  match_ratio_threshold: {chosen['ratio']}\n"
    f"  min_inliers: {chosen['min_inliers']}\n}}\n"
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("config_path")
  parser.add_argument("train_dirs", nargs="+")
  parser.add_argument("--related", type=int, default=150, help="related pairs")
  parser.add_argument("--unrelated", type=int, default=1500, help="unrelated pairs")
  parser.add_argument("--dry_run", action="store_true", help="print, do not write the config")
  args = parser.parse_args()

  from delf_ret import config as config_lib
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.train.calibration import calibration_pairs
  from delf_ret.train.calibration import calibration_photos

  config_path = pathlib.Path(args.config_path)
  config = config_lib.load_config(config_path)
  photos = calibration_photos(args.train_dirs)
  related, unrelated = calibration_pairs(photos, args.related, args.unrelated)
  if not related or not unrelated:
    print(
      f"best: none (calibration skipped: {len(related)} related and {len(unrelated)} "
      f"unrelated training pairs; the config keeps its matching rule)"
    )
    return
  extractor, cache = DelfExtractor(config), {}

  def features(path):
    if path not in cache:
      cache[path] = extractor.extract_file(path)
      if len(cache) % 50 == 0:
        print(f"extracted {len(cache)} photos", flush=True)
    return cache[path]

  results = evaluate_rules(config, features, related, unrelated)
  best = max(
    results,
    key=lambda r: (results[r]["related_verified"], -results[r]["min_inliers"]),
  )
  print(f"best: {best}")
  if args.dry_run:
    return
  block = config_block(results, best, len(related), len(unrelated))
  text = re.sub(
    r"retrieval_config \{.*?\n\}\n", lambda _: block, config_path.read_text(), flags=re.S
  )
  config_path.write_text(text)
  print(f"wrote {config_path}")


if __name__ == "__main__":
  main()
