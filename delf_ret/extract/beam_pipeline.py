"""Extracting many images on many machines: an Apache Beam pipeline writing extract_features'
feature files.

Each worker builds one DelfExtractor (``DoFn.setup``) and runs the single-machine code path,
``DelfExtractor.extract_file`` then the ``DelfFeatures`` bytes of ``delf_ret.features``, so a
feature file is byte for byte what ``extract_features`` writes. Files are written through Beam's
file systems (a local folder, or ``gs://``/``s3://`` with Beam's own extras) to a temporary
name, then renamed: a killed pipeline leaves whole files only, and a rerun skips the images
whose feature file exists. The feature folder records its extraction settings as
``extract_features`` records them (``delf_ret.extract.settings``), before any work.
An unreadable, too small or too large image is logged and counted (Beam metrics in
NAMESPACE: "extracted", "skipped", "failed" counters, "failures" string set); it never stops
the pipeline. Images may be on any Beam file system too (each is copied to a local temporary
file, then read as extract_features reads it); the model and PCA files are read by local path,
which every worker must have (the shipped default model is in the package).

Needs the ``beam`` extra (``pip install 'delf-ret[beam]'``): without it this module imports,
and running a pipeline raises BeamPipelineError saying so (delf_ret.extract.beam_options, which
also makes Beam's options, shared with index building).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
import uuid
from typing import Callable
from typing import Iterator
from typing import Sequence

import numpy as np

from delf_ret.atomic import TEMP_MARK
from delf_ret.atomic import TEMP_NAME
from delf_ret.atomic import remove_leftovers
from delf_ret.config import DelfConfig
from delf_ret.errors import InputError
from delf_ret.extract.batch import prepare_output_dir
from delf_ret.extract.beam_options import require_beam
from delf_ret.extract.extractor import DelfExtractor
from delf_ret.extract.extractor import ImageTooLargeError
from delf_ret.extract.extractor import ImageTooSmallError
from delf_ret.extract.global_features import GlobalExtraction
from delf_ret.extract.global_features import GlobalFeatureError
from delf_ret.extract.settings import SETTINGS_FILE
from delf_ret.extract.settings import check_feature_folder
from delf_ret.extract.settings import extraction_settings
from delf_ret.features import FEATURE_SUFFIX
from delf_ret.features import GLOBAL_SUFFIX
from delf_ret.features import LocalFeatures
from delf_ret.features import feature_file_names
from delf_ret.features import global_descriptor_bytes
from delf_ret.features import global_file_name
from delf_ret.features import image_id_of
from delf_ret.features import to_proto
from delf_ret.images import IMAGE_SUFFIXES
from delf_ret.images import ImageReadError

try:  # An extra: the rest of delf-ret, and this module's import, do without it.
  import apache_beam as beam
  from apache_beam.io.filesystem import BeamIOError
  from apache_beam.io.filesystem import CompressionTypes
  from apache_beam.io.filesystems import FileSystems
  from apache_beam.metrics import Metrics
  from apache_beam.metrics.metric import MetricsFilter
  from apache_beam.options.pipeline_options import PipelineOptions
  from apache_beam.options.pipeline_options import StandardOptions
except ImportError:
  beam = None

DOING = "extracting"  # What require_beam's error says this pipeline does.
# Beam metrics of the extraction.
NAMESPACE = "delf_ret.extract"


@dataclasses.dataclass(frozen=True)
class ExtractionSummary:
  """What a pipeline run did: image counts, and (image path, reason) of each failed image."""

  total: int
  extracted: int
  skipped: int
  failures: list[tuple[str, str]]


def is_local(path: str) -> bool:
  """True for a path of the local file system (no ``scheme://``)."""
  return FileSystems.get_scheme(path) is None


def write_bytes_anywhere(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` on any Beam file system: to ``.<name>.delfret-<random>.tmp``
  beside it (delf_ret.atomic's temporary names), then renamed onto ``path``."""
  folder, name = FileSystems.split(path)
  temporary = FileSystems.join(folder, f".{name}{TEMP_MARK}{uuid.uuid4().hex[:8]}.tmp")
  try:
    with FileSystems.create(temporary) as handle:
      handle.write(data)
    FileSystems.rename([temporary], [path])
  except BaseException:
    with contextlib.suppress(Exception):
      FileSystems.delete([temporary])
    raise


def _listed(pattern: str) -> list[str]:
  """The paths matching a glob ``pattern`` on any Beam file system ([] if none, or if its
  folder does not exist); InputError when the file system cannot list it."""
  try:
    (result,) = FileSystems.match([pattern])
  except BeamIOError as error:
    raise InputError(f"cannot list {pattern}: {error}") from None
  return [metadata.path for metadata in result.metadata_list]


def feature_files_in(folder: str) -> set[str]:
  """The names of the feature files (``.delf``, ``.delg_global``) in ``folder`` (one listing,
  on any Beam file system)."""
  names = (FileSystems.split(path)[1] for path in _listed(FileSystems.join(folder, "*")))
  return {name for name in names if name.endswith((FEATURE_SUFFIX, GLOBAL_SUFFIX))}


def remove_finished_leftovers(folder: str, log: Callable[[str], None]) -> int:
  """Deletes the temporary files (delf_ret.atomic's names) of feature files that exist in
  ``folder``: a killed worker's, never needed again. Returns how many were removed."""
  finished = feature_files_in(folder)
  leftovers = [
    path
    for path in _listed(FileSystems.join(folder, f".*{TEMP_MARK}*.tmp"))
    if TEMP_NAME.fullmatch(name := FileSystems.split(path)[1])
    and name[1 : name.rindex(TEMP_MARK)] in finished
  ]
  if leftovers:
    FileSystems.delete(leftovers)
    log(f"removed {len(leftovers)} temporary files left by an interrupted run in {folder}")
  return len(leftovers)


def remote_image_paths(images_dir: str | None, list_images_path: str | None) -> list[str]:
  """The images of a folder (not its sub-folders) or a list file on another Beam file system
  (gs://, s3://): the folder's files with an image suffix, in sorted order, or the list's lines
  (blank lines and '#' comments skipped; a path without ``scheme://`` is relative to the list's
  folder). Raises InputError when the list is missing, not UTF-8 text, or no image is named."""
  require_beam(DOING)
  if bool(images_dir) == bool(list_images_path):
    raise InputError("give exactly one of --images_dir and --list_images_path")
  if images_dir:
    found = _listed(FileSystems.join(images_dir, "*"))
    paths = sorted(path for path in found if path.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
      raise InputError(f"no image files in {images_dir}")
    return paths
  assert list_images_path  # Exactly one of the two is given (checked above).
  if not FileSystems.exists(list_images_path):
    raise InputError(f"image list not found: {list_images_path}")
  with FileSystems.open(list_images_path, compression_type=CompressionTypes.UNCOMPRESSED) as file:
    data = file.read()
  try:
    lines = [line.strip() for line in data.decode("utf-8").splitlines()]
  except UnicodeDecodeError as reason:  # The wording of delf_ret.errors.read_utf8_text.
    raise InputError(
      f"image list {list_images_path}: not a UTF-8 text file ({reason.reason} at byte "
      f"{reason.start})"
    ) from None
  folder = FileSystems.split(list_images_path)[0]
  paths = [
    line if "://" in line else FileSystems.join(folder, line)
    for line in lines
    if line and not line.startswith("#")
  ]
  if not paths:
    raise InputError(f"image list {list_images_path} names no images")
  return paths


# What an image that cannot be extracted raises (logged and counted, never raised further).
IMAGE_ERRORS = (ImageReadError, ImageTooSmallError, ImageTooLargeError, GlobalFeatureError)


class ExtractFeatures(beam.DoFn if beam is not None else object):  # type: ignore[misc]
  """(image path, feature file name) -> the feature file in ``output_dir``; yields its path.

  The extractor is built once per worker (``setup``) from the serialized DelfConfig; with
  ``use_global_features`` it also writes the image's ``<id>.delg_global`` (before the
  ``.delf``: as extract_features, global_features.GlobalExtraction, one extraction for both).
  An image whose files exist is skipped (a retried bundle, a resumed run); an image that
  cannot be read or extracted is logged and counted, never raised.
  """

  def __init__(
    self,
    config_bytes: bytes,
    output_dir: str,
    backend: str,
    log: Callable[[str], None] = print,
  ):
    self._config_bytes = config_bytes
    self._output_dir = output_dir
    self._backend = backend
    self._log = log
    self._extracted = Metrics.counter(NAMESPACE, "extracted")
    self._skipped = Metrics.counter(NAMESPACE, "skipped")
    self._failed = Metrics.counter(NAMESPACE, "failed")
    self._failures = Metrics.string_set(NAMESPACE, "failures")
    self._extractor: DelfExtractor | None = None
    self._global: GlobalExtraction | None = None

  def setup(self) -> None:
    config = DelfConfig.FromString(self._config_bytes)
    self._extractor = DelfExtractor(config, backend=self._backend)
    if config.use_global_features:
      self._global = GlobalExtraction(self._extractor)

  def process(self, element: tuple[str, str]) -> Iterator[str]:
    path, name = element
    target = FileSystems.join(self._output_dir, name)
    global_target = None
    if self._global is not None:
      global_target = FileSystems.join(self._output_dir, global_file_name(image_id_of(name)))
    if FileSystems.exists(target) and (global_target is None or FileSystems.exists(global_target)):
      self._skipped.inc()
      return
    try:
      features, descriptor = self._extract(path)
    except IMAGE_ERRORS as error:
      self._fail(path, str(error))
      return
    try:
      if global_target is not None and descriptor is not None:
        write_bytes_anywhere(global_target, global_descriptor_bytes(descriptor, global_target))
      write_bytes_anywhere(target, to_proto(features).SerializeToString())
    except OSError as error:  # E.g. a name too long for the file system.
      self._fail(path, f"{path}: cannot write {name}: {error.strerror or error}")
      return
    self._extracted.inc()
    extra = "" if descriptor is None else f" and a {descriptor.shape[0]}-d global descriptor"
    self._log(
      f"{pathlib.Path(path).name}: {features.num_features} features "
      f"(dim {features.descriptor_dim}){extra} -> {target}"
    )
    yield target

  def _run(self, path: str) -> tuple[LocalFeatures, np.ndarray | None]:
    """The local features of a local image file and, with global features, its descriptor."""
    assert self._extractor is not None  # Built by setup().
    if self._global is not None:
      return self._global.extract_file_with_global(path)
    return self._extractor.extract_file(path), None

  def _extract(self, path: str) -> tuple[LocalFeatures, np.ndarray | None]:
    """:meth:`_run` on a local image; another file system's through a local copy (its errors
    name the image's own path)."""
    if is_local(path):
      return self._run(path)
    with tempfile.TemporaryDirectory(prefix="delf_ret_image_") as folder:
      local = os.path.join(folder, FileSystems.split(path)[1])
      try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as source:
          with open(local, "wb") as target:
            shutil.copyfileobj(source, target)
      except OSError as error:  # Beam's BeamIOError too: e.g. no such file.
        raise ImageReadError(f"{path}: cannot read: {error}") from None
      try:
        return self._run(local)
      except IMAGE_ERRORS as error:
        raise type(error)(str(error).replace(local, path)) from None

  def _fail(self, path: str, reason: str) -> None:
    self._failed.inc()
    self._failures.add(json.dumps([path, reason]))
    self._log(f"ERROR {reason}")


def prepare_feature_folder(
  output_dir: str, settings: dict | None, overwrite: bool, log: Callable[[str], None]
) -> None:
  """What extract_features does to its folder before any work: a local folder is created and
  checked, its old temporary files removed, its settings record checked and written
  (delf_ret.extract.settings; ``overwrite`` deletes features of other settings). Another file
  system's folder gets the same record; other recorded settings are refused there."""
  if is_local(output_dir):
    folder = pathlib.Path(output_dir)
    prepare_output_dir(folder)
    remove_leftovers(folder, log)
    check_feature_folder(folder, settings, overwrite, log)
    return
  if overwrite:
    raise InputError(f"--overwrite deletes files of local folders only, not of {output_dir}")
  if settings is None:
    return
  record = FileSystems.join(output_dir, SETTINGS_FILE)
  if FileSystems.exists(record):
    with FileSystems.open(record) as handle:
      try:
        recorded = json.loads(handle.read().decode("utf-8"))
      except ValueError:
        recorded = None
    if recorded == settings:
      return
    raise InputError(
      f"{record} records other extraction settings than this config: use another folder"
    )
  write_bytes_anywhere(record, (json.dumps(settings, indent=2) + "\n").encode("utf-8"))


def _value(metric):
  """A metric's committed value; the attempted one where the runner commits none."""
  return metric.attempted if metric.committed is None else metric.committed


def _counted(result, log: Callable[[str], None]) -> tuple[dict[str, int], list[tuple[str, str]]]:
  """The extraction counters and the failures (path, reason) of a finished pipeline."""
  found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
  counts: dict[str, int] = {"extracted": 0, "skipped": 0, "failed": 0}
  for counter in found["counters"]:
    counts[counter.key.metric.name] += _value(counter) or 0
  failures = sorted(
    tuple(json.loads(text)) for strings in found["string_sets"] for text in _value(strings) or ()
  )
  if len(failures) < counts["failed"]:  # Beam keeps up to 1 MB of a string set.
    log(f"warning: the reasons of {counts['failed'] - len(failures)} failed images were dropped")
  return counts, failures


def extract_with_beam(
  config: DelfConfig,
  image_paths: Sequence[str | os.PathLike],
  output_dir: str,
  options: PipelineOptions,
  backend: str = "compiled",
  overwrite: bool = False,
  log: Callable[[str], None] = print,
) -> ExtractionSummary:
  """Writes OUTPUT_DIR/<image stem>.delf (and, with the config's ``use_global_features``,
  <image stem>.delg_global) for every image whose files are missing, with a Beam
  pipeline run with ``options`` (delf_ret.extract.beam_options.pipeline_options); returns what it did. Image paths and
  OUTPUT_DIR are local paths or those of another Beam file system (gs://...).

  The folder is prepared as extract_features prepares it (prepare_feature_folder); images
  whose feature file exists are skipped before the pipeline starts (and again by the
  workers). Raises InputError for two images with one image id or an unusable folder.
  """
  require_beam(DOING)
  paths = [str(path) for path in image_paths]
  names = feature_file_names([pathlib.Path(path) for path in paths])  # Ids: names, no suffix.
  settings = extraction_settings(config, config.model_path or None)
  prepare_feature_folder(output_dir, settings, overwrite, log)
  existing = feature_files_in(output_dir)
  todo = [
    (path, name)
    for path, name in zip(paths, names)
    if name not in existing
    or (config.use_global_features and global_file_name(image_id_of(name)) not in existing)
  ]
  skipped = len(paths) - len(todo)
  counts: dict[str, int] = {"extracted": 0, "skipped": 0}
  failures: list[tuple[str, str]] = []
  if todo:
    runner = options.view_as(StandardOptions).runner
    log(f"{len(todo)} images to extract ({skipped} done before), runner {runner}")
    extract = ExtractFeatures(config.SerializeToString(), output_dir, backend, log)
    with beam.Pipeline(options=options) as pipeline:
      _ = (
        pipeline
        | "Images" >> beam.Create(todo)
        | "Spread" >> beam.Reshuffle()
        | "Extract" >> beam.ParDo(extract)
      )
    counts, failures = _counted(pipeline.result, log)
  remove_finished_leftovers(output_dir, log)
  return ExtractionSummary(
    total=len(paths),
    extracted=counts["extracted"],
    skipped=skipped + counts["skipped"],
    failures=failures,
  )
