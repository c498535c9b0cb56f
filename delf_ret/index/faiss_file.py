"""Checking an ``index.faiss`` file before faiss reads it.

faiss sizes each array it reads from a length stored in the file and allocates
it before reading the data, so 8 changed bytes made it allocate gigabytes
before failing. :func:`check_faiss_file` walks the file the way faiss 1.15
reads the index types delf-ret writes (IndexIDMap2 over IndexFlatL2 or
IndexHNSWFlat; IndexIVFPQ and IndexIVFPQFastScan with a flat or HNSW coarse
quantiser, array, block or on-disk inverted lists), checks every stored length against
the bytes left in the file and the counts against each other, and refuses any
other index type. Only the headers and length fields are read (the file is
never loaded whole), so a check costs a few reads per inverted list. On-disk
inverted lists (faiss' OnDiskInvertedLists, of an index merged with ``on_disk``)
are checked against the size of their data file, ON_DISK_FILE beside the index file.
"""

from __future__ import annotations

import os
import pathlib
import struct
from typing import BinaryIO

from delf_ret.index.errors import LocalIndexError

# The faiss index types delf-ret writes (LocalFeatureIndex), by their four-byte file tags.
ID_MAP2, FLAT_L2, HNSW_FLAT, IVF_PQ, IVF_PQ_FAST_SCAN = b"IxM2", b"IxF2", b"IHNf", b"IwPQ", b"IwPf"
ARRAY_LISTS, BLOCK_LISTS, ON_DISK_LISTS = b"ilar", b"ilbl", b"ilod"
ON_DISK_FILE = "index.ivfdata"  # The data of on-disk inverted lists, beside index.faiss.
MAX_LISTS = 1 << 22  # IVF lists (bounded by the centroids stored once trained).
MAX_DEPTH = 4  # IDMap2 > HNSW > flat storage; IVF > HNSW quantiser > flat storage.


class _Walker:
  """Reads the fields of a faiss file, checking each length against the bytes left."""

  def __init__(self, handle: BinaryIO, path: pathlib.Path, size: int):
    self.handle, self.path, self.size = handle, path, size
    self.on_disk_name: str | None = None  # The data file named by on-disk inverted lists.

  def fail(self, reason: str) -> LocalIndexError:
    return LocalIndexError(f"index file {self.path} is corrupt: {reason}")

  @property
  def left(self) -> int:
    return self.size - self.handle.tell()

  def read(self, count: int, what: str) -> bytes:
    data = self.handle.read(count)
    if len(data) != count:
      raise self.fail(f"it ends inside {what}")
    return data

  def number(self, fmt: str, what: str) -> int:
    return struct.unpack("<" + fmt, self.read(struct.calcsize(fmt), what))[0]

  def skip(self, count: int, what: str) -> None:
    if count > self.left:
      raise self.fail(f"{what} needs {count} bytes, {self.left} are left in the file")
    self.handle.seek(count, os.SEEK_CUR)

  def vector(self, item_size: int, what: str, expected: int | None = None) -> int:
    """A faiss vector (uint64 length, then the items); returns its length."""
    length = self.number("Q", f"the length of {what}")
    if length > self.left // item_size:
      raise self.fail(
        f"{what} claims {length} entries of {item_size} bytes, {self.left} bytes are left"
      )
    if expected is not None and length != expected:
      raise self.fail(f"{what} holds {length} entries, expected {expected}")
    self.skip(length * item_size, what)
    return length

  def index_header(self) -> tuple[int, int]:
    """(dimension, number of vectors) of an index header."""
    dim, ntotal = self.number("i", "the index header"), self.number("q", "the index header")
    self.skip(16, "the index header")  # Two unused int64.
    trained = self.number("B", "the index header")
    metric = self.number("i", "the index header")
    if not 0 < dim <= 1 << 20 or ntotal < 0 or trained > 1 or metric != 1:
      raise self.fail(f"implausible index header (d {dim}, ntotal {ntotal}, metric {metric})")
    return dim, ntotal


def check_faiss_file(path: str | os.PathLike) -> str | None:
  """Raises LocalIndexError (one line, naming the file) unless ``path`` holds an index of a
  type delf-ret writes whose every stored length fits the file; reads no array data.
  Returns the data file name stored in on-disk inverted lists (None: other lists)."""
  path = pathlib.Path(path)
  try:
    with open(path, "rb") as handle:
      walker = _Walker(handle, path, os.fstat(handle.fileno()).st_size)
      _index(walker, 0)
      if walker.left:
        raise walker.fail(f"{walker.left} bytes follow the index")
  except OSError as error:
    raise LocalIndexError(f"index file {path} unreadable: {error}") from None
  return walker.on_disk_name


def _index(walker: _Walker, depth: int) -> tuple[int, int]:
  """Walks one index (and those inside it); returns its (dimension, number of vectors)."""
  if depth > MAX_DEPTH:
    raise walker.fail("indexes nested too deeply")
  tag = walker.read(4, "an index type")
  if tag == FLAT_L2:
    dim, ntotal = walker.index_header()
    walker.vector(4, "the flat vectors", expected=ntotal * dim)
    return dim, ntotal
  if tag == ID_MAP2:
    dim, ntotal = walker.index_header()
    inner = _index(walker, depth + 1)
    if inner != (dim, ntotal):
      raise walker.fail(f"the id map holds {ntotal} {dim}-d vectors, its index {inner}")
    walker.vector(8, "the id map", expected=ntotal)
    return dim, ntotal
  if tag == HNSW_FLAT:
    return _hnsw(walker, depth)
  if tag in (IVF_PQ, IVF_PQ_FAST_SCAN):
    return _ivfpq(walker, depth, fast_scan=tag == IVF_PQ_FAST_SCAN)
  raise walker.fail(f"faiss index type {tag!r} is not one delf-ret writes")


def _hnsw(walker: _Walker, depth: int) -> tuple[int, int]:
  dim, ntotal = walker.index_header()
  walker.vector(8, "the HNSW level probabilities")
  walker.vector(4, "the HNSW neighbour counts")
  walker.vector(4, "the HNSW levels", expected=ntotal)
  walker.vector(8, "the HNSW offsets", expected=ntotal + 1)
  walker.vector(4, "the HNSW neighbours")
  walker.skip(20, "the HNSW settings")
  storage = _index(walker, depth + 1)
  if storage != (dim, ntotal):
    raise walker.fail(f"the HNSW graph holds {ntotal} {dim}-d vectors, its storage {storage}")
  return dim, ntotal


def _ivfpq(walker: _Walker, depth: int, fast_scan: bool) -> tuple[int, int]:
  dim, ntotal = walker.index_header()
  nlist = walker.number("Q", "the IVF header")
  walker.skip(8, "the IVF header")  # nprobe.
  quantizer_dim, centroids = _index(walker, depth + 1)
  if quantizer_dim != dim or centroids not in (0, nlist) or nlist > MAX_LISTS:
    raise walker.fail(f"{nlist} IVF lists of {dim}-d, but {centroids} {quantizer_dim}-d centroids")
  direct_map = walker.number("B", "the IVF direct map")
  walker.vector(8, "the IVF direct map")
  if direct_map == 2:
    walker.vector(16, "the IVF direct map table")
  elif direct_map > 2:
    raise walker.fail(f"unknown IVF direct map type {direct_map}")
  walker.skip(1, "the IVF-PQ header")  # by_residual.
  code_size = walker.number("Q", "the IVF-PQ header")
  if fast_scan:
    walker.skip(4 + 8 + 4 + 8, "the fast-scan header")  # bbs, M2, implem, qbs2.
  pq_dim, pq_m, pq_nbits = (walker.number("Q", "the product quantiser") for _ in range(3))
  if pq_dim != dim or not 0 < pq_m <= dim or not 0 < pq_nbits <= 16:
    raise walker.fail(f"implausible product quantiser (d {pq_dim}, M {pq_m}, nbits {pq_nbits})")
  walker.vector(4, "the product quantiser centroids", expected=pq_dim << pq_nbits)
  if code_size > pq_m * 2:
    raise walker.fail(f"code size {code_size} for {pq_m} sub-quantisers")
  listed = _inverted_lists(walker, nlist, code_size, fast_scan)
  if listed != ntotal:
    raise walker.fail(f"the inverted lists hold {listed} entries, the index {ntotal}")
  return dim, ntotal


def _inverted_lists(walker: _Walker, nlist: int, code_size: int, blocks: bool) -> int:
  """Walks the inverted lists; returns how many entries they hold."""
  tag = walker.read(4, "the inverted lists type")
  if tag == ON_DISK_LISTS and not blocks:
    return _on_disk_lists(walker, nlist, code_size)
  if tag != (BLOCK_LISTS if blocks else ARRAY_LISTS):
    raise walker.fail(f"inverted lists of type {tag!r} are not what delf-ret writes")
  if walker.number("Q", "the inverted lists header") != nlist:
    raise walker.fail("the inverted lists and the IVF header disagree on the number of lists")
  lists_code_size = walker.number("Q", "the inverted lists header")
  if not blocks and lists_code_size != code_size:
    raise walker.fail(f"inverted lists of {lists_code_size}-byte codes, the index {code_size}")
  if blocks:
    per_block = walker.number("Q", "the block lists header")
    block_size = walker.number("Q", "the block lists header")
    if not 0 < per_block <= 1 << 16 or not 0 < block_size <= 1 << 24:
      raise walker.fail(f"implausible list blocks ({per_block} entries, {block_size} bytes)")
    total = 0
    for _ in range(nlist):
      entries = walker.vector(8, "an inverted list's ids")
      walker.vector(1, "an inverted list's codes", expected=-(-entries // per_block) * block_size)
      total += entries
    return total
  sizes = _list_sizes(walker, nlist)
  total = 0
  for entries in sizes:
    if entries > walker.left // (8 + code_size):
      raise walker.fail(f"an inverted list claims {entries} entries, {walker.left} bytes are left")
    walker.skip(entries * (8 + code_size), "an inverted list")
    total += entries
  return total


def _on_disk_lists(walker: _Walker, nlist: int, code_size: int) -> int:
  """Walks on-disk inverted lists (after their tag): each list's (size, capacity, offset)
  must lie in the data file (its codes, then its ids); returns how many entries they hold."""
  if walker.number("Q", "the on-disk lists header") != nlist:
    raise walker.fail("the on-disk lists and the IVF header disagree on the number of lists")
  if walker.number("Q", "the on-disk lists header") != code_size:
    raise walker.fail("the on-disk lists and the index disagree on the code size")
  count = walker.number("Q", "the on-disk lists")
  if count != nlist or count > walker.left // 24:
    raise walker.fail(f"{count} on-disk lists for {nlist} lists")
  lists = struct.unpack(f"<{3 * count}Q", walker.read(24 * count, "the on-disk lists"))
  walker.vector(16, "the on-disk free slots")
  name_length = walker.number("Q", "the on-disk data file name")
  if name_length > min(walker.left, 1 << 16):
    raise walker.fail(f"an on-disk data file name of {name_length} bytes")
  walker.on_disk_name = walker.read(name_length, "the on-disk data file name").decode(
    "utf-8", "replace"
  )
  total_size = walker.number("Q", "the on-disk data size")
  data = walker.path.parent / ON_DISK_FILE
  try:
    data_size = os.path.getsize(data)
  except OSError as error:
    raise walker.fail(f"its data file {data} is unreadable ({error.strerror})") from None
  if total_size > data_size:
    raise walker.fail(f"its data file {data} holds {data_size} bytes, the lists {total_size}")
  total = 0
  for size, capacity, offset in zip(lists[::3], lists[1::3], lists[2::3]):
    if size > capacity or offset + capacity * (code_size + 8) > total_size:
      raise walker.fail(f"an on-disk list ({size} entries at byte {offset}) overruns its data")
    total += size
  return total


def _list_sizes(walker: _Walker, nlist: int) -> list[int]:
  """The entries of each array inverted list: stored in full or as (list, size) pairs."""
  kind = walker.read(4, "the inverted list sizes")
  if kind not in (b"full", b"sprs"):
    raise walker.fail(f"inverted list sizes stored as {kind!r}")
  length = walker.number("Q", "the inverted list sizes")
  if length > walker.left // 8 or (kind == b"full" and length != nlist) or length % 2:
    raise walker.fail(f"{length} inverted list sizes for {nlist} lists")
  stored = struct.unpack(f"<{length}Q", walker.read(8 * length, "the inverted list sizes"))
  if kind == b"full":
    return list(stored)
  sizes = [0] * nlist
  for list_no, entries in zip(stored[::2], stored[1::2]):
    if list_no >= nlist:
      raise walker.fail(f"inverted list {list_no} of {nlist}")
    sizes[list_no] = entries
  return sizes
