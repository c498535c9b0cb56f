"""Indexing a database in one call: images -> .delf feature files -> LocalFeatureIndex
(or, with ``index_first_stage``, the first stage the config asks for: votes, ASMK or global).

``index_database`` is the call the demo (retrieval.demo), the benchmarks and the
``build_index`` tool make: it extracts the images whose feature file is missing
(one ``<image id>.delf`` per image in ``features_dir``), then builds or resumes
the index at ``index_dir`` from the feature files (delf_ret.index.builder). It
takes images (with an extractor) or feature files. Given images, the index
records each image's absolute path; given a labels file (delf_ret.index.labels),
each listed image's label.

Why here and not in index/: extracting images needs the DELF model
(TensorFlow), and index/ stays TensorFlow-free; the feature-file half is
delf_ret.index.builder.build_index, and this module adds the extraction before
it. TensorFlow is imported only when a DelfExtractor is passed, or when a ModelOnDemand
(first_stage.QueryExtractor) has an image to extract.

The database side of a RetrievalDataset lives here too: ``database_image_paths``
and ``database_feature_paths`` name the files of its database list (imlist),
which is what gets indexed for a benchmark.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import time
import typing
from typing import TYPE_CHECKING
from typing import Callable
from typing import Collection
from typing import Protocol
from typing import Sequence
from typing import runtime_checkable

from delf_ret.atomic import remove_leftovers
from delf_ret.errors import DelfRetError
from delf_ret.errors import InputError
from delf_ret.evaluation.ground_truth import GroundTruthError
from delf_ret.evaluation.ground_truth import RetrievalDataset
from delf_ret.extract.global_features import GlobalExtraction
from delf_ret.extract.settings import nothing_left
from delf_ret.features import LocalFeatures
from delf_ret.features import feature_file_name
from delf_ret.features import feature_file_names
from delf_ret.features import feature_loader
from delf_ret.features import global_file_name
from delf_ret.features import image_id_of
from delf_ret.features import write_features
from delf_ret.index import IndexParams
from delf_ret.index import LocalFeatureIndex
from delf_ret.index.builder import build_index
from delf_ret.index.builder import list_feature_files
from delf_ret.index.feature_store import STORE_FOLDER
from delf_ret.index.feature_store import FeatureStore
from delf_ret.index.feature_store import FeatureStoreError
from delf_ret.index.feature_store import sync_feature_store
from delf_ret.index.feature_store import update_feature_store
from delf_ret.index.labels import ImageLabels
from delf_ret.index.lock import writer_lock
from delf_ret.retrieval.first_stage import FirstStageIndex
from delf_ret.retrieval.first_stage import VotesStage
from delf_ret.retrieval.first_stage import build_first_stage
from delf_ret.retrieval.first_stage import built_stage
from delf_ret.retrieval.first_stage import check_stage
from delf_ret.retrieval.first_stage import open_first_stage
from delf_ret.retrieval.first_stage import use_search_settings

if TYPE_CHECKING:
  from delf_ret.config import DelfConfig
  from delf_ret.config import DelfRetrievalConfig
  from delf_ret.extract.extractor import DelfExtractor

Failures = list[tuple[pathlib.Path, str]]


def database_image_paths(dataset: RetrievalDataset) -> list[pathlib.Path]:
  """The image file of every database image (imlist order).

  Raises GroundTruthError naming the dataset and a missing file if any is missing.
  """
  paths = [dataset.image_path(name) for name in dataset.imlist]
  missing = [path for path in paths if not path.is_file()]
  if missing:
    raise GroundTruthError(
      f"{len(missing)} of {len(paths)} database images of {dataset.name} "
      f"are missing, e.g. {missing[0]}"
    )
  return paths


def database_feature_paths(
  dataset: RetrievalDataset, features_dir: str | os.PathLike
) -> tuple[list[pathlib.Path], Failures]:
  """(feature files of the database images that exist, (path, reason) of the missing ones).

  Raises GroundTruthError when none of them is in ``features_dir``.
  """
  features_dir = pathlib.Path(features_dir)
  paths = [features_dir / feature_file_name(name) for name in dataset.imlist]
  present = [path for path in paths if path.is_file()]
  missing = [
    (path, f"{path}: feature file of database image not found")
    for path in paths
    if not path.is_file()
  ]
  if not present:
    raise GroundTruthError(
      f"none of the {len(paths)} database feature files of {dataset.name} is in {features_dir}"
    )
  return present, missing


@runtime_checkable
class FileExtractor(Protocol):
  """What index_database needs of a DelfExtractor: its config and ``extract_file``."""

  config: DelfConfig

  def extract_file(self, path: str | os.PathLike) -> LocalFeatures: ...


@runtime_checkable
class ModelOnDemand(Protocol):
  """An extractor whose model loads on first use (first_stage.QueryExtractor): its config,
  and ``delf_extractor()``, which loads the model (TensorFlow) and gives the DelfExtractor.
  index_database calls it only when an image has no feature file of these settings."""

  config: DelfConfig

  def delf_extractor(self) -> DelfExtractor: ...


# An extractor for index_database: a DelfExtractor, one loaded on demand (ModelOnDemand), or
# any function image file -> features.
Extract = FileExtractor | ModelOnDemand | Callable[[pathlib.Path], LocalFeatures]


@dataclasses.dataclass
class IndexedDatabase:
  """What index_database did.

  index: the index, saved at index_dir.
  feature_paths: the feature files given to the index (those of the images
    that were extracted or already had one).
  failures: (path, reason) of each image that could not be extracted and each
    feature file that could not be added.
  extracted: feature files written by this call (the others were reused).
  seconds: wall time of "extraction" and "index".
  """

  index: LocalFeatureIndex
  feature_paths: list[pathlib.Path]
  failures: Failures
  extracted: int
  seconds: dict[str, float]


def extract_missing(
  images: Sequence[pathlib.Path],
  features_dir: pathlib.Path,
  extract: Extract,
  overwrite: bool = False,
  log: Callable[[str], None] = print,
) -> tuple[list[pathlib.Path], Failures, int]:
  """Writes ``features_dir/<image id>.delf`` for every image whose file is missing.

  A DelfExtractor goes through delf_ret.extract.batch.extract_all (the folder
  records the extraction settings; files of other settings are refused, or
  recomputed with ``overwrite``); when its config has ``use_global_features``, each
  image's ``<image id>.delg_global`` is written too (global_features.GlobalExtraction). A plain function image file -> features is
  called for each missing file, in the order of ``images``; an image it raises
  a DelfRetError for is a failure (the caller owns the folder: nothing records
  which function made the files). Returns (the feature file of each image
  that has one, in image order; (path, reason) of the failed images; files written).
  A ModelOnDemand loads its model only when some file is missing or the folder records
  other settings (or none), or with ``overwrite``: then as a DelfExtractor.
  """
  names = feature_file_names(list(images))
  missing = sum(not (features_dir / name).exists() for name in names)
  if isinstance(extract, ModelOnDemand):
    if not overwrite and nothing_left(features_dir, extract.config, list(images)):
      log(
        f"all {len(names)} images have their feature files (same settings) in "
        f"{features_dir}: the model is not loaded"
      )
      return [features_dir / name for name in names], [], 0
    extract = extract.delf_extractor()
  if isinstance(extract, FileExtractor):
    from delf_ret.extract.batch import extract_all

    extractor = typing.cast("DelfExtractor", extract)
    with_global = extractor.config.use_global_features
    if with_global:  # Both files of each image (.delf, .delg_global), from one extraction.
      extractor = typing.cast("DelfExtractor", GlobalExtraction(extractor))
    failures = extract_all(
      extractor, list(images), features_dir, log, overwrite=overwrite, with_global=with_global
    )
  else:
    try:
      features_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
      raise InputError(f"cannot make the feature folder {features_dir}: {error}") from None
    remove_leftovers(features_dir, log)
    failures = []
    for number, (path, name) in enumerate(zip(images, names), 1):
      if (features_dir / name).exists():
        continue
      try:
        write_features(features_dir / name, extract(path))
      except DelfRetError as error:
        log(f"[{number}/{len(names)}] ERROR {error}")
        failures.append((path, str(error)))
  failed = {path for path, _ in failures}
  paths = [features_dir / name for path, name in zip(images, names) if path not in failed]
  extracted = missing - sum(not (features_dir / name).exists() for name in names)
  return paths, failures, extracted


def index_database(
  index_dir: str | os.PathLike,
  features_dir: str | os.PathLike,
  params: IndexParams,
  images: Sequence[pathlib.Path] | None = None,
  extract: Extract | None = None,
  feature_paths: Sequence[pathlib.Path] | None = None,
  dim: int | None = None,
  overwrite: bool = False,
  save_every: int = 500,
  log: Callable[[str], None] = print,
  labels: ImageLabels | None = None,
) -> IndexedDatabase:
  """Indexes a database: extracts the missing feature files, then builds or resumes the index.

  Args:
    index_dir: folder of the index (created, or loaded and extended).
    features_dir: folder of the ``<image id>.delf`` feature files.
    params: index type and parameters (IndexParams.from_config).
    images: image files to index; their missing feature files are extracted
      with ``extract`` (see extract_missing), then the feature files of all of
      them are indexed, in this order.
    extract: a DelfExtractor, a ModelOnDemand (first_stage.query_extractor: the model loads
      only if an image needs extracting) or a function image file -> LocalFeatures; needed
      with ``images``.
    feature_paths: without images, exactly these feature files are indexed;
      with neither, every .delf file of ``features_dir`` (sorted by name).
    dim: the descriptor dimension the config fixes (its pca_dim); None: that
      of the first readable feature file.
    overwrite: a DelfExtractor recomputes feature files made with other settings.
    save_every: the index is saved after every this many added images (and at the end).
    log: progress lines.
    labels: labels to record (images already indexed are relabelled); every image it
      lists must be indexed or among those to index (checked before any work).

  With ``images``, each image's absolute path is recorded in the index (also for
  images already indexed, so a moved collection is recorded anew).

  The index folder's writer lock is taken first and held to the end, so a second
  writer on the same folder is refused at once (IndexBusyError), before it spends
  time extracting.

  Raises InputError on images without an extractor, images and feature files
  together, or images of which none could be extracted; LocalIndexError (from
  the builder) on an index that does not fit ``params`` or nothing to index.
  """
  with writer_lock(index_dir):
    return _index_database(
      index_dir,
      pathlib.Path(features_dir),
      params,
      images,
      extract,
      feature_paths,
      dim,
      log,
      overwrite=overwrite,
      save_every=save_every,
      labels=labels,
    )


def _prepare_inputs(
  index_dir: str | os.PathLike,
  features_dir: pathlib.Path,
  images: Sequence[pathlib.Path] | None,
  extract: Extract | None,
  feature_paths: Sequence[pathlib.Path] | None,
  log: Callable[[str], None],
  overwrite: bool,
  labels: ImageLabels | None,
  indexed: Callable[[], Collection[str]] | None = None,
) -> tuple[list[pathlib.Path], Failures, int, dict[str, pathlib.Path]]:
  """The feature files to index (the images' ones extracted first where missing), failed
  images, files extracted, and image id -> image file (images given only); see
  index_database. indexed: the ids already in the index, asked only when labels name others
  than those to index (None: those of the votes index at ``index_dir``)."""
  if indexed is None:
    indexed = functools.partial(_votes_ids, index_dir)
  failures: Failures = []
  extracted = 0
  image_paths: dict[str, pathlib.Path] = {}
  if images is not None:
    if extract is None:
      raise InputError(f"images to index into {features_dir} but no extractor given")
    if feature_paths is not None:
      raise InputError("give images or feature files to index, not both")
    if not images:
      raise InputError(f"no images to index into {features_dir}")
    image_paths = {image_id_of(path): path for path in images}
    _check_labels(labels, image_paths, indexed)
    paths, failures, extracted = extract_missing(images, features_dir, extract, overwrite, log)
    if not paths:
      raise InputError(f"no image could be extracted into {features_dir}, e.g. {failures[0][1]}")
  else:
    paths = list_feature_files(features_dir) if feature_paths is None else list(feature_paths)
    _check_labels(labels, {image_id_of(path) for path in paths}, indexed)
  return paths, failures, extracted, image_paths


def _index_database(
  index_dir: str | os.PathLike,
  features_dir: pathlib.Path,
  params: IndexParams,
  images: Sequence[pathlib.Path] | None,
  extract: Extract | None,
  feature_paths: Sequence[pathlib.Path] | None,
  dim: int | None,
  log: Callable[[str], None],
  overwrite: bool,
  save_every: int,
  labels: ImageLabels | None,
) -> IndexedDatabase:
  """index_database, under the writer lock."""
  start = time.perf_counter()
  paths, failures, extracted, image_paths = _prepare_inputs(
    index_dir, features_dir, images, extract, feature_paths, log, overwrite, labels
  )
  seconds = {"extraction": time.perf_counter() - start}
  start = time.perf_counter()
  index, index_failures = build_index(
    paths,
    index_dir,
    params,
    save_every,
    log,
    dim,
    image_paths=image_paths,
    labels=None if labels is None else labels.labels,
  )
  seconds["index"] = time.perf_counter() - start
  return IndexedDatabase(index, paths, failures + index_failures, extracted, seconds)


@dataclasses.dataclass
class IndexedStage:
  """What index_first_stage did: as IndexedDatabase, with the first stage it built
  (delf_ret.retrieval.first_stage) in place of the votes index."""

  stage: FirstStageIndex
  feature_paths: list[pathlib.Path]
  failures: Failures
  extracted: int
  seconds: dict[str, float]


def index_first_stage(
  index_dir: str | os.PathLike,
  features_dir: str | os.PathLike,
  config: DelfConfig,
  images: Sequence[pathlib.Path] | None = None,
  extract: Extract | None = None,
  feature_paths: Sequence[pathlib.Path] | None = None,
  dim: int | None = None,
  overwrite: bool = False,
  save_every: int = 500,
  log: Callable[[str], None] = print,
  labels: ImageLabels | None = None,
) -> IndexedStage:
  """Indexes a database for the first stage the config asks for (retrieval_config.first_stage).

  "votes": index_database with IndexParams.from_config (the arguments mean the same);
  "asmk" / "global": the same extraction of missing feature files, then
  first_stage.build_first_stage in ``index_dir/asmk`` or ``index_dir/global`` (no votes
  index is built; the .delf files stay needed for reranking). A folder holding another
  first stage is refused (FirstStageError naming both) before any work. Every stage records
  the images' absolute paths (images given) and ``labels``: a votes index in its meta.json,
  the others in ``index_dir/records.json`` (delf_ret.index.records).
  """
  retrieval_config = config.retrieval_config
  name = check_stage(index_dir, retrieval_config)
  if name == "votes":
    indexed = index_database(
      index_dir,
      features_dir,
      IndexParams.from_config(retrieval_config),
      images=images,
      extract=extract,
      feature_paths=feature_paths,
      dim=dim,
      overwrite=overwrite,
      save_every=save_every,
      log=log,
      labels=labels,
    )
    use_search_settings(indexed.index, retrieval_config)
    sync_database_store(index_dir, features_dir, indexed.index.image_ids(), log)
    return IndexedStage(
      VotesStage(indexed.index),
      indexed.feature_paths,
      indexed.failures,
      indexed.extracted,
      indexed.seconds,
    )
  if name == "global" and not config.use_global_features:
    raise InputError(
      "first_stage global needs global descriptors: set use_global_features: true "
      "(extraction writes <id>.delg_global beside each .delf)"
    )
  with writer_lock(index_dir):
    start = time.perf_counter()
    inputs = (images, extract, feature_paths, log, overwrite, labels)
    known = _stage_ids(index_dir, retrieval_config)
    paths, failures, extracted, image_paths = _prepare_inputs(
      index_dir, pathlib.Path(features_dir), *inputs, known
    )
    seconds = {"extraction": time.perf_counter() - start}
    start = time.perf_counter()
    stage, stage_failures = build_first_stage(
      index_dir,
      paths,
      retrieval_config,
      save_every=save_every,
      log=log,
      image_paths=image_paths,
      labels=None if labels is None else labels.labels,
    )
    seconds["index"] = time.perf_counter() - start
  sync_database_store(index_dir, features_dir, stage.image_ids(), log)
  return IndexedStage(stage, paths, failures + stage_failures, extracted, seconds)


def sync_database_store(
  index_dir: str | os.PathLike,
  features_dir: str | os.PathLike,
  image_ids: Sequence[str],
  log: Callable[[str], None] = print,
) -> None:
  """Brings the index's packed feature store (``index_dir/features``: the database's local
  features in memory-mapped files, reranking's fast reader) in step with the ``.delf`` files
  of ``image_ids`` in ``features_dir``, which stay the source of truth; writes nothing when
  it already is (delf_ret.index.feature_store.sync_feature_store). An index of several
  feature folders gets no store update (reranking reads one folder's .delf files; the
  readers find such a store stale and read the files)."""
  elsewhere = [
    i for i in image_ids if not (pathlib.Path(features_dir) / feature_file_name(i)).is_file()
  ]
  if elsewhere:
    log(
      f"feature store not updated: {len(elsewhere)} indexed images have no feature file in "
      f"{features_dir} (e.g. {elsewhere[0]!r}); reranking reads the .delf files"
    )
    return
  store = sync_feature_store(pathlib.Path(index_dir) / STORE_FOLDER, features_dir, image_ids)
  log(f"feature store at {store.folder}: {len(store)} images")


def remove_from_database_store(
  index_dir: str | os.PathLike, image_ids: Sequence[str], log: Callable[[str], None] = print
) -> None:
  """Removes ``image_ids`` (those it holds) from the index's packed feature store, if any."""
  folder = pathlib.Path(index_dir) / STORE_FOLDER
  if not (folder / "CURRENT").exists():
    return
  store = FeatureStore.open(folder)
  held = [image_id for image_id in image_ids if image_id in store]
  if held:
    store = update_feature_store(folder, remove=held)
    log(f"feature store at {store.folder}: {len(store)} images")


def database_feature_loader(
  index_dir: str | os.PathLike | None,
  features_dir: str | os.PathLike,
  log: Callable[[str], None] = print,
) -> Callable[[str], LocalFeatures]:
  """Reranking's reader of database features (image id -> LocalFeatures): the packed store
  of the index at ``index_dir`` when it holds one in step with the ``.delf`` files of
  ``features_dir`` (images it lacks are read from those files), else the ``.delf`` files,
  with a warning when the store is stale or damaged."""
  folder = None if index_dir is None else pathlib.Path(index_dir) / STORE_FOLDER
  if folder is None or not (folder / "CURRENT").exists():
    return feature_loader(features_dir)
  try:
    store = FeatureStore.open(folder)
    store.check_fresh(features_dir, store.image_ids())
  except FeatureStoreError as error:
    log(f"warning: {error}; reranking reads the .delf files instead (build_index syncs it)")
    return feature_loader(features_dir)
  return store.loader(fallback_dir=features_dir)


def check_labels_known(
  index_dir: str | os.PathLike,
  retrieval_config: DelfRetrievalConfig,
  labels: ImageLabels | None,
  to_index: Collection[str],
) -> None:
  """The check index_first_stage makes of ``labels``, for a caller to make before costly work
  (loading the model): LabelsFileError naming the file and row of an image that is neither
  among the ids ``to_index`` nor in the first stage built at ``index_dir`` (read only if
  needed); FirstStageError when that folder holds another first stage."""
  if check_stage(index_dir, retrieval_config) == "votes":
    indexed: Callable[[], Collection[str]] = functools.partial(_votes_ids, index_dir)
  else:
    indexed = _stage_ids(index_dir, retrieval_config)
  _check_labels(labels, to_index, indexed)


def missing_feature_files(
  images: Sequence[pathlib.Path], features_dir: str | os.PathLike, with_global: bool = False
) -> int:
  """How many of ``images`` extraction would write: those without ``<id>.delf`` in
  ``features_dir`` (with_global: or without ``<id>.delg_global``)."""
  folder = pathlib.Path(features_dir)
  count = 0
  for image in images:
    image_id = image_id_of(image)
    names = [feature_file_name(image_id)] + ([global_file_name(image_id)] if with_global else [])
    count += not all(os.path.exists(folder / name) for name in names)
  return count


def _check_labels(
  labels: ImageLabels | None, to_index: Collection[str], indexed: Callable[[], Collection[str]]
) -> None:
  """LabelsFileError (naming the file and row) when ``labels`` lists an image that is neither
  among the ids ``to_index`` nor in the index (``indexed()``, asked only if needed)."""
  if labels is None:
    return
  if set(labels.labels) <= set(to_index):
    return
  labels.check_known(set(to_index) | set(indexed()))


def _votes_ids(index_dir: str | os.PathLike) -> list[str]:
  """The image ids of the votes index at ``index_dir`` (none when it has none yet)."""
  if (pathlib.Path(index_dir) / "CURRENT").is_file():
    return LocalFeatureIndex.load(index_dir).image_ids()
  return []


def _stage_ids(
  index_dir: str | os.PathLike, retrieval_config: DelfRetrievalConfig
) -> Callable[[], list[str]]:
  """A function giving the image ids of the first stage built at ``index_dir`` (none yet: [])."""

  def ids() -> list[str]:
    if built_stage(index_dir) is None:
      return []
    return open_first_stage(index_dir, retrieval_config).image_ids()

  return ids
