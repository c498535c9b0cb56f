"""The demo pipeline end to end on a small labelled photo set (what ``delf_demo`` runs).

image -> features (one .delf file per photo, reused by a second run) -> index (the
config's first stage: votes, ASMK or global descriptors) -> ranked list of every
labelled query -> RANSAC-verified list -> report (mAP.txt,
metrics.json, pr_<split>.png, ranked_lists.json), plus pictures a person can
check: a contact sheet of the top results of three queries and the verified
matches of two image pairs.

Data: a labels CSV (``image,landmark``; an empty landmark marks a distractor):
each photo of a landmark is a query, the other photos of its landmark are its
positives (written in the Revisited layout by delf_ret.datasets.labelled).

An output folder belongs to one data set: the first thing a run writes there is
``demo_data.json``, naming the data and a digest of its photos. A run on other
photos (e.g. the bundled ones, then ../shared/data) starts clean: it removes what
the demo wrote there, with one line saying so, and leaves any other file alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import time
from typing import Callable

import numpy as np

from delf_ret.atomic import atomic_write
from delf_ret.config import DelfConfig
from delf_ret.datasets.labelled import read_labels
from delf_ret.datasets.labelled import write_labelled_benchmark
from delf_ret.errors import InputError
from delf_ret.evaluation.ground_truth import read_revisited_gnd
from delf_ret.evaluation.visualize import draw_contact_sheet
from delf_ret.evaluation.visualize import draw_matches
from delf_ret.extract.global_features import GlobalExtraction
from delf_ret.features import LocalFeatures
from delf_ret.features import global_file_name
from delf_ret.features import image_id_of
from delf_ret.features import read_global_descriptor
from delf_ret.images import load_image
from delf_ret.images import shrink_to_max_side
from delf_ret.match import RansacParams
from delf_ret.match import verify_pair
from delf_ret.retrieval.benchmark import BenchmarkRun
from delf_ret.retrieval.benchmark import run_benchmark
from delf_ret.retrieval.first_stage import QueryExtract
from delf_ret.retrieval.first_stage import configured_stage
from delf_ret.retrieval.indexing import database_feature_loader
from delf_ret.retrieval.indexing import index_first_stage

CONTACT_SHEET_QUERIES = 3
CONTACT_SHEET_RESULTS = 4
# The longest side of the pictures the demo draws and of contact-sheet tiles (pixels).
PICTURE_SIDE = 640
THUMBNAIL_SIDE = 256
# The record of the data set an output folder belongs to, written first by every run.
DATA_RECORD = "demo_data.json"
# What a run writes into its output folder besides the record and matches_<pair>.png.
OUTPUT_ENTRIES = ("dataset", "features", "index", "retrieval", "top_results.png")
_MATCH_PICTURE = re.compile(r"matches_[A-Za-z0-9_.-]+\.png")


@dataclasses.dataclass(frozen=True)
class DemoData:
  """A labelled photo set and the image pairs whose matches the demo draws.

  labels_csv: ``image,landmark`` rows, image paths relative to the CSV's folder.
  match_pairs: (image A, image B, name) for the match pictures.
  """

  name: str
  labels_csv: pathlib.Path
  match_pairs: tuple[tuple[pathlib.Path, pathlib.Path, str], ...]


def shared_demo_data(shared_dir: str | os.PathLike) -> DemoData:
  """The shared evaluation photos: landmarks + distractors (labels.csv), graf1/graf3 and
  two photos of one landmark for the match pictures."""
  shared_dir = pathlib.Path(shared_dir)
  return DemoData(
    "shared landmarks and distractors",
    shared_dir / "labels.csv",
    (
      (shared_dir / "pairs" / "graf1.png", shared_dir / "pairs" / "graf3.png", "graf1_graf3"),
      (
        shared_dir / "landmarks" / "campus_building_DSC_0410.jpg",
        shared_dir / "landmarks" / "campus_building_DSC_0411.jpg",
        "campus_building",
      ),
    ),
  )


def bundled_demo_data(bundle_dir: str | os.PathLike) -> DemoData:
  """The photo set bundled in the package (delf_ret/demo_data, see its README)."""
  bundle_dir = pathlib.Path(bundle_dir)
  return DemoData(
    "bundled demo photos",
    bundle_dir / "labels.csv",
    (
      (bundle_dir / "graffiti_1.jpg", bundle_dir / "graffiti_3.jpg", "graffiti_1_3"),
      (
        bundle_dir / "campus_building_1.jpg",
        bundle_dir / "campus_building_2.jpg",
        "campus_building",
      ),
    ),
  )


@dataclasses.dataclass
class DemoSummary:
  """What a demo run measured and wrote.

  mean_ap: {stage: {split: mAP in percent}}; seconds: wall time per step;
  pictures: the PNG files written (contact sheet, match pictures).
  """

  run: BenchmarkRun
  mean_ap: dict[str, dict[str, float]]
  seconds: dict[str, float]
  pictures: list[pathlib.Path]
  match_inliers: dict[str, tuple[int, int]]


class ContentCache:
  """image -> features, reusing the features of images already extracted (same pixels).

  The labelled queries are whole database photos: their features are the
  database features, so the demo extracts each photo once. With the global first
  stage an entry is (features, global descriptor), as the query extractor gives it
  (first_stage.query_extractor); :meth:`features` is the local features either way.
  """

  def __init__(self, extract: QueryExtract):
    self._extract = extract
    self._cache: dict[str, LocalFeatures | tuple[LocalFeatures, np.ndarray]] = {}

  @staticmethod
  def key(image: np.ndarray) -> str:
    return hashlib.sha256(str(image.shape).encode() + image.tobytes()).hexdigest()

  def add(self, image: np.ndarray, features: LocalFeatures | tuple[LocalFeatures, np.ndarray]):
    self._cache[self.key(image)] = features

  def __call__(self, image: np.ndarray) -> LocalFeatures | tuple[LocalFeatures, np.ndarray]:
    key = self.key(image)
    if key not in self._cache:
      self._cache[key] = self._extract(image)
    return self._cache[key]

  def features(self, image: np.ndarray) -> LocalFeatures:
    """The local features of an image (extracted unless cached)."""
    entry = self(image)
    return entry[0] if isinstance(entry, tuple) else entry


def _file_sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for block in iter(lambda: handle.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def data_digest(data: DemoData) -> str:
  """SHA-256 (hex) of a demo data set: the name, landmark and bytes of each labelled photo,
  and the names and bytes of the match pairs (the same photos give the same digest)."""
  digest = hashlib.sha256()
  for path, landmark in sorted(read_labels(data.labels_csv), key=lambda row: row[0].stem):
    digest.update(f"{path.stem}\t{landmark}\t{_file_sha256(path)}\n".encode())
  for path_a, path_b, name in data.match_pairs:
    digest.update(f"pair {name}\t{_file_sha256(path_a)}\t{_file_sha256(path_b)}\n".encode())
  return digest.hexdigest()


def _read_record(path: pathlib.Path) -> dict | None:
  """The output folder's data record; None if there is none; {} if it cannot be read."""
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    return {}
  return record if isinstance(record, dict) else {}


def _demo_written(output_dir: pathlib.Path, record: dict | None) -> list[str]:
  """What the demo wrote in ``output_dir`` (names of entries that exist), as its record says;
  without a usable record, the demo's own names (OUTPUT_ENTRIES, matches_*.png)."""
  names = record.get("written") if record else None
  if not isinstance(names, list):
    names = [*OUTPUT_ENTRIES, *(path.name for path in output_dir.glob("matches_*.png"))]
  # Only the demo's names, whatever a damaged record says.
  names = [
    name
    for name in names
    if isinstance(name, str) and (name in OUTPUT_ENTRIES or _MATCH_PICTURE.fullmatch(name))
  ]
  return [name for name in names if (output_dir / name).exists()]


def claim_output_dir(
  output_dir: pathlib.Path, data: DemoData, log: Callable[[str], None] = print
) -> None:
  """Makes ``output_dir`` the output folder of ``data`` and records it (DATA_RECORD).

  A folder made from other photos (its record names another digest, or it holds a demo
  ground truth but no readable record, as an older delf-ret left it) starts clean: what
  the demo wrote there (OUTPUT_ENTRIES and its matches_*.png) is removed, with one log
  line; other files stay. Raises InputError for a folder that holds the demo's entries
  without any sign that the demo made them (it is not a demo output folder).
  """
  record_path = output_dir / DATA_RECORD
  digest = data_digest(data)
  record = _read_record(record_path)
  if record is not None and record.get("digest") == digest:
    return
  written = _demo_written(output_dir, record)
  made_by_demo = record is not None or (output_dir / "dataset" / "gnd_demo.pkl").is_file()
  if written and not made_by_demo:
    raise InputError(
      f"{output_dir} holds {written[0]} but no {DATA_RECORD}: it is not a delf_demo output "
      f"folder; give another --output_dir"
    )
  if written:
    for name in written:
      path = output_dir / name
      if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
      else:
        path.unlink()
    before = (record or {}).get("data") or "photos it did not record"
    log(
      f"{output_dir} was made from other photos ({before}), now {data.name}: starting clean "
      f"(removed {', '.join(written)})"
    )
  pictures = [f"matches_{name}.png" for _, _, name in data.match_pairs]
  output_dir.mkdir(parents=True, exist_ok=True)
  with atomic_write(record_path, "w") as handle:
    json.dump(
      {
        "data": data.name,
        "labels_csv": str(data.labels_csv.resolve()),
        "digest": digest,
        "written": [*OUTPUT_ENTRIES, *pictures],
      },
      handle,
      indent=1,
    )


def run_demo(
  config: DelfConfig,
  data: DemoData,
  output_dir: str | os.PathLike,
  extractor=None,
  log: Callable[[str], None] = print,
) -> DemoSummary:
  """Runs the whole pipeline on ``data`` into ``output_dir`` (see the module docstring).

  extractor: a DelfExtractor (default: one built from ``config``).
  A second run on the same photos reuses the feature files, the index and the per-query
  caches; a run on other photos starts the folder clean (claim_output_dir).
  """
  from delf_ret.extract.extractor import DelfExtractor

  output_dir = pathlib.Path(output_dir)
  claim_output_dir(output_dir, data, log)
  seconds = {}
  paths = write_labelled_benchmark(data.labels_csv, output_dir / "dataset", name="demo")
  dataset = read_revisited_gnd(paths["gnd_path"], paths["images_dir"])
  extractor = extractor or DelfExtractor(config)
  with_global = configured_stage(config.retrieval_config) == "global"
  cache = ContentCache(
    GlobalExtraction(extractor).extract_with_global if with_global else extractor.extract
  )

  features_dir = output_dir / "features"
  image_paths = [dataset.image_path(name) for name in dataset.imlist]
  indexed = index_first_stage(
    output_dir / "index", features_dir, config, images=image_paths, extract=extractor, log=log
  )
  if indexed.failures:
    raise InputError(
      f"{len(indexed.failures)} photos could not be used, e.g. {indexed.failures[0][1]}"
    )
  # index_database logged the index ("index at ...: N images"). The queries are whole
  # database photos: they reuse these features instead of re-extracting.
  start = time.time()
  load_features = database_feature_loader(output_dir / "index", features_dir, log)
  for path in image_paths:
    features = load_features(image_id_of(path))
    cache.add(
      load_image(path, max_pixels=config.max_image_pixels),
      (features, read_global_descriptor(features_dir / global_file_name(image_id_of(path))))
      if with_global
      else features,
    )
  seconds["extraction"] = indexed.seconds["extraction"] + time.time() - start
  seconds["index"] = indexed.seconds["index"]
  log(
    f"features: {indexed.extracted} photos extracted, {len(image_paths) - indexed.extracted} "
    f"reused ({seconds['extraction']:.0f} s) -> {features_dir}"
  )

  start = time.time()
  run = run_benchmark(
    config,
    dataset,
    indexed.stage,
    features_dir,
    output_dir / "retrieval",
    extract=cache,
    log=log,
    load_features=load_features,
  )
  seconds["retrieval"] = time.time() - start
  mean_ap = {
    stage: {split: round(100 * metrics.mean_ap, 2) for split, metrics in splits.items()}
    for stage, splits in run.metrics.items()
  }

  start = time.time()
  pictures = [_contact_sheet(output_dir / "top_results.png", dataset, run)]
  match_inliers = _match_pictures(output_dir, config, data, cache, pictures)
  seconds["pictures"] = time.time() - start
  return DemoSummary(run, mean_ap, seconds, pictures, match_inliers)


def _match_pictures(
  output_dir: pathlib.Path,
  config: DelfConfig,
  data: DemoData,
  cache: ContentCache,
  pictures: list[pathlib.Path],
) -> dict[str, tuple[int, int]]:
  """Draws the verified matches of each pair of ``data.match_pairs`` (matches_<name>.png,
  appended to ``pictures``); returns {name: (inliers, putative matches)}."""
  match_inliers = {}
  params = RansacParams.from_config(config.retrieval_config)
  for path_a, path_b, name in data.match_pairs:
    image_a = load_image(path_a, max_pixels=config.max_image_pixels)
    image_b = load_image(path_b, max_pixels=config.max_image_pixels)
    features_a, features_b = cache.features(image_a), cache.features(image_b)
    result = verify_pair(features_a, features_b, params)
    inliers = result.matches[result.inliers]
    picture_a, factor_a = shrink_to_max_side(image_a, PICTURE_SIDE)
    picture_b, factor_b = shrink_to_max_side(image_b, PICTURE_SIDE)
    target = output_dir / f"matches_{name}.png"
    draw_matches(
      target,
      picture_a,
      picture_b,
      features_a.locations[inliers[:, 0]] * factor_a,
      features_b.locations[inliers[:, 1]] * factor_b,
      f"{path_a.name} - {path_b.name}: {result.num_inliers} RANSAC inliers of "
      f"{result.num_matches} putative matches",
    )
    match_inliers[name] = (result.num_inliers, result.num_matches)
    pictures.append(target)
  return match_inliers


def _contact_sheet(path: pathlib.Path, dataset, run: BenchmarkRun) -> pathlib.Path:
  """One row per query (three queries of different landmarks): the query, then its top
  reranked results with their inliers and whether they show the same place."""
  positives = [set(g["easy"]) | set(g["hard"]) for g in dataset.gnd]
  chosen, covered = [], set()  # Queries of different landmarks: none a positive of another.
  for number, query in enumerate(dataset.qimlist):
    if dataset.imlist.index(query) not in covered:
      chosen.append(number)
      covered |= positives[number] | {dataset.imlist.index(query)}
    if len(chosen) == CONTACT_SHEET_QUERIES:
      break
  tiles, captions = [], []
  for number in chosen:
    query = dataset.qimlist[number]
    tiles.append(shrink_to_max_side(load_image(dataset.image_path(query)), THUMBNAIL_SIDE)[0])
    captions.append(f"query {query}")
    top = [entry for entry in run.results[number].reranked if entry.image_id != query]
    for rank, entry in enumerate(top[:CONTACT_SHEET_RESULTS], 1):
      tiles.append(
        shrink_to_max_side(load_image(dataset.image_path(entry.image_id)), THUMBNAIL_SIDE)[0]
      )
      correct = dataset.imlist.index(entry.image_id) in positives[number]
      inliers = "-" if entry.inliers is None else entry.inliers
      captions.append(
        f"{rank}. {entry.image_id}\n{inliers} inliers, {'same place' if correct else 'other'}"
      )
  draw_contact_sheet(
    path,
    tiles[0],
    tiles[1:],
    captions[1:],
    query_caption=captions[0],
    columns=CONTACT_SHEET_RESULTS + 1,
  )
  return path
