"""The first stage of retrieval, one of three (``retrieval_config.first_stage``), and its files.

The first stage ranks the database for a query before RANSAC reranks the top
(delf_ret.retrieval.ranking); reranking is the same whichever stage ranked.

* ``"votes"`` (DELF 2017): every query descriptor votes for the images of its k
  nearest database descriptors (:class:`VotesStage` over a LocalFeatureIndex, which
  is the index folder itself, as before).
* ``"asmk"``: ASMK / ASMK* (delf_ret.index.asmk, docs/asmk.md) in ``<index>/asmk/``;
  the codebook is trained at the first build on the descriptors of at most
  CODEBOOK_TRAINING_IMAGES database images (evenly spaced in the order given), its
  size ``asmk_codebook_size`` or, for 0, the rule of ``codebook_size_for`` applied to
  the database's descriptor count (estimated from those images).
* ``"global"`` (DELG): one global descriptor per image (the ``.delg_global`` files
  beside the ``.delf`` files, written when the config has ``use_global_features``) in
  a GlobalDescriptorIndex in ``<index>/global/``, with the PCA-whitening learned on
  the database at the first build (:data:`WHITENING_FILE`; see :func:`whitening_rule`).

Each stage object answers ``rank(query features, query global descriptor, retrieval
config) -> [(image id, score)]`` by decreasing score, plus ``len``, ``in``,
``image_ids()`` and each image's record, ``image_path(id)`` / ``image_label(id)`` (a votes
index keeps them in its meta.json, the other stages in ``<index>/records.json``:
delf_ret.index.records). Which stage a folder holds is read from its files
(:func:`built_stage`); a folder built for one stage and opened or extended with a
config asking for another is refused in one line naming both (:func:`check_stage`).
The ``.delf`` files stay needed: reranking reads them whatever the stage. No
TensorFlow (only :func:`query_extractor` loads it, when it extracts).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import zipfile
from typing import TYPE_CHECKING
from typing import Callable
from typing import Mapping
from typing import Protocol
from typing import Sequence

import numpy as np

from delf_ret.atomic import atomic_write
from delf_ret.config import DelfConfig
from delf_ret.config import DelfRetrievalConfig
from delf_ret.errors import DelfRetError
from delf_ret.extract.global_features import GlobalExtraction
from delf_ret.extract.global_features import apply_whitening
from delf_ret.extract.global_features import learn_pca_whitening
from delf_ret.extract.settings import SETTINGS_FILE
from delf_ret.features import FeatureFileError
from delf_ret.features import LocalFeatures
from delf_ret.features import global_file_name
from delf_ret.features import image_id_of
from delf_ret.features import read_features
from delf_ret.features import read_global_descriptor
from delf_ret.index import IndexParams
from delf_ret.index import LocalFeatureIndex
from delf_ret.index.asmk import AsmkIndex
from delf_ret.index.asmk import AsmkParams
from delf_ret.index.asmk import codebook_size_for
from delf_ret.index.global_index import INDEX_FILE
from delf_ret.index.global_index import GlobalDescriptorIndex
from delf_ret.index.global_index import GlobalIndexError
from delf_ret.index.local_index import ImageRecord
from delf_ret.index.local_index import LocalIndexError
from delf_ret.index.lock import writer_lock
from delf_ret.index.records import RECORDS_FILE
from delf_ret.index.records import Records
from delf_ret.index.records import read_records
from delf_ret.index.records import update_records_file
from delf_ret.index.records import updated_records
from delf_ret.index.records import write_records

if TYPE_CHECKING:
  from delf_ret.extract.extractor import DelfExtractor

STAGES = ("votes", "asmk", "global")
ASMK_FOLDER = "asmk"
GLOBAL_FOLDER = "global"
WHITENING_FILE = "whitening.npz"
WHITENING_FORMAT = 1
# PCA-whitening is learned when the database has at least this many images per dimension.
WHITENING_IMAGES_PER_DIM = 2
# The codebook is trained on the descriptors of at most this many database images.
CODEBOOK_TRAINING_IMAGES = 2000

Failures = list[tuple[pathlib.Path, str]]


class FirstStageError(DelfRetError):
  """The first stage cannot be built or opened as asked (unknown stage, another stage's folder,
  no global descriptors)."""


def vote_totals(
  slots: np.ndarray, distances: np.ndarray, weighting: str
) -> tuple[np.ndarray, np.ndarray]:
  """Scores per database image from the k-NN hits [Q, k] of Q query descriptors, without loops.

  Each query descriptor votes at most once per image (its closest hit there):
  ``weighting`` (retrieval_config.vote_weighting) "count" adds 1, "similarity"
  adds the cosine similarity 1 - d^2 / 2 of unit descriptors (d^2 = squared L2
  distance, as the index returns it), floored at 0. ``slots`` number the
  images (LocalFeatureIndex slots, or ImageHits.images positions); numbers < 0
  (no hit) are ignored. Returns (image numbers int64 [S] ascending, scores
  float64 [S]) for every image hit at least once.
  """
  if weighting not in ("count", "similarity"):
    raise ValueError(f"weighting must be 'count' or 'similarity', got {weighting!r}")
  slots, distances = np.asarray(slots), np.asarray(distances, np.float64)
  valid = slots >= 0
  rows = np.nonzero(valid)[0]
  hit_slots, hit_distances = slots[valid].astype(np.int64), distances[valid]
  # Sort by (query row, slot, distance): the first entry of each (row, slot) run is its closest hit.
  order = np.lexsort((hit_distances, hit_slots, rows))
  rows, hit_slots, hit_distances = rows[order], hit_slots[order], hit_distances[order]
  first = np.ones(rows.shape[0], bool)
  first[1:] = (rows[1:] != rows[:-1]) | (hit_slots[1:] != hit_slots[:-1])
  hit_slots, hit_distances = hit_slots[first], hit_distances[first]
  if weighting == "count":
    votes = np.ones(hit_slots.shape[0])
  else:
    votes = np.maximum(0.0, 1.0 - hit_distances / 2.0)
  unique_slots, inverse = np.unique(hit_slots, return_inverse=True)
  return unique_slots, np.bincount(inverse, weights=votes, minlength=unique_slots.shape[0])


def vote_ranking(
  index: LocalFeatureIndex, query_descriptors: np.ndarray, retrieval_config: DelfRetrievalConfig
) -> list[tuple[str, float]]:
  """(image id, vote score) by decreasing score (ties: image id order); unvoted images omitted.

  query_descriptors: float32 [Q, D]; each looks up its ``neighbors_per_descriptor``
  nearest database descriptors and votes by ``vote_weighting`` (see vote_totals).
  """
  if query_descriptors.shape[0] == 0 or len(index) == 0:
    return []
  hits = index.search_images(query_descriptors, retrieval_config.neighbors_per_descriptor)
  voted, scores = vote_totals(hits.images, hits.distances, retrieval_config.vote_weighting)
  ranked = [(hits.image_ids[image], score) for image, score in zip(voted.tolist(), scores.tolist())]
  return sorted(ranked, key=lambda entry: (-entry[1], entry[0]))


def use_search_settings(index: LocalFeatureIndex, retrieval_config: DelfRetrievalConfig) -> None:
  """Sets the search breadth (nprobe, ef_search) of a loaded index from the config."""
  configured = IndexParams.from_config(retrieval_config)
  index.set_search_breadth(nprobe=configured.nprobe, ef_search=configured.ef_search)


class FirstStageIndex(Protocol):
  """What ranking needs of a first stage (VotesStage, AsmkStage, GlobalStage)."""

  name: str
  needs_global: bool  # Whether rank needs the query's global descriptor.

  def __len__(self) -> int: ...

  def __contains__(self, image_id: str) -> bool: ...

  def image_ids(self) -> list[str]: ...

  def image_path(self, image_id: str) -> str | None: ...

  def image_label(self, image_id: str) -> str | None: ...

  def add_image(
    self, image_id: str, query: "Query", path: str | os.PathLike | None, label: str | None
  ) -> None: ...

  def delete_image(self, image_id: str) -> None: ...

  def save(self, index_dir: str | os.PathLike) -> None: ...

  def rank(
    self,
    query: LocalFeatures,
    global_descriptor: np.ndarray | None,
    retrieval_config: DelfRetrievalConfig,
  ) -> list[tuple[str, float]]: ...


class VotesStage:
  """Descriptor votes through a LocalFeatureIndex (see vote_ranking)."""

  name = "votes"
  needs_global = False

  def __init__(self, index: LocalFeatureIndex):
    self.index = index

  def __len__(self) -> int:
    return len(self.index)

  def __contains__(self, image_id: str) -> bool:
    return image_id in self.index

  def image_ids(self) -> list[str]:
    return self.index.image_ids()

  def image_path(self, image_id: str) -> str | None:
    """The recorded absolute path of an indexed image's file (None: not recorded)."""
    return self.index.image_path(image_id)

  def image_label(self, image_id: str) -> str | None:
    """The recorded label of an indexed image (None: unlabelled)."""
    return self.index.image_label(image_id)

  def add_image(
    self, image_id: str, query: "Query", path: str | os.PathLike | None, label: str | None
  ) -> None:
    """Adds one image (a new id) by its local descriptors, with its record."""
    self.index.add(image_id, query.features.descriptors, path=path, label=label)

  def delete_image(self, image_id: str) -> None:
    """Deletes an indexed image and its record (the index is compacted)."""
    self.index.delete(image_id)
    self.index.compact()

  def save(self, index_dir: str | os.PathLike) -> None:
    """Saves the index (crash-safe) in its folder ``index_dir``."""
    self.index.save(index_dir)

  def rank(
    self,
    query: LocalFeatures,
    global_descriptor: np.ndarray | None,
    retrieval_config: DelfRetrievalConfig,
  ) -> list[tuple[str, float]]:
    """Images voted for by the query's descriptors (none: an empty list)."""
    if not query.num_features:
      return []
    return vote_ranking(self.index, query.descriptors, retrieval_config)


class _RecordsKept:
  """The image records of a stage kept in ``<index>/records.json`` (delf_ret.index.records)."""

  _image_records: Records

  def __contains__(self, image_id: str) -> bool:  # Overridden by each stage.
    raise NotImplementedError

  def set_records(self, records: Records) -> None:
    """Replaces the records held in memory (as read from or written to records.json)."""
    self._image_records = dict(records)

  def _record(self, image_id: str) -> ImageRecord:
    if image_id not in self:
      raise FirstStageError(f"image {image_id!r} is not indexed")
    return self._image_records.get(image_id, ImageRecord())

  def image_path(self, image_id: str) -> str | None:
    """The recorded absolute path of an indexed image's file (None: not recorded)."""
    return self._record(image_id).path

  def image_label(self, image_id: str) -> str | None:
    """The recorded label of an indexed image (None: unlabelled)."""
    return self._record(image_id).label

  def _set_record(self, image_id: str, path: str | os.PathLike | None, label: str | None) -> None:
    paths = {} if path is None else {image_id: path}
    self._image_records = updated_records(self._image_records, paths, {image_id: label or ""})

  def _save_records(self, index_dir: str | os.PathLike) -> None:
    write_records(index_dir, {i: r for i, r in self._image_records.items() if i in self})


class AsmkStage(_RecordsKept):
  """ASMK / ASMK* image similarities through an AsmkIndex (docs/asmk.md)."""

  name = "asmk"
  needs_global = False

  def __init__(self, asmk: AsmkIndex, records: Records | None = None):
    self.asmk = asmk
    self._image_records = dict(records or {})

  def __len__(self) -> int:
    return len(self.asmk)

  def __contains__(self, image_id: str) -> bool:
    return image_id in self.asmk

  def image_ids(self) -> list[str]:
    return self.asmk.image_ids()

  def add_image(
    self, image_id: str, query: "Query", path: str | os.PathLike | None, label: str | None
  ) -> None:
    """Adds one image (a new id) by its local descriptors, with its record."""
    self._set_record(image_id, path, label)  # Checked before the index changes.
    try:
      self.asmk.add(image_id, query.features.descriptors)
    except BaseException:
      self._image_records.pop(image_id, None)
      raise

  def delete_image(self, image_id: str) -> None:
    """Deletes an indexed image and its record."""
    self.asmk.delete(image_id)
    self._image_records.pop(image_id, None)

  def save(self, index_dir: str | os.PathLike) -> None:
    """Saves the ASMK index (``index_dir/asmk``) and the records (``index_dir/records.json``),
    both crash-safe, under the folder's writer lock (IndexBusyError if another writes it)."""
    with writer_lock(index_dir):
      self.asmk.save(pathlib.Path(index_dir) / ASMK_FOLDER)
      self._save_records(index_dir)

  def rank(
    self,
    query: LocalFeatures,
    global_descriptor: np.ndarray | None,
    retrieval_config: DelfRetrievalConfig,
  ) -> list[tuple[str, float]]:
    """Images of positive similarity by decreasing similarity (ties: image id order); images
    that share no word with the query (similarity 0) are omitted, as unvoted ones are."""
    if not query.num_features or not len(self.asmk):
      return []
    ranked = [(i, s) for i, s in self.asmk.search_images(query.descriptors) if s > 0]
    return sorted(ranked, key=lambda entry: (-entry[1], entry[0]))


class GlobalStage(_RecordsKept):
  """Inner products of whitened global descriptors through a GlobalDescriptorIndex.

  descriptors: the whitened database descriptors; whitening: (mean float32 [D], projection
  float32 [K, D]) learned on the database
  (applied to every descriptor before it is indexed or searched), or None; records: image
  id -> record (path, label) of the images that have one.
  """

  name = "global"
  needs_global = True

  def __init__(
    self,
    index: GlobalDescriptorIndex,
    whitening: tuple[np.ndarray, np.ndarray] | None,
    records: Records | None = None,
  ):
    self.descriptors = index
    self.whitening = whitening
    self._image_records = dict(records or {})

  def __len__(self) -> int:
    return len(self.descriptors)

  def __contains__(self, image_id: str) -> bool:
    return image_id in self.descriptors

  def image_ids(self) -> list[str]:
    return self.descriptors.image_ids()

  def add_image(
    self, image_id: str, query: "Query", path: str | os.PathLike | None, label: str | None
  ) -> None:
    """Adds one image (a new id) by its raw global descriptor (whitened here), with its
    record; FirstStageError when the query has no global descriptor."""
    if query.global_descriptor is None:
      raise FirstStageError(f"image {image_id!r} has no global descriptor to index")
    self._set_record(image_id, path, label)
    try:
      self.descriptors.add(image_id, self.whiten(query.global_descriptor))
    except BaseException:
      self._image_records.pop(image_id, None)
      raise

  def delete_image(self, image_id: str) -> None:
    """Deletes an indexed image and its record."""
    self.descriptors.delete(image_id)
    self._image_records.pop(image_id, None)

  def save(self, index_dir: str | os.PathLike) -> None:
    """Saves the global index (``index_dir/global``) and the records
    (``index_dir/records.json``), both crash-safe, under the folder's writer lock
    (IndexBusyError if another writes it)."""
    with writer_lock(index_dir):
      self.descriptors.save(pathlib.Path(index_dir) / GLOBAL_FOLDER)
      self._save_records(index_dir)

  def whiten(self, descriptors: np.ndarray) -> np.ndarray:
    """Raw descriptors float [D] or [N, D] as indexed: whitened (if learned), unit L2 norm."""
    if self.whitening is None:
      return np.asarray(descriptors, np.float32)
    mean, projection = self.whitening
    return apply_whitening(descriptors, mean, projection)

  def rank(
    self,
    query: LocalFeatures,
    global_descriptor: np.ndarray | None,
    retrieval_config: DelfRetrievalConfig,
  ) -> list[tuple[str, float]]:
    """Every image by decreasing inner product with the query's whitened global descriptor."""
    if global_descriptor is None:
      raise FirstStageError(
        "first_stage global needs the query's global descriptor: extract queries with "
        "use_global_features: true"
      )
    if not len(self.descriptors):
      return []
    ranked = self.descriptors.search_images(self.whiten(global_descriptor), len(self.descriptors))
    return sorted(ranked, key=lambda entry: (-entry[1], entry[0]))


# Which stage -----------------------------------------------------------------------


def configured_stage(retrieval_config: DelfRetrievalConfig) -> str:
  """``retrieval_config.first_stage``, checked (FirstStageError naming the three)."""
  name = retrieval_config.first_stage
  if name not in STAGES:
    raise FirstStageError(
      f"retrieval_config.first_stage {name!r} is not one of {', '.join(map(repr, STAGES))}"
    )
  return name


def built_stage(index_dir: str | os.PathLike) -> str | None:
  """The first stage an index folder holds, read from its files (None: none yet)."""
  index_dir = pathlib.Path(index_dir)
  if (index_dir / "CURRENT").is_file():
    return "votes"
  if (index_dir / ASMK_FOLDER / "CURRENT").is_file():
    return "asmk"
  if (index_dir / GLOBAL_FOLDER / INDEX_FILE).is_file():
    return "global"
  return None


def check_stage(index_dir: str | os.PathLike, retrieval_config: DelfRetrievalConfig) -> str:
  """The configured first stage; FirstStageError naming both when the folder holds another."""
  wanted = configured_stage(retrieval_config)
  built = built_stage(index_dir)
  if built is not None and built != wanted:
    raise FirstStageError(
      f"{index_dir} holds an index of first_stage {built!r} but the config asks for "
      f"first_stage {wanted!r}; use another --index_dir or set retrieval_config.first_stage "
      f"to {built!r}"
    )
  return wanted


def saved_version(index_dir: str | os.PathLike) -> str:
  """A text that changes whenever the first stage or the records of ``index_dir`` are saved
  (by this or another program): the saved version names, and the file identity (inode,
  modification time, size) of the files saved whole; "" for a folder without an index."""
  index_dir = pathlib.Path(index_dir)
  parts = []
  for path in (index_dir / "CURRENT", index_dir / ASMK_FOLDER / "CURRENT"):
    try:
      parts.append(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
      parts.append("")
  for path in (index_dir / GLOBAL_FOLDER / INDEX_FILE, index_dir / RECORDS_FILE):
    try:
      stat = path.stat()
      parts.append(f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}")
    except OSError:
      parts.append("")
  return "|".join(parts).strip("|")


# Opening ---------------------------------------------------------------------------


def open_first_stage(
  index_dir: str | os.PathLike, retrieval_config: DelfRetrievalConfig
) -> FirstStageIndex:
  """The configured first stage of the index folder, ready to rank (search settings and the
  ASMK query settings from the config); FirstStageError when the folder holds another stage
  or none."""
  index_dir = pathlib.Path(index_dir)
  name = check_stage(index_dir, retrieval_config)
  if name == "votes":
    index = LocalFeatureIndex.load(index_dir)
    use_search_settings(index, retrieval_config)
    return VotesStage(index)
  if built_stage(index_dir) is None:
    raise FirstStageError(
      f"no index of first_stage {name!r} in {index_dir}: build it with build_index"
    )
  stage: AsmkStage | GlobalStage
  if name == "asmk":
    params = AsmkParams.from_config(retrieval_config)
    stage = AsmkStage(AsmkIndex.load(index_dir / ASMK_FOLDER, expected_params=params))
  else:
    folder = index_dir / GLOBAL_FOLDER
    stage = GlobalStage(GlobalDescriptorIndex.load(folder), read_whitening(folder))
  stage.set_records(read_records(index_dir, known=set(stage.image_ids())))
  return stage


# Building --------------------------------------------------------------------------


def recorded_settings(features_dir: str | os.PathLike) -> dict | None:
  """The extraction settings recorded in a feature folder (None: no readable record)."""
  try:
    recorded = json.loads((pathlib.Path(features_dir) / SETTINGS_FILE).read_text())
  except (OSError, UnicodeDecodeError, ValueError):
    return None
  return recorded if isinstance(recorded, dict) else None


def build_first_stage(
  index_dir: str | os.PathLike,
  feature_paths: Sequence[pathlib.Path],
  retrieval_config: DelfRetrievalConfig,
  save_every: int = 500,
  log: Callable[[str], None] = print,
  image_paths: Mapping[str, str | os.PathLike] | None = None,
  labels: Mapping[str, str] | None = None,
) -> tuple[FirstStageIndex, Failures]:
  """Builds or extends the ASMK or global first stage of ``index_dir`` from feature files.

  The images of ``feature_paths`` (``<id>.delf``; for "global" the ``<id>.delg_global``
  beside each) that the stage lacks are added; an interrupted build resumes. Votes
  indexes are built by delf_ret.index.builder. Returns (the stage, (path, reason) of each
  file that could not be added). The caller holds the index folder's writer lock.

  image_paths: image id -> image file, recorded (absolute) for the images the stage holds,
  also for those already indexed; labels: image id -> label ("" clears it). Both go to
  ``<index>/records.json`` (delf_ret.index.records) once the stage is saved.
  """
  index_dir = pathlib.Path(index_dir)
  name = check_stage(index_dir, retrieval_config)
  stage: AsmkStage | GlobalStage
  if name == "asmk":
    stage, failures = _build_asmk(index_dir, list(feature_paths), retrieval_config, save_every, log)
  elif name == "global":
    stage, failures = _build_global(index_dir, list(feature_paths), log)
  else:
    raise FirstStageError("votes indexes are built by delf_ret.index.builder.build_index")
  stage.set_records(update_records_file(index_dir, stage.image_ids(), image_paths, labels))
  return stage, failures


def read_descriptors(path: pathlib.Path, failures: Failures) -> np.ndarray | None:
  """The descriptors [N, D] (float32) of a feature file with features; else None, with
  (path, reason) appended to ``failures`` (unreadable file, or no features to index)."""
  try:
    features = read_features(path)
  except (FeatureFileError, OSError) as error:
    failures.append((path, f"{path}: {error}"))
    return None
  if not features.num_features:
    failures.append((path, f"{path}: no features to index"))
    return None
  return features.descriptors


def train_asmk(
  paths: list[pathlib.Path], params: AsmkParams, settings: dict | None, log: Callable[[str], None]
) -> AsmkIndex:
  """A new, empty AsmkIndex with a codebook trained on the descriptors of at most
  CODEBOOK_TRAINING_IMAGES of ``paths`` (evenly spaced; build_index's sample, also the
  sharded build's: delf_ret.retrieval.stage_shards). settings: the extraction settings record
  of the descriptors. FirstStageError when no sampled file has features or training fails."""
  picked = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), CODEBOOK_TRAINING_IMAGES)))
  sample = [read_descriptors(paths[i], []) for i in picked.astype(int).tolist()]
  arrays = [array for array in sample if array is not None]
  if not arrays:
    raise FirstStageError(f"no readable feature file with features among {len(paths)} to index")
  descriptors = np.concatenate(arrays)
  estimated = round(descriptors.shape[0] / len(arrays) * len(paths))
  index = AsmkIndex(descriptors.shape[1], params, settings)
  words = params.codebook_size or codebook_size_for(estimated)
  log(
    f"training an ASMK codebook of {words} words on {descriptors.shape[0]} descriptors of "
    f"{len(arrays)} images"
  )
  try:
    index.train(descriptors, estimated)
  except LocalIndexError as error:
    raise FirstStageError(f"cannot train the ASMK codebook: {error}") from None
  return index


def _build_asmk(
  index_dir: pathlib.Path,
  paths: list[pathlib.Path],
  retrieval_config: DelfRetrievalConfig,
  save_every: int,
  log: Callable[[str], None],
) -> tuple[AsmkStage, Failures]:
  folder = index_dir / ASMK_FOLDER
  params = AsmkParams.from_config(retrieval_config)
  settings = recorded_settings(paths[0].parent) if paths else None
  if (folder / "CURRENT").is_file():
    index = AsmkIndex.load(folder, expected_params=params, expected_settings=settings)
  else:
    if not paths:
      raise FirstStageError(f"no feature files to build the ASMK index in {folder}")
    index = train_asmk(paths, params, settings, log)
  todo = [path for path in paths if image_id_of(path) not in index]
  failures: Failures = []
  added = 0
  for number, path in enumerate(todo, 1):
    descriptors = read_descriptors(path, failures)
    if descriptors is None:
      continue
    try:
      index.add(image_id_of(path), descriptors, settings)
    except LocalIndexError as error:
      failures.append((path, f"{path}: {error}"))
      continue
    added += 1
    if added % save_every == 0:
      index.save(folder)
      log(f"[{number}/{len(todo)}] ASMK index saved: {len(index)} images")
  if added or not (folder / "CURRENT").is_file():
    index.save(folder)
  log(f"ASMK index at {folder}: {len(index)} images ({added} added)")
  return AsmkStage(index), failures


def whitening_rule(num_images: int, dim: int) -> bool:
  """Whether PCA-whitening is learned for a database of ``num_images`` global descriptors of
  ``dim`` dimensions: at least WHITENING_IMAGES_PER_DIM images per dimension (fewer leave
  directions of little or no variance that whitening would blow up)."""
  return num_images >= WHITENING_IMAGES_PER_DIM * dim


def read_whitening(folder: pathlib.Path) -> tuple[np.ndarray, np.ndarray] | None:
  """The whitening stored in ``folder/whitening.npz`` ((mean [D], projection [K, D]) or None
  where none was learned); FirstStageError naming the file when missing or damaged."""
  path = folder / WHITENING_FILE
  try:
    with np.load(path, allow_pickle=False) as stored:
      version, learned = int(stored["format_version"]), bool(stored["learned"])
      mean, projection = stored["mean"], stored["projection"]
  except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as error:
    raise FirstStageError(f"{path}: the global index's whitening is unreadable ({error})") from None
  if version != WHITENING_FORMAT:
    raise FirstStageError(f"{path}: format version {version}, expected {WHITENING_FORMAT}")
  if not learned:
    return None
  if (
    mean.dtype != np.float32
    or projection.dtype != np.float32
    or projection.ndim != 2
    or mean.shape != (projection.shape[1],)
    or not (np.isfinite(mean).all() and np.isfinite(projection).all())
  ):
    raise FirstStageError(f"{path} is damaged: mean {mean.shape}, projection {projection.shape}")
  return mean, projection


def write_whitening(folder: pathlib.Path, whitening: tuple[np.ndarray, np.ndarray] | None) -> None:
  """Writes ``folder/whitening.npz`` atomically (:func:`read_whitening` reads it): (mean [D],
  projection [K, D]) float32, or None where no whitening was learned."""
  folder.mkdir(parents=True, exist_ok=True)
  mean, projection = whitening or (np.zeros(0, np.float32), np.zeros((0, 0), np.float32))
  with atomic_write(folder / WHITENING_FILE) as handle:
    np.savez(
      handle,
      format_version=np.array(WHITENING_FORMAT, np.int64),
      learned=np.array(whitening is not None),
      mean=mean,
      projection=projection,
    )


def _read_globals(paths: list[pathlib.Path], failures: Failures) -> tuple[list[str], np.ndarray]:
  """(image ids, raw global descriptors [N, D]) of the ``.delg_global`` files beside
  ``paths``; a missing or unreadable one (or one of another dimension) is a failure."""
  ids: list[str] = []
  rows: list[np.ndarray] = []
  for path in paths:
    target = path.parent / global_file_name(image_id_of(path))
    try:
      row = read_global_descriptor(target)
    except (FeatureFileError, OSError) as error:
      failures.append((path, f"{target}: {error}"))
      continue
    if rows and row.shape != rows[0].shape:
      failures.append((path, f"{target}: {row.shape[0]}-d, the others {rows[0].shape[0]}-d"))
      continue
    ids.append(image_id_of(path))
    rows.append(row)
  return ids, np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def _build_global(
  index_dir: pathlib.Path, paths: list[pathlib.Path], log: Callable[[str], None]
) -> tuple[GlobalStage, Failures]:
  folder = index_dir / GLOBAL_FOLDER
  stage = None
  if (folder / INDEX_FILE).is_file():
    stage = GlobalStage(GlobalDescriptorIndex.load(folder), read_whitening(folder))
  todo = [path for path in paths if stage is None or image_id_of(path) not in stage]
  features_dirs = sorted({str(path.parent) for path in todo})
  if todo and not any(
    (path.parent / global_file_name(image_id_of(path))).is_file() for path in todo
  ):
    raise FirstStageError(
      f"no .delg_global files in {', '.join(features_dirs)}: first_stage global needs the "
      f"images' global descriptors; extract them with use_global_features: true"
    )
  failures: Failures = []
  ids, descriptors = _read_globals(todo, failures)
  if stage is None:
    if not ids:
      raise FirstStageError(f"no global descriptor to build the global index in {folder}")
    whitening = None
    if whitening_rule(len(ids), descriptors.shape[1]):
      whitening = learn_pca_whitening(descriptors)
    log(
      f"global descriptors: {descriptors.shape[1]}-d, "
      + (
        f"PCA-whitening to {whitening[1].shape[0]} dimensions learned on {len(ids)} images"
        if whitening
        else f"not whitened ({len(ids)} images, fewer than {WHITENING_IMAGES_PER_DIM} per dimension)"
      )
    )
    write_whitening(folder, whitening)
    dim = descriptors.shape[1] if whitening is None else whitening[1].shape[0]
    stage = GlobalStage(GlobalDescriptorIndex(dim), whitening)
  if ids:
    try:
      stage.descriptors.add_many(ids, stage.whiten(descriptors))
    except (GlobalIndexError, DelfRetError) as error:
      raise FirstStageError(f"cannot add global descriptors to {folder}: {error}") from None
  if ids or not (folder / INDEX_FILE).is_file():
    stage.descriptors.save(folder)
  log(f"global index at {folder}: {len(stage)} images ({len(ids)} added)")
  return stage, failures


def remove_from_first_stage(
  index_dir: str | os.PathLike,
  image_ids: list[str],
  retrieval_config: DelfRetrievalConfig,
  log: Callable[[str], None] = print,
) -> FirstStageIndex:
  """Deletes images by id from the ASMK or global first stage of ``index_dir`` and saves it
  (FirstStageError naming the ids not in it; nothing is removed then)."""
  index_dir = pathlib.Path(index_dir)
  with writer_lock(index_dir):
    stage = open_first_stage(index_dir, retrieval_config)
    unknown = [name for name in image_ids if name not in stage]
    if unknown:
      raise FirstStageError(f"not in the index: {', '.join(unknown)}")
    if isinstance(stage, AsmkStage):
      for name in image_ids:
        stage.asmk.delete(name)
      stage.asmk.save(index_dir / ASMK_FOLDER)
    elif isinstance(stage, GlobalStage):
      for name in image_ids:
        stage.descriptors.delete(name)
      stage.descriptors.save(index_dir / GLOBAL_FOLDER)
    else:
      raise FirstStageError("votes indexes remove images with delf_ret.index.builder")
    stage.set_records(update_records_file(index_dir, stage.image_ids(), remove=image_ids))
  log(f"removed {len(image_ids)} images; {len(stage)} images left in {index_dir}")
  return stage


# Queries ---------------------------------------------------------------------------

QueryExtract = Callable[[np.ndarray], "LocalFeatures | tuple[LocalFeatures, np.ndarray]"]


@dataclasses.dataclass(frozen=True)
class Query:
  """What a first stage ranks a query with: its local features, and its raw global descriptor
  float32 [D] (None unless the query extractor gives one: first_stage "global")."""

  features: LocalFeatures
  global_descriptor: np.ndarray | None = None

  @classmethod
  def of(cls, extracted: "LocalFeatures | tuple[LocalFeatures, np.ndarray] | Query") -> "Query":
    """A query extractor's answer (features, or (features, global descriptor)) as a Query."""
    if isinstance(extracted, Query):
      return extracted
    if isinstance(extracted, tuple):
      return cls(extracted[0], extracted[1])
    return cls(extracted)


class QueryExtractor:
  """image uint8 [H, W, 3] -> what the configured first stage needs of a query: DELF
  features, and for "global" (features, global descriptor float32 [D]) from one
  GlobalExtraction. The model loads on the first call or :meth:`load` (a resumed run whose
  queries are all cached never loads it)."""

  def __init__(self, config: DelfConfig, backend: str = "compiled"):
    self.config, self.backend = config, backend
    self.with_global = configured_stage(config.retrieval_config) == "global"
    self._extract: Callable | None = None
    self._extractor: DelfExtractor | None = None

  def load(self) -> None:
    """Loads the model now (errors of the model or its settings are raised here)."""
    if self._extract is not None:
      return
    # Lazy: TensorFlow (the extractor), only when a query is extracted.
    from delf_ret.extract.extractor import DelfExtractor

    extractor = self._extractor = DelfExtractor(self.config, backend=self.backend)
    if self.with_global:
      self._extract = GlobalExtraction(extractor).extract_with_global
    else:
      self._extract = extractor.extract

  def delf_extractor(self) -> DelfExtractor:
    """The DelfExtractor the queries are extracted with (loaded now if not yet), e.g. to
    extract database images with the same model (delf_ret.retrieval.indexing)."""
    self.load()
    assert self._extractor is not None
    return self._extractor

  def __call__(self, image: np.ndarray) -> "LocalFeatures | tuple[LocalFeatures, np.ndarray]":
    self.load()
    assert self._extract is not None
    return self._extract(image)


def query_extractor(config: DelfConfig, backend: str = "compiled") -> QueryExtractor:
  """The query extractor of the configured first stage (see QueryExtractor)."""
  return QueryExtractor(config, backend)
