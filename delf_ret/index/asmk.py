"""AsmkIndex: ASMK and ASMK* (aggregated selective match kernels) over a visual-word codebook.

Tolias, Avrithis and Jegou, "To aggregate or not to aggregate: selective match
kernels for image search", ICCV 2013; the variant of HOW (Tolias, Jenicek and
Chum, ECCV 2020) and of its reference code, the ``asmk`` package
(github.com/jenicek/asmk), whose image similarities this module reproduces
(tests/index/test_asmk_reference.py). numpy and faiss only.

* Codebook: ``W`` visual words, faiss k-means (seeded, so deterministic) on a
  sample of database descriptors. ``W`` is ``params.codebook_size``, or, when
  that is 0, :func:`codebook_size_for` the number of database descriptors ``N``:
  the power of two at most ``min(16 sqrt(N), N / 39)``, clamped to [256, 65536]
  (65,536 words from about 17 million descriptors, the literature's size for
  millions; 39 training descriptors per word at least, faiss' minimum, for small
  databases; 256 below about 10,000 descriptors).
* Aggregation, per image: each descriptor is assigned to its nearest word
  (``database_assignments``, 1) or, for a query, to its ``query_assignments`` (5)
  nearest words (multiple assignment). For each word ``c`` an image has, the
  residuals ``x - q(c)`` of the descriptors assigned to it are summed: ASMK keeps the
  sum L2-normalised (float32 [D]); ASMK* (``binary``) keeps its sign bits
  (component > 0) packed with numpy's packbits (uint8 [ceil(D / 8)]).
* Selective kernel of two aggregated vectors of the same word, from their
  similarity ``u`` (ASMK: inner product; ASMK*: ``1 - 2 h / D`` with ``h`` the Hamming
  distance of the D sign bits): ``sigma(u) = sign(u) |u|^alpha`` where ``u >= tau``,
  0 elsewhere (alpha 3, tau 0; the reference's ``>=``, where the paper writes ``>``:
  they differ only at ``u == tau``, which for tau 0 contributes 0 either way).
* Image similarity of query X and database image Y: the sum of the kernel over
  the words both have, divided by ``sqrt(|X|) sqrt(|Y|)``, where ``|X|`` is the
  number of aggregated vectors (words) of X. That is the paper's normalisation by
  each image's self-similarity, ``sum_c sigma(phi(X_c) . phi(X_c))``, which is the
  number of words since each self-term is sigma(1) = 1; the reference counts words
  the same way (its ``norm_factor`` without idf). Scores lie in [-1, 1] (1: the
  same aggregated vectors).

Unlike the reference, ASMK*'s ``h / D`` divides by the descriptor dimension: the
reference divides the Hamming distance by the bits of its packed uint32 words
(64 for 40-d DELF descriptors, so its ASMK* similarity of 40-d descriptors is
``1 - 2 h / 64``); both agree where D is a multiple of 32 (HOW's 128).

The inverted file holds, per word, the database images that have it and their
aggregated vectors. ``add`` and ``delete`` of images need no retraining (the
codebook stays): an added image waits in a pending list until the next search
or save files it into the lists; a deleted image's entries are skipped by
searches and dropped at the next save. Images are identified by string ids and
numbered by slot (order of adding, never reused) as in LocalFeatureIndex.

Files: :meth:`AsmkIndex.save` writes a version folder crash-safely and
versioned like LocalFeatureIndex (delf_ret.index.local_index: ``CURRENT``
names the live ``v-*`` folder; the writer lock; a killed save leaves the previous
version). A version folder holds ``meta.json`` (format version, ``"kind":
"asmk"``, dimension, params, the extraction settings record of the descriptors,
image id -> slot, next slot), ``codebook.npy`` (float32 [W, D]) and the
inverted file: ``ivf_offsets.npy`` (int64 [W + 1]: word ``c``'s entries are rows
``offsets[c]:offsets[c+1]``), ``ivf_slots.npy`` (int32 [E]), ``ivf_vectors.npy``
(uint8 [E, ceil(D / 8)] or float32 [E, D]) and ``word_counts.npy`` (int64
[next slot]: words per image, 0 for deleted slots). All arrays are read without
pickle and checked against each other on load.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any

import faiss
import numpy as np

from delf_ret.index.errors import LocalIndexError
from delf_ret.index.local_index import VERSION_MARKER
from delf_ret.index.local_index import fsync_version
from delf_ret.index.local_index import load_version
from delf_ret.index.local_index import read_version_meta
from delf_ret.index.local_index import save_version
from delf_ret.protos.delf_config_pb2 import DelfRetrievalConfig

FORMAT_VERSION = 1
KIND = "asmk"
MIN_WORDS = 256
MAX_WORDS = 65536
WORDS_PER_ROOT = 16  # Codebook size ~ 16 sqrt(database descriptors) ...
MIN_POINTS_PER_WORD = 39  # ... with at least this many of them per word (faiss' minimum).
MAX_POINTS_PER_WORD = 256  # faiss k-means samples at most this many descriptors per word.
MAX_SLOTS = (1 << 31) - 1  # Images ever added (slots are int32 in the inverted file).
MAX_SEGMENTS = 4  # Inverted-file segments (one per batch of adds) before they are merged.
CHUNK_ENTRIES = 1 << 22  # Inverted-file entries compared with a query at once (memory bound).
ARRAY_FILES = ("codebook.npy", "ivf_offsets.npy", "ivf_slots.npy", "ivf_vectors.npy")
COUNTS_FILE = "word_counts.npy"
# The params that decide what the saved codebook and inverted file mean (refused when they differ).
STORED_PARAMS = ("codebook_size", "binary", "alpha", "similarity_threshold", "database_assignments")


@dataclasses.dataclass(frozen=True)
class AsmkParams:
  """How to build and search an ASMK index.

  codebook_size: visual words W (0: :func:`codebook_size_for` the number of database
  descriptors); binary: ASMK* (sign bits) rather than ASMK (real vectors); alpha: the
  kernel's exponent; similarity_threshold: tau, below which a word pair contributes 0;
  query_assignments / database_assignments: nearest words each query / database
  descriptor is assigned to; kmeans_iterations and seed: the codebook's k-means.
  :meth:`from_config` reads the ``asmk_*`` fields of ``retrieval_config``; the values
  here equal their proto defaults (HOW's ASMK*, the reference package's
  ``_eccv20_how.yml``), which a test checks.
  """

  codebook_size: int = 0
  binary: bool = True
  alpha: float = 3.0
  similarity_threshold: float = 0.0
  query_assignments: int = 5
  database_assignments: int = 1
  kmeans_iterations: int = 20
  seed: int = 0

  @classmethod
  def from_config(cls, retrieval_config: DelfRetrievalConfig, seed: int = 0) -> "AsmkParams":
    """The ``asmk_*`` fields of a ``DelfRetrievalConfig`` message, checked."""
    return cls(
      codebook_size=retrieval_config.asmk_codebook_size,
      binary=retrieval_config.asmk_binary,
      alpha=retrieval_config.asmk_alpha,
      similarity_threshold=retrieval_config.asmk_similarity_threshold,
      query_assignments=retrieval_config.asmk_query_assignments,
      database_assignments=retrieval_config.asmk_database_assignments,
      kmeans_iterations=retrieval_config.asmk_kmeans_iterations,
      seed=seed,
    ).check()

  def check(self) -> "AsmkParams":
    """Itself; LocalIndexError naming the setting when one is out of range."""
    if self.codebook_size < 0 or self.codebook_size > 1 << 24:
      raise LocalIndexError(
        f"asmk codebook_size must be 0 (by rule) to 2^24, got {self.codebook_size}"
      )
    if not math.isfinite(self.alpha) or self.alpha <= 0:
      raise LocalIndexError(f"asmk alpha must be a positive number, got {self.alpha}")
    if not -1.0 <= self.similarity_threshold <= 1.0:
      raise LocalIndexError(
        f"asmk similarity_threshold must lie in [-1, 1], got {self.similarity_threshold}"
      )
    for name in ("query_assignments", "database_assignments", "kmeans_iterations"):
      if not 1 <= getattr(self, name) <= 1024:
        raise LocalIndexError(f"asmk {name} must be 1 to 1024, got {getattr(self, name)}")
    return self


def codebook_size_for(num_descriptors: int) -> int:
  """Visual words for a database of ``num_descriptors`` descriptors: the largest power of two
  at most ``min(16 sqrt(N), N / 39)``, clamped to [MIN_WORDS, MAX_WORDS] (see the module
  docstring). E.g. 10,000 -> 256, 100,000 -> 2048, 1,000,000 -> 8192, 20,000,000 -> 65536."""
  if num_descriptors < 1:
    raise LocalIndexError(f"no database descriptors to size a codebook for ({num_descriptors})")
  target = min(WORDS_PER_ROOT * math.sqrt(num_descriptors), num_descriptors / MIN_POINTS_PER_WORD)
  size = 1 << max(0, math.floor(math.log2(max(target, 1.0))))
  return int(min(MAX_WORDS, max(MIN_WORDS, size)))


def train_codebook(sample: np.ndarray, size: int, iterations: int, seed: int) -> np.ndarray:
  """k-means centroids float32 [size, D] of descriptors [S, D] (S >= size), deterministic for a
  seed: faiss samples at most MAX_POINTS_PER_WORD descriptors per word with that seed."""
  sample = np.ascontiguousarray(sample, dtype=np.float32)
  if sample.shape[0] < size:
    raise LocalIndexError(
      f"a codebook of {size} words needs at least {size} training descriptors, got "
      f"{sample.shape[0]}"
    )
  kmeans = faiss.Kmeans(
    sample.shape[1],
    size,
    niter=iterations,
    seed=seed,
    max_points_per_centroid=MAX_POINTS_PER_WORD,
    min_points_per_centroid=1,  # Small databases: fewer than faiss' 39 is fine (no warning).
    verbose=False,
  )
  kmeans.train(sample)
  return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def aggregate(
  descriptors: np.ndarray, assignments: np.ndarray, codebook: np.ndarray, binary: bool
) -> tuple[np.ndarray, np.ndarray]:
  """One image's aggregated vectors: (words int64 [U], vectors [U, B]), words sorted.

  descriptors: float32 [N, D]; assignments: int [N, k], each descriptor's k words (distinct);
  codebook: float32 [W, D]. For each of the U words, the sum of the residuals ``x - q(c)`` of
  the descriptors assigned to it (float64 sums), then its sign bits packed (binary: uint8
  [U, ceil(D / 8)], bit 1 where the sum is > 0, most significant bit first) or the sum
  L2-normalised (float32 [U, D]; a zero sum stays zero).
  """
  rows = np.repeat(np.arange(descriptors.shape[0]), assignments.shape[1])
  words = assignments.reshape(-1).astype(np.int64)
  order = np.argsort(words, kind="stable")
  words, rows = words[order], rows[order]
  residuals = descriptors[rows].astype(np.float64) - codebook[words].astype(np.float64)
  unique, starts = np.unique(words, return_index=True)
  sums = np.add.reduceat(residuals, starts, axis=0) if len(words) else residuals
  if binary:
    return unique, np.packbits(sums > 0, axis=1)
  norms = np.linalg.norm(sums, axis=1, keepdims=True)
  return unique, (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def top_order(scores: np.ndarray, k: int | None) -> np.ndarray:
  """Positions (int64 [min(k, S)]) of the ``k`` (None: all) largest of ``scores`` float [S], by
  decreasing score, ties in order of position: the first k of a stable argsort of ``-scores``,
  found with a partition (O(S)) and a sort of the k (and their ties) only."""
  if k is None or int(k) >= len(scores):
    return np.argsort(-np.asarray(scores, np.float64), kind="stable")
  k = int(k)
  if k <= 0:
    return np.zeros(0, np.int64)
  negated = -np.asarray(scores, np.float64)
  kth = np.partition(negated, k - 1)[k - 1]
  candidates = np.flatnonzero(negated <= kth)  # The k best and every tie of the k-th.
  return candidates[np.argsort(negated[candidates], kind="stable")][:k]


def binary_similarity(first: np.ndarray, second: np.ndarray, dim: int) -> np.ndarray:
  """``1 - 2 h / dim`` of packed sign bits uint8 [M, B] and [M, B], row by row (float64 [M]);
  h: the Hamming distance (the packing's zero padding bits never differ)."""
  hamming = np.bitwise_count(np.bitwise_xor(first, second)).sum(axis=1, dtype=np.int64)
  return 1.0 - 2.0 * hamming / dim


def selective_kernel(similarities: np.ndarray, alpha: float, threshold: float) -> np.ndarray:
  """``sign(u) |u|^alpha`` where ``u >= threshold``, 0 elsewhere (float64, shape of the input)."""
  u = np.asarray(similarities, dtype=np.float64)
  return np.where(u >= threshold, np.sign(u) * np.abs(u) ** alpha, 0.0)


@dataclasses.dataclass
class _Segment:
  """Inverted lists of some images: word c's entries are rows offsets[c]:offsets[c+1] of
  slots (int32 [E]) and vectors ([E, B])."""

  offsets: np.ndarray
  slots: np.ndarray
  vectors: np.ndarray

  @classmethod
  def build(cls, words: np.ndarray, slots: np.ndarray, vectors: np.ndarray, num_words: int):
    order = np.argsort(words, kind="stable")  # Within a word: entries in the order given.
    counts = np.bincount(words, minlength=num_words)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return cls(offsets, slots[order].astype(np.int32), vectors[order])

  def entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(words, slots, vectors) of every entry."""
    words = np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))
    return words, self.slots, self.vectors


class AsmkIndex:
  """The aggregated vectors of many images in an inverted file over a visual-word codebook.

  dim: descriptor dimension D; params: see AsmkParams; settings: the extraction settings
  record of the descriptors (delf_ret.extract.settings.extraction_settings; None: unknown),
  saved with the index and compared by ``add`` and ``load``.
  """

  def __init__(self, dim: int, params: AsmkParams = AsmkParams(), settings: dict | None = None):
    if not 0 < int(dim) <= 1 << 16:
      raise LocalIndexError(f"descriptor dimension must be 1 to 65536, got {dim}")
    self._dim = int(dim)
    self._params = params.check()
    self._settings = settings
    self._codebook: np.ndarray | None = None  # float32 [W, D] once trained.
    self._quantizer: faiss.IndexFlatL2 | None = None
    self._images: dict[str, int] = {}  # image id -> slot
    self._slot_names: dict[int, str] = {}
    self._next_slot = 0
    self._capacity = np.zeros(0, np.int64)  # Words per slot (0: deleted), room to grow.
    self._segments: list[_Segment] = []
    self._pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # (slot, words, vectors)
    self._dead_entries = 0  # Entries of deleted images still in the segments.

  # Reading the index -----------------------------------------------------

  @property
  def dim(self) -> int:
    """The descriptor dimension D."""
    return self._dim

  @property
  def params(self) -> AsmkParams:
    """The index's settings (codebook_size: the trained codebook's size once trained)."""
    return self._params

  @property
  def settings(self) -> dict | None:
    """The extraction settings record of the indexed descriptors (None: unknown)."""
    return self._settings

  @property
  def needs_training(self) -> bool:
    """True until the index has a codebook (:meth:`train` or :meth:`set_codebook`)."""
    return self._codebook is None

  def codebook(self) -> np.ndarray:
    """The codebook, float32 [W, D] (a copy); LocalIndexError before training."""
    return self._trained_codebook().copy()

  def image_ids(self) -> list[str]:
    """Ids of the indexed images, in the order they were added."""
    return [self._slot_names[slot] for slot in sorted(self._slot_names)]

  def num_words(self, image_id: str) -> int:
    """How many aggregated vectors (visual words) an indexed image has."""
    if image_id not in self._images:
      raise LocalIndexError(f"image {image_id!r} is not in the index")
    return int(self._word_counts[self._images[image_id]])

  def __len__(self) -> int:
    return len(self._images)

  def __contains__(self, image_id: str) -> bool:
    return image_id in self._images

  # Codebook --------------------------------------------------------------

  def train(self, sample: np.ndarray, num_database_descriptors: int | None = None) -> None:
    """Learns the codebook from database descriptors [S, D] (a sample of them).

    Its size: params.codebook_size, or (0) :func:`codebook_size_for`
    ``num_database_descriptors`` (None: S). Only an index without images is trained.
    """
    sample = self._check(sample)
    size = self._params.codebook_size or codebook_size_for(
      sample.shape[0] if num_database_descriptors is None else num_database_descriptors
    )
    p = self._params
    self.set_codebook(train_codebook(sample, size, p.kmeans_iterations, p.seed))

  def set_codebook(self, centroids: np.ndarray) -> None:
    """Uses ``centroids`` float32 [W, D] as the codebook (of params.codebook_size words unless
    that is 0); only an index without images gets a new codebook."""
    centroids = self._check(centroids)
    size = self._params.codebook_size
    if self._images or self._segments or self._pending:
      raise LocalIndexError("the codebook of an index holding images cannot change")
    if not 0 < centroids.shape[0] <= 1 << 24 or (size and centroids.shape[0] != size):
      raise LocalIndexError(
        f"a codebook of {centroids.shape[0]} words, expected {size or '1 to 2^24'}"
      )
    if not np.isfinite(centroids).all():
      raise LocalIndexError("the codebook holds values that are not finite")
    self._codebook = centroids.copy()
    self._quantizer = faiss.IndexFlatL2(self._dim)
    self._quantizer.add(self._codebook)
    self._params = dataclasses.replace(self._params, codebook_size=centroids.shape[0])

  @property
  def _word_counts(self) -> np.ndarray:
    """Words of each slot, int64 [next slot] (0: a deleted image)."""
    return self._capacity[: self._next_slot]

  def _trained_codebook(self) -> np.ndarray:
    if self._codebook is None:
      raise LocalIndexError("the ASMK index has no codebook yet: train it first")
    return self._codebook

  def _check(self, descriptors: np.ndarray) -> np.ndarray:
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    if descriptors.ndim != 2 or descriptors.shape[1] != self._dim:
      raise LocalIndexError(
        f"descriptors must be [N, {self._dim}] (dimension {self._dim}), got "
        f"{list(descriptors.shape)}"
      )
    return descriptors

  def aggregate(self, descriptors: np.ndarray, query: bool) -> tuple[np.ndarray, np.ndarray]:
    """(words [U], vectors [U, B]) of one image's descriptors [N, D] (see :func:`aggregate`),
    each descriptor assigned to its query_assignments (query) or database_assignments nearest
    words."""
    codebook = self._trained_codebook()
    descriptors = self._check(descriptors)
    if not np.isfinite(descriptors).all():
      raise LocalIndexError("descriptors hold values that are not finite")
    k = self._params.query_assignments if query else self._params.database_assignments
    k = min(k, codebook.shape[0])
    assert self._quantizer is not None
    _, assignments = self._quantizer.search(descriptors, k)
    return aggregate(descriptors, assignments, codebook, self._params.binary)

  # Changing the index ----------------------------------------------------

  def add(self, image_id: str, descriptors: np.ndarray, settings: dict | None = None) -> None:
    """Adds one image's descriptors [N, D] (N >= 1); the id must be new. settings: the
    extraction settings record of the descriptors, refused when the index's differs."""
    if image_id in self._images:  # Before the work of aggregating.
      raise LocalIndexError(f"image {image_id!r} is already in the index")
    words, vectors = self.aggregate(descriptors, query=False)
    if not len(words):
      raise LocalIndexError(f"image {image_id!r} has no descriptors to index")
    self.add_aggregated(image_id, words, vectors, settings)

  def add_aggregated(
    self,
    image_id: str,
    words: np.ndarray,
    vectors: np.ndarray,
    settings: dict | None = None,
  ) -> None:
    """Adds one image by its aggregated vectors, as :meth:`aggregate` (query=False) returns
    them: distinct words int [U] (U >= 1) of the codebook and vectors [U, B] (uint8 packed
    bits for binary ASMK*, else float32 [U, D]). The id must be new; settings as in
    :meth:`add`."""
    if image_id in self._images:
      raise LocalIndexError(f"image {image_id!r} is already in the index")
    if settings is not None and self._settings is not None and settings != self._settings:
      raise LocalIndexError(
        f"the descriptors of image {image_id!r} were made with other extraction settings than "
        "the ASMK index's"
      )
    words, vectors = np.asarray(words), np.asarray(vectors)
    num_words = self._trained_codebook().shape[0]
    width = -(-self._dim // 8) if self._params.binary else self._dim
    vector_type = np.uint8 if self._params.binary else np.float32
    if (
      words.ndim != 1
      or not len(words)
      or words.dtype.kind not in "iu"
      or words.min() < 0
      or words.max() >= num_words
      or len(np.unique(words)) != len(words)
    ):
      raise LocalIndexError(
        f"image {image_id!r}: words must be distinct codebook entries 0..{num_words - 1}"
      )
    if vectors.dtype != vector_type or vectors.shape != (len(words), width):
      raise LocalIndexError(
        f"image {image_id!r}: vectors {vectors.dtype} {list(vectors.shape)}, expected "
        f"{np.dtype(vector_type)} [{len(words)}, {width}]"
      )
    if settings is not None and self._settings is None and not self._images:
      self._settings = settings
    slot = self._next_slot
    if slot >= MAX_SLOTS:
      raise LocalIndexError(f"the ASMK index has numbered {MAX_SLOTS} images, its most")
    if slot == len(self._capacity):  # Amortised growth: adding n images copies O(n).
      self._capacity = np.concatenate([self._capacity, np.zeros(max(16, slot), np.int64)])
    self._capacity[slot] = len(words)
    self._next_slot += 1
    self._pending.append((slot, words, vectors))
    self._images[image_id] = slot
    self._slot_names[slot] = image_id

  def delete(self, image_id: str) -> None:
    """Removes one image (its entries are skipped at once and dropped at the next save)."""
    if image_id not in self._images:
      raise LocalIndexError(f"image {image_id!r} is not in the index")
    slot = self._images.pop(image_id)
    del self._slot_names[slot]
    pending = len(self._pending)
    self._pending = [entry for entry in self._pending if entry[0] != slot]
    if len(self._pending) == pending:
      self._dead_entries += int(self._word_counts[slot])
    self._capacity[slot] = 0

  def merge_from(self, other: "AsmkIndex") -> None:
    """Appends the images of ``other`` after this index's, in ``other``'s order of adding,
    without aggregating anything again (shards of one database built apart, see
    delf_ret.index.shards). Both must share the codebook (bit for bit), the kernel and
    assignment settings (STORED_PARAMS) and the extraction settings record; LocalIndexError,
    with nothing added, when they differ or an image id is in both."""
    if other is self:
      raise LocalIndexError("an ASMK index cannot be merged into itself")
    if other.dim != self._dim:
      raise LocalIndexError(
        f"cannot merge an ASMK index of {other.dim}-d descriptors into one of {self._dim}-d"
      )
    if not np.array_equal(self._trained_codebook(), other._trained_codebook()):
      raise LocalIndexError("cannot merge ASMK indexes built over different codebooks")
    for name in STORED_PARAMS:
      mine, theirs = getattr(self._params, name), getattr(other.params, name)
      if mine != theirs:
        raise LocalIndexError(f"cannot merge ASMK indexes built with {name} {mine} and {theirs}")
    if None not in (self._settings, other.settings) and self._settings != other.settings:
      raise LocalIndexError(
        "cannot merge ASMK indexes of descriptors made with other extraction settings"
      )
    shared = sorted(set(self._images) & set(other._images))
    if shared:
      raise LocalIndexError(f"image {shared[0]!r} is in both ASMK indexes")
    if self._next_slot + len(other) > MAX_SLOTS:
      raise LocalIndexError(f"the merged ASMK index would number more than {MAX_SLOTS} images")
    other._file_pending()
    if len(other._segments) != 1 or other._dead_entries:
      other._merge_segments()
    their_slots = np.array(sorted(other._slot_names), np.int64)
    new_slots = np.full(max(other._next_slot, 1), -1, np.int64)
    new_slots[their_slots] = self._next_slot + np.arange(len(their_slots))
    if len(their_slots):
      words, slots, vectors = other._segments[0].entries()
      live = new_slots[slots] >= 0
      self._segments.append(
        _Segment.build(
          words[live], new_slots[slots[live]], vectors[live], self._params.codebook_size
        )
      )
    counts = other._word_counts[their_slots]
    needed = self._next_slot + len(their_slots)
    if needed > len(self._capacity):
      grown = np.zeros(max(needed, 2 * len(self._capacity)), np.int64)
      grown[: len(self._capacity)] = self._capacity
      self._capacity = grown
    self._capacity[self._next_slot : needed] = counts
    for slot, new_slot in zip(their_slots.tolist(), new_slots[their_slots].tolist()):
      name = other._slot_names[slot]
      self._images[name] = new_slot
      self._slot_names[new_slot] = name
    self._next_slot = needed
    if self._settings is None:
      self._settings = other.settings
    if len(self._segments) > MAX_SEGMENTS:
      self._merge_segments()

  def _file_pending(self) -> None:
    """Files the pending images into a new segment; merges the segments when there are many."""
    if self._pending:
      slots = np.concatenate([np.full(len(w), s, np.int64) for s, w, _ in self._pending])
      words = np.concatenate([w for _, w, _ in self._pending])
      vectors = np.concatenate([v for _, _, v in self._pending])
      self._segments.append(_Segment.build(words, slots, vectors, self._params.codebook_size))
      self._pending = []
    if len(self._segments) > MAX_SEGMENTS:
      self._merge_segments()

  def _merge_segments(self) -> None:
    """One segment of the live entries of all (in order of slot within each word)."""
    parts = [segment.entries() for segment in self._segments]
    words = np.concatenate([part[0] for part in parts] or [np.zeros(0, np.int64)])
    slots = np.concatenate([part[1] for part in parts] or [np.zeros(0, np.int32)])
    vectors = np.concatenate([part[2] for part in parts] or [self._empty_vectors()])
    live = self._word_counts[slots] > 0
    order = np.lexsort((slots[live], words[live]))
    words, slots, vectors = words[live][order], slots[live][order], vectors[live][order]
    self._segments = [_Segment.build(words, slots, vectors, self._params.codebook_size)]
    self._dead_entries = 0

  def _empty_vectors(self) -> np.ndarray:
    if self._params.binary:
      return np.zeros((0, -(-self._dim // 8)), np.uint8)
    return np.zeros((0, self._dim), np.float32)

  # Searching -------------------------------------------------------------

  def score_images(self, descriptors: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Similarity of a query image's descriptors [N, D] with every indexed image: (image ids
    in order of adding, float64 scores [I] in [-1, 1]; see the module docstring)."""
    slots, scores = self._slot_scores(descriptors)
    return [self._slot_names[slot] for slot in slots.tolist()], scores

  def _slot_scores(self, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slots int64 [I] of the indexed images, ascending: order of adding; their scores
    float64 [I]) for a query image's descriptors [N, D]."""
    words, vectors = self.aggregate(descriptors, query=True)
    self._file_pending()
    sums = np.zeros(len(self._word_counts), np.float64)
    for segment in self._segments:
      self._accumulate(segment, words, vectors, sums)
    slots = np.flatnonzero(self._word_counts > 0)  # Every indexed image has a word.
    if not len(words) or not len(slots):
      return slots, np.zeros(len(slots), np.float64)
    return slots, sums[slots] / np.sqrt(self._word_counts[slots] * float(len(words)))

  def _accumulate(
    self, segment: _Segment, words: np.ndarray, vectors: np.ndarray, sums: np.ndarray
  ) -> None:
    """Adds the kernel values of the query's aggregated vectors (words [U], vectors [U, B])
    with the segment's entries of the same words to ``sums`` (float64 [slots])."""
    starts, ends = segment.offsets[words], segment.offsets[words + 1]
    lengths = ends - starts
    if self._params.binary:  # The kernel of each of the D + 1 possible Hamming distances.
      table = selective_kernel(
        1.0 - 2.0 * np.arange(self._dim + 1) / self._dim,
        self._params.alpha,
        self._params.similarity_threshold,
      )
    # Query words in chunks of at most CHUNK_ENTRIES entries (one word may exceed it alone).
    chunk_of = np.cumsum(lengths) // CHUNK_ENTRIES
    for chunk in np.unique(chunk_of).tolist():
      members = np.flatnonzero(chunk_of == chunk)
      counts = lengths[members]
      total = int(counts.sum())
      if not total:
        continue
      query_rows = np.repeat(members, counts)
      first = np.repeat(np.cumsum(counts) - counts, counts)
      entries = np.arange(total) - first + np.repeat(starts[members], counts)
      if self._params.binary:  # table[h] = selective_kernel(binary_similarity), bit for bit.
        hamming = np.bitwise_count(
          np.bitwise_xor(vectors[query_rows], segment.vectors[entries])
        ).sum(axis=1, dtype=np.int64)
        kernel = table[hamming]
      else:
        similarity = np.einsum("ij,ij->i", vectors[query_rows], segment.vectors[entries])
        kernel = selective_kernel(similarity, self._params.alpha, self._params.similarity_threshold)
      # A deleted image's entries add to its own slot, which no result reports.
      sums += np.bincount(segment.slots[entries], weights=kernel, minlength=len(sums))

  def search_images(self, descriptors: np.ndarray, k: int | None = None) -> list[tuple[str, float]]:
    """The ``k`` (None: all) indexed images most similar to a query image's descriptors [N, D],
    as (image id, score) by decreasing score (ties: in order of adding). Only the k images
    returned are sorted and named (:func:`top_order`)."""
    slots, scores = self._slot_scores(descriptors)
    order = top_order(scores, k)
    return [(self._slot_names[int(slots[i])], float(scores[i])) for i in order.tolist()]

  # Persistence ------------------------------------------------------------

  def save(self, folder: str | os.PathLike) -> None:
    """Writes the index to ``folder`` crash-safely and versioned, holding its writer lock
    (delf_ret.index.local_index.save_version); IndexBusyError if another process writes it."""
    codebook = self._trained_codebook()
    self._file_pending()
    if len(self._segments) != 1 or self._dead_entries:
      self._merge_segments()
    segment = self._segments[0]

    def write(version_dir: pathlib.Path) -> None:
      arrays = (codebook, segment.offsets, segment.slots, segment.vectors)
      for name, array in zip((*ARRAY_FILES, COUNTS_FILE), (*arrays, self._word_counts)):
        np.save(version_dir / name, array, allow_pickle=False)
      meta = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "dim": self._dim,
        "params": dataclasses.asdict(self._params),
        "settings": self._settings,
        "images": self._images,
      }
      (version_dir / "meta.json").write_text(json.dumps(meta))
      fsync_version(version_dir, [VERSION_MARKER, *ARRAY_FILES, COUNTS_FILE, "meta.json"])

    save_version(folder, write)

  @classmethod
  def load(
    cls,
    folder: str | os.PathLike,
    expected_dim: int | None = None,
    expected_params: AsmkParams | None = None,
    expected_settings: dict | None = None,
  ) -> "AsmkIndex":
    """Reads an index saved by :meth:`save` and checks that its files agree; LocalIndexError
    (naming the folder and the reason) when its descriptor dimension, codebook or kernel
    settings (STORED_PARAMS; a codebook_size of 0 expects any) or extraction settings differ
    from the expected ones (None: not checked; an index saved without a settings record is
    taken). The query-side settings of
    ``expected_params`` (query_assignments) are used. Takes no lock."""
    folder = pathlib.Path(folder)
    index = load_version(folder, lambda version_dir: cls._load_version(folder, version_dir))
    if expected_dim is not None and index.dim != expected_dim:
      raise LocalIndexError(
        f"ASMK index in {folder} holds {index.dim}-d descriptors, expected {expected_dim}-d"
      )
    if expected_params is not None:
      for name in STORED_PARAMS:
        saved, wanted = getattr(index.params, name), getattr(expected_params.check(), name)
        if saved != wanted and not (name == "codebook_size" and wanted == 0):
          raise LocalIndexError(
            f"ASMK index in {folder} was built with {name} {saved}, the config asks for {wanted}"
          )
      index._params = dataclasses.replace(
        index._params, query_assignments=expected_params.query_assignments
      )
    if expected_settings is not None and index.settings not in (None, expected_settings):
      raise LocalIndexError(
        f"ASMK index in {folder} was built from descriptors of other extraction settings"
      )
    return index

  @classmethod
  def _load_version(cls, folder: pathlib.Path, version_dir: pathlib.Path) -> "AsmkIndex":
    meta = _read_meta(folder, version_dir)
    try:
      arrays = [np.load(version_dir / name, allow_pickle=False) for name in ARRAY_FILES]
      counts = np.load(version_dir / COUNTS_FILE, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
      raise LocalIndexError(f"ASMK index files in {version_dir} unreadable: {error}") from None
    index = cls(meta["dim"], meta["params"], meta["settings"])
    codebook, offsets, slots, vectors = arrays
    reason = _check_arrays(index, codebook, offsets, slots, vectors, counts, meta["images"])
    if reason:
      raise LocalIndexError(f"ASMK index in {version_dir} is damaged: {reason}")
    index.set_codebook(codebook)
    index._images = meta["images"]
    index._slot_names = {slot: name for name, slot in meta["images"].items()}
    index._capacity = counts.astype(np.int64)
    index._next_slot = len(counts)
    index._segments = [_Segment(offsets, slots, vectors)]
    return index


def _read_meta(folder: pathlib.Path, version_dir: pathlib.Path) -> dict[str, Any]:
  """meta.json of a version, checked: {"dim", "params" (AsmkParams), "settings", "images"}."""
  meta = read_version_meta(folder, version_dir, KIND, FORMAT_VERSION, "ASMK index")
  try:
    params = AsmkParams(**meta["params"]).check()
    images = {str(name): int(slot) for name, slot in dict(meta["images"]).items()}
    settings = meta["settings"]
    if not isinstance(meta["dim"], int) or not (settings is None or isinstance(settings, dict)):
      raise TypeError("dimension or settings of the wrong type")
    if len(set(images.values())) != len(images):
      raise ValueError("several images share a slot")
  except (KeyError, TypeError, ValueError, AttributeError, LocalIndexError) as error:
    raise LocalIndexError(f"ASMK index metadata in {version_dir} is damaged ({error})") from None
  return {"dim": meta["dim"], "params": params, "settings": settings, "images": images}


def _check_arrays(
  index: AsmkIndex,
  codebook: np.ndarray,
  offsets: np.ndarray,
  slots: np.ndarray,
  vectors: np.ndarray,
  counts: np.ndarray,
  images: dict[str, int],
) -> str | None:
  """Why the saved arrays do not fit the metadata or each other (None: they do)."""
  words, dim = index.params.codebook_size, index.dim
  width = -(-dim // 8) if index.params.binary else dim
  vector_type = np.uint8 if index.params.binary else np.float32
  if codebook.dtype != np.float32 or codebook.shape != (words, dim):
    return f"codebook {codebook.dtype} {list(codebook.shape)}, expected float32 [{words}, {dim}]"
  if offsets.dtype != np.int64 or offsets.shape != (words + 1,):
    return f"word offsets {offsets.dtype} {list(offsets.shape)}, expected int64 [{words + 1}]"
  entries = len(slots)
  if offsets[0] != 0 or offsets[-1] != entries or (np.diff(offsets) < 0).any():
    return f"word offsets do not cover the {entries} entries in order"
  if slots.dtype != np.int32 or slots.ndim != 1 or vectors.dtype != vector_type:
    return f"entries of types {slots.dtype} and {vectors.dtype}"
  if vectors.shape != (entries, width):
    return f"vectors {list(vectors.shape)}, expected [{entries}, {width}]"
  if counts.dtype != np.int64 or counts.ndim != 1:
    return f"word counts {counts.dtype} {list(counts.shape)}"
  live = np.zeros(len(counts), bool)
  if any(not 0 <= slot < len(counts) for slot in images.values()):
    return f"an image slot outside 0..{len(counts) - 1}"
  live[list(images.values())] = True
  if entries and (slots.min() < 0 or slots.max() >= len(counts) or not live[slots].all()):
    return "entries of images meta.json does not list"
  if not np.array_equal(np.bincount(slots, minlength=len(counts)), np.where(live, counts, 0)):
    return "word counts disagree with the inverted lists"
  if (counts[live] <= 0).any() or (counts[~live] != 0).any():
    return "word counts of images without words, or of deleted images"
  if not index.params.binary and not np.isfinite(vectors).all():
    return "vectors that are not finite"
  return None
