"""Loading 100 reranking candidates: the packed feature store vs one .delf file each.

Data: the 100 evaluation photos of ../shared/data (landmarks/, distractors/,
pairs/, ukbench/), features extracted once with the shipped default model and
its config at 512 px, the attention threshold lowered to 0 so that every photo
keeps its 1000 best features (as a reranking candidate of a real database has;
cached in benchmarks/output/feature_store/features/).

In one run, with the files in the page cache (each path warmed once first):
  * ``.delf`` files: ``feature_loader(features_dir)`` (``read_features``, vectorised)
    for each of the 100 image ids;
  * feature store (delf_ret.index.feature_store, built from the same files), each
    repeat on a freshly opened store, so every image's values are checked for NaN as
    on a query's first read: ``store.loader()`` for each id (read-only views of the
    map, what reranking gets) and ``store.features(id)`` (copies);
  * the store's loader again on an open store that has read (and checked) them before.
All give the same arrays (checked). Reported: median seconds of ``--repeats`` loads
of the 100 candidates per path, the ratios, the store's open and build seconds and
the bytes on disk of both.

Usage: python benchmarks/feature_store.py [--output benchmarks/results/feature_store.json]
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import time

import numpy as np
from results_io import write_result

from delf_ret.features import feature_loader
from delf_ret.index.feature_store import FEATURE_FILES
from delf_ret.index.feature_store import FeatureStore
from delf_ret.index.feature_store import build_feature_store

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FOLDERS = ("landmarks", "distractors", "pairs", "ukbench")
WORK = REPO / "benchmarks" / "output" / "feature_store"
IMAGE_SIZE = 512


def extract(features_dir: pathlib.Path) -> list[str]:
  """Extracts the shared evaluation photos not yet extracted; returns their image ids."""
  from delf_ret.features import image_id_of
  from delf_ret.images import list_images

  paths = [path for folder in FOLDERS for path in list_images(SHARED / folder)]
  missing = [p for p in paths if not (features_dir / f"{image_id_of(p)}.delf").is_file()]
  if missing:
    # Lazy: TensorFlow (extraction) only when the cache lacks features.
    from delf_ret.config import load_config
    from delf_ret.default_model import default_config_path
    from delf_ret.extract.batch import extract_all
    from delf_ret.extract.extractor import DelfExtractor

    overrides = ["delf_local_config.score_threshold=0", f"max_image_size={IMAGE_SIZE}"]
    extractor = DelfExtractor(load_config(default_config_path(), overrides))
    failures = extract_all(extractor, missing, features_dir, print)
    if failures:
      raise SystemExit(f"extraction failed: {failures}")
  return [image_id_of(path) for path in paths]


def timed_loads(make_load, image_ids: list[str], repeats: int) -> tuple[float, list]:
  """(median seconds to load every id with the function ``make_load()`` returns (made anew
  for each repeat, untimed), the features of the last run); one warm-up run first."""
  load = make_load()
  loaded = [load(image_id) for image_id in image_ids]
  seconds = []
  for _ in range(repeats):
    load = make_load()
    start = time.perf_counter()
    loaded = [load(image_id) for image_id in image_ids]
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds), loaded


def same(first, second) -> bool:
  return all(
    getattr(first, f).dtype == getattr(second, f).dtype
    and getattr(first, f).shape == getattr(second, f).shape
    and getattr(first, f).tobytes() == getattr(second, f).tobytes()
    for f in FEATURE_FILES.values()
  )


def per_100(seconds: float, image_ids: list[str]) -> float:
  return round(seconds * 100 / len(image_ids), 5)


def folder_bytes(folder: pathlib.Path, pattern: str) -> int:
  return sum(path.stat().st_size for path in folder.glob(pattern) if path.is_file())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output", default=str(REPO / "benchmarks/results/feature_store.json"))
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  features_dir = WORK / "features"
  features_dir.mkdir(parents=True, exist_ok=True)
  image_ids = extract(features_dir)
  store_dir = WORK / "store"
  shutil.rmtree(store_dir, ignore_errors=True)
  start = time.perf_counter()
  build_feature_store(store_dir, features_dir, image_ids)
  build_seconds = time.perf_counter() - start
  opens = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    store = FeatureStore.open(store_dir)
    opens.append(time.perf_counter() - start)
  delf_seconds, from_files = timed_loads(
    lambda: feature_loader(features_dir), image_ids, args.repeats
  )
  store_seconds, from_store = timed_loads(
    lambda: FeatureStore.open(store_dir).loader(), image_ids, args.repeats
  )
  copy_seconds, copied = timed_loads(
    lambda: FeatureStore.open(store_dir).features, image_ids, args.repeats
  )
  again_seconds, again = timed_loads(lambda: store.loader(), image_ids, args.repeats)
  for loaded in (from_store, copied, again):
    if not all(same(a, b) for a, b in zip(from_files, loaded)):
      raise SystemExit("the store's features differ from the .delf files")
  counts = [features.num_features for features in from_files]
  version = store_dir / (store_dir / "CURRENT").read_text().strip()
  result = {
    "benchmark": "feature_store",
    "data": f"{len(image_ids)} shared evaluation photos, default model at {IMAGE_SIZE} px, "
    "score_threshold 0",
    "candidates": len(image_ids),
    "features_per_candidate": {"mean": float(np.mean(counts)), "min": min(counts)},
    "descriptor_dim": store.dim,
    "page_cache": "warm (each path loaded once before timing)",
    "notes": "first_read: a freshly opened store; its time is mostly page faults of the new "
    "mapping and the per-image NaN check; read_before: the same store object again",
    "repeats": args.repeats,
    "seconds_100_candidates": {
      "delf_files_read_features": per_100(delf_seconds, image_ids),
      "store_loader_views_first_read": per_100(store_seconds, image_ids),
      "store_features_copies_first_read": per_100(copy_seconds, image_ids),
      "store_loader_views_read_before": per_100(again_seconds, image_ids),
    },
    "speedup_store_loader_over_delf_files": round(delf_seconds / store_seconds, 1),
    "speedup_store_copies_over_delf_files": round(delf_seconds / copy_seconds, 1),
    "store_open_seconds_median": round(statistics.median(opens), 5),
    "store_build_seconds": round(build_seconds, 3),
    "bytes": {
      "delf_files": folder_bytes(features_dir, "*.delf"),
      "store_arrays": folder_bytes(version, "*.npy"),
      "store_meta_json": (version / "meta.json").stat().st_size,
    },
  }
  write_result(args.output, result)
  print(result["seconds_100_candidates"], result["speedup_store_loader_over_delf_files"])


if __name__ == "__main__":
  main()
