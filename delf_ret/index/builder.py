"""Building a LocalFeatureIndex from feature files, resumably.

Image ids are the feature file stems (``all_souls_000013.delf`` ->
``all_souls_000013``; delf_ret.features). The index is saved every ``save_every`` added images and
at the end; a rerun loads the saved index and skips the images already in it,
so an interrupted build resumes, and new feature files can be added later
without retraining.

A build (and a removal) holds the index folder's writer lock from loading the
index to its last save (delf_ret.index.lock): a second writer on the same
folder is refused at once instead of losing the first one's images.

A feature file with no features is not indexed (an image with nothing to match
could never be found): it is reported with the failures, so the tool lists it
and exits 1, and a later run tries it again.

Each image's record (delf_ret.index.local_index: the absolute path of its image
file and a label) is stored when it is added, from ``image_paths`` (image id ->
image file, known when the caller indexes images rather than feature files)
and ``labels`` (image id -> label, e.g. from a labels CSV file,
delf_ret.index.labels). Images already in the index get their record updated
from the same two mappings, so rerunning with a labels file relabels them.

This is the TensorFlow-free half of indexing: delf_ret.retrieval.indexing.index_database
extracts the missing feature files of images first, then calls build_index.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Callable
from typing import Mapping

import numpy as np

from delf_ret.features import FEATURE_SUFFIX
from delf_ret.features import FeatureFileError
from delf_ret.features import LocalFeatures
from delf_ret.features import image_id_of
from delf_ret.features import read_features
from delf_ret.index.local_index import IndexParams
from delf_ret.index.local_index import LocalFeatureIndex
from delf_ret.index.local_index import LocalIndexError
from delf_ret.index.local_index import remove_leftover_versions
from delf_ret.index.lock import writer_lock


def list_feature_files(features_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """The .delf files of a folder, sorted; raises LocalIndexError when there are none."""
  features_dir = pathlib.Path(features_dir)
  if not features_dir.is_dir():
    raise LocalIndexError(f"feature folder not found: {features_dir}")
  paths = sorted(features_dir.glob(f"*{FEATURE_SUFFIX}"))
  if not paths:
    raise LocalIndexError(f"no {FEATURE_SUFFIX} feature files in {features_dir}")
  return paths


def descriptor_dim(paths: list[pathlib.Path]) -> int:
  """The descriptor dimension of the first readable feature file that has features.

  Only for configs that do not fix the dimension (no PCA); unreadable files are
  skipped here and reported when they are added.
  """
  for path in paths:
    try:
      features = read_features(path)
    except FeatureFileError:
      continue
    if features.num_features:
      return features.descriptor_dim
  raise LocalIndexError("no readable feature file holds any feature: nothing to index")


def training_sample(paths: list[pathlib.Path], size: int, seed: int = 0) -> np.ndarray:
  """Up to ``size`` descriptors [S, D] from files visited in a seeded random order."""
  order = np.random.default_rng(seed).permutation(len(paths))
  chunks, total = [], 0
  for i in order:
    try:
      features = read_features(paths[i])
    except FeatureFileError:
      continue  # Reported when the file is added.
    chunks.append(features.descriptors)
    total += features.num_features
    if total >= size:
      break
  chunks = [chunk for chunk in chunks if chunk.size]
  if not chunks:
    raise LocalIndexError("no descriptors to train the index on")
  return np.concatenate(chunks)[:size]


def open_or_create(index_dir: pathlib.Path, params: IndexParams, dim: int) -> LocalFeatureIndex:
  """Loads the index saved in ``index_dir`` (checking type and dimension) or makes a new one.

  Version folders that a killed save left behind are removed first (this takes the
  folder's writer lock; IndexBusyError if another process is writing it).
  """
  remove_leftover_versions(index_dir)
  if (index_dir / "CURRENT").is_file():
    index = LocalFeatureIndex.load(index_dir, expected_dim=dim)
    if index.params.index_type != params.index_type:
      raise LocalIndexError(
        f"{index_dir} holds a {index.params.index_type!r} index but the config asks for "
        f"{params.index_type!r}; use another --index_dir or the same index_type"
      )
    if params.index_type == "ivfpq":
      for name in ("pq_fast_scan", "coarse_quantizer"):
        saved, asked = getattr(index.params, name), getattr(params, name)
        if saved != asked:
          raise LocalIndexError(
            f"{index_dir} holds an ivfpq index with {name} {saved!r} but the "
            f"config asks for {asked!r}; use another --index_dir"
          )
    return index
  return LocalFeatureIndex(dim, params)


def descriptors_for(features: LocalFeatures, dim: int, path: pathlib.Path) -> np.ndarray:
  """The descriptors [N, dim] of one feature file to index; FeatureFileError (naming the
  file) when it has no features or descriptors of another dimension."""
  if features.num_features == 0:
    raise FeatureFileError(
      f"{path}: no features (an image with nothing to match could never be found); not indexed"
    )
  if features.descriptor_dim != dim:
    raise FeatureFileError(
      f"{path}: {features.descriptor_dim}-d descriptors, but the index "
      f"holds {dim}-d ones (extracted with other PCA settings?)"
    )
  return features.descriptors


def build_index(
  feature_paths: list[pathlib.Path],
  index_dir: str | os.PathLike,
  params: IndexParams,
  save_every: int = 500,
  log: Callable[[str], None] = print,
  dim: int | None = None,
  image_paths: Mapping[str, str | os.PathLike] | None = None,
  labels: Mapping[str, str] | None = None,
) -> tuple[LocalFeatureIndex, list[tuple[pathlib.Path, str]]]:
  """Adds every feature file not yet in the index at ``index_dir`` and saves it.

  ``params`` come from the config (IndexParams.from_config); an IVF-PQ index is
  trained on up to ``params.train_sample_size`` descriptors first. Returns the
  index and (path, reason) of the files that could not be added (unreadable,
  of another descriptor dimension, or without features). Holds the folder's
  writer lock throughout (IndexBusyError if another process writes it). ``dim``: the descriptor dimension the
  config fixes (its pca_dim); without it, that of the first readable file.
  ``image_paths`` (image id -> image file) and ``labels`` (image id -> label, "" for
  none) are recorded with each image, the new ones and those already indexed; ids
  in them that end up not indexed (their feature file failed) are ignored.
  """
  index_dir = pathlib.Path(index_dir)
  dim = dim or descriptor_dim(feature_paths)
  records = _Records(dict(image_paths or {}), dict(labels or {}))
  with writer_lock(index_dir):
    index = open_or_create(index_dir, params, dim)
    if index.needs_training:
      train_from_files(index, feature_paths, params, log)
    updated = records.update(index)
    if updated:
      log(f"updated the path or label of {updated} images already indexed")
    failures = _add_all(index, feature_paths, index_dir, dim, save_every, log, records, updated)
  return index, failures


class _Records:
  """The paths and labels to record: image id -> image file, image id -> label ("": none)."""

  def __init__(self, image_paths: dict[str, str | os.PathLike], labels: dict[str, str]):
    self.paths = {name: os.path.abspath(path) for name, path in image_paths.items()}
    self.labels = labels

  def add(self, index: LocalFeatureIndex, image_id: str, descriptors: np.ndarray) -> None:
    """Adds a new image with its record."""
    label = self.labels.get(image_id) or None
    index.add(image_id, descriptors, path=self.paths.get(image_id), label=label)

  def update(self, index: LocalFeatureIndex) -> int:
    """Records the paths and labels of images already indexed; returns how many changed."""
    changed = 0
    for image_id in index.image_ids():
      path, label = self.paths.get(image_id), self.labels.get(image_id)
      if (path is not None and path != index.image_path(image_id)) or (
        label is not None and (label or None) != index.image_label(image_id)
      ):
        index.set_image_record(image_id, path=path, label=label)
        changed += 1
    return changed


def train_from_files(
  index: LocalFeatureIndex,
  feature_paths: list[pathlib.Path],
  params: IndexParams,
  log: Callable[[str], None],
) -> None:
  """Trains a new IVF-PQ index on a sample of the feature files (training_sample: up to
  params.train_sample_size descriptors, seeded); LocalIndexError if there are too few."""
  sample = training_sample(feature_paths, params.train_sample_size)
  if sample.shape[0] < max(params.nlist, 2**params.pq_nbits):
    raise LocalIndexError(
      f"IVF-PQ needs at least max(nlist, 2^pq_nbits) = "
      f"{max(params.nlist, 2**params.pq_nbits)} training descriptors, the feature files "
      f"hold {sample.shape[0]}: use index_type 'flat' or a smaller nlist"
    )
  log(f"training the IVF-PQ quantisers on {sample.shape[0]} descriptors")
  index.train(sample)


def _add_all(
  index: LocalFeatureIndex,
  feature_paths: list[pathlib.Path],
  index_dir: pathlib.Path,
  dim: int,
  save_every: int,
  log: Callable[[str], None],
  records: _Records,
  updated: int,
) -> list[tuple[pathlib.Path, str]]:
  """Adds the feature files not yet indexed with their records, saving as it goes (and at
  the end when ``updated`` records changed); returns the failures."""
  failures = []
  total, added, start = len(feature_paths), 0, time.time()
  unsaved = bool(updated) or not (index_dir / "CURRENT").is_file()
  for i, path in enumerate(feature_paths, 1):
    name = image_id_of(path)
    if name in index:
      continue
    try:
      descriptors = descriptors_for(read_features(path), dim, path)
    except FeatureFileError as error:
      log(f"[{i}/{total}] ERROR {error}")
      failures.append((path, str(error)))
      continue
    records.add(index, name, descriptors)
    added += 1
    unsaved = True
    if added % save_every == 0:
      index.save(index_dir)
      unsaved = False
    if added % 100 == 0 or i == total:
      log(
        f"[{i}/{total}] {added} images added [{(time.time() - start) / added * 1000:.1f} ms/image]"
      )
  if unsaved:
    index.save(index_dir)
  log(f"index at {index_dir}: {len(index)} images ({added} added now)")
  return failures


def remove_images(
  index_dir: str | pathlib.Path, image_ids: list[str], log: Callable[[str], None] = print
) -> LocalFeatureIndex:
  """Deletes images by id from the index at ``index_dir``, compacts it and saves it.

  Raises LocalIndexError naming the ids that are not in the index (nothing is removed then).
  """
  index_dir = pathlib.Path(index_dir)
  if not (index_dir / "CURRENT").is_file():
    LocalFeatureIndex.load(index_dir)  # "no index in ...", without making the folder.
  with writer_lock(index_dir):
    index = LocalFeatureIndex.load(index_dir)
    unknown = [name for name in image_ids if name not in index]
    if unknown:
      raise LocalIndexError(f"not in the index: {', '.join(unknown)}")
    for name in image_ids:
      index.delete(name)
    index.compact()
    index.save(index_dir)
  log(f"removed {len(image_ids)} images; {len(index)} images left in {index_dir}")
  return index
