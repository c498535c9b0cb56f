"""LocalFeatureIndex: faiss index of local descriptors with per-image add and delete.

Every descriptor gets the faiss id ``slot << KEYPOINT_BITS | keypoint`` where
``slot`` numbers the database image (in order of adding, never reused) and
``keypoint`` is the descriptor's row in that image's features. So a search hit
gives (image, keypoint) without a lookup table, and deleting an image is one
id-range removal.

Index types:
* "flat": exact search (IndexFlatL2 in an IndexIDMap2); deletion removes the rows.
* "ivfpq": IVF with product quantisation, trained once on a sample; images are
  added and deleted afterwards without retraining (IVF lists support
  remove_ids). With ``pq_fast_scan`` the 4-bit codes are kept in faiss'
  fast-scan layout (IndexIVFPQFastScan, SIMD scanning, codes not relative to
  the list centroid; deletion works around a faiss bug, see
  ``_remove_from_fast_scan``); with ``coarse_quantizer`` "hnsw" the nearest lists are
  found through an HNSW graph of the centroids instead of exhaustively (built
  from the k-means centroids; searched with breadth max(ef_search, 2 nprobe)).
* "hnsw": graph index (IndexHNSWFlat), which faiss cannot remove rows from:
  deleting an image marks its slot deleted, search results of deleted slots
  are dropped, and ``compact()`` rebuilds the graph without them.

Callers use the index through its methods and properties only (tests/index/
test_index_api.py checks it): ``image_ids()``, ``slot_of``, ``__contains__``,
``len``; ``search`` (hits by slot) and ``search_images`` (hits by image id);
``image_path`` / ``image_label`` / ``set_image_record`` (each image's record);
``set_search_breadth`` (nprobe / ef_search) and the read-only ``params``;
``dim``, ``num_descriptors``, ``serialized_bytes()``, ``needs_training``;
``train``, ``add``, ``delete``, ``compact``, ``save``, ``load``.

Each image may carry a record: the absolute path of its image file and a label
(a landmark name, for recognition), given to ``add`` and changed with
``set_image_record``. Records are saved in the version's ``meta.json`` (key
``records``: image id -> {"path", "label"}, only images that have one) and
checked on load like the rest of it; an index saved before records existed
has none (``image_path`` / ``image_label`` return None) and still loads.
``delete`` drops the image's record, ``compact`` keeps the others.

An IVF-PQ index merged from shards with ``on_disk`` (delf_ret.index.shards) keeps
its inverted lists in faiss' on-disk format: ``index.ivfdata`` beside
``index.faiss`` in the version folder, memory-mapped, so it may be larger than
memory. Such an index is searched as any other but is read-only (adding or
deleting an image raises LocalIndexError: build the shards again and merge
them); saving it again (new records, a new search breadth) hard-links the data
file into the new version.

Saving is crash-safe: each save writes a new version folder (``v-<random>``,
marked as delf-ret's by a ``.delfret-version`` file inside), fsyncs it, then
atomically replaces the ``CURRENT`` file that names the live version (through a
uniquely named temporary file); older versions are removed only afterwards. A
crash at any point leaves a loadable index. Writers hold the folder's writer
lock (delf_ret.index.lock): a second writer is refused, so no save removes a
version another writer has just written. Readers take no lock: a reader whose
version was replaced while it read reads the new one.

Only delf-ret's own version folders are ever removed: those holding the marker,
and, from indexes saved before the marker existed, ``v-<letters, digits, _>``
folders holding nothing but delf-ret's ``index.faiss`` / ``meta.json`` files.
Any other ``v-*`` entry (a user's ``v-2023/report.txt``) is left alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import stat
import tempfile
import typing
from typing import Any
from typing import Callable
from typing import Container

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from delf_ret.atomic import atomic_write
from delf_ret.atomic import remove_leftovers
from delf_ret.atomic import respect_umask
from delf_ret.index.errors import LocalIndexError
from delf_ret.index.faiss_file import ON_DISK_FILE
from delf_ret.index.faiss_file import check_faiss_file
from delf_ret.index.lock import writer_lock
from delf_ret.protos.delf_config_pb2 import DelfRetrievalConfig

FORMAT_VERSION = 1
KEYPOINT_BITS = 20  # Up to 1,048,576 descriptors per image.
INDEX_TYPES = ("flat", "ivfpq", "hnsw")
COARSE_QUANTIZERS = ("flat", "hnsw")
VERSION_MARKER = ".delfret-version"  # In every version folder delf-ret writes.
VERSION_FILES = frozenset({"index.faiss", "meta.json"})  # What a pre-marker version folder holds.
VERSION_NAME = re.compile(r"v-[A-Za-z0-9_]+")
LOAD_ATTEMPTS = 5  # A reader retries when a writer replaced the version it was reading.
MAX_PATH_CHARS = 4096  # Longest image path a record holds (Linux' PATH_MAX).
MAX_LABEL_CHARS = 1024  # Longest label a record holds.


# The config's index defaults (protos/delf_config.proto), the only place they are set.
_DEFAULTS = DelfRetrievalConfig()


@dataclasses.dataclass(frozen=True)
class IndexParams:
  """How to build the index; built from a config by :meth:`from_config`.

  nlist: IVF lists; pq_m: PQ sub-quantisers (must divide dim); pq_nbits: bits
  per sub-quantiser code; hnsw_m: graph degree; nprobe / ef_search: search
  breadth of IVF / HNSW; train_sample_size: at most this many descriptors
  train the IVF-PQ quantisers; pq_fast_scan: IVF-PQ codes in faiss' 4-bit
  fast-scan layout (needs pq_nbits 4); coarse_quantizer: "flat" or "hnsw" (an
  HNSW graph of the IVF centroids with hnsw_m neighbours). Field defaults: the
  retrieval_config defaults.
  """

  index_type: str = _DEFAULTS.index_type
  nlist: int = _DEFAULTS.nlist
  pq_m: int = _DEFAULTS.pq_m
  pq_nbits: int = _DEFAULTS.pq_nbits
  hnsw_m: int = _DEFAULTS.hnsw_m
  nprobe: int = _DEFAULTS.nprobe
  ef_search: int = _DEFAULTS.ef_search
  train_sample_size: int = _DEFAULTS.train_sample_size
  pq_fast_scan: bool = _DEFAULTS.pq_fast_scan
  coarse_quantizer: str = _DEFAULTS.coarse_quantizer

  @classmethod
  def from_config(cls, retrieval_config: DelfRetrievalConfig) -> "IndexParams":
    """The index fields of a ``DelfRetrievalConfig`` message."""
    return cls(
      **{field.name: getattr(retrieval_config, field.name) for field in dataclasses.fields(cls)}
    )


@dataclasses.dataclass(frozen=True)
class ImageHits:
  """The k nearest database descriptors of Q query descriptors, by database image.

  image_ids: the I images hit, in the order they were added to the index.
  images: int64 [Q, k], for each hit the position of its image in image_ids
    (-1: no neighbour there); hits of a row are by increasing distance.
  keypoints: int64 [Q, k], the hit descriptor's row in its image's features (-1: none).
  distances: float32 [Q, k], squared L2 distances (meaningless where images is -1).
  """

  image_ids: list[str]
  images: np.ndarray
  keypoints: np.ndarray
  distances: np.ndarray


def _fsync_dir(path: pathlib.Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """What the index remembers of an image besides its descriptors.

  path: absolute path of the image file when it was indexed (None: unknown).
  label: its label, e.g. a landmark name (None: unlabelled, e.g. a distractor).
  """

  path: str | None = None
  label: str | None = None


def check_record(image_id: str, path: str | None, label: str | None) -> ImageRecord:
  """The record of ``image_id``, checked: the path absolute, both non-empty text of at most
  MAX_PATH_CHARS / MAX_LABEL_CHARS characters without NUL or line breaks; ValueError otherwise."""
  for what, value, limit in (("path", path, MAX_PATH_CHARS), ("label", label, MAX_LABEL_CHARS)):
    if value is None:
      continue
    if not isinstance(value, str):
      raise ValueError(f"image {image_id!r}: {what} is a {type(value).__name__}, not text")
    if not value or len(value) > limit or any(char in value for char in "\0\n\r"):
      raise ValueError(
        f"image {image_id!r}: {what} must be 1 to {limit} characters without NUL or line "
        f"breaks, got {value[:80]!r}"
      )
  if path is not None and not os.path.isabs(path):
    raise ValueError(f"image {image_id!r}: path {path[:80]!r} is not absolute")
  return ImageRecord(path, label)


class LocalFeatureIndex:
  """Descriptors [N, dim] of many images; images identified by string ids."""

  def __init__(self, dim: int, params: IndexParams = IndexParams()):
    if params.index_type not in INDEX_TYPES:
      raise LocalIndexError(f"index_type must be one of {INDEX_TYPES}, got {params.index_type!r}")
    self._dim = int(dim)
    self._params = params
    self._images: dict[str, int] = {}  # image id -> slot
    self._slot_names: dict[int, str] = {}  # slot -> image id (live images only)
    self._deleted_slots: set[int] = set()  # hnsw: slots deleted but still in the graph
    self._records: dict[str, ImageRecord] = {}  # image id -> record (only images that have one)
    self._on_disk = False  # Inverted lists in ON_DISK_FILE (read-only).
    self._on_disk_sources: list[str] = []  # Shard index files the next save merges on disk.
    self._next_slot = 0
    self._faiss = self._new_faiss_index()

  def _new_faiss_index(self) -> faiss.Index:
    p = self._params
    if p.index_type == "flat":
      return faiss.IndexIDMap2(faiss.IndexFlatL2(self._dim))
    if p.index_type == "ivfpq":
      return self._new_ivfpq()
    return faiss.IndexIDMap2(faiss.IndexHNSWFlat(self._dim, p.hnsw_m))

  def _new_ivfpq(self) -> faiss.Index:
    p = self._params
    if self._dim % p.pq_m:
      raise LocalIndexError(f"pq_m {p.pq_m} must divide the descriptor dimension {self._dim}")
    if p.coarse_quantizer not in COARSE_QUANTIZERS:
      raise LocalIndexError(
        f"coarse_quantizer must be one of {COARSE_QUANTIZERS}, got {p.coarse_quantizer!r}"
      )
    if p.pq_fast_scan and p.pq_nbits != 4:
      raise LocalIndexError(f"pq_fast_scan needs pq_nbits 4, got {p.pq_nbits}")
    quantizer: faiss.Index
    if p.coarse_quantizer == "hnsw":
      quantizer = faiss.IndexHNSWFlat(self._dim, p.hnsw_m)
    else:
      quantizer = faiss.IndexFlatL2(self._dim)
    index: faiss.IndexIVF
    if p.pq_fast_scan:
      index = faiss.IndexIVFPQFastScan(quantizer, self._dim, p.nlist, p.pq_m, p.pq_nbits)
      # Codes of the vectors themselves: one lookup table per query, not per visited list.
      index.by_residual = False
    else:
      index = faiss.IndexIVFPQ(quantizer, self._dim, p.nlist, p.pq_m, p.pq_nbits)
    if p.coarse_quantizer == "hnsw":
      # k-means with exact assignment, then the graph. (The stub types this C char as str;
      # swig takes the number.)
      index.quantizer_trains_alone = 2  # type: ignore[assignment]
    return index

  # Reading the index -----------------------------------------------------

  @property
  def dim(self) -> int:
    """The descriptor dimension D."""
    return self._dim

  @property
  def params(self) -> IndexParams:
    """How the index was built, with the current search breadth (read-only: see
    :meth:`set_search_breadth`)."""
    return self._params

  @property
  def needs_training(self) -> bool:
    """True for an IVF-PQ index whose quantisers are not trained yet."""
    return not self._faiss.is_trained

  @property
  def num_descriptors(self) -> int:
    """Descriptors held by the faiss index (HNSW: those of deleted images until compact())."""
    return int(self._faiss.ntotal)

  def serialized_bytes(self) -> int:
    """Size in bytes of the faiss index as written by :meth:`save` (index.faiss)."""
    return int(faiss.serialize_index(self._faiss).size)

  def image_ids(self) -> list[str]:
    """Ids of the indexed images, in the order they were added."""
    return [self._slot_names[slot] for slot in sorted(self._slot_names)]

  def slot_of(self, image_id: str) -> int:
    """The slot (number in order of adding, never reused) of an indexed image, as
    :meth:`search` returns it; LocalIndexError if the image is not indexed."""
    if image_id not in self._images:
      raise LocalIndexError(f"image {image_id!r} is not in the index")
    return self._images[image_id]

  def image_path(self, image_id: str) -> str | None:
    """The absolute path of an indexed image's file, recorded when it was added (None: not
    recorded, e.g. an index built before paths were recorded); LocalIndexError if not indexed."""
    return self._record(image_id).path

  def image_label(self, image_id: str) -> str | None:
    """The label of an indexed image (None: unlabelled); LocalIndexError if not indexed."""
    return self._record(image_id).label

  def _record(self, image_id: str) -> ImageRecord:
    self.slot_of(image_id)  # LocalIndexError when the image is not indexed.
    return self._records.get(image_id, ImageRecord())

  def __len__(self) -> int:
    return len(self._images)

  def __contains__(self, image_id: str) -> bool:
    return image_id in self._images

  # Changing the index ----------------------------------------------------

  def set_search_breadth(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Sets how widely :meth:`search` looks (None: unchanged); saved with the index.

    nprobe: IVF lists visited per query descriptor (ivfpq); ef_search: HNSW
    candidate list size (hnsw, and an HNSW coarse quantiser). Both must be >= 1.
    """
    nprobe = self._params.nprobe if nprobe is None else int(nprobe)
    ef_search = self._params.ef_search if ef_search is None else int(ef_search)
    if nprobe < 1 or ef_search < 1:
      raise LocalIndexError(
        f"search breadth must be at least 1, got nprobe {nprobe}, ef_search {ef_search}"
      )
    self._params = dataclasses.replace(self._params, nprobe=nprobe, ef_search=ef_search)

  def train(self, sample: np.ndarray, kmeans_iterations: int | None = None) -> None:
    """Trains an IVF-PQ index on a descriptor sample [S, dim] (no-op for other types).

    kmeans_iterations: iterations of the coarse k-means (None: faiss' default, 25).
    """
    sample = self._check(sample)
    if self.needs_training:
      if kmeans_iterations is not None:
        faiss.extract_index_ivf(self._faiss).cp.niter = int(kmeans_iterations)
      self._faiss.train(sample)

  def _check(self, descriptors: np.ndarray) -> np.ndarray:
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    if descriptors.ndim != 2 or descriptors.shape[1] != self._dim:
      raise LocalIndexError(
        f"descriptors of shape {descriptors.shape} do not fit an index of dimension {self._dim}"
      )
    return descriptors

  def add(
    self,
    image_id: str,
    descriptors: np.ndarray,
    path: str | os.PathLike | None = None,
    label: str | None = None,
  ) -> None:
    """Adds one image's descriptors [N, dim]; the id must be new.

    path: the image file (recorded as an absolute path; None: not recorded); label: its
    label (None: none). Both are returned by image_path / image_label and saved.
    """
    descriptors = self._check(descriptors)
    self._check_writable()
    if image_id in self._images:
      raise LocalIndexError(f"image {image_id!r} is already in the index")
    record = self._checked_record(image_id, path, label)
    if self.needs_training:
      raise LocalIndexError("the IVF-PQ index must be trained before adding images")
    if descriptors.shape[0] >= 1 << KEYPOINT_BITS:
      raise LocalIndexError(f"too many descriptors for one image: {descriptors.shape[0]}")
    slot = self._next_slot
    self._next_slot += 1
    ids = (np.int64(slot) << KEYPOINT_BITS) + np.arange(descriptors.shape[0], dtype=np.int64)
    if descriptors.shape[0]:
      self._faiss.add_with_ids(descriptors, ids)
    self._images[image_id] = slot
    self._slot_names[slot] = image_id
    self._store_record(image_id, record)

  def set_image_record(
    self, image_id: str, path: str | os.PathLike | None = None, label: str | None = None
  ) -> None:
    """Changes the record of an indexed image (saved with the index by :meth:`save`).

    path: its image file (made absolute); label: its label. None leaves that field as it
    is; an empty string clears it. LocalIndexError if the image is not indexed or a value
    is unusable (a label with a line break, a path over MAX_PATH_CHARS characters).
    """
    old = self._record(image_id)
    path = old.path if path is None else (os.fspath(path) or None)
    label = old.label if label is None else (label or None)
    self._store_record(image_id, self._checked_record(image_id, path, label))

  @staticmethod
  def _checked_record(
    image_id: str, path: str | os.PathLike | None, label: str | None
  ) -> ImageRecord:
    try:
      text = None if path is None else os.fspath(path)
      return check_record(image_id, os.path.abspath(text) if text else text, label)
    except (TypeError, ValueError) as error:
      raise LocalIndexError(f"cannot record {error}") from None

  def _store_record(self, image_id: str, record: ImageRecord) -> None:
    if record == ImageRecord():
      self._records.pop(image_id, None)
    else:
      self._records[image_id] = record

  def delete(self, image_id: str) -> None:
    """Removes one image (see the module docstring for HNSW)."""
    if image_id not in self._images:
      raise LocalIndexError(f"image {image_id!r} is not in the index")
    self._check_writable()
    slot = self._images.pop(image_id)
    del self._slot_names[slot]
    self._records.pop(image_id, None)
    if self._params.index_type == "hnsw":
      self._deleted_slots.add(slot)
    else:
      selector = faiss.IDSelectorRange(slot << KEYPOINT_BITS, (slot + 1) << KEYPOINT_BITS)
      if isinstance(self._faiss, faiss.IndexIVFFastScan):
        _remove_from_fast_scan(self._faiss, selector)
      else:
        self._faiss.remove_ids(selector)

  def _check_writable(self) -> None:
    if self._on_disk or self._on_disk_sources:
      raise LocalIndexError(
        "the index keeps its inverted lists on disk and is read-only: build the shards "
        "again and merge them to change its images"
      )

  # Sharded building (delf_ret.index.shards) ------------------------------

  def _add_at(
    self,
    slot: int,
    image_id: str,
    descriptors: np.ndarray,
    path: str | os.PathLike | None = None,
    label: str | None = None,
  ) -> None:
    """:meth:`add` with the image taking ``slot`` (at least the next free one; the slots
    skipped stay unused), so that a shard's images get the slots planned for them."""
    if slot < self._next_slot:
      raise LocalIndexError(
        f"slot {slot} of image {image_id!r} is taken (next free: {self._next_slot})"
      )
    next_slot = self._next_slot
    self._next_slot = slot
    try:
      self.add(image_id, descriptors, path, label)
    except BaseException:
      self._next_slot = next_slot
      raise

  def _reserve_slots(self, end: int) -> None:
    """Makes ``end`` the next free slot at least (a shard owns the slots below its end)."""
    self._next_slot = max(self._next_slot, int(end))

  def _merge_from(self, other: "LocalFeatureIndex") -> None:
    """Moves every image of ``other`` into this index, keeping their slots and records.

    ``other`` has this index's type, dimension and trained quantisers (checked by the
    caller, delf_ret.index.shards) and no slot in common with it; it is left empty. IVF:
    faiss' merge_from moves the inverted lists' entries; flat: the vectors are appended
    (merge_from of the id maps); HNSW: the vectors are added to this graph.
    """
    self._check_writable()
    other.compact()
    self._take_images_of(other)
    if self._params.index_type == "hnsw":
      old = faiss.downcast_index(_id_map(other._faiss).index)
      if old.ntotal:
        ids = faiss.vector_to_array(_id_map(other._faiss).id_map).astype(np.int64)
        self._faiss.add_with_ids(old.reconstruct_n(0, old.ntotal), ids)
    else:
      self._faiss.merge_from(other._faiss, 0)
    other._images, other._slot_names, other._records = {}, {}, {}

  def _take_images_of(self, other: "LocalFeatureIndex") -> None:
    """Adds the images, slots and records of ``other`` (no slot in common) to this index's."""
    taken = set(self._slot_names) | self._deleted_slots
    if taken & (set(other._slot_names) | other._deleted_slots):
      raise LocalIndexError("the indexes to merge share slots")
    self._images.update(other._images)
    self._slot_names.update(other._slot_names)
    self._records.update(other._records)
    self._next_slot = max(self._next_slot, other._next_slot)

  @classmethod
  def _merged_on_disk(
    cls, first: "LocalFeatureIndex", shard_files: list[str]
  ) -> "LocalFeatureIndex":
    """An empty index with the trained quantisers of IVF-PQ shard ``first`` whose next
    :meth:`save` merges the inverted lists of ``shard_files`` (the shards' index.faiss) into
    an on-disk ``index.ivfdata`` of the new version (faiss.contrib.ondisk.merge_ondisk); the
    caller adds the shards' images with :meth:`_take_images_of`."""
    if first._params.index_type != "ivfpq" or first._params.pq_fast_scan:
      raise LocalIndexError(
        "on-disk inverted lists hold IVF-PQ codes in faiss' array layout: they need index_type "
        f"ivfpq without pq_fast_scan, not {first._params.index_type!r}"
        + (" with pq_fast_scan" if first._params.pq_fast_scan else "")
      )
    merged = cls(first._dim, first._params)
    merged._faiss = faiss.clone_index(first._faiss)
    merged._faiss.reset()  # The trained quantisers, no entries.
    merged._on_disk_sources = list(shard_files)
    return merged

  def search(self, descriptors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k nearest database descriptors of each query descriptor [Q, dim].

    Returns (slots [Q, k], keypoints [Q, k], squared L2 distances [Q, k]);
    missing neighbours (and hits on deleted images) have slot -1.
    """
    descriptors = self._check(descriptors)
    if self._params.index_type == "ivfpq":
      ivf = faiss.extract_index_ivf(self._faiss)
      ivf.nprobe = self._params.nprobe
      if self._params.coarse_quantizer == "hnsw":
        _hnsw(ivf.quantizer).efSearch = max(self._params.ef_search, 2 * self._params.nprobe)
    elif self._params.index_type == "hnsw":
      _hnsw(_id_map(self._faiss).index).efSearch = self._params.ef_search
    fetch = k
    while True:
      distances, ids = self._faiss.search(descriptors, fetch)
      slots = np.where(ids >= 0, ids >> KEYPOINT_BITS, -1)
      if self._deleted_slots:
        dead = np.isin(slots, list(self._deleted_slots))
        slots[dead], ids[dead], distances[dead] = -1, -1, np.inf
      live = (slots >= 0).sum(axis=1)
      # HNSW tombstones take places in the top k: fetch more until k live hits per row.
      if not self._deleted_slots or live.min(initial=k) >= k or fetch >= self._faiss.ntotal:
        break
      fetch = min(2 * fetch + 16, self._faiss.ntotal)
    order = np.argsort(slots < 0, axis=1, kind="stable")[:, :k]  # Live hits first, in order.
    slots, ids = np.take_along_axis(slots, order, 1), np.take_along_axis(ids, order, 1)
    distances = np.take_along_axis(distances, order, 1)
    keypoints = np.where(ids >= 0, ids & ((1 << KEYPOINT_BITS) - 1), -1)
    return slots, keypoints, distances

  def search_images(self, descriptors: np.ndarray, k: int) -> ImageHits:
    """:meth:`search`, with each hit named by its image instead of its slot (see ImageHits)."""
    slots, keypoints, distances = self.search(descriptors, k)
    hit_slots, positions = np.unique(slots, return_inverse=True)
    live = np.array([slot in self._slot_names for slot in hit_slots.tolist()], bool)
    # Position of each hit slot among the live ones (-1: no hit, or an image not indexed).
    number = np.where(live, np.cumsum(live) - 1, -1)
    images = number[positions.reshape(slots.shape)].astype(np.int64)
    image_ids = [self._slot_names[slot] for slot in hit_slots[live].tolist()]
    keypoints = np.where(images >= 0, keypoints, -1)
    return ImageHits(image_ids, images, keypoints, distances)

  def compact(self) -> None:
    """HNSW: rebuilds the graph without deleted images (other types: nothing to do)."""
    if self._params.index_type != "hnsw" or not self._deleted_slots:
      return
    old = faiss.downcast_index(_id_map(self._faiss).index)
    id_map = faiss.vector_to_array(_id_map(self._faiss).id_map)
    vectors = (
      old.reconstruct_n(0, old.ntotal) if old.ntotal else np.zeros((0, self._dim), np.float32)
    )
    keep = ~np.isin(id_map >> KEYPOINT_BITS, list(self._deleted_slots))
    self._faiss = self._new_faiss_index()
    if keep.any():
      self._faiss.add_with_ids(vectors[keep], id_map[keep])
    self._deleted_slots.clear()

  # Persistence ------------------------------------------------------------

  def save(self, folder: str | os.PathLike) -> None:
    """Writes the index to ``folder`` crash-safely, holding its writer lock (see the module
    docstring); IndexBusyError if another process is writing the folder."""
    save_version(folder, self._write_version)

  def _write_version(self, version_dir: pathlib.Path) -> None:
    """Writes index.faiss and meta.json (and an on-disk index's index.ivfdata) into a new
    version folder and fsyncs them."""
    if self._on_disk_sources:
      merge_ondisk(self._faiss, self._on_disk_sources, str(version_dir.absolute() / ON_DISK_FILE))
      self._on_disk, self._on_disk_sources = True, []
    elif self._on_disk:
      _link_on_disk_lists(self._faiss, version_dir.absolute() / ON_DISK_FILE)
    faiss.write_index(self._faiss, str(version_dir / "index.faiss"))
    meta = {
      "format_version": FORMAT_VERSION,
      "dim": self._dim,
      "params": dataclasses.asdict(self._params),
      "images": self._images,
      "deleted_slots": sorted(self._deleted_slots),
      "next_slot": self._next_slot,
      "records": {
        name: dataclasses.asdict(record) for name, record in sorted(self._records.items())
      },
    }
    (version_dir / "meta.json").write_text(json.dumps(meta))
    names = [VERSION_MARKER, "index.faiss", "meta.json", *([ON_DISK_FILE] if self._on_disk else [])]
    fsync_version(version_dir, names)

  @classmethod
  def load(cls, folder: str | os.PathLike, expected_dim: int | None = None) -> "LocalFeatureIndex":
    """Reads an index saved by :meth:`save`; checks format version, dimension and that its
    files agree. Takes no lock: when a writer replaces the version being read, reads the new one."""
    folder = pathlib.Path(folder)
    return load_version(
      folder, lambda version_dir: cls._load_version(folder, version_dir, expected_dim)
    )

  @classmethod
  def _load_version(
    cls, folder: pathlib.Path, version_dir: pathlib.Path, expected_dim: int | None
  ) -> "LocalFeatureIndex":
    dim, params, images, deleted_slots, next_slot, records = _read_meta(folder, version_dir)
    if expected_dim is not None and dim != expected_dim:
      raise LocalIndexError(
        f"index in {folder} holds {dim}-d descriptors, expected {expected_dim}-d"
      )
    # Lengths fit the file: no huge allocation.
    data_name = check_faiss_file(version_dir / "index.faiss")
    on_disk = data_name is not None
    # On disk: the data file beside index.faiss, mapped read-only (where the folder moved,
    # faiss is told to look beside index.faiss; it says so on stdout).
    flags = faiss.IO_FLAG_READ_ONLY if on_disk else 0
    if on_disk and data_name != str(version_dir.absolute() / ON_DISK_FILE):
      flags |= faiss.IO_FLAG_ONDISK_SAME_DIR
    try:
      faiss_index = faiss.read_index(str(version_dir.absolute() / "index.faiss"), flags)
    except (RuntimeError, MemoryError, ValueError, OverflowError, TypeError) as error:
      raise LocalIndexError(f"index file in {version_dir} is corrupt: {error}") from None
    if faiss_index.d != dim:
      raise LocalIndexError(f"index file dimension {faiss_index.d} != metadata {dim}")
    index = cls(dim, params)
    index._faiss = faiss_index
    index._images = images
    index._slot_names = {slot: name for name, slot in images.items()}
    index._deleted_slots = deleted_slots
    index._records = records
    index._next_slot = next_slot
    index._on_disk = on_disk
    unknown = set(np.unique(_faiss_ids(faiss_index) >> KEYPOINT_BITS).tolist())
    unknown -= set(index._slot_names) | deleted_slots
    if unknown:
      raise LocalIndexError(
        f"index in {version_dir} is damaged: index.faiss holds descriptors of "
        f"{len(unknown)} images meta.json does not list (e.g. slot {min(unknown)})"
      )
    return index


def read_image_records(folder: str | os.PathLike) -> dict[str, ImageRecord]:
  """The record of every image of the index saved in ``folder`` (an empty ImageRecord where
  none was recorded), read from its meta.json alone: the descriptors are not loaded.
  LocalIndexError as :meth:`LocalFeatureIndex.load` for a missing or damaged index."""
  folder = pathlib.Path(folder)

  def read(version_dir: pathlib.Path) -> dict[str, ImageRecord]:
    _, _, images, _, _, records = _read_meta(folder, version_dir)
    return {name: records.get(name, ImageRecord()) for name in images}

  return load_version(folder, read)


_Loaded = typing.TypeVar("_Loaded")


def save_version(folder: str | os.PathLike, write: Callable[[pathlib.Path], None]) -> None:
  """Saves a new version of the index in ``folder`` crash-safely, holding its writer lock (see
  the module docstring): ``write(version_dir)`` fills a new marked version folder and fsyncs
  its files (:func:`fsync_version`), then ``CURRENT`` is replaced atomically and older versions
  are removed. IndexBusyError if another process is writing the folder."""
  folder = pathlib.Path(folder)
  with writer_lock(folder):
    version_dir = pathlib.Path(tempfile.mkdtemp(prefix="v-", dir=folder))
    try:
      respect_umask(version_dir, directory=True)  # mkdtemp makes 0700 folders.
      (version_dir / VERSION_MARKER).write_text("delf-ret index version\n")
      write(version_dir)
    except BaseException:
      shutil.rmtree(version_dir, ignore_errors=True)
      raise
    with atomic_write(folder / "CURRENT", "w") as pointer:  # A unique temporary name.
      pointer.write(version_dir.name)
    _fsync_dir(folder)
    _remove_versions(folder, keep=version_dir.name)


def fsync_version(version_dir: pathlib.Path, names: list[str]) -> None:
  """Flushes the files ``names`` of a version folder, then the folder, to disk."""
  for name in names:
    with open(version_dir / name, "rb") as handle:
      os.fsync(handle.fileno())
  _fsync_dir(version_dir)


def load_version(folder: pathlib.Path, read: Callable[[pathlib.Path], _Loaded]) -> _Loaded:
  """``read(version_dir)`` of the version ``CURRENT`` names in ``folder``; takes no lock: when
  ``read`` raises LocalIndexError because a writer replaced that version meanwhile, reads the
  new one. LocalIndexError when there is no index or CURRENT is damaged."""
  for attempt in range(LOAD_ATTEMPTS):
    version = _current_version(folder)
    if version is None:
      raise LocalIndexError(f"no index in {folder} (CURRENT file missing)")
    if not VERSION_NAME.fullmatch(version):
      raise LocalIndexError(
        f"index in {folder} is damaged: CURRENT names {version[:80]!r}, not a version folder"
      )
    try:
      return read(folder / version)
    except LocalIndexError:
      # Replaced (and being removed) by a writer that saved a newer version: read that one.
      if _current_version(folder) == version or attempt == LOAD_ATTEMPTS - 1:
        raise
  raise AssertionError("unreachable")


def read_version_meta(
  folder: pathlib.Path,
  version_dir: pathlib.Path,
  kind: str,
  format_version: int,
  what: str,
  error: type[LocalIndexError] = LocalIndexError,
) -> dict[str, Any]:
  """The ``meta.json`` object of a version folder of a versioned store that names its
  ``kind`` (e.g. "asmk"), checked for that kind and ``format_version``; ``error`` naming the
  file or ``folder`` and ``what`` the folder should hold (e.g. "ASMK index") otherwise. The
  caller checks the other fields."""
  path = version_dir / "meta.json"
  try:
    meta = json.loads(path.read_text())
  except (OSError, ValueError) as reason:
    raise error(f"{what} file {path} unreadable: {reason}") from None
  if not isinstance(meta, dict) or meta.get("kind") != kind:
    raise error(f"{folder} holds no {what} ({path} is not of kind {kind!r})")
  if meta.get("format_version") != format_version:
    raise error(
      f"{what} format version {meta.get('format_version')!r} in {folder}; "
      f"this delf-ret reads version {format_version}"
    )
  return meta


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  """json object_pairs_hook: a dict, refusing a key given twice (an image id listed twice)."""
  result: dict[str, Any] = {}
  for key, value in pairs:
    if key in result:
      raise ValueError(f"{key!r} given twice")
    result[key] = value
  return result


def _read_meta(
  folder: pathlib.Path, version_dir: pathlib.Path
) -> tuple[int, IndexParams, dict[str, int], set[int], int, dict[str, ImageRecord]]:
  """(dim, params, image id -> slot, deleted slots, next slot, image id -> record) from a
  version's meta.json, checked: format version, slots unique and in range, no id or key
  twice, records only of indexed images and well formed (see parse_records; none in an index
  saved before records existed)."""
  try:
    meta = json.loads((version_dir / "meta.json").read_text(), object_pairs_hook=_unique_keys)
  except (OSError, ValueError) as error:
    raise LocalIndexError(f"index metadata in {version_dir} unreadable: {error}") from None
  if not isinstance(meta, dict):
    raise LocalIndexError(f"index metadata in {version_dir} is damaged (not a JSON object)")
  if meta.get("format_version") != FORMAT_VERSION:
    raise LocalIndexError(
      f"index format version {meta.get('format_version')} in {folder}; "
      f"this delf-ret reads version {FORMAT_VERSION}"
    )
  try:
    dim, params = meta["dim"], IndexParams(**meta["params"])
    images = {str(name): int(slot) for name, slot in dict(meta["images"]).items()}
    deleted_list = [int(slot) for slot in meta["deleted_slots"]]
    deleted_slots = set(deleted_list)
    next_slot = int(meta["next_slot"])
    if not isinstance(dim, int) or dim <= 0 or next_slot < 0:
      raise ValueError("dimension or next slot out of range")
    slots = [*images.values(), *deleted_list]
    if any(slot < 0 or slot >= next_slot for slot in slots):
      raise ValueError(f"a slot outside 0..{next_slot - 1}")
    if len(set(slots)) != len(slots):
      raise ValueError("several images (or a deleted one) share a slot")
    records = parse_records(meta.get("records", {}), images)
  except (KeyError, TypeError, ValueError, AttributeError) as error:
    raise LocalIndexError(f"index metadata in {version_dir} is damaged ({error!r})") from None
  return dim, params, images, deleted_slots, next_slot, records


def parse_records(stored: Any, indexed: Container[str] | None = None) -> dict[str, ImageRecord]:
  """Stored records, an object image id -> {"path": text or null, "label": text or null},
  each checked by :func:`check_record`; ValueError (or TypeError) otherwise, and for an id
  not in ``indexed`` (None: any id)."""
  if not isinstance(stored, dict):
    raise TypeError(f"records are a {type(stored).__name__}, not an object")
  records = {}
  for name, fields in stored.items():
    if indexed is not None and name not in indexed:
      raise ValueError(f"a record of image {name[:80]!r}, which is not indexed")
    if not isinstance(fields, dict) or set(fields) != {"path", "label"}:
      raise ValueError(f"the record of image {name!r} is not {{path, label}}: {fields!r:.80}")
    records[name] = check_record(name, fields["path"], fields["label"])
  return records


def _faiss_ids(index: faiss.Index) -> np.ndarray:
  """The ids of every descriptor in a faiss index delf-ret wrote (int64 [ntotal])."""
  if isinstance(index, faiss.IndexIDMap):
    return faiss.vector_to_array(index.id_map).astype(np.int64)
  invlists: Any = faiss.extract_index_ivf(index).invlists
  chunks = [np.zeros(0, np.int64)]
  for list_no in range(invlists.nlist):
    size = invlists.list_size(list_no)
    if size:
      ids = invlists.get_ids(list_no)
      chunks.append(faiss.rev_swig_ptr(ids, size).astype(np.int64))
      invlists.release_ids(list_no, ids)
  return np.concatenate(chunks)


def _is_our_version(path: pathlib.Path) -> bool:
  """Whether ``path`` is a version folder delf-ret wrote: marked, or (saved before the marker
  existed) a ``v-<word>`` folder holding only delf-ret's index files. Symlinks never are."""
  try:
    if not VERSION_NAME.fullmatch(path.name) or not stat.S_ISDIR(path.lstat().st_mode):
      return False
    entries = {entry.name: entry for entry in os.scandir(path)}
  except OSError:
    return False
  if VERSION_MARKER in entries:
    return entries[VERSION_MARKER].is_file(follow_symlinks=False)
  return (
    bool(entries)
    and set(entries) <= VERSION_FILES
    and all(entry.is_file(follow_symlinks=False) for entry in entries.values())
  )


def _remove_versions(folder: pathlib.Path, keep: str | None) -> int:
  """Removes delf-ret's version folders in ``folder`` other than ``keep``; the caller holds
  the writer lock, so none is being written. Returns how many were removed."""
  removed = 0
  for path in sorted(folder.glob("v-*")):
    if path.name != keep and _is_our_version(path):
      shutil.rmtree(path, ignore_errors=True)
      removed += 1
  return removed


def remove_leftover_versions(folder: str | os.PathLike) -> int:
  """Deletes the version folders (and temporary CURRENT pointers) a killed save left:
  delf-ret's versions that CURRENT does not name. Takes the writer lock (IndexBusyError
  if another process writes the folder), so none of them is being written. Returns how
  many version folders were removed."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    return 0
  with writer_lock(folder):
    removed = _remove_versions(folder, keep=_current_version(folder))
    remove_leftovers(folder, min_age_seconds=0.0)
  return removed


def _list_sizes(invlists: faiss.InvertedLists) -> np.ndarray:
  return np.array([invlists.list_size(i) for i in range(invlists.nlist)], np.int64)


def _remove_from_fast_scan(index: faiss.IndexIVFFastScan, selector: faiss.IDSelector) -> None:
  """remove_ids for fast-scan IVF lists, clearing the codes it leaves behind.

  faiss (1.15) removes by moving the last entries of a list into the freed
  places and shrinking the list, but leaves the moved-away 4-bit codes in the
  list's last 32-code block; a later add ORs new codes into those places
  (pq4_pack_codes_range assumes zeros), so descriptors added after a deletion
  got wrong codes. Here the freed places of each shrunk list's last block are
  overwritten with zero codes.
  """
  if index.invlists is None:
    raise LocalIndexError("the fast-scan index has no inverted lists")
  # BlockInvertedLists (packer, n_per_block), which the stubs do not describe.
  invlists: Any = faiss.downcast_InvertedLists(index.invlists)
  before = _list_sizes(invlists)
  index.remove_ids(selector)
  after = _list_sizes(invlists)
  packer, per_block = invlists.packer, invlists.n_per_block
  zero_code = np.zeros(packer.code_size, np.uint8)
  for list_no in np.flatnonzero(after < before).tolist():
    kept = int(after[list_no])
    block_end = -(-kept // per_block) * per_block  # End of the block holding the last entry.
    codes = invlists.get_codes(list_no)
    for offset in range(kept, min(int(before[list_no]), block_end)):
      packer.pack_1_c(faiss.swig_ptr(zero_code), offset, codes)


def _link_on_disk_lists(index: faiss.Index, target: pathlib.Path) -> None:
  """Puts the data file of an on-disk index's inverted lists at ``target`` (a hard link, or a
  copy across file systems) and makes the index name it when written."""
  lists = typing.cast(faiss.InvertedLists, faiss.extract_index_ivf(index).invlists)
  invlists: Any = faiss.downcast_InvertedLists(lists)
  try:
    os.link(invlists.filename, target)
  except OSError:
    shutil.copyfile(invlists.filename, target)
  invlists.filename = str(target)


def _id_map(index: faiss.Index) -> faiss.IndexIDMap2:
  """The IndexIDMap2 wrapping a flat or HNSW index."""
  return typing.cast(faiss.IndexIDMap2, index)


def _hnsw(index: faiss.Index) -> faiss.HNSW:
  """The graph of an IndexHNSW (given as its base class)."""
  return typing.cast(faiss.IndexHNSW, faiss.downcast_index(index)).hnsw


def current_faiss_file(folder: str | os.PathLike) -> pathlib.Path:
  """The index.faiss of the version saved in ``folder`` (the one CURRENT names)."""
  folder = pathlib.Path(folder)
  version = _current_version(folder)
  if version is None or not VERSION_NAME.fullmatch(version):
    raise LocalIndexError(f"no index in {folder} (CURRENT file missing or damaged)")
  return folder / version / "index.faiss"


def _current_version(folder: pathlib.Path) -> str | None:
  """The version folder name in ``CURRENT`` (None: no index); LocalIndexError if unreadable."""
  pointer = folder / "CURRENT"
  if not pointer.is_file():
    return None
  try:
    return pointer.read_text().strip()
  except (OSError, UnicodeDecodeError) as error:
    raise LocalIndexError(f"index in {folder} is damaged: CURRENT unreadable ({error})") from None
