"""GlobalDescriptorIndex: one global descriptor per database image, searched by inner product.

Descriptors are float32 [D], L2-normalised (delf_ret.extract.global_features), so
the inner product is the cosine similarity. The index is exact (faiss
``IndexFlatIP`` in an ``IndexIDMap2``): a million 2048-d descriptors take 8 GB,
a million 128-d ones (after whitening to 128 dimensions) 512 MB. Each image gets
a faiss id (its slot: order of adding, never reused), so deleting an image is one
id removal and a search hit names its image without a lookup table.

Methods: ``add(image_id, descriptor)``, ``add_many``, ``delete(image_id)``, ``image_ids()``,
``descriptor(image_id)``, ``__contains__``, ``len``, ``dim``,
``search_images(query, k)`` -> ranked [(image id, score)], ``save(folder)``,
``load(folder)``.

Saving is crash-safe: the whole index is one file, ``<folder>/global_index.npz``
(``format_version``, ``ids`` (unicode [N]) and ``descriptors`` float32 [N, D], in
slot order), written to a temporary file and renamed over the old one
(delf_ret.atomic), while holding the folder's writer lock (delf_ret.index.lock):
a crash leaves the previous index, a second writer is refused. The file is read
without pickle and checked (format version, shapes, unique ids, finite values)
before use. No TensorFlow.
"""

from __future__ import annotations

import os
import pathlib
import zipfile

import faiss
import numpy as np

from delf_ret.atomic import atomic_write
from delf_ret.errors import DelfRetError
from delf_ret.index.lock import writer_lock

FORMAT_VERSION = 1
INDEX_FILE = "global_index.npz"
MAX_ID_CHARS = 1024  # Longest image id stored.


class GlobalIndexError(DelfRetError):
  """The global index cannot be used as asked (wrong dimension, corrupt file, unknown image)."""


class GlobalDescriptorIndex:
  """Exact inner-product index of one global descriptor per image (see the module docstring)."""

  def __init__(self, dim: int):
    if not 0 < dim <= 1 << 16:
      raise GlobalIndexError(f"global descriptor dimension must be 1 to 65536, got {dim}")
    self._dim = int(dim)
    self._faiss = faiss.IndexIDMap2(faiss.IndexFlatIP(self._dim))
    self._slots: dict[str, int] = {}  # image id -> faiss id
    self._names: dict[int, str] = {}  # faiss id -> image id
    self._next_slot = 0

  @property
  def dim(self) -> int:
    return self._dim

  def __len__(self) -> int:
    return len(self._slots)

  def __contains__(self, image_id: str) -> bool:
    return image_id in self._slots

  def image_ids(self) -> list[str]:
    """Image ids in order of adding."""
    return list(self._slots)

  def _checked(self, descriptors: np.ndarray, what: str) -> np.ndarray:
    """float32 [N, dim] C-contiguous, finite; GlobalIndexError otherwise."""
    array = np.ascontiguousarray(np.atleast_2d(np.asarray(descriptors, np.float32)))
    if array.ndim != 2 or array.shape[1] != self._dim:
      raise GlobalIndexError(
        f"{what} of shape {list(np.shape(descriptors))} for an index of {self._dim}-d descriptors"
      )
    if not np.all(np.isfinite(array)):
      raise GlobalIndexError(f"{what} holds NaN or infinite values")
    return array

  def add(self, image_id: str, descriptor: np.ndarray) -> None:
    """Adds one image's descriptor float [dim]; GlobalIndexError if the id is already there."""
    row = self._checked(descriptor, f"descriptor of {image_id!r}")
    if row.shape[0] != 1:
      raise GlobalIndexError(f"one descriptor per image, got {row.shape[0]} for {image_id!r}")
    self.add_many([image_id], row)

  def add_many(self, image_ids: list[str], descriptors: np.ndarray) -> None:
    """Adds images ``image_ids`` with descriptors float [N, dim] (row i: image i) at once;
    GlobalIndexError (nothing added) for an id already there or given twice."""
    rows = self._checked(descriptors, "descriptors")
    if rows.shape[0] != len(image_ids):
      raise GlobalIndexError(f"{len(image_ids)} image ids for {rows.shape[0]} descriptors")
    for image_id in image_ids:
      if not isinstance(image_id, str) or not image_id or len(image_id) > MAX_ID_CHARS:
        raise GlobalIndexError(
          f"image id must be a non-empty string of at most {MAX_ID_CHARS} characters"
        )
      if image_id in self._slots:
        raise GlobalIndexError(f"image {image_id!r} is already in the index; delete it first")
    if len(set(image_ids)) != len(image_ids):
      raise GlobalIndexError("an image id is given twice")
    slots = np.arange(self._next_slot, self._next_slot + len(image_ids), dtype=np.int64)
    self._faiss.add_with_ids(rows, slots)
    for image_id, slot in zip(image_ids, slots.tolist()):
      self._slots[image_id] = slot
      self._names[slot] = image_id
    self._next_slot += len(image_ids)

  def descriptors(self) -> tuple[list[str], np.ndarray]:
    """(image ids in order of adding, their descriptors float32 [N, dim])."""
    count = self._faiss.ntotal
    if not count:
      return [], np.zeros((0, self._dim), np.float32)
    slots = faiss.vector_to_array(self._faiss.id_map)
    rows = self._faiss.index.reconstruct_n(0, count).reshape(count, self._dim)
    order = np.argsort(slots, kind="stable")
    return [self._names[int(slot)] for slot in slots[order]], rows[order]

  def merge_from(self, other: "GlobalDescriptorIndex") -> None:
    """Appends the images of ``other`` (same dimension) after this index's, in its order of
    adding; GlobalIndexError, with nothing added, for another dimension or an id in both."""
    if other is self:
      raise GlobalIndexError("a global index cannot be merged into itself")
    if other.dim != self._dim:
      raise GlobalIndexError(
        f"cannot merge a global index of {other.dim}-d descriptors into one of {self._dim}-d"
      )
    image_ids, rows = other.descriptors()
    if image_ids:
      self.add_many(image_ids, rows)

  def delete(self, image_id: str) -> None:
    """Removes an image; GlobalIndexError if it is not in the index."""
    if image_id not in self._slots:
      raise GlobalIndexError(f"image {image_id!r} is not in the index")
    slot = self._slots.pop(image_id)
    del self._names[slot]
    self._faiss.remove_ids(faiss.IDSelectorRange(slot, slot + 1))

  def descriptor(self, image_id: str) -> np.ndarray:
    """The stored descriptor float32 [dim] of an image."""
    if image_id not in self._slots:
      raise GlobalIndexError(f"image {image_id!r} is not in the index")
    return self._faiss.reconstruct(self._slots[image_id])

  def search_images(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The ``k`` images most similar to ``query`` float [dim]: [(image id, inner product)],
    by decreasing score; fewer when the index holds fewer."""
    row = self._checked(query, "query")
    if row.shape[0] != 1:
      raise GlobalIndexError(f"one query descriptor of shape [{self._dim}], got {row.shape[0]}")
    k = min(int(k), len(self))
    if k <= 0:
      return []
    scores, ids = self._faiss.search(row, k)
    return [
      (self._names[int(slot)], float(score)) for score, slot in zip(scores[0], ids[0]) if slot >= 0
    ]

  def save(self, folder: str | os.PathLike) -> None:
    """Writes the index to ``folder/global_index.npz`` atomically, holding the folder's
    writer lock (IndexBusyError if another process is writing it)."""
    folder = pathlib.Path(folder)
    ids, descriptors = self.descriptors()
    with writer_lock(folder):
      with atomic_write(folder / INDEX_FILE) as handle:
        np.savez(
          handle,
          format_version=np.array(FORMAT_VERSION, np.int64),
          ids=np.array(ids, dtype=f"<U{max([1, *map(len, ids)])}"),
          descriptors=descriptors,
        )

  @classmethod
  def load(
    cls, folder: str | os.PathLike, expected_dim: int | None = None
  ) -> "GlobalDescriptorIndex":
    """Reads an index written by :meth:`save`; GlobalIndexError naming the file when it is
    missing, damaged, of another format version, or (``expected_dim``) of another dimension."""
    path = pathlib.Path(folder) / INDEX_FILE
    if not path.is_file():
      raise GlobalIndexError(f"no global index in {folder} ({INDEX_FILE} missing)")
    try:
      with np.load(path, allow_pickle=False) as stored:
        version = stored["format_version"]
        ids = stored["ids"]
        descriptors = stored["descriptors"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
      raise GlobalIndexError(f"{path} is damaged: {error}") from None
    if version.shape != () or int(version) != FORMAT_VERSION:
      raise GlobalIndexError(f"{path}: format version {version!r}, expected {FORMAT_VERSION}")
    if (
      ids.ndim != 1
      or ids.dtype.kind != "U"
      or descriptors.ndim != 2
      or descriptors.dtype != np.float32
      or descriptors.shape[0] != ids.shape[0]
    ):
      raise GlobalIndexError(
        f"{path} is damaged: ids of shape {list(ids.shape)} and descriptors of shape "
        f"{list(descriptors.shape)} ({descriptors.dtype}) do not agree"
      )
    if expected_dim is not None and descriptors.shape[1] != expected_dim:
      raise GlobalIndexError(
        f"{path} holds {descriptors.shape[1]}-d descriptors, expected {expected_dim}-d"
      )
    if len(set(ids.tolist())) != len(ids):
      raise GlobalIndexError(f"{path} is damaged: an image id is listed twice")
    index = cls(descriptors.shape[1])
    try:
      index.add_many(ids.tolist(), descriptors)
    except GlobalIndexError as error:
      raise GlobalIndexError(f"{path} is damaged: {error}") from None
    return index
