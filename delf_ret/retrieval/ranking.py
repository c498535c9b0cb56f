"""Ranking database images for a query: descriptor votes, then RANSAC reranking.

Data flow: query features -> index search -> ranked list -> verified list.
Reranking calls delf_ret.match; matching never calls back.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from delf_ret.features import LocalFeatures
from delf_ret.index import IndexParams, LocalFeatureIndex
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


def ransac_params_from_config(retrieval_config) -> RansacParams:
  """The matching and RANSAC fields of a ``DelfRetrievalConfig`` message."""
  return RansacParams(distance_threshold=retrieval_config.match_distance_threshold,
                      ratio_threshold=retrieval_config.match_ratio_threshold or None,
                      transform=retrieval_config.ransac_transform,
                      residual_threshold=retrieval_config.ransac_residual_threshold,
                      max_trials=retrieval_config.ransac_max_trials)


def use_search_settings(index: LocalFeatureIndex, retrieval_config) -> None:
  """Sets the search breadth (nprobe, ef_search) of a loaded index from the config."""
  configured = IndexParams.from_config(retrieval_config)
  index.params = dataclasses.replace(index.params, nprobe=configured.nprobe,
                                     ef_search=configured.ef_search)


@dataclasses.dataclass
class RetrievalResult:
  """First-stage ranked list and the list after RANSAC reranking of its top."""
  ranked: list[RankedImage]
  reranked: list[RankedImage]


def retrieve(query: LocalFeatures, index: LocalFeatureIndex,
             load_features: Callable[[str], LocalFeatures], retrieval_config) -> RetrievalResult:
  """Ranks the database for one query, then verifies the top (settings from the config)."""
  ranked = rank_database(index, query.descriptors if query.num_features else
                         np.zeros((0, index.dim), np.float32),
                         k=retrieval_config.neighbors_per_descriptor,
                         weighting=retrieval_config.vote_weighting)
  if retrieval_config.rerank_top_n == 0:
    return RetrievalResult(ranked, list(ranked))
  reranked = rerank(query, ranked, load_features, top_n=retrieval_config.rerank_top_n,
                    min_inliers=retrieval_config.min_inliers,
                    params=ransac_params_from_config(retrieval_config))
  return RetrievalResult(ranked, reranked)
