"""Putative correspondences by nearest neighbour in descriptor space (exact, L2, through faiss).

The query side (A) is prepared once in a DescriptorMatcher (a faiss flat
index); each other set (B) is matched against it: for every descriptor of B,
its nearest neighbour in A. This is the direction of the published DELF
example (a tree on image 1, queried with the descriptors of image 2).
"""

from __future__ import annotations

import faiss
import numpy as np


class DescriptorMatcher:
  """Exact nearest-neighbour search among the descriptors A [N_A, D] of one image."""

  def __init__(self, descriptors_a: np.ndarray):
    self.descriptors = np.ascontiguousarray(descriptors_a, dtype=np.float32)
    if self.descriptors.ndim != 2:
      raise ValueError(f"descriptors must be [N, D], got shape {self.descriptors.shape}")
    self._index = faiss.IndexFlatL2(self.descriptors.shape[1])
    if self.descriptors.shape[0]:
      self._index.add(self.descriptors)

  @property
  def dim(self) -> int:
    return self.descriptors.shape[1]

  def nearest(self, descriptors_b: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """k nearest A rows of each B row: (indices [N_B, k] int64, L2 distances [N_B, k] float32).

    Exact search (faiss IndexFlatL2). Where A has fewer than k rows, the
    missing neighbours have index -1 and distance inf.
    """
    descriptors_b = np.ascontiguousarray(descriptors_b, dtype=np.float32)
    if descriptors_b.ndim != 2 or (descriptors_b.shape[0] and descriptors_b.shape[1] != self.dim):
      raise ValueError(
        f"descriptor dimensions differ: A has {self.dim}, B has shape {descriptors_b.shape}"
      )
    n_b, n_a = descriptors_b.shape[0], self.descriptors.shape[0]
    if k < 1 or n_a == 0 or n_b == 0:
      return np.full((n_b, max(k, 0)), -1, np.int64), np.full((n_b, max(k, 0)), np.inf, np.float32)
    squared, indices = _single_threaded_search(self._index, descriptors_b, k)
    missing = indices < 0
    distances = np.sqrt(np.maximum(squared, 0.0)).astype(np.float32)
    distances[missing] = np.inf
    return indices.astype(np.int64), distances

  def match(
    self,
    descriptors_b: np.ndarray,
    distance_threshold: float,
    ratio_threshold: float | None = None,
    mutual: bool = False,
  ) -> np.ndarray:
    """Putative matches as int64 [M, 2] rows of (index in A, index in B).

    A B descriptor is matched to its nearest A descriptor if their L2 distance
    is below ``distance_threshold``; with ``ratio_threshold`` also if
    nearest / second-nearest distance is below it (Lowe's test); with
    ``mutual`` also if that B descriptor is the A descriptor's nearest in B.
    """
    return self.match_many([descriptors_b], distance_threshold, ratio_threshold, mutual)[0]

  def match_many(
    self,
    descriptor_sets: list[np.ndarray],
    distance_threshold: float,
    ratio_threshold: float | None = None,
    mutual: bool = False,
  ) -> list[np.ndarray]:
    """``match`` for several B sets [N_i, D] at once: one search for all their rows.

    Same results as calling ``match`` on each set; one large search is faster
    than many small ones.
    """
    sets = [np.asarray(b, np.float32) for b in descriptor_sets]
    sets = [b.reshape(-1, self.dim) if b.size == 0 else b for b in sets]  # Empty: any shape.
    offsets = np.cumsum([0] + [b.shape[0] for b in sets])
    k = 2 if ratio_threshold is not None else 1
    indices, distances = self.nearest(
      np.concatenate(sets) if sets else np.zeros((0, self.dim), np.float32), k
    )
    keep = distances[:, 0] < distance_threshold
    if ratio_threshold is not None:
      with np.errstate(divide="ignore", invalid="ignore"):
        keep &= distances[:, 0] < ratio_threshold * distances[:, 1]
    results = []
    for number, descriptors_b in enumerate(sets):
      start, end = offsets[number], offsets[number + 1]
      b_rows = np.nonzero(keep[start:end])[0]
      a_rows = indices[start + b_rows, 0]
      if mutual and b_rows.size:
        reverse, _ = DescriptorMatcher(descriptors_b).nearest(self.descriptors[a_rows], 1)
        consistent = reverse[:, 0] == b_rows
        a_rows, b_rows = a_rows[consistent], b_rows[consistent]
      results.append(np.stack([a_rows, b_rows], axis=1).astype(np.int64).reshape(-1, 2))
    return results


def _single_threaded_search(
  index: "faiss.Index", queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
  """index.search with one OpenMP thread, the previous thread count restored after.

  Matching searches are small (thousands of rows against one image's
  descriptors): a second thread gains little on an idle machine and, when the
  cores are busy, OpenMP's waiting threads make the search several times
  slower (measured 4.6 vs 12.2 ms per 1000 x 1000 pair on 2 loaded cores).
  """
  threads = faiss.omp_get_max_threads()
  faiss.omp_set_num_threads(1)
  try:
    return index.search(queries, k)
  finally:
    faiss.omp_set_num_threads(threads)


def putative_matches(
  descriptors_a: np.ndarray,
  descriptors_b: np.ndarray,
  distance_threshold: float,
  ratio_threshold: float | None = None,
  mutual: bool = False,
) -> np.ndarray:
  """One-off form of DescriptorMatcher(descriptors_a).match(descriptors_b, ...)."""
  return DescriptorMatcher(descriptors_a).match(
    descriptors_b, distance_threshold, ratio_threshold, mutual
  )
