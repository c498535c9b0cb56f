"""Figures of the shipped default model beside random initialisation and OpenCV SIFT, one run.

Methods (all through the same matching, index, voting, RANSAC and evaluation code):
  * default_model: the checkpoint shipped in delf_ret/default_model with its
    packaged config (delf_ret/default_model/delf_config.pbtxt);
  * random_init: the same architecture randomly initialised (seed 0), the same
    config except the attention threshold (0: random attention scores mean
    nothing, the top features are kept) and a PCA learned the same way (on
    the same training photos);
  * opencv_sift: OpenCV SIFT, 1000 features at the same maximum image side,
    L2-normalised; putative matches by Lowe's ratio test (0.8), its usual rule (no
    mutual check); RANSAC, spread check, min_inliers and reranking line as the default
    model's config.
Benchmarks:
  * pairs (../shared/data/pairs): putative matches and RANSAC inliers (the
    config's retrieval_config matching and RANSAC); for graf1/graf3 the inliers
    whose reprojection error under the ground-truth homography H1to3p is below
    10 px and below 20 px, and the inlier precision (share below 10 px);
  * attention ranking (default model, graf1/graf3): share of correct putative
    matches among the top half of each image's features by attention against
    random halves (mean of 20 seeded draws);
  * mini-landmarks (../shared/data/labels.csv, Revisited easy/medium/hard and
    the original protocol, hard positives of benchmarks/mini_landmarks_hard.txt)
    and UKBench (../shared/data/ukbench: each image a query, the other 3 of its
    group the positives; the UKBench score = mean number of the group's 4
    images in the top 4): mAP of the first stage (votes) and after reranking;
  * seconds per image of feature extraction (2 cores).
Results go to benchmarks/results/default_model.json; the tables in README.md and
delf_ret/default_model/MODEL_CARD.md are rendered from that JSON
(``--render_only`` re-renders them without running anything).

A retrained model (the recipe's OUTPUT_DIR/default_model) is benchmarked
without installing it with ``--model_dir``, its own ``--output`` and, to save
time, ``--methods default_model``; ``--compare_to`` then prints each of its
figures beside the committed ones, with their ratio (the recipe's rerun check:
every figure within 10%). Once that rerun's JSON is committed as
benchmarks/results/default_model_rerun.json, the model card's training facts
quote its comparison with the committed figures.

Usage: python benchmarks/default_model.py [--output ...] [--render_only]
       python benchmarks/default_model.py --model_dir runs/default/default_model \
           --methods default_model --output rerun.json \
           --compare_to benchmarks/results/default_model.json
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import pathlib
import shutil
import time

import numpy as np
from mini_landmarks import index_and_run
from results_io import render_between
from results_io import write_result
from sift_baseline import sift_features
from sift_baseline import sift_retrieval_config

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULT = REPO / "benchmarks" / "results" / "default_model.json"
# The recipe rerun from scratch, benchmarked with --model_dir (its check is quoted in the card).
RERUN = REPO / "benchmarks" / "results" / "default_model_rerun.json"
HARD_FILE = pathlib.Path(__file__).with_name("mini_landmarks_hard.txt")
MODEL_CARD = REPO / "delf_ret" / "default_model" / "MODEL_CARD.md"
PAIRS = [
  ("graf1.png", "graf3.png"),
  ("leuvenA.jpg", "leuvenB.jpg"),
  ("aero1.jpg", "aero3.jpg"),
  ("box.png", "box_in_scene.png"),
  ("roofs1.jpg", "roofs2.jpg"),
  ("river1.jpg", "river2.jpg"),
  ("sacre_coeur_1.jpg", "sacre_coeur_2.jpg"),
]
# Pairs whose photos are the README demo's (in the repository), not ../shared/data/pairs.
DEMO_DATA = REPO / "delf_ret" / "demo_data"
DEMO_PAIRS = {"sacre_coeur_1.jpg/sacre_coeur_2.jpg": "day/night (demo photos)"}
METHODS = ("random_init", "default_model", "candidate_model", "opencv_sift")
# What a run without --candidate_dir measures.
STANDARD_METHODS = ("random_init", "default_model", "opencv_sift")
LABELS = {
  "random_init": "DELF, random initialisation",
  "default_model": "DELF, default model",
  "candidate_model": "DELF, candidate model",
  "opencv_sift": "OpenCV SIFT",
}
FP_KINDS = ("landmark-distractor", "distractor-distractor", "landmark-landmark")
# Photos (evenly spaced over the sorted training photos) the random model's PCA is learned on.
PCA_TRAINING_PHOTOS = 40
START, END = "<!-- default_model table: start -->", "<!-- default_model table: end -->"
TRAINING_START, TRAINING_END = "<!-- training facts: start -->", "<!-- training facts: end -->"


def read_homography(path: pathlib.Path) -> np.ndarray:
  import cv2

  storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
  matrix = storage.getNode("H13").mat()
  storage.release()
  return matrix


def reprojection_errors(
  features_a, features_b, matches: np.ndarray, homography: np.ndarray
) -> np.ndarray:
  """Pixel error [M] of (index_a, index_b) matches under a homography on (x, y, 1)."""
  from delf_ret.extract.geometry import apply_homography

  projected = apply_homography(homography, features_a.locations[matches[:, 0]])
  errors = np.linalg.norm(projected - features_b.locations[matches[:, 1]], axis=1)
  return np.where(np.isfinite(errors), errors, np.inf)


def pair_row(features_a, features_b, params, homography) -> dict:
  from delf_ret.match import verify_pair

  result = verify_pair(features_a, features_b, params)
  row = {
    "features": [features_a.num_features, features_b.num_features],
    "putative_matches": result.num_matches,
    "inliers": result.num_inliers,
  }
  if homography is not None:
    inliers = result.matches[result.inliers]
    errors = reprojection_errors(features_a, features_b, inliers, homography)
    row["correct_inliers_10px"] = int((errors < 10).sum())
    row["correct_inliers_20px"] = int((errors < 20).sum())
    row["inlier_precision_10px"] = (
      round(row["correct_inliers_10px"] / len(inliers), 3) if len(inliers) else None
    )
  return row


def attention_ranking(features_a, features_b, params, homography, draws: int = 20) -> dict:
  """Share of correct (< 10 px) putative matches: top half by attention vs random halves."""
  from delf_ret.features import LocalFeatures
  from delf_ret.match import putative_matches

  def subset(features, keep):
    return LocalFeatures(
      features.locations[keep],
      features.scales[keep],
      features.descriptors[keep],
      features.attention[keep],
      features.orientations[keep],
    )

  def share(keep_a, keep_b):
    a, b = subset(features_a, keep_a), subset(features_b, keep_b)
    matches = putative_matches(
      a.descriptors, b.descriptors, params.distance_threshold, params.ratio_threshold, params.mutual
    )
    if not len(matches):
      return 0.0, 0
    return float((reprojection_errors(a, b, matches, homography) < 10).mean()), len(matches)

  half_a, half_b = features_a.num_features // 2, features_b.num_features // 2
  top = share(
    np.argsort(-features_a.attention, kind="stable")[:half_a],
    np.argsort(-features_b.attention, kind="stable")[:half_b],
  )
  rng = np.random.default_rng(0)
  random = [
    share(
      rng.permutation(features_a.num_features)[:half_a],
      rng.permutation(features_b.num_features)[:half_b],
    )
    for _ in range(draws)
  ]
  return {
    "top_half_correct_share": round(top[0], 3),
    "top_half_matches": top[1],
    "random_half_correct_share": round(float(np.mean([r[0] for r in random])), 3),
    "random_half_matches": round(float(np.mean([r[1] for r in random])), 1),
  }


class TimedExtractor:
  """image -> features, counting the calls and their seconds (wrapped in a ContentCache, so
  each distinct image is extracted once: queries are whole database images)."""

  def __init__(self, extract):
    self.extract, self.seconds, self.count = extract, 0.0, 0

  def __call__(self, image: np.ndarray):
    start = time.perf_counter()
    features = self.extract(image)
    self.seconds += time.perf_counter() - start
    self.count += 1
    return features


def ukbench_labels(work: pathlib.Path) -> pathlib.Path:
  """labels.csv in the image,landmark layout for ../shared/data/ukbench (group = landmark)."""
  rows = [("image", "landmark")]
  with open(SHARED / "ukbench" / "labels.csv", newline="") as handle:
    for row in csv.DictReader(handle):
      rows.append(
        (
          str((SHARED / "ukbench" / row["image"]).resolve()),
          f"group_{int(row['object_group']):03d}",
        )
      )
  work.mkdir(parents=True, exist_ok=True)
  path = work / "ukbench_labels.csv"
  with open(path, "w", newline="") as handle:
    csv.writer(handle).writerows(rows)
  return path


def ukbench_score(dataset, results, stage: str) -> float:
  """Mean number of the query's group (query included) among its top 4 (UKBench's score)."""
  from delf_ret.retrieval.dataset_runner import ranked_indices

  total = 0
  for query, result, gnd in zip(dataset.qimlist, results, dataset.gnd):
    group = set(gnd["easy"]) | set(gnd["hard"]) | {dataset.imlist.index(query)}
    ranked = ranked_indices(getattr(result, stage), dataset)[:4]
    total += sum(int(i) in group for i in ranked)
  return total / len(dataset.qimlist)


def run_retrieval(name, extract, retrieval_config, dataset_dir, labels, hard, work, also_original):
  from delf_ret.datasets.labelled import write_labelled_benchmark
  from delf_ret.evaluation.ground_truth import read_original_gt
  from delf_ret.evaluation.ground_truth import read_revisited_gnd
  from delf_ret.images import load_image

  paths = write_labelled_benchmark(labels, dataset_dir, name=dataset_dir.name, hard_images=hard)
  revisited = read_revisited_gnd(paths["gnd_path"], paths["images_dir"])
  others = (
    [read_original_gt(paths["gt_dir"], paths["images_dir"], dataset_dir.name)]
    if also_original
    else []
  )
  run = index_and_run(
    work,
    revisited,
    retrieval_config,
    lambda path: extract(load_image(path)),
    extract,
    others,
    lambda line: None,
  )
  row = {
    "mAP": {
      stage: {
        split: (round(100 * m.mean_ap, 2) if np.isfinite(m.mean_ap) else None)
        for split, m in splits.items()
      }
      for stage, splits in run.metrics.items()
    },
    "queries": len(revisited.qimlist),
    "database_images": len(revisited.imlist),
    "seconds_per_query": round(run.seconds_per_query, 2),
  }
  return row, revisited, run.results


def matching_rule(retrieval_config) -> str:
  rule = []
  if np.isfinite(retrieval_config.match_distance_threshold):
    rule.append(f"distance < {retrieval_config.match_distance_threshold:g}")
  if retrieval_config.match_ratio_threshold:
    rule.append(f"ratio < {retrieval_config.match_ratio_threshold:g}")
  if retrieval_config.match_mutual:
    rule.append("mutual")
  return ", ".join(rule)


def verification_rule(retrieval_config) -> str:
  """The RANSAC method, spread check, min_inliers and reranking line of a retrieval config,
  as one table cell."""
  method = {"ransac": "RANSAC"}.get(
    retrieval_config.ransac_method, retrieval_config.ransac_method.replace("usac_", "USAC ")
  )
  parts = [
    f"{retrieval_config.ransac_transform} {method} {retrieval_config.ransac_residual_threshold:g} px"
  ]
  if retrieval_config.min_inlier_spread:
    parts.append(f"spread >= {retrieval_config.min_inlier_spread:g}")
  parts.append(f"verified at >= {retrieval_config.min_inliers}")
  line = max(1, retrieval_config.rerank_min_inliers)
  parts.append("any inlier moves up" if line == 1 else f"moves up at >= {line}")
  return ", ".join(parts)


def build_methods(
  work: pathlib.Path,
  model_dir: pathlib.Path,
  default_config,
  only: tuple[str, ...] = STANDARD_METHODS,
  candidate_dir: pathlib.Path | None = None,
):
  """{method: (extract function, retrieval_config, description)} for the methods ``only``;
  model_dir: the default model's files, default_config: its config (loaded from them);
  candidate_dir: another model's files (a recipe's OUTPUT_DIR/default_model), the
  candidate_model method."""
  from delf_ret import config as config_lib
  from delf_ret.default_model import CONFIG_FILE
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.extract.pca_training import learn_pca_from_images
  from delf_ret.extract.pca_training import with_pca
  from delf_ret.model import DelfModel
  from delf_ret.train.photos import list_training_photos

  methods = {}
  if "random_init" in only:
    random_model = DelfModel(num_classes=1, backbone_weights=None, seed=0)
    random_config = config_lib.load_config(
      model_dir / CONFIG_FILE,
      ["delf_local_config.score_threshold=0", "delf_local_config.use_pca=false"],
    )
    photos = list_training_photos(SHARED / "train")
    photos = [photos[i] for i in np.linspace(0, len(photos) - 1, PCA_TRAINING_PHOTOS).astype(int)]
    learned = learn_pca_from_images(
      random_config, photos, work / "random_pca", model=random_model, log=lambda line: None
    )
    random = DelfExtractor(with_pca(random_config, learned.paths), model=random_model)
    methods["random_init"] = (
      random.extract,
      default_config.retrieval_config,
      f"random initialisation (seed 0), attention threshold 0, PCA "
      f"learned on {PCA_TRAINING_PHOTOS} training photos",
    )
  if "default_model" in only:
    methods["default_model"] = (
      DelfExtractor(default_config).extract,
      default_config.retrieval_config,
      f"{model_label(model_dir)} (float16 weights) with its packaged config",
    )
  if "candidate_model" in only:
    candidate_config = config_lib.load_config(pathlib.Path(candidate_dir) / CONFIG_FILE)
    methods["candidate_model"] = (
      DelfExtractor(candidate_config).extract,
      candidate_config.retrieval_config,
      f"{candidate_dir} (float16 weights) with its own config",
    )
  if "opencv_sift" in only:
    max_side = default_config.max_image_size
    sift_retrieval = sift_retrieval_config(default_config.retrieval_config)
    sift = lambda image: sift_features(image, unit_descriptors=True, max_side=max_side)  # noqa: E731
    methods["opencv_sift"] = (
      sift,
      sift_retrieval,
      f"OpenCV SIFT, 1000 features, longer side <= {max_side} px, unit descriptors",
    )
  return methods


def model_label(model_dir: pathlib.Path) -> str:
  """How a model folder is named in the JSON: the package's, or the folder given."""
  from delf_ret.default_model import default_model_dir

  return (
    "delf_ret/default_model"
    if model_dir.resolve() == default_model_dir().resolve()
    else str(model_dir)
  )


def result_header(config, model_dir: pathlib.Path) -> dict:
  """The result's settings and model facts, with empty sections for the figures."""
  from delf_ret.default_model import WEIGHTS_FILE
  from delf_ret.model.compact import weights_digest

  # The machine and library versions are recorded by write_result (``environment``).
  result = {
    "benchmark": "default_model",
    "config": {
      "max_image_size": config.max_image_size,
      "image_scales": [round(s, 4) for s in config.image_scales],
      "max_feature_num": config.delf_local_config.max_feature_num,
      "score_threshold": round(config.delf_local_config.score_threshold, 4),
      "pca_dim": config.delf_local_config.pca_parameters.pca_dim,
      "rerank_top_n": config.retrieval_config.rerank_top_n,
      "ransac": f"{config.retrieval_config.ransac_transform}, "
      f"{config.retrieval_config.ransac_residual_threshold:g} px",
    },
    "methods": {},
    "pairs": {},
    "attention_ranking": None,
    "mini_landmarks": {},
    "ukbench": {},
    "false_positives": {},
  }
  facts = model_dir / "TRAINING.json"
  result["training"] = json.loads(facts.read_text()) if facts.is_file() else None
  # Tells a bit-identical retraining (deterministic recipe) from a different model.
  result["model_dir"] = model_label(model_dir)
  result["weights_sha256"] = weights_digest(model_dir / WEIGHTS_FILE)
  return result


def run_pairs(result: dict, name: str, cached, params, homography: np.ndarray) -> None:
  """The pair figures of one method (and the attention ranking of the default model)."""
  from delf_ret.images import load_image

  for name_a, name_b in PAIRS:
    folder = DEMO_DATA if f"{name_a}/{name_b}" in DEMO_PAIRS else SHARED / "pairs"
    features_a = cached(load_image(folder / name_a))
    features_b = cached(load_image(folder / name_b))
    is_graf = name_a == "graf1.png"
    row = pair_row(features_a, features_b, params, homography if is_graf else None)
    if is_graf and name != "opencv_sift":
      # The same DELF features with the published 0.8 distance test instead of the
      # default model's calibrated rule, for a comparison that favours neither.
      row["published_0.8"] = pair_row(
        features_a, features_b, dataclasses.replace(params, distance_threshold=0.8), homography
      )
    result["pairs"].setdefault(f"{name_a}/{name_b}", {})[name] = row
    if is_graf and name == "default_model":
      result["attention_ranking"] = attention_ranking(features_a, features_b, params, homography)


def run_false_positives(result: dict, name: str, cached, params, min_inliers: int) -> None:
  """Unrelated pairs of the mini-landmarks photos (../shared/data/labels.csv: landmarks and
  distractors) that reach the method's min_inliers."""
  from delf_ret.evaluation.false_positives import count_false_positives
  from delf_ret.images import load_image
  from delf_ret.match import verify_pair

  with open(SHARED / "labels.csv", newline="") as handle:
    groups = {row["image"]: row["landmark"] for row in csv.DictReader(handle)}

  def inliers_of(image_a: str, image_b: str) -> int:
    features = [cached(load_image(SHARED / image)) for image in (image_a, image_b)]
    return verify_pair(features[0], features[1], params).num_inliers

  counted = count_false_positives(groups, inliers_of, min_inliers)
  result["false_positives"][name] = counted.to_json()


def run_datasets(
  result: dict, name: str, cached, retrieval_config, hard, ukbench: pathlib.Path, work
) -> None:
  """The mini-landmarks and UKBench figures of one method."""
  from delf_ret import config as config_lib

  print(f"{name}: mini-landmarks ...", flush=True)
  row, _, _ = run_retrieval(
    name,
    cached,
    retrieval_config,
    work / "mini_landmarks",
    SHARED / "labels.csv",
    hard,
    work / name / "mini_landmarks",
    True,
  )
  result["mini_landmarks"][name] = row
  print(f"{name}: ukbench ...", flush=True)
  # UKBench's score counts the query image itself among its top 4, so its reranking
  # verifies the query image too (in the labelled layout it is junk for its own query).
  ukbench_retrieval = config_lib.DelfConfig().retrieval_config
  ukbench_retrieval.CopyFrom(retrieval_config)
  ukbench_retrieval.rerank_skip_junk = False
  row, dataset, results = run_retrieval(
    name,
    cached,
    ukbench_retrieval,
    work / "ukbench",
    ukbench,
    frozenset(),
    work / name / "ukbench",
    False,
  )
  row["ukbench_score"] = {
    stage: round(ukbench_score(dataset, results, attribute), 3)
    for stage, attribute in (("first_stage", "ranked"), ("reranked", "reranked"))
  }
  result["ukbench"][name] = row


def run_all(
  work: pathlib.Path,
  model_dir: pathlib.Path | None = None,
  only: tuple[str, ...] = STANDARD_METHODS,
  candidate_dir: pathlib.Path | None = None,
) -> dict:
  """Every benchmark for the methods ``only``; model_dir: the default model's files
  (default: the shipped ones, delf_ret/default_model); candidate_dir: see build_methods."""
  from delf_ret import config as config_lib
  from delf_ret.default_model import CONFIG_FILE
  from delf_ret.default_model import default_model_dir
  from delf_ret.match import RansacParams
  from delf_ret.retrieval.demo import ContentCache

  model_dir = pathlib.Path(model_dir or default_model_dir())
  shutil.rmtree(work, ignore_errors=True)
  config = config_lib.load_config(model_dir / CONFIG_FILE)
  methods = build_methods(work, model_dir, config, only, candidate_dir)
  hard = frozenset(
    line.split("#")[0].strip()
    for line in HARD_FILE.read_text().splitlines()
    if line.split("#")[0].strip()
  )
  homography = read_homography(SHARED / "pairs" / "H1to3p.xml")
  result = result_header(config, model_dir)
  if candidate_dir is not None:
    result["candidate"] = candidate_facts(pathlib.Path(candidate_dir))
  ukbench = ukbench_labels(work)
  for name, (extract, retrieval_config, description) in methods.items():
    print(f"{name}: pairs ...", flush=True)
    timed = TimedExtractor(extract)
    cached = ContentCache(timed)
    result["methods"][name] = {
      "description": description,
      "putative_matches": matching_rule(retrieval_config),
      "verification": verification_rule(retrieval_config),
    }
    params = RansacParams.from_config(retrieval_config)
    run_pairs(result, name, cached, params, homography)
    run_false_positives(result, name, cached, params, retrieval_config.min_inliers)
    run_datasets(result, name, cached, retrieval_config, hard, ukbench, work)
    result["methods"][name]["extraction_seconds_per_image"] = round(
      timed.seconds / max(1, timed.count), 2
    )
    result["methods"][name]["images_extracted"] = timed.count
    print(json.dumps(result["methods"][name]), flush=True)
  return result


def render_tables(result: dict) -> str:
  """Markdown tables of a default_model.json result (README and model card): a column for
  each method the result holds."""
  shown = [m for m in METHODS if m in result["methods"]]
  labels = dict(LABELS)
  if result.get("candidate"):
    labels["candidate_model"] = f"DELF, {result['candidate']['label']}"
  lines = ["| | " + " | ".join(labels[m] for m in shown) + " |", "|---|" + "---|" * len(shown)]

  def row(label, values):
    lines.append(f"| {label} | " + " | ".join(str(v) for v in values) + " |")

  graf = result["pairs"]["graf1.png/graf3.png"]
  row(
    "graf1/graf3 correct inliers (< 10 px / < 20 px)",
    [f"{graf[m]['correct_inliers_10px']} / {graf[m]['correct_inliers_20px']}" for m in shown],
  )
  row(
    "graf1/graf3 inliers, precision (< 10 px)",
    [f"{graf[m]['inliers']}, {graf[m]['inlier_precision_10px']}" for m in shown],
  )
  row(
    "graf1/graf3 correct inliers (< 10 px / < 20 px), published 0.8 distance test",
    [
      f"{graf[m]['published_0.8']['correct_inliers_10px']} / "
      f"{graf[m]['published_0.8']['correct_inliers_20px']}"
      if "published_0.8" in graf[m]
      else "-"
      for m in shown
    ],
  )
  for pair, rows in result["pairs"].items():
    if pair != "graf1.png/graf3.png":
      label = f"{pair} ({DEMO_PAIRS[pair]})" if pair in DEMO_PAIRS else pair
      row(
        f"{label} inliers / putative",
        [f"{rows[m]['inliers']} / {rows[m]['putative_matches']}" for m in shown],
      )
  if result.get("false_positives"):
    fp = result["false_positives"]
    row(
      "unrelated pairs verified: landmark-distractor / distractor-distractor / "
      "landmark-landmark (min_inliers)",
      [
        " / ".join(f"{fp[m]['accepted'][k]} of {fp[m]['pairs'][k]}" for k in FP_KINDS)
        + f" ({fp[m]['min_inliers']})"
        for m in shown
      ],
    )
  for stage, label in (("first_stage", "votes"), ("reranked", "reranked")):
    row(
      f"mini-landmarks mAP easy / medium / hard, {label}",
      [
        " / ".join(
          f"{result['mini_landmarks'][m]['mAP'][stage][s]:.1f}" for s in ("easy", "medium", "hard")
        )
        for m in shown
      ],
    )
  for stage, label in (("first_stage", "votes"), ("reranked", "reranked")):
    split = next(iter(result["ukbench"][shown[0]]["mAP"][stage]))
    row(
      f"UKBench mAP / score (of 4), {label}",
      [
        f"{result['ukbench'][m]['mAP'][stage][split]:.1f} / "
        f"{result['ukbench'][m]['ukbench_score'][stage]:.2f}"
        for m in shown
      ],
    )
  row("putative matches", [result["methods"][m]["putative_matches"] for m in shown])
  row("verification", [result["methods"][m].get("verification", "-") for m in shown])
  row(
    "extraction seconds / image",
    [result["methods"][m]["extraction_seconds_per_image"] for m in shown],
  )
  ranking = result["attention_ranking"]
  lines.append("")
  lines.append(
    f"Attention ranking (default model, graf1/graf3): the top half of each image's "
    f"features by attention gives {ranking['top_half_correct_share']:.1%} correct "
    f"putative matches ({ranking['top_half_matches']} matches), random halves "
    f"{ranking['random_half_correct_share']:.1%} "
    f"({ranking['random_half_matches']:g} matches on average)."
  )
  return "\n".join(lines)


def render_training(result: dict, rerun: dict | None = None) -> str:
  """One paragraph of training facts (delf_ret/default_model/TRAINING.json, copied into the
  result) and, given the recipe rerun's result JSON, what comparing it with ``result`` gave."""
  facts = result.get("training")
  if not facts:
    return "No TRAINING.json was shipped with the model."
  minutes = facts["training_wall_seconds"] / 60
  machine = ", ".join(filter(None, (facts["machine"], facts.get("cpu_model"))))
  libraries = facts.get("libraries", {})
  opencv = libraries.get("opencv-python-headless") or libraries.get("opencv-python")
  versions = ", ".join(
    f"{label} {version}"
    for label, version in (
      ("TensorFlow", libraries.get("tensorflow")),
      ("Keras", libraries.get("keras")),
      ("NumPy", libraries.get("numpy")),
      ("OpenCV", opencv),
    )
    if version
  )
  text = (
    f"Training: {facts['training_steps']} steps in {minutes:.0f} minutes of wall time "
    f"on {facts['cpu_cores']} CPU cores ({machine}{'; ' + versions if versions else ''}), "
    f"finished {facts['finished']}; the last run of the recipe script took "
    f"{facts['script_wall_seconds_this_run'] / 60:.0f} minutes (its training, or the "
    f"part left when it resumed, then export, PCA, matching calibration)."
  )
  if result.get("weights_sha256"):
    text += (
      f" Weights digest (`delf_ret.model.compact.weights_digest` of "
      f"`delf_default.npz`): `{result['weights_sha256'][:16]}`."
    )
  if rerun:
    again = rerun.get("training") or {}
    verdict = compare_figures(rerun, result)[-1]
    if not verdict.startswith("same weights"):
      verdict = f"other weights (digest `{str(rerun.get('weights_sha256'))[:16]}`); {verdict}"
    text += (
      f" A rerun of the recipe ({again.get('training_steps', '?')} steps, finished "
      f"{again.get('finished', 'date not recorded')}), benchmarked with `--model_dir` "
      f"(`benchmarks/results/{RERUN.name}`): {verdict}."
    )
  return text


def candidate_facts(candidate_dir: pathlib.Path) -> dict:
  """The candidate model's folder, weights digest and training facts (TRAINING.json)."""
  from delf_ret.default_model import WEIGHTS_FILE
  from delf_ret.model.compact import weights_digest

  facts = candidate_dir / "TRAINING.json"
  return {
    "model_dir": str(candidate_dir),
    "weights_sha256": weights_digest(candidate_dir / WEIGHTS_FILE),
    "training": json.loads(facts.read_text()) if facts.is_file() else None,
  }


def default_model_figures(result: dict) -> dict[str, float]:
  """The default model's figures of a result JSON, by name (what a rerun is compared on)."""
  figures = {}
  if "default_model" not in result.get("methods", {}) or not result.get("attention_ranking"):
    raise KeyError("default_model")
  graf = result["pairs"]["graf1.png/graf3.png"]["default_model"]
  figures["graf1/graf3 correct inliers < 10 px"] = graf["correct_inliers_10px"]
  figures["graf1/graf3 correct inliers < 20 px"] = graf["correct_inliers_20px"]
  ranking = result["attention_ranking"]
  figures["attention top half, correct share"] = ranking["top_half_correct_share"]
  figures["attention random halves, correct share"] = ranking["random_half_correct_share"]
  for dataset in ("mini_landmarks", "ukbench"):
    row = result[dataset]["default_model"]
    for stage in ("first_stage", "reranked"):
      splits = ("medium",) if dataset == "ukbench" else ("easy", "medium", "hard")
      for split in splits:
        figures[f"{dataset} {split} mAP, {stage}"] = row["mAP"][stage][split]
      if dataset == "ukbench":
        figures[f"ukbench score, {stage}"] = row["ukbench_score"][stage]
  return figures


def compare_figures(result: dict, reference: dict, tolerance: float = 0.1) -> list[str]:
  """Lines 'figure: this, reference, ratio' for the default model; the last says whether
  every figure is within ``tolerance`` (relative) of the reference's. A figure missing
  (None) on either side counts as outside. Raises KeyError naming a missing part."""
  ours, theirs = default_model_figures(result), default_model_figures(reference)
  lines, outside = [], []
  for name, value in ours.items():
    ref = theirs[name]
    if value is None or ref is None:
      outside.append(name)
      lines.append(f"{name}: {value} (reference {ref}, not comparable)")
      continue
    if abs(value - ref) > tolerance * abs(ref) + 1e-12:
      outside.append(name)
    ratio = f"{value / ref:.3f}" if ref else ("1.000" if value == ref else "n/a")
    lines.append(f"{name}: {value:g} (reference {ref:g}, ratio {ratio})")
  same = result.get("weights_sha256") and result.get("weights_sha256") == reference.get(
    "weights_sha256"
  )
  lines.append(
    ("same weights (digest) as the reference; " if same else "")
    + (
      f"all {len(ours)} figures within {tolerance:.0%}"
      if not outside
      else f"{len(outside)} of {len(ours)} figures outside {tolerance:.0%}: {', '.join(outside)}"
    )
  )
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output", default=str(RESULT))
  parser.add_argument("--work_dir", default=str(REPO / "benchmarks" / "output" / "default_model"))
  parser.add_argument(
    "--render_only",
    action="store_true",
    help="only re-render the README and model-card tables from --output",
  )
  parser.add_argument(
    "--model_dir",
    help="benchmark these default-model files (a recipe's "
    "OUTPUT_DIR/default_model) instead of delf_ret/default_model",
  )
  parser.add_argument(
    "--methods",
    default=",".join(STANDARD_METHODS),
    help=f"comma-separated subset of {','.join(STANDARD_METHODS)}",
  )
  parser.add_argument(
    "--candidate_dir",
    help="also benchmark these model files (e.g. a retrained model, or the previous default "
    "model) in a column beside the default model's",
  )
  parser.add_argument(
    "--candidate_label", default="candidate model", help="the candidate's column title"
  )
  parser.add_argument(
    "--compare_to", help="a result JSON: print the default model's figures beside its, with ratios"
  )
  args = parser.parse_args()
  only = tuple(m for m in args.methods.split(",") if m)
  if not only:
    parser.error(f"--methods: name at least one of {','.join(STANDARD_METHODS)}")
  if args.candidate_dir:
    if not (pathlib.Path(args.candidate_dir) / "delf_config.pbtxt").is_file():
      parser.error(f"--candidate_dir: {args.candidate_dir}: no delf_config.pbtxt there")
    only += ("candidate_model",)
  if args.render_only and args.model_dir:
    parser.error("--render_only renders --output as it is; --model_dir needs a run")
  if args.compare_to and not pathlib.Path(args.compare_to).is_file():
    parser.error(f"--compare_to: {args.compare_to}: file not found")
  if set(only) - set(METHODS):
    parser.error(f"--methods: unknown {sorted(set(only) - set(METHODS))}; known: {METHODS}")
  if args.compare_to and "default_model" not in only:
    parser.error("--compare_to compares the default model's figures: keep it in --methods")
  shipped = args.model_dir is None and set(STANDARD_METHODS) <= set(only)
  if (
    not shipped and not args.render_only and pathlib.Path(args.output).resolve() == RESULT.resolve()
  ):
    parser.error(
      f"--model_dir or --methods: give an --output other than {RESULT.name}, "
      "which holds the shipped model's figures"
    )
  if not args.render_only:
    start = time.time()
    result = run_all(
      pathlib.Path(args.work_dir),
      args.model_dir and pathlib.Path(args.model_dir),
      only,
      args.candidate_dir and pathlib.Path(args.candidate_dir),
    )
    if args.candidate_dir:
      result["candidate"]["label"] = args.candidate_label
    result["benchmark_seconds"] = round(time.time() - start)
    write_result(args.output, result)
  result = json.loads(pathlib.Path(args.output).read_text())
  if args.compare_to:
    try:
      lines = compare_figures(result, json.loads(pathlib.Path(args.compare_to).read_text()))
    except KeyError as error:
      parser.error(f"{args.output} or {args.compare_to}: no default-model figure {error}")
    print("\n".join(lines))
  if not shipped:
    return
  table = render_tables(result)
  for path in (REPO / "README.md", MODEL_CARD):
    render_between(path, table, START, END)
  rerun = json.loads(RERUN.read_text()) if RERUN.is_file() else None
  render_between(MODEL_CARD, render_training(result, rerun), TRAINING_START, TRAINING_END)


if __name__ == "__main__":
  main()
