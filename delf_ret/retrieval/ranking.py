"""Ranking database images for a query: descriptor votes, then RANSAC reranking.

Data flow: query features -> index search -> ranked list -> verified list.
Reranking calls delf_ret.match; matching never calls back. Every setting comes
from the config's ``retrieval_config`` (a ``DelfRetrievalConfig`` message; a
default-constructed one holds the defaults).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import Callable
from typing import Collection
from typing import Iterator

import numpy as np

from delf_ret.config import DelfRetrievalConfig
from delf_ret.features import LocalFeatures
from delf_ret.index import IndexParams
from delf_ret.index import LocalFeatureIndex
from delf_ret.match import RansacParams
from delf_ret.match import verify_candidates
from delf_ret.timing import add_seconds


@dataclasses.dataclass
class RankedImage:
  """One entry of a ranked list: image id, first-stage score, inliers (None: not verified)."""

  image_id: str
  score: float
  inliers: int | None = None


def vote_totals(
  slots: np.ndarray, distances: np.ndarray, weighting: str
) -> tuple[np.ndarray, np.ndarray]:
  """Scores per database image from the k-NN hits [Q, k] of Q query descriptors, without loops.

  Each query descriptor votes at most once per image (its closest hit there):
  ``weighting`` (retrieval_config.vote_weighting) "count" adds 1, "similarity"
  adds the cosine similarity 1 - d^2 / 2 of unit descriptors (d^2 = squared L2
  distance, as the index returns it), floored at 0. ``slots`` number the
  images (LocalFeatureIndex slots, or ImageHits.images positions); numbers < 0
  (no hit) are ignored. Returns (image numbers int64 [S] ascending, scores
  float64 [S]) for every image hit at least once.
  """
  if weighting not in ("count", "similarity"):
    raise ValueError(f"weighting must be 'count' or 'similarity', got {weighting!r}")
  slots, distances = np.asarray(slots), np.asarray(distances, np.float64)
  valid = slots >= 0
  rows = np.nonzero(valid)[0]
  hit_slots, hit_distances = slots[valid].astype(np.int64), distances[valid]
  # Sort by (query row, slot, distance): the first entry of each (row, slot) run is its closest hit.
  order = np.lexsort((hit_distances, hit_slots, rows))
  rows, hit_slots, hit_distances = rows[order], hit_slots[order], hit_distances[order]
  first = np.ones(rows.shape[0], bool)
  first[1:] = (rows[1:] != rows[:-1]) | (hit_slots[1:] != hit_slots[:-1])
  hit_slots, hit_distances = hit_slots[first], hit_distances[first]
  if weighting == "count":
    votes = np.ones(hit_slots.shape[0])
  else:
    votes = np.maximum(0.0, 1.0 - hit_distances / 2.0)
  unique_slots, inverse = np.unique(hit_slots, return_inverse=True)
  return unique_slots, np.bincount(inverse, weights=votes, minlength=unique_slots.shape[0])


def aggregate_votes(slots: np.ndarray, distances: np.ndarray, weighting: str) -> dict[int, float]:
  """vote_totals as a dict {slot: score}."""
  unique_slots, scores = vote_totals(slots, distances, weighting)
  return dict(zip(unique_slots.tolist(), scores.tolist()))


def rank_database(
  index: LocalFeatureIndex, query_descriptors: np.ndarray, retrieval_config: DelfRetrievalConfig
) -> list[RankedImage]:
  """Database images by decreasing vote score (ties: image id order); unvoted images omitted.

  query_descriptors: float32 [Q, D]; each looks up its
  ``neighbors_per_descriptor`` nearest database descriptors and votes by
  ``vote_weighting`` (see vote_totals).
  """
  if query_descriptors.shape[0] == 0 or len(index) == 0:
    return []
  hits = index.search_images(query_descriptors, retrieval_config.neighbors_per_descriptor)
  voted, scores = vote_totals(hits.images, hits.distances, retrieval_config.vote_weighting)
  ranked = [
    RankedImage(hits.image_ids[image], score)
    for image, score in zip(voted.tolist(), scores.tolist())
  ]
  return sorted(ranked, key=lambda entry: (-entry.score, entry.image_id))


def _timed_loads(
  image_ids: list[str],
  load_features: Callable[[str], LocalFeatures],
  timings: dict[str, float] | None,
) -> Iterator[LocalFeatures]:
  """Features of each image id, loaded one at a time; seconds added to timings["loading"]."""
  for image_id in image_ids:
    start = time.perf_counter()
    features = load_features(image_id)
    add_seconds(timings, "loading", start)
    yield features


def rerank(
  query: LocalFeatures,
  ranked: list[RankedImage],
  load_features: Callable[[str], LocalFeatures],
  retrieval_config: DelfRetrievalConfig,
  skip: Collection[str] = frozenset(),
  verified: dict[str, int] | None = None,
  timings: dict[str, float] | None = None,
) -> list[RankedImage]:
  """Verifies the top ``rerank_top_n`` candidates and reorders them by inlier count.

  The candidates are the first ``rerank_top_n`` entries of ``ranked`` whose
  id is not in ``skip`` (the official DELG reranking skips a split's junk
  images this way). Matching and RANSAC settings:
  RansacParams.from_config(retrieval_config). The order is the official code's
  (detect_to_retrieve/image_reranking.py): candidates with inliers come first, by
  decreasing inliers (ties: first-stage score, then first-stage order); then every
  other entry in first-stage order. Verified ones carry their inliers, the others
  None. ``min_inliers`` does not change the order: it is the line above which a pair
  counts as the same place (see :func:`is_verified`), so a strict line that turns
  unrelated photos away still lets weaker true matches rise above unmatched ones.

  verified: {image id: inliers} of pairs already verified for this query;
    only the missing candidates are loaded and verified, and their counts
    are added to it (so several splits verify each pair once).
  timings: seconds added to its "loading", "matching" and "ransac" entries.
  """
  top_n = retrieval_config.rerank_top_n
  verified = {} if verified is None else verified
  selected = list(itertools.islice((e for e in ranked if e.image_id not in skip), top_n))
  missing = list(dict.fromkeys(e.image_id for e in selected if e.image_id not in verified))
  verifications = verify_candidates(
    query,
    _timed_loads(missing, load_features, timings),
    RansacParams.from_config(retrieval_config),
    timings,
  )
  verified.update(zip(missing, (v.num_inliers for v in verifications)))
  selected_ids = {e.image_id for e in selected}
  passed: list[tuple[int, int, RankedImage]] = []  # (inliers, first-stage position, entry)
  others = []
  for position, entry in enumerate(ranked):
    if entry.image_id in selected_ids:
      inliers = verified[entry.image_id]
      entry = dataclasses.replace(entry, inliers=inliers)
      if inliers > 0:
        passed.append((inliers, position, entry))
        continue
    others.append(entry)
  passed.sort(key=lambda item: (-item[0], -item[2].score, item[1]))
  return [entry for _, _, entry in passed] + others


def is_verified(entry: RankedImage, retrieval_config: DelfRetrievalConfig) -> bool:
  """Whether a ranked entry was verified as the same place: RANSAC kept at least
  ``retrieval_config.min_inliers`` inliers."""
  return entry.inliers is not None and entry.inliers >= retrieval_config.min_inliers


def use_search_settings(index: LocalFeatureIndex, retrieval_config: DelfRetrievalConfig) -> None:
  """Sets the search breadth (nprobe, ef_search) of a loaded index from the config."""
  configured = IndexParams.from_config(retrieval_config)
  index.set_search_breadth(nprobe=configured.nprobe, ef_search=configured.ef_search)


def load_index(
  index: LocalFeatureIndex | str | os.PathLike, retrieval_config: DelfRetrievalConfig
) -> LocalFeatureIndex:
  """The index (loaded from its folder unless already loaded) with the config's search breadth."""
  if not isinstance(index, LocalFeatureIndex):
    index = LocalFeatureIndex.load(index)
  use_search_settings(index, retrieval_config)
  return index


@dataclasses.dataclass
class RetrievalResult:
  """First-stage ranked list and the list after RANSAC reranking of its top.

  reranked_by_split: where splits of a protocol were reranked separately
    (each skipping its own junk images), {split: reranked list}; empty otherwise.
  seconds: wall time of this query per stage ("extraction", "search",
    "loading", "matching", "ransac"), as far as measured.
  """

  ranked: list[RankedImage]
  reranked: list[RankedImage]
  reranked_by_split: dict[str, list[RankedImage]] = dataclasses.field(default_factory=dict)
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def first_stage(
  query: LocalFeatures,
  index: LocalFeatureIndex,
  retrieval_config: DelfRetrievalConfig,
  timings: dict[str, float] | None = None,
) -> list[RankedImage]:
  """rank_database for a query's features (none: an empty list); seconds in timings["search"]."""
  start = time.perf_counter()
  ranked = rank_database(
    index,
    query.descriptors if query.num_features else np.zeros((0, index.dim), np.float32),
    retrieval_config,
  )
  add_seconds(timings, "search", start)
  return ranked


def retrieve(
  query: LocalFeatures,
  index: LocalFeatureIndex,
  load_features: Callable[[str], LocalFeatures],
  retrieval_config: DelfRetrievalConfig,
  junk_by_split: dict[str, set[str]] | None = None,
) -> RetrievalResult:
  """Ranks the database for one query, then verifies the top (settings from the config).

  junk_by_split: {split: junk image ids} of a Revisited query: one reranked
    list per split, each skipping that split's junk images (as the official
    DELG evaluation), every (query, image) pair verified at most once across
    the splits; ``reranked`` is then the medium split's list.
  """
  seconds: dict[str, float] = {}
  ranked = first_stage(query, index, retrieval_config, seconds)
  if retrieval_config.rerank_top_n == 0:
    return RetrievalResult(ranked, list(ranked), seconds=seconds)
  if not junk_by_split:
    return RetrievalResult(
      ranked,
      rerank(query, ranked, load_features, retrieval_config, timings=seconds),
      seconds=seconds,
    )
  verified: dict[str, int] = {}
  by_split = {
    split: rerank(
      query, ranked, load_features, retrieval_config, skip=names, verified=verified, timings=seconds
    )
    for split, names in junk_by_split.items()
  }
  return RetrievalResult(
    ranked, by_split.get("medium", next(iter(by_split.values()))), by_split, seconds
  )
