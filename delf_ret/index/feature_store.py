"""FeatureStore: the local features of many database images packed in one memory-mapped file set.

Reranking verifies the top candidates of a query against their local features;
reading each candidate's ``.delf`` file costs a parse and a file open per image.
A feature store keeps the same arrays of every image end to end, one ``.npy``
file per array, memory-mapped read-only (``np.load(mmap_mode="r")``'s mapping),
so the features of 100 candidates are 500 slices of mapped memory. The ``.delf``
files stay the exchange format and the source of truth: a store is built from
them (or from in-memory features), records each source file's size and
modification time, and :meth:`FeatureStore.stale_images` tells which images'
files changed since (:func:`sync_feature_store` brings it up to date).

Files of a version folder (N features of I images, D-dimensional descriptors):

* ``locations.npy`` float32 [N, 2], (y, x) pixels; ``scales.npy``,
  ``attention.npy``, ``orientations.npy`` float32 [N]; ``descriptors.npy``
  float32 [N, D] (all little-endian, C order);
* ``offsets.npy`` int64 [I + 1]: image i's features are rows
  ``offsets[i]:offsets[i + 1]``;
* ``meta.json``: kind, format version, D, N, the image ids in order, each
  image's source ``[size in bytes, mtime in ns]`` (null: built from memory),
  the features folder it was built from, and the SHA-256 of each array file's data.

Saving is the index's crash-safe versioning (delf_ret.index.local_index:
``save_version``): a new ``v-<random>`` folder marked ``.delfret-version``,
fsynced, then ``CURRENT`` replaced atomically, under the folder's writer lock
(delf_ret.index.lock); older versions, and the version folders and temporary
files a killed build left, are removed by the next build. A killed build leaves
the previous store loadable. Every write (build, sync, update) writes a whole new
version: adding or removing images copies the packed arrays of the images kept
(copy-on-write; its cost is reading and writing the whole store once, about
180 kB per image of 1000 40-d features).

Opening checks every file before mapping it: each ``.npy`` header must give the
dtype and the shape meta.json implies, and the file exactly that many bytes; the
offsets must cover the N rows in order. A damaged or hostile file is refused with
one line naming it (nothing is allocated from an unchecked header). Values are
checked on an image's first read from an opened store (NaN or infinity refused,
as ``read_features`` does); :meth:`FeatureStore.verify` re-hashes every file.
Writers are refused (IndexBusyError) while another holds the folder's lock;
readers take no lock and read the version CURRENT names.

:meth:`FeatureStore.features` returns copies taken out of the mapping (ordinary
writable float32 arrays) by default, read-only views of it with ``copy=False``;
:meth:`FeatureStore.loader`, the reranking loader, returns views (matching only
reads them). Views stay valid after a newer version replaced the one they map
(its files are unlinked, the mapping lives on). The suggested place of the
database's store is ``<index folder>/features/`` (STORE_FOLDER), beside the
index's own version folders, which the index's saves never touch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from typing import Any
from typing import Callable
from typing import Iterable
from typing import Iterator

import numpy as np

from delf_ret.atomic import remove_leftovers
from delf_ret.features import FEATURE_SUFFIX
from delf_ret.features import LocalFeatures
from delf_ret.features import feature_file_name
from delf_ret.features import read_features
from delf_ret.index.errors import LocalIndexError
from delf_ret.index.local_index import VERSION_MARKER
from delf_ret.index.local_index import fsync_version
from delf_ret.index.local_index import load_version
from delf_ret.index.local_index import read_version_meta
from delf_ret.index.local_index import save_version
from delf_ret.index.lock import writer_lock

KIND = "delf-ret feature store"
FORMAT_VERSION = 1
STORE_FOLDER = "features"  # The suggested place of a database's store inside its index folder.
META_FILE = "meta.json"
OFFSETS_FILE = "offsets.npy"
# The per-feature arrays: file name -> LocalFeatures field (one row per feature).
FEATURE_FILES = {
  "locations.npy": "locations",
  "scales.npy": "scales",
  "descriptors.npy": "descriptors",
  "attention.npy": "attention",
  "orientations.npy": "orientations",
}
ARRAY_FILES = (*FEATURE_FILES, OFFSETS_FILE)
FLOAT = np.dtype("<f4")
INT = np.dtype("<i8")
HEADER_BYTES = 128  # Reserved for each .npy header (format 1.0; the data starts 64-aligned).
MAX_DIM = 1 << 16  # Longest descriptor a store holds.
HASH_CHUNK = 1 << 24

# An image's features, or the source of a store: a features folder or (image id, features) pairs.
FeatureSource = str | os.PathLike | Iterable[tuple[str, LocalFeatures]]


class FeatureStoreError(LocalIndexError):
  """A feature store is missing, damaged, stale, or cannot hold what it was given."""


@dataclasses.dataclass(frozen=True)
class StaleImages:
  """How a store differs from its ``.delf`` files (image ids, in store or request order).

  added: images asked for that the store lacks; removed: stored images not asked for;
  changed: stored images whose ``.delf`` file's size or modification time differs from
  when it was stored, or is gone. Images stored from memory (no source) are never changed.
  """

  added: list[str]
  removed: list[str]
  changed: list[str]

  def __bool__(self) -> bool:
    return bool(self.added or self.removed or self.changed)


def _source_stat(path: pathlib.Path) -> list[int] | None:
  """[size in bytes, modification time in ns] of a file (None: missing)."""
  try:
    info = path.stat()
  except OSError:
    return None
  return [int(info.st_size), int(info.st_mtime_ns)]


class FeatureStore:
  """The features of many images, mapped read-only from one version of a store folder.

  Open with :meth:`open`; read with :meth:`features` / :meth:`loader`. Write with
  :func:`build_feature_store`, :func:`sync_feature_store`, :func:`update_feature_store`.
  """

  def __init__(
    self,
    folder: pathlib.Path,
    version_dir: pathlib.Path,
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray],
    offsets: np.ndarray,
  ):
    self._folder, self._version_dir, self._meta = folder, version_dir, meta
    self._arrays, self._offsets = arrays, offsets
    self._ids: list[str] = meta["images"]
    self._positions = {image_id: i for i, image_id in enumerate(self._ids)}
    self._checked = np.zeros(len(self._ids), bool)  # Images whose values were found finite.

  @classmethod
  def open(cls, folder: str | os.PathLike) -> "FeatureStore":
    """The store saved in ``folder`` (the version CURRENT names), its files checked (see the
    module docstring); FeatureStoreError naming the file and the reason otherwise. Takes no
    lock: when a writer replaces the version being opened, opens the new one."""
    folder = pathlib.Path(folder)
    if not (folder / "CURRENT").exists():
      raise FeatureStoreError(f"no feature store in {folder} (CURRENT file missing)")
    try:
      return load_version(folder, lambda version_dir: _open_version(folder, version_dir))
    except FeatureStoreError:
      raise
    except LocalIndexError as error:  # No CURRENT, or a damaged one.
      raise FeatureStoreError(f"feature store: {error}") from None

  # Reading ------------------------------------------------------------------

  @property
  def folder(self) -> pathlib.Path:
    return self._folder

  @property
  def dim(self) -> int:
    """Descriptor dimension D (0: no image has features)."""
    return int(self._meta["dim"])

  @property
  def num_features(self) -> int:
    """N, the features of all images."""
    return int(self._meta["num_features"])

  @property
  def features_dir(self) -> pathlib.Path | None:
    """The features folder the store was last built or synced from (None: from memory)."""
    stored = self._meta["features_dir"]
    return None if stored is None else pathlib.Path(stored)

  def image_ids(self) -> list[str]:
    """Ids of the stored images, in store order."""
    return list(self._ids)

  def __len__(self) -> int:
    return len(self._ids)

  def __contains__(self, image_id: object) -> bool:
    return image_id in self._positions

  def features(self, image_id: str, copy: bool = True) -> LocalFeatures:
    """The stored features of one image: float32 arrays as ``read_features`` gives them.

    copy: True: writable copies taken out of the mapping; False: read-only views of it
      (no copy; they stay valid while referenced, even after a newer version replaced
      this one and its files were deleted). FeatureStoreError when the image is not
      stored or a value is NaN or infinite (a damaged file; each image's values are
      checked on its first read from this opened store, as read_features checks a file's).
    """
    position = self._positions.get(image_id)
    if position is None:
      raise FeatureStoreError(f"image {image_id!r} is not in the feature store {self._folder}")
    start, end = int(self._offsets[position]), int(self._offsets[position + 1])
    fields = {}
    for name, field in FEATURE_FILES.items():
      values = self._arrays[name][start:end]
      if not self._checked[position] and not np.isfinite(values).all():
        raise FeatureStoreError(
          f"feature store file {self._version_dir / name} is corrupt: image {image_id!r} "
          "holds NaN or infinite values"
        )
      fields[field] = np.array(values) if copy else values
    self._checked[position] = True
    return LocalFeatures(**fields)

  def loader(
    self, fallback_dir: str | os.PathLike | None = None, copy: bool = False
  ) -> Callable[[str], LocalFeatures]:
    """A function image id -> LocalFeatures, as ``delf_ret.features.feature_loader`` returns,
    for reranking: the stored features (read-only views of the mapping unless ``copy``; the
    matching code only reads them), and an image the store lacks read from
    ``fallback_dir/<id>.delf`` (None: FeatureStoreError)."""
    fallback = None if fallback_dir is None else pathlib.Path(fallback_dir)

    def load(image_id: str) -> LocalFeatures:
      if image_id in self._positions or fallback is None:
        return self.features(image_id, copy)
      return read_features(fallback / feature_file_name(image_id))

    return load

  def stale_images(
    self, features_dir: str | os.PathLike | None = None, image_ids: Iterable[str] | None = None
  ) -> StaleImages:
    """How the store differs from the ``.delf`` files of ``features_dir`` (None: the folder it
    was built from) for the images ``image_ids`` (None: the stored ones). Costs one ``stat``
    per stored image."""
    directory = self._source_dir(features_dir)
    wanted = self.image_ids() if image_ids is None else list(image_ids)
    wanted_set = set(wanted)
    changed = []
    for image_id, recorded in zip(self._ids, self._meta["sources"]):
      if recorded is not None and image_id in wanted_set:
        if _source_stat(directory / feature_file_name(image_id)) != recorded:
          changed.append(image_id)
    return StaleImages(
      added=[image_id for image_id in wanted if image_id not in self._positions],
      removed=[image_id for image_id in self._ids if image_id not in wanted_set],
      changed=changed,
    )

  def check_fresh(
    self, features_dir: str | os.PathLike | None = None, image_ids: Iterable[str] | None = None
  ) -> None:
    """FeatureStoreError (one line: how many images differ, an example of each kind) unless
    :meth:`stale_images` finds no difference."""
    stale = self.stale_images(features_dir, image_ids)
    if stale:
      kinds = {"added": stale.added, "removed": stale.removed, "changed": stale.changed}
      parts = [f"{len(names)} {what} (e.g. {names[0]!r})" for what, names in kinds.items() if names]
      raise FeatureStoreError(
        f"feature store {self._folder} is stale against {self._source_dir(features_dir)}: "
        f"{', '.join(parts)} .delf files; sync it (sync_feature_store)"
      )

  def _source_dir(self, features_dir: str | os.PathLike | None) -> pathlib.Path:
    if features_dir is not None:
      return pathlib.Path(features_dir)
    if self.features_dir is None:
      raise FeatureStoreError(
        f"feature store {self._folder} was built from memory: name the features folder"
      )
    return self.features_dir

  def verify(self) -> None:
    """Re-reads every array file and compares its SHA-256 with meta.json's; FeatureStoreError
    naming the first file that differs. Costs one read of the whole store."""
    for name in ARRAY_FILES:
      path = self._version_dir / name
      if _data_digest(path) != self._meta["digests"][name]:
        raise FeatureStoreError(f"feature store file {path} is corrupt: its data changed")


# Opening -------------------------------------------------------------------


def _open_version(folder: pathlib.Path, version_dir: pathlib.Path) -> FeatureStore:
  meta = _read_meta(folder, version_dir)
  count, images, dim = meta["num_features"], len(meta["images"]), meta["dim"]
  shapes: dict[str, tuple[int, ...]] = {name: (count,) for name in FEATURE_FILES}
  shapes.update({"locations.npy": (count, 2), "descriptors.npy": (count, dim)})
  arrays = {name: _map_array(version_dir / name, FLOAT, shape) for name, shape in shapes.items()}
  offsets = np.array(_map_array(version_dir / OFFSETS_FILE, INT, (images + 1,)))
  if offsets[0] != 0 or offsets[-1] != count or (np.diff(offsets) < 0).any():
    raise FeatureStoreError(
      f"feature store file {version_dir / OFFSETS_FILE} is corrupt: the offsets do not cover "
      f"the {count} features in order"
    )
  return FeatureStore(folder, version_dir, meta, arrays, offsets)


def _read_meta(folder: pathlib.Path, version_dir: pathlib.Path) -> dict[str, Any]:
  """meta.json of a version, checked (types, ranges, one source per image, ids unique)."""
  path = version_dir / META_FILE
  meta = read_version_meta(
    folder, version_dir, KIND, FORMAT_VERSION, "feature store", FeatureStoreError
  )
  reason = _meta_problem(meta)
  if reason:
    raise FeatureStoreError(f"feature store file {path} is damaged: {reason}")
  return meta


def _is_count(value: Any, limit: int = 1 << 62) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def _meta_problem(meta: dict[str, Any]) -> str | None:
  """Why a store's meta.json cannot be right (None: it can)."""
  dim, count, images = meta.get("dim"), meta.get("num_features"), meta.get("images")
  sources, digests, features_dir = (
    meta.get("sources"),
    meta.get("digests"),
    meta.get("features_dir"),
  )
  if not _is_count(dim, MAX_DIM) or not _is_count(count) or bool(count) != bool(dim):
    return f"dimension {dim!r} and feature count {count!r} do not fit"
  if not isinstance(images, list) or not all(isinstance(name, str) for name in images):
    return "the image ids are not a list of text"
  if len(set(images)) != len(images):
    return "an image id is listed twice"
  if not isinstance(sources, list) or len(sources) != len(images):
    return "not one source entry per image"
  for source in sources:
    if source is not None and not (
      isinstance(source, list) and len(source) == 2 and all(isinstance(v, int) for v in source)
    ):
      return f"a source entry {source!r:.80} is not [size, mtime_ns] or null"
  if not isinstance(digests, dict) or set(digests) != set(ARRAY_FILES):
    return "the digests do not name the array files"
  if not (features_dir is None or isinstance(features_dir, str)):
    return "the features folder is not text"
  return None


def _map_array(path: pathlib.Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
  """The .npy file ``path`` mapped read-only, after checking that its header gives ``dtype``
  and ``shape`` (C order) and that the file holds exactly that data."""
  try:
    with open(path, "rb") as handle:
      size = os.fstat(handle.fileno()).st_size
      header = _npy_header(handle)
      offset = handle.tell()
  except OSError as error:
    raise FeatureStoreError(f"feature store file {path} unreadable: {error.strerror}") from None
  except (ValueError, SyntaxError, EOFError) as error:
    raise FeatureStoreError(f"feature store file {path} is corrupt: not a .npy file ({error})")
  stored_shape, fortran_order, stored_dtype = header
  if stored_dtype != dtype or fortran_order or tuple(stored_shape) != shape:
    raise FeatureStoreError(
      f"feature store file {path} is corrupt: it holds {stored_dtype} {list(stored_shape)[:4]}, "
      f"meta.json implies {dtype} {list(shape)}"
    )
  expected = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
  if size != expected:
    raise FeatureStoreError(
      f"feature store file {path} is corrupt: {size} bytes, its header implies {expected}"
    )
  if expected == offset:  # Nothing to map (mmap refuses empty ranges).
    empty = np.zeros(shape, dtype)
    empty.flags.writeable = False
    return empty
  # A plain ndarray view of the map (slicing a np.memmap runs Python code); it keeps the map open.
  return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape).view(np.ndarray)


def _npy_header(handle) -> tuple[tuple[int, ...], bool, np.dtype]:
  """(shape, fortran order, dtype) of a .npy file's header (format 1.0 or 2.0), read without
  evaluating anything but literals (numpy's reader, headers up to 10,000 bytes)."""
  version = np.lib.format.read_magic(handle)
  if version == (1, 0):
    return np.lib.format.read_array_header_1_0(handle)
  if version == (2, 0):
    return np.lib.format.read_array_header_2_0(handle)
  raise ValueError(f"unsupported .npy format version {version}")


def _data_digest(path: pathlib.Path) -> str:
  """SHA-256 (hex) of the data of a .npy file (the bytes after its header)."""
  digest = hashlib.sha256()
  try:
    with open(path, "rb") as handle:
      _npy_header(handle)
      while chunk := handle.read(HASH_CHUNK):
        digest.update(chunk)
  except OSError as error:
    raise FeatureStoreError(f"feature store file {path} unreadable: {error.strerror}") from None
  except (ValueError, SyntaxError, EOFError) as error:
    raise FeatureStoreError(f"feature store file {path} is corrupt: not a .npy file ({error})")
  return digest.hexdigest()


# Writing -------------------------------------------------------------------


class _NpyWriter:
  """Writes a .npy file whose row count is known only at the end: the header's room is
  reserved, rows are appended (and hashed), then the header is written into its room."""

  def __init__(self, path: pathlib.Path, dtype: np.dtype):
    self.path, self.dtype, self.rows = path, dtype, 0
    self.row_shape: tuple[int, ...] | None = None
    self.digest = hashlib.sha256()
    self.handle = open(path, "wb")
    self.handle.write(b"\0" * HEADER_BYTES)

  def append(self, rows: np.ndarray) -> None:
    rows = np.ascontiguousarray(rows, self.dtype)
    if rows.shape[0]:
      self.row_shape = rows.shape[1:]
      data = rows.reshape(-1).view(np.uint8).data
      self.handle.write(data)
      self.digest.update(data)
      self.rows += rows.shape[0]

  def finish(self, row_shape: tuple[int, ...]) -> str:
    """Writes the header of ``rows`` x ``row_shape`` and closes; returns the data's SHA-256."""
    descr = np.lib.format.dtype_to_descr(self.dtype)
    text = repr({"descr": descr, "fortran_order": False, "shape": (self.rows, *row_shape)})
    header = text.encode("latin1").ljust(HEADER_BYTES - 10 - 1) + b"\n"
    if len(header) != HEADER_BYTES - 10:
      raise FeatureStoreError(f"{self.path}: a .npy header longer than {HEADER_BYTES} bytes")
    self.handle.seek(0)
    self.handle.write(np.lib.format.magic(1, 0) + len(header).to_bytes(2, "little") + header)
    self.handle.close()
    return self.digest.hexdigest()


@dataclasses.dataclass
class _Entry:
  """One image to write: its id, its source's [size, mtime_ns] (None: from memory) and a
  function giving its features (called once, while the version is written)."""

  image_id: str
  source: list[int] | None
  load: Callable[[], LocalFeatures]


def _write_version(
  version_dir: pathlib.Path,
  entries: Iterable[_Entry],
  features_dir: pathlib.Path | None,
  progress: Callable[[str], None] | None,
) -> None:
  """Writes every entry's features, the offsets and meta.json into ``version_dir`` and fsyncs
  them. FeatureStoreError on an image id given twice, descriptors of another dimension than
  the first image's, or NaN / infinite values."""
  writers = {name: _NpyWriter(version_dir / name, FLOAT) for name in FEATURE_FILES}
  offsets, images, sources, dim = [0], [], [], 0
  seen: set[str] = set()
  try:
    for entry in entries:
      if not isinstance(entry.image_id, str) or entry.image_id in seen:
        raise FeatureStoreError(f"image id {entry.image_id!r} given twice (or not text)")
      seen.add(entry.image_id)
      features = entry.load()
      dim = _checked_dim(features, entry.image_id, dim)
      for name, field in FEATURE_FILES.items():
        writers[name].append(getattr(features, field))
      offsets.append(offsets[-1] + features.num_features)
      images.append(entry.image_id)
      sources.append(entry.source)
      if progress is not None:
        progress(entry.image_id)
    row_shapes: dict[str, tuple[int, ...]] = {name: () for name in FEATURE_FILES}
    row_shapes.update({"locations.npy": (2,), "descriptors.npy": (dim,)})
    digests = {name: writers[name].finish(row_shapes[name]) for name in FEATURE_FILES}
  finally:
    for writer in writers.values():
      writer.handle.close()
  offsets_writer = _NpyWriter(version_dir / OFFSETS_FILE, INT)
  offsets_writer.append(np.asarray(offsets, INT))
  digests[OFFSETS_FILE] = offsets_writer.finish(())
  meta = {
    "kind": KIND,
    "format_version": FORMAT_VERSION,
    "dim": dim,
    "num_features": offsets[-1],
    "images": images,
    "sources": sources,
    "features_dir": None if features_dir is None else str(features_dir.absolute()),
    "digests": digests,
  }
  (version_dir / META_FILE).write_text(json.dumps(meta))
  fsync_version(version_dir, [VERSION_MARKER, *ARRAY_FILES, META_FILE])


def _checked_dim(features: LocalFeatures, image_id: str, dim: int) -> int:
  """The store's descriptor dimension after adding ``features`` (``dim``: so far; 0 none)."""
  if not features.num_features:
    return dim
  for field in FEATURE_FILES.values():
    if not np.isfinite(getattr(features, field)).all():
      raise FeatureStoreError(f"image {image_id!r}: its {field} hold NaN or infinite values")
  if dim and features.descriptor_dim != dim:
    raise FeatureStoreError(
      f"image {image_id!r} has {features.descriptor_dim}-d descriptors, the store {dim}-d"
    )
  if not 0 < features.descriptor_dim <= MAX_DIM:
    raise FeatureStoreError(f"image {image_id!r}: {features.descriptor_dim}-d descriptors")
  return features.descriptor_dim


def _save(
  folder: pathlib.Path,
  entries: Iterable[_Entry],
  features_dir: pathlib.Path | None,
  progress: Callable[[str], None] | None,
) -> FeatureStore:
  """Writes a new version of the store in ``folder`` (the caller holds its writer lock), removes
  older versions and a killed build's temporary files, and opens it."""
  save_version(
    folder, lambda version_dir: _write_version(version_dir, entries, features_dir, progress)
  )
  remove_leftovers(folder, min_age_seconds=0.0)  # A killed save's temporary CURRENT pointers.
  return FeatureStore.open(folder)


def _given(features: LocalFeatures) -> Callable[[], LocalFeatures]:
  """A function returning ``features`` (an _Entry's load of features given in memory)."""
  return lambda: features


def _file_entries(features_dir: pathlib.Path, image_ids: Iterable[str]) -> Iterator[_Entry]:
  """Entries reading ``features_dir/<id>.delf`` (the file's stat taken before it is read, so a
  file rewritten meanwhile is found stale later)."""
  for image_id in image_ids:
    path = features_dir / feature_file_name(image_id)
    yield _Entry(image_id, _source_stat(path), functools.partial(read_features, path))


def _all_feature_ids(features_dir: pathlib.Path) -> list[str]:
  """Ids of every ``.delf`` file in ``features_dir``, sorted; FeatureStoreError if it is no folder."""
  if not features_dir.is_dir():
    raise FeatureStoreError(f"features folder {features_dir} not found")
  return sorted(path.stem for path in features_dir.glob(f"*{FEATURE_SUFFIX}") if path.is_file())


def _existing(folder: pathlib.Path) -> FeatureStore | None:
  """The store in ``folder`` (None: none saved yet, or damaged: the .delf files rebuild it)."""
  try:
    return FeatureStore.open(folder)
  except FeatureStoreError:
    return None


def build_feature_store(
  folder: str | os.PathLike,
  source: FeatureSource,
  image_ids: Iterable[str] | None = None,
  progress: Callable[[str], None] | None = None,
) -> FeatureStore:
  """Writes a new version of the store in ``folder`` holding exactly the given images, and
  returns it opened.

  source: a features folder (its ``<id>.delf`` files are read, and their sizes and
    modification times recorded) or an iterable of (image id, LocalFeatures) (consumed once,
    streamed: the store is never held in memory).
  image_ids: with a features folder, the images in store order (None: every ``.delf`` file
    there, by id); must be None with pairs.
  progress: called with each image id once its features are written.
  Raises FeatureStoreError (or the reader's FeatureFileError, naming the file) on a bad
  image; IndexBusyError if another process writes the folder. Leaves the previous version
  in place on any failure.
  """
  folder = pathlib.Path(folder)
  if isinstance(source, (str, os.PathLike)):
    features_dir = pathlib.Path(source)
    ids = _all_feature_ids(features_dir) if image_ids is None else list(image_ids)
    entries: Iterable[_Entry] = _file_entries(features_dir, ids)
    with writer_lock(folder):
      return _save(folder, entries, features_dir, progress)
  if image_ids is not None:
    raise ValueError("image_ids only go with a features folder")
  entries = (_Entry(name, None, _given(features)) for name, features in source)
  with writer_lock(folder):
    return _save(folder, entries, None, progress)


def sync_feature_store(
  folder: str | os.PathLike,
  features_dir: str | os.PathLike,
  image_ids: Iterable[str] | None = None,
  progress: Callable[[str], None] | None = None,
) -> FeatureStore:
  """Makes the store in ``folder`` hold exactly ``image_ids`` (None: every ``.delf`` file of
  ``features_dir``) in that order, as their ``.delf`` files are now: images stored and
  unchanged are copied from the current version, the others read from ``features_dir``.
  Writes nothing when nothing differs (see :meth:`FeatureStore.stale_images`); builds the
  store from the ``.delf`` files alone when there is none or it is damaged (values are not
  checked: :meth:`FeatureStore.verify` first where that matters). Returns it opened."""
  folder, features_dir = pathlib.Path(folder), pathlib.Path(features_dir)
  ids = _all_feature_ids(features_dir) if image_ids is None else list(image_ids)
  with writer_lock(folder):
    current = _existing(folder)
    if current is None:
      return _save(folder, _file_entries(features_dir, ids), features_dir, progress)
    stale = current.stale_images(features_dir, ids)
    if not stale and current.image_ids() == ids and current.features_dir == features_dir.absolute():
      return current
    fresh = set(current.image_ids()) - set(stale.changed)
    recorded = dict(zip(current.image_ids(), current._meta["sources"]))

    def entries() -> Iterator[_Entry]:
      for image_id in ids:
        if image_id in fresh and recorded[image_id] is not None:
          yield _Entry(image_id, recorded[image_id], functools.partial(current.features, image_id))
        else:
          yield from _file_entries(features_dir, [image_id])

    return _save(folder, entries(), features_dir, progress)


def update_feature_store(
  folder: str | os.PathLike,
  add: Iterable[tuple[str, LocalFeatures]] = (),
  remove: Iterable[str] = (),
) -> FeatureStore:
  """Writes a new version of the store in ``folder``: its images without ``remove`` (ids it
  must hold), then ``add`` (image id, features) appended (an id already stored is replaced,
  keeping its place). The kept images are copied from the current version (copy-on-write:
  the cost of rewriting the whole store). An added image has no source file, so it is never
  found stale. FeatureStoreError when there is no store or a removed image is not in it."""
  folder = pathlib.Path(folder)
  with writer_lock(folder):
    current = FeatureStore.open(folder)
    removed = set(remove)
    missing = sorted(removed - set(current.image_ids()))
    if missing:
      raise FeatureStoreError(f"image {missing[0]!r} is not in the feature store {folder}")
    added = dict(add)
    recorded = dict(zip(current.image_ids(), current._meta["sources"]))

    def entries() -> Iterator[_Entry]:
      for image_id in current.image_ids():
        if image_id in added:  # Replaced in its place.
          yield _Entry(image_id, None, _given(added[image_id]))
        elif image_id not in removed:
          yield _Entry(image_id, recorded[image_id], functools.partial(current.features, image_id))
      for image_id, features in added.items():
        if image_id not in current:
          yield _Entry(image_id, None, _given(features))

    return _save(folder, entries(), current.features_dir, None)
