"""Chooses a model's verification on training photos only and writes it into its config.

Verification must say no to unrelated photos. Related training pairs (neighbours
within a scene or camera sequence, two photos of one landmark) and unrelated ones (photos
of different folders or of different landmarks / object classes) come from
delf_ret.train.calibration. Every candidate putative-matching rule (RULES: distance or
Lowe's ratio test, with or without the mutual check) is tried with every verifier
(VERIFIERS: the RANSAC method and the inliers' spread check, retrieval_config
ransac_method and min_inlier_spread); for each, min_inliers is set just above the most
inliers any unrelated pair reaches, and the combination that lets the largest share of
related pairs through at that threshold is written into the config's retrieval_config
with its min_inliers, rerank_min_inliers (the same line: only verified candidates move up
in reranking) and the table of every combination. Other fields of the block are kept.
Never run it on evaluation sets.

Usage: python scripts/calibrate_matching.py CONFIG.pbtxt TRAIN_DIR [TRAIN_DIR ...]
           [--related 150] [--unrelated 1500] [--dry_run]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re

import numpy as np

# (label, match_distance_threshold, match_ratio_threshold, match_mutual); 2.0 turns the
# distance test off for unit descriptors. The mutual check alone is left out: several times
# the putative matches of a ratio test, and a line near 60 inliers (training data, 2026-12-07).
RULES = [
  ("distance 0.8", 0.8, 0.0, False),
  ("distance 0.5", 0.5, 0.0, False),
  ("ratio 0.9", 2.0, 0.9, False),
  ("ratio 0.85", 2.0, 0.85, False),
  ("ratio 0.8", 2.0, 0.8, False),
  ("ratio 0.9, mutual", 2.0, 0.9, True),
  ("ratio 0.85, mutual", 2.0, 0.85, True),
  ("ratio 0.8, mutual", 2.0, 0.8, True),
]
# (label, ransac_method, min_inlier_spread).
VERIFIERS = [
  ("RANSAC", "ransac", 0.0),
  ("RANSAC, spread 0.02", "ransac", 0.02),
  ("MAGSAC++", "usac_magsac", 0.0),
  ("MAGSAC++, spread 0.02", "usac_magsac", 0.02),
]
# The fields this script writes into retrieval_config.
CALIBRATED = (
  "match_distance_threshold",
  "match_ratio_threshold",
  "match_mutual",
  "ransac_method",
  "min_inlier_spread",
  "min_inliers",
  "rerank_min_inliers",
)


def pair_inliers(
  config, pool, pairs: np.ndarray, rule: tuple, verifiers: list[tuple]
) -> np.ndarray:
  """Inliers int [len(pairs), len(verifiers)] of every pair ([P, 2] indices into the
  features of ``pool``, a delf_ret.train.pair_verification.PairVerifier: on every core)
  under one matching rule: the putative matches are found once per pair and verified by
  each verifier."""
  from delf_ret import config as config_lib
  from delf_ret.match import RansacParams

  _, distance, ratio, mutual = rule
  params = []
  for _, method, spread in verifiers:
    retrieval = config_lib.DelfConfig().retrieval_config
    retrieval.CopyFrom(config.retrieval_config)
    retrieval.match_distance_threshold, retrieval.match_ratio_threshold = distance, ratio
    retrieval.match_mutual, retrieval.ransac_method = mutual, method
    retrieval.min_inlier_spread = spread
    params.append(RansacParams.from_config(retrieval))
  return pool.inliers(pairs, params)


def evaluate(config, pool, related: np.ndarray, unrelated: np.ndarray) -> dict:
  """{(rule label, verifier label): its figures} for every rule of RULES and verifier of
  VERIFIERS (prints one JSON line each); related, unrelated: pairs [P, 2] of indices into
  the features of ``pool`` (a PairVerifier)."""
  from delf_ret.train.calibration import threshold_above

  results = {}
  for rule in RULES:
    counts = {
      "related": pair_inliers(config, pool, related, rule, VERIFIERS),
      "unrelated": pair_inliers(config, pool, unrelated, rule, VERIFIERS),
    }
    for column, (verifier, method, spread) in enumerate(VERIFIERS):
      related_counts, unrelated_counts = (
        counts["related"][:, column],
        counts["unrelated"][:, column],
      )
      min_inliers = threshold_above(unrelated_counts.tolist())
      figures = {
        "distance": rule[1],
        "ratio": rule[2],
        "mutual": rule[3],
        "method": method,
        "spread": spread,
        "min_inliers": min_inliers,
        "related_verified": round(float(np.mean(related_counts >= min_inliers)), 3),
        "related_median": float(np.median(related_counts)),
        "unrelated_p99": round(float(np.percentile(unrelated_counts, 99)), 1),
      }
      results[(rule[0], verifier)] = figures
      print(f"{rule[0]} / {verifier}", json.dumps(figures), flush=True)
  return results


def best_of(results: dict) -> tuple[str, str]:
  """The combination verifying the most related pairs; ties: fewer min_inliers, then the
  earlier rule and verifier."""
  order = list(results)
  return max(
    order,
    key=lambda k: (results[k]["related_verified"], -results[k]["min_inliers"], -order.index(k)),
  )


def config_block(
  results: dict, best: tuple[str, str], num_related: int, num_unrelated: int, kept: str = ""
) -> str:
  """The retrieval_config block written into the config: the table of every combination,
  the chosen fields, then ``kept`` (the old block's other lines, as they were)."""
  table = "".join(
    f"  #   {rule} / {verifier}: min_inliers {r['min_inliers']}, "
    f"{100 * r['related_verified']:.1f}% (median {r['related_median']:g})\n"
    for (rule, verifier), r in results.items()
  )
  chosen = results[best]
  method = chosen["method"]
  return (
    f"retrieval_config {{\n  # Chosen by scripts/calibrate_matching.py on training photos: "
    f"min_inliers is one more than\n  # the most inliers of {num_unrelated} unrelated "
    f"training pairs; {best[0]} / {best[1]} verifies the most\n  # of {num_related} "
    f"related pairs at its threshold (share of related pairs verified, median inliers);\n"
    f"  # only verified candidates move up in reranking (rerank_min_inliers):\n{table}"
    f"  match_distance_threshold: {chosen['distance']}\n"
    f"  match_ratio_threshold: {chosen['ratio']}\n"
    f"  match_mutual: {str(chosen['mutual']).lower()}\n"
    f'  ransac_method: "{method}"\n'
    f"  min_inlier_spread: {chosen['spread']}\n"
    f"  min_inliers: {chosen['min_inliers']}\n"
    f"  rerank_min_inliers: {chosen['min_inliers']}\n"
    f"{kept}}}\n"
  )


def kept_lines(block_body: str) -> str:
  """The lines of an old retrieval_config block body that calibration does not write: every
  line but its "Chosen by" comment run and the CALIBRATED fields (other fields keep the
  comments just above them)."""
  kept, in_calibration_comment = [], False
  for line in block_body.splitlines(keepends=True):
    stripped = line.strip()
    if stripped.startswith("# Chosen by scripts/calibrate_matching.py"):
      in_calibration_comment = True
      continue
    if in_calibration_comment and stripped.startswith("#"):
      continue
    in_calibration_comment = False
    if stripped.split(":")[0] in CALIBRATED:
      continue
    kept.append(line)
  return "".join(kept)


def write_block(config_text: str, results: dict, best, num_related: int, num_unrelated: int):
  """config_text with its retrieval_config block replaced by the calibrated one (other
  fields of the old block kept; a block is added when there was none)."""
  pattern = re.compile(r"retrieval_config \{\n(.*?)\n?\}\n", flags=re.S)
  found = pattern.search(config_text)
  kept = kept_lines(found.group(1) + "\n") if found else ""
  block = config_block(results, best, num_related, num_unrelated, kept)
  if not found:
    return config_text + block
  return config_text[: found.start()] + block + config_text[found.end() :]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("config_path")
  parser.add_argument("train_dirs", nargs="+")
  parser.add_argument("--related", type=int, default=150, help="related pairs")
  parser.add_argument("--unrelated", type=int, default=1500, help="unrelated pairs")
  parser.add_argument("--dry_run", action="store_true", help="print, do not write the config")
  parser.add_argument(
    "--workers", type=int, default=None, help="processes verifying pairs (default: every CPU)"
  )
  args = parser.parse_args()

  from delf_ret import config as config_lib
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.train.calibration import calibration_pairs
  from delf_ret.train.calibration import calibration_photos
  from delf_ret.train.pair_verification import PairVerifier

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
  extractor, paths, features = DelfExtractor(config), {}, []

  def indices(pairs) -> np.ndarray:
    """Pairs of paths as pairs of indices into ``features`` (each photo extracted once)."""
    for path in (path for pair in pairs for path in pair):
      if path not in paths:
        paths[path] = len(features)
        features.append(extractor.extract_file(path))
        if len(features) % 50 == 0:
          print(f"extracted {len(features)} photos", flush=True)
    return np.array([(paths[a], paths[b]) for a, b in pairs], np.int64).reshape(-1, 2)

  related_pairs, unrelated_pairs = indices(related), indices(unrelated)
  with PairVerifier(features, args.workers) as pool:
    results = evaluate(config, pool, related_pairs, unrelated_pairs)
  best = best_of(results)
  print(f"best: {best[0]} / {best[1]}")
  if args.dry_run:
    return
  config_path.write_text(
    write_block(config_path.read_text(), results, best, len(related), len(unrelated))
  )
  print(f"wrote {config_path}")


if __name__ == "__main__":
  main()
