"""Ranking database images for a query: descriptor votes, then RANSAC reranking.

Data flow: query features -> index search -> ranked list -> verified list.
Reranking calls delf_ret.match; matching never calls back.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from delf_ret.feature_io import LocalFeatures
from delf_ret.index import LocalFeatureIndex
from delf_ret.match import RansacParams, verify_candidates


@dataclasses.dataclass
class RankedImage:
  """One entry of a ranked list: image id, first-stage score, inliers (None: not verified)."""
  image_id: str
  score: float
  inliers: int | None = None


def aggregate_votes(slots: np.ndarray, distances: np.ndarray,
                    weighting: str = "count") -> dict[int, float]:
  """Scores per database slot from the k-NN hits [Q, k] of Q query descriptors.

  Each query descriptor votes at most once per image (its closest hit there):
  "count" adds 1, "similarity" adds the cosine similarity 1 - d^2 / 2 of unit
  descriptors (d^2 = squared L2 distance), floored at 0.
  """
  if weighting not in ("count", "similarity"):
    raise ValueError(f"weighting must be 'count' or 'similarity', got {weighting!r}")
  scores: dict[int, float] = {}
  for row_slots, row_distances in zip(slots, distances):
    seen = set()
    for slot, distance in zip(row_slots.tolist(), row_distances.tolist()):
      if slot < 0 or slot in seen:
        continue
      seen.add(slot)
      vote = 1.0 if weighting == "count" else max(0.0, 1.0 - distance / 2.0)
      scores[slot] = scores.get(slot, 0.0) + vote
  return scores


def rank_database(index: LocalFeatureIndex, query_descriptors: np.ndarray, k: int = 10,
                  weighting: str = "count") -> list[RankedImage]:
  """Database images by decreasing vote score (ties: image id order); unvoted images omitted."""
  if query_descriptors.shape[0] == 0 or len(index) == 0:
    return []
  slots, _, distances = index.search(query_descriptors, k)
  scores = aggregate_votes(slots, distances, weighting)
  ranked = [RankedImage(index.slot_names[slot], score) for slot, score in scores.items()
            if slot in index.slot_names]
  return sorted(ranked, key=lambda entry: (-entry.score, entry.image_id))


def rerank(query: LocalFeatures, ranked: list[RankedImage],
           load_features: Callable[[str], LocalFeatures], top_n: int = 100,
           min_inliers: int = 1, params: RansacParams = RansacParams()) -> list[RankedImage]:
  """Verifies the top ``top_n`` candidates and reorders them by inlier count.

  Verified candidates with at least ``min_inliers`` inliers come first, by
  decreasing inliers (ties: first-stage score, then the first-stage order);
  then the other top-N candidates in first-stage order; then the rest of the
  list unchanged. Candidates are loaded one at a time; the query's matcher is built once.
  """
  head, tail = ranked[:top_n], ranked[top_n:]
  verifications = verify_candidates(query, (load_features(entry.image_id) for entry in head),
                                    params)
  verified = [(position, dataclasses.replace(entry, inliers=verification.num_inliers))
              for position, (entry, verification) in enumerate(zip(head, verifications))]
  passed = [(p, e) for p, e in verified if e.inliers >= min_inliers]
  failed = [e for p, e in verified if e.inliers < min_inliers]
  passed.sort(key=lambda item: (-item[1].inliers, -item[1].score, item[0]))
  return [e for _, e in passed] + failed + tail
