"""Retrieval quality on real landmark photos: DELF vs the classical SIFT baseline, same pipeline.

Data: ../shared/data/labels.csv (17 photos of 6 landmarks + 15 distractors),
written in the Revisited layout (easy / hard positives; the hard ones are the
photos listed in mini_landmarks_hard.txt, labelled by eye with the Revisited
criteria) and the original Oxford layout (good = easy, ok = hard). Every
landmark photo is a query (the whole image is its box); its own database copy
is junk.

Both methods go through the same code: features of every image -> flat index
(delf_ret.index.builder) -> votes -> RANSAC reranking of the top 100
(delf_ret.retrieval.dataset_runner with the default retrieval_config) -> evaluation.
  * DELF: the weights available offline, a randomly initialised model
    (seed 0; no pretrained or project-trained weights exist yet), 7-scale
    pyramid, longer side 512 px, top 1000 by attention, PCA to 40-d learned
    on the database images.
  * SIFT: OpenCV SIFT, 1000 features at longer side 512 px, L2-normalised
    128-d descriptors; putative matches by Lowe's ratio test (0.8), SIFT's usual
    rule, instead of DELF's 0.8 distance test.
Reports mAP (easy / medium / hard and original protocol) before and after
reranking, the DELF / SIFT ratio, and seconds per query.

Usage: python benchmarks/mini_landmarks.py [--output benchmarks/results/mini_landmarks.json]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np
from results_io import write_result
from sift_baseline import sift_features

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
HARD_FILE = pathlib.Path(__file__).with_name("mini_landmarks_hard.txt")
MAX_SIDE = 512


def read_hard_images() -> frozenset[str]:
  lines = HARD_FILE.read_text().splitlines()
  return frozenset(line.split("#")[0].strip() for line in lines if line.split("#")[0].strip())


def delf_extractors(config_path: pathlib.Path, images: list[pathlib.Path], work: pathlib.Path):
  """A DELF extractor function (image -> LocalFeatures) with PCA learned on ``images``."""
  from delf_ret import config as config_lib
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.extract.pca_training import learn_pca_from_images
  from delf_ret.extract.pca_training import with_pca
  from delf_ret.model import DelfModel

  model = DelfModel(num_classes=1, backbone_weights=None, seed=0)
  config = config_lib.load_config(
    config_path, [f"max_image_size={MAX_SIDE}", "delf_local_config.use_pca=false"]
  )
  learned = learn_pca_from_images(config, images, work / "pca", model=model, log=lambda line: None)
  assert not learned.failures, learned.failures
  extractor = DelfExtractor(with_pca(config, learned.paths), model=model)
  return extractor.extract, {path: extractor.finalize(raw) for path, raw in learned.raw.items()}


def index_and_run(work, revisited, retrieval_config, extract_file, extract, also_score, log):
  """Indexes the database of ``revisited`` under ``work`` (features of each image file by
  ``extract_file``), then runs every query (features by ``extract``) with ``retrieval_config``;
  returns run_benchmark's BenchmarkRun."""
  from delf_ret.config import DelfConfig
  from delf_ret.index import IndexParams
  from delf_ret.retrieval.benchmark import run_benchmark
  from delf_ret.retrieval.indexing import database_image_paths
  from delf_ret.retrieval.indexing import index_database

  features_dir = work / "features"
  indexed = index_database(
    work / "index",
    features_dir,
    IndexParams.from_config(retrieval_config),
    images=database_image_paths(revisited),
    extract=extract_file,
    log=lambda line: None,
  )
  assert not indexed.failures, indexed.failures
  config = DelfConfig()
  config.retrieval_config.CopyFrom(retrieval_config)
  return run_benchmark(
    config,
    revisited,
    indexed.index,
    features_dir,
    work / "run",
    extract=extract,
    also_score=also_score,
    log=log,
  )


def run_method(name, extract, database_features, datasets, retrieval_config, work):
  revisited, original = datasets
  # The database features are computed already: "extracting" an image looks its features up.
  run = index_and_run(
    work / name,
    revisited,
    retrieval_config,
    database_features.__getitem__,
    extract,
    [original],
    print,
  )
  mean_features = float(np.mean([f.num_features for f in database_features.values()]))
  return {
    "mAP": {
      stage: {split: round(100 * m.mean_ap, 2) for split, m in splits.items()}
      for stage, splits in run.metrics.items()
    },
    "queries_per_split": {split: m.num_queries for split, m in run.metrics["reranked"].items()},
    "seconds_per_query": round(run.seconds_per_query, 2),
    "mean_features_per_image": round(mean_features),
    "descriptor_dim": next(iter(database_features.values())).descriptor_dim,
  }


def putative_rule(retrieval_config) -> str:
  """The putative-matching rule of a retrieval_config, as the JSON states it."""
  return f"distance < {retrieval_config.match_distance_threshold:g}" + (
    f", ratio < {retrieval_config.match_ratio_threshold:g}"
    if retrieval_config.match_ratio_threshold
    else ""
  )


def map_ratio(delf: dict, sift: dict) -> dict:
  """{stage: {split: DELF mAP / SIFT mAP}} (None where SIFT's mAP is 0)."""
  return {
    stage: {
      split: (round(delf[stage][split] / sift[stage][split], 3) if sift[stage][split] else None)
      for split in delf[stage]
    }
    for stage in delf
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--output", default=str(REPO / "benchmarks" / "results" / "mini_landmarks.json")
  )
  parser.add_argument("--work_dir", default=str(REPO / "benchmarks" / "output" / "mini_landmarks"))
  args = parser.parse_args()
  import shutil

  from delf_ret import config as config_lib
  from delf_ret.datasets.labelled import write_labelled_benchmark
  from delf_ret.evaluation.ground_truth import read_original_gt
  from delf_ret.evaluation.ground_truth import read_revisited_gnd
  from delf_ret.images import load_image

  work = pathlib.Path(args.work_dir)
  shutil.rmtree(work, ignore_errors=True)
  hard = read_hard_images()
  paths = write_labelled_benchmark(SHARED / "labels.csv", work / "dataset", hard_images=hard)
  revisited = read_revisited_gnd(paths["gnd_path"], paths["images_dir"])
  original = read_original_gt(paths["gt_dir"], paths["images_dir"], "mini_landmarks")
  images = [revisited.image_path(name) for name in revisited.imlist]
  delf_retrieval = config_lib.DelfConfig().retrieval_config  # Defaults.
  # SIFT matches by its usual rule, Lowe's ratio test at 0.8, instead of DELF's distance test
  # (unrelated unit SIFT descriptors are often closer than 0.8); all else the same.
  sift_retrieval = config_lib.DelfConfig().retrieval_config
  config_lib.apply_overrides(
    sift_retrieval, ["match_distance_threshold=2.0", "match_ratio_threshold=0.8"]
  )

  print("DELF features ...", flush=True)
  start = time.time()
  delf_extract, delf_db = delf_extractors(
    config_lib.packaged_config_path(config_lib.DEMO_CONFIG), images, work
  )
  delf_seconds = (time.time() - start) / len(images)
  print("SIFT features ...", flush=True)
  sift = lambda image: sift_features(image, unit_descriptors=True, max_side=MAX_SIDE)  # noqa: E731
  sift_db = {path: sift(load_image(path)) for path in images}

  methods = {}
  for name, extract, database, retrieval_config in (
    ("delf_random_weights", delf_extract, delf_db, delf_retrieval),
    ("opencv_sift", sift, sift_db, sift_retrieval),
  ):
    print(f"{name}: retrieval ...", flush=True)
    methods[name] = run_method(
      name, extract, database, (revisited, original), retrieval_config, work
    )
    methods[name]["putative_matches"] = putative_rule(retrieval_config)
  methods["delf_random_weights"]["extraction_seconds_per_image"] = round(delf_seconds, 2)
  ratio = map_ratio(methods["delf_random_weights"]["mAP"], methods["opencv_sift"]["mAP"])
  write_result(
    args.output,
    {
      "benchmark": "mini_landmarks",
      "data": "../shared/data/labels.csv: 17 landmark photos (queries), 32 database images",
      "hard_positives": sorted(hard),
      "max_image_side": MAX_SIDE,
      "retrieval": {
        "index_type": delf_retrieval.index_type,
        "rerank_top_n": delf_retrieval.rerank_top_n,
        "min_inliers": delf_retrieval.min_inliers,
        "vote_weighting": delf_retrieval.vote_weighting,
        "ransac": f"{delf_retrieval.ransac_transform}, "
        f"{delf_retrieval.ransac_residual_threshold:g} px, "
        f"{delf_retrieval.ransac_max_trials} trials",
      },
      "weights": "DELF: random initialisation, seed 0 (no trained weights available)",
      "methods": methods,
      "delf_over_sift_mAP": ratio,
    },
  )


if __name__ == "__main__":
  main()
