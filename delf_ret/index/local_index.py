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

Saving is crash-safe: each save writes a new version folder, fsyncs it, then
atomically replaces the ``CURRENT`` file that names the live version; the old
version is removed only afterwards. A crash at any point leaves a loadable index.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import tempfile
import time

import faiss
import numpy as np

from delf_ret.atomic import LEFTOVER_AGE_SECONDS, remove_leftovers, respect_umask
from delf_ret.errors import DelfRetError
from delf_ret.protos.delf_config_pb2 import DelfRetrievalConfig

FORMAT_VERSION = 1
KEYPOINT_BITS = 20  # Up to 1,048,576 descriptors per image.
INDEX_TYPES = ("flat", "ivfpq", "hnsw")
COARSE_QUANTIZERS = ("flat", "hnsw")


class LocalIndexError(DelfRetError):
  """The index cannot be used as asked (wrong dimension, corrupt files, unknown image...)."""


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


def _fsync_dir(path: pathlib.Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


class LocalFeatureIndex:
  """Descriptors [N, dim] of many images; images identified by string ids."""

  def __init__(self, dim: int, params: IndexParams = IndexParams()):
    if params.index_type not in INDEX_TYPES:
      raise LocalIndexError(f"index_type must be one of {INDEX_TYPES}, got {params.index_type!r}")
    self.dim = int(dim)
    self.params = params
    self.images: dict[str, int] = {}  # image id -> slot
    self.slot_names: dict[int, str] = {}  # slot -> image id (live images only)
    self.deleted_slots: set[int] = set()  # hnsw: slots deleted but still in the graph
    self.next_slot = 0
    self.index = self._new_faiss_index()

  def _new_faiss_index(self) -> faiss.Index:
    p = self.params
    if p.index_type == "flat":
      return faiss.IndexIDMap2(faiss.IndexFlatL2(self.dim))
    if p.index_type == "ivfpq":
      return self._new_ivfpq()
    return faiss.IndexIDMap2(faiss.IndexHNSWFlat(self.dim, p.hnsw_m))

  def _new_ivfpq(self) -> faiss.Index:
    p = self.params
    if self.dim % p.pq_m:
      raise LocalIndexError(f"pq_m {p.pq_m} must divide the descriptor dimension {self.dim}")
    if p.coarse_quantizer not in COARSE_QUANTIZERS:
      raise LocalIndexError(
        f"coarse_quantizer must be one of {COARSE_QUANTIZERS}, got {p.coarse_quantizer!r}"
      )
    if p.pq_fast_scan and p.pq_nbits != 4:
      raise LocalIndexError(f"pq_fast_scan needs pq_nbits 4, got {p.pq_nbits}")
    if p.coarse_quantizer == "hnsw":
      quantizer = faiss.IndexHNSWFlat(self.dim, p.hnsw_m)
    else:
      quantizer = faiss.IndexFlatL2(self.dim)
    if p.pq_fast_scan:
      index = faiss.IndexIVFPQFastScan(quantizer, self.dim, p.nlist, p.pq_m, p.pq_nbits)
      # Codes of the vectors themselves: one lookup table per query, not per visited list.
      index.by_residual = False
    else:
      index = faiss.IndexIVFPQ(quantizer, self.dim, p.nlist, p.pq_m, p.pq_nbits)
    if p.coarse_quantizer == "hnsw":
      index.quantizer_trains_alone = 2  # k-means with exact assignment, then the graph.
    return index

  @property
  def needs_training(self) -> bool:
    return not self.index.is_trained

  def train(self, sample: np.ndarray) -> None:
    """Trains an IVF-PQ index on a descriptor sample [S, dim] (no-op for other types)."""
    sample = self._check(sample)
    if self.needs_training:
      self.index.train(sample)

  def _check(self, descriptors: np.ndarray) -> np.ndarray:
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    if descriptors.ndim != 2 or descriptors.shape[1] != self.dim:
      raise LocalIndexError(
        f"descriptors of shape {descriptors.shape} do not fit an index of dimension {self.dim}"
      )
    return descriptors

  def __len__(self) -> int:
    return len(self.images)

  def __contains__(self, image_id: str) -> bool:
    return image_id in self.images

  def add(self, image_id: str, descriptors: np.ndarray) -> None:
    """Adds one image's descriptors [N, dim]; the id must be new."""
    descriptors = self._check(descriptors)
    if image_id in self.images:
      raise LocalIndexError(f"image {image_id!r} is already in the index")
    if self.needs_training:
      raise LocalIndexError("the IVF-PQ index must be trained before adding images")
    if descriptors.shape[0] >= 1 << KEYPOINT_BITS:
      raise LocalIndexError(f"too many descriptors for one image: {descriptors.shape[0]}")
    slot = self.next_slot
    self.next_slot += 1
    ids = (np.int64(slot) << KEYPOINT_BITS) + np.arange(descriptors.shape[0], dtype=np.int64)
    if descriptors.shape[0]:
      self.index.add_with_ids(descriptors, ids)
    self.images[image_id] = slot
    self.slot_names[slot] = image_id

  def delete(self, image_id: str) -> None:
    """Removes one image (see the module docstring for HNSW)."""
    if image_id not in self.images:
      raise LocalIndexError(f"image {image_id!r} is not in the index")
    slot = self.images.pop(image_id)
    del self.slot_names[slot]
    if self.params.index_type == "hnsw":
      self.deleted_slots.add(slot)
    else:
      selector = faiss.IDSelectorRange(slot << KEYPOINT_BITS, (slot + 1) << KEYPOINT_BITS)
      if isinstance(self.index, faiss.IndexIVFFastScan):
        _remove_from_fast_scan(self.index, selector)
      else:
        self.index.remove_ids(selector)

  def search(self, descriptors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k nearest database descriptors of each query descriptor [Q, dim].

    Returns (slots [Q, k], keypoints [Q, k], squared L2 distances [Q, k]);
    missing neighbours (and hits on deleted images) have slot -1.
    """
    descriptors = self._check(descriptors)
    if self.params.index_type == "ivfpq":
      self.index.nprobe = self.params.nprobe
      if self.params.coarse_quantizer == "hnsw":
        faiss.downcast_index(self.index.quantizer).hnsw.efSearch = max(
          self.params.ef_search, 2 * self.params.nprobe
        )
    elif self.params.index_type == "hnsw":
      faiss.downcast_index(self.index.index).hnsw.efSearch = self.params.ef_search
    fetch = k
    while True:
      distances, ids = self.index.search(descriptors, fetch)
      slots = np.where(ids >= 0, ids >> KEYPOINT_BITS, -1)
      if self.deleted_slots:
        dead = np.isin(slots, list(self.deleted_slots))
        slots[dead], ids[dead], distances[dead] = -1, -1, np.inf
      live = (slots >= 0).sum(axis=1)
      # HNSW tombstones take places in the top k: fetch more until k live hits per row.
      if not self.deleted_slots or live.min(initial=k) >= k or fetch >= self.index.ntotal:
        break
      fetch = min(2 * fetch + 16, self.index.ntotal)
    order = np.argsort(slots < 0, axis=1, kind="stable")[:, :k]  # Live hits first, in order.
    slots, ids = np.take_along_axis(slots, order, 1), np.take_along_axis(ids, order, 1)
    distances = np.take_along_axis(distances, order, 1)
    keypoints = np.where(ids >= 0, ids & ((1 << KEYPOINT_BITS) - 1), -1)
    return slots, keypoints, distances

  def compact(self) -> None:
    """HNSW: rebuilds the graph without deleted images (other types: nothing to do)."""
    if self.params.index_type != "hnsw" or not self.deleted_slots:
      return
    old = faiss.downcast_index(self.index.index)
    id_map = faiss.vector_to_array(self.index.id_map)
    vectors = (
      old.reconstruct_n(0, old.ntotal) if old.ntotal else np.zeros((0, self.dim), np.float32)
    )
    keep = ~np.isin(id_map >> KEYPOINT_BITS, list(self.deleted_slots))
    self.index = self._new_faiss_index()
    if keep.any():
      self.index.add_with_ids(vectors[keep], id_map[keep])
    self.deleted_slots.clear()

  # Persistence ------------------------------------------------------------

  def save(self, folder: str | os.PathLike) -> None:
    """Writes the index to ``folder`` crash-safely (see the module docstring)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    version_dir = pathlib.Path(tempfile.mkdtemp(prefix="v-", dir=folder))
    respect_umask(version_dir, directory=True)  # mkdtemp makes 0700 folders.
    faiss.write_index(self.index, str(version_dir / "index.faiss"))
    meta = {
      "format_version": FORMAT_VERSION,
      "dim": self.dim,
      "params": dataclasses.asdict(self.params),
      "images": self.images,
      "deleted_slots": sorted(self.deleted_slots),
      "next_slot": self.next_slot,
    }
    (version_dir / "meta.json").write_text(json.dumps(meta))
    for name in ("index.faiss", "meta.json"):
      with open(version_dir / name, "rb") as handle:
        os.fsync(handle.fileno())
    _fsync_dir(version_dir)
    pointer_tmp = folder / ".CURRENT.tmp"
    pointer_tmp.write_text(version_dir.name)
    with open(pointer_tmp, "rb") as handle:
      os.fsync(handle.fileno())
    os.replace(pointer_tmp, folder / "CURRENT")
    _fsync_dir(folder)
    for stale in folder.glob("v-*"):
      if stale.name != version_dir.name and stale.is_dir():
        shutil.rmtree(stale, ignore_errors=True)

  @classmethod
  def load(cls, folder: str | os.PathLike, expected_dim: int | None = None) -> "LocalFeatureIndex":
    """Reads an index saved by :meth:`save`; checks format version and dimension."""
    folder = pathlib.Path(folder)
    version = _current_version(folder)
    if version is None:
      raise LocalIndexError(f"no index in {folder} (CURRENT file missing)")
    if not re.fullmatch(r"v-[A-Za-z0-9_]+", version):
      raise LocalIndexError(
        f"index in {folder} is damaged: CURRENT names {version[:80]!r}, not a version folder"
      )
    version_dir = folder / version
    try:
      meta = json.loads((version_dir / "meta.json").read_text())
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
      deleted_slots = {int(slot) for slot in meta["deleted_slots"]}
      next_slot = int(meta["next_slot"])
      if (
        not isinstance(dim, int)
        or dim <= 0
        or next_slot < 0
        or any(slot < 0 or slot >= next_slot for slot in images.values())
      ):
        raise ValueError("dimension or slots out of range")
    except (KeyError, TypeError, ValueError, AttributeError) as error:
      raise LocalIndexError(f"index metadata in {version_dir} is damaged ({error!r})") from None
    if expected_dim is not None and dim != expected_dim:
      raise LocalIndexError(
        f"index in {folder} holds {dim}-d descriptors, expected {expected_dim}-d"
      )
    try:
      faiss_index = faiss.read_index(str(version_dir / "index.faiss"))
    except (RuntimeError, MemoryError, ValueError, OverflowError, TypeError) as error:
      raise LocalIndexError(f"index file in {version_dir} is corrupt: {error}") from None
    if faiss_index.d != dim:
      raise LocalIndexError(f"index file dimension {faiss_index.d} != metadata {dim}")
    index = cls(dim, params)
    index.index = faiss_index
    index.images = images
    index.slot_names = {slot: name for name, slot in images.items()}
    index.deleted_slots = deleted_slots
    index.next_slot = next_slot
    return index


def remove_leftover_versions(
  folder: str | os.PathLike, min_age_seconds: float = LEFTOVER_AGE_SECONDS
) -> int:
  """Deletes version folders a killed save left (not named by CURRENT, untouched for a minute).

  Its temporary CURRENT pointer goes too (atomic.remove_leftovers, the same age
  rule). Returns how many version folders were removed. Called by writers before they save.
  """
  folder = pathlib.Path(folder)
  current = _current_version(folder) if folder.is_dir() else None
  removed, now = 0, time.time()
  for path in folder.glob("v-*") if folder.is_dir() else []:
    if path.name != current and path.is_dir() and now - path.stat().st_mtime >= min_age_seconds:
      shutil.rmtree(path, ignore_errors=True)
      removed += 1
  remove_leftovers(folder, min_age_seconds=min_age_seconds)
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
  invlists = faiss.downcast_InvertedLists(index.invlists)
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


def _current_version(folder: pathlib.Path) -> str | None:
  """The version folder name in ``CURRENT`` (None: no index); LocalIndexError if unreadable."""
  pointer = folder / "CURRENT"
  if not pointer.is_file():
    return None
  try:
    return pointer.read_text().strip()
  except (OSError, UnicodeDecodeError) as error:
    raise LocalIndexError(f"index in {folder} is damaged: CURRENT unreadable ({error})") from None
