"""Ranking database images for a query: the first stage, then RANSAC reranking.

Data flow: query features -> first stage (descriptor votes, ASMK or global
descriptors: delf_ret.retrieval.first_stage) -> ranked list -> verified list.
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
from typing import overload

import numpy as np

from delf_ret.config import DelfRetrievalConfig
from delf_ret.config import check_retrieval_value
from delf_ret.features import LocalFeatures
from delf_ret.index import LocalFeatureIndex
from delf_ret.match import RansacParams
from delf_ret.match import verify_candidates
from delf_ret.retrieval.first_stage import AsmkStage
from delf_ret.retrieval.first_stage import FirstStageError
from delf_ret.retrieval.first_stage import FirstStageIndex
from delf_ret.retrieval.first_stage import GlobalStage
from delf_ret.retrieval.first_stage import VotesStage
from delf_ret.retrieval.first_stage import check_stage
from delf_ret.retrieval.first_stage import use_search_settings
from delf_ret.retrieval.first_stage import vote_ranking
from delf_ret.retrieval.first_stage import vote_totals
from delf_ret.timing import add_seconds


@dataclasses.dataclass
class RankedImage:
  """One entry of a ranked list: image id, first-stage score, inliers (None: not verified)."""

  image_id: str
  score: float
  inliers: int | None = None


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
  ``vote_weighting`` (see first_stage.vote_totals).
  """
  ranked = vote_ranking(index, query_descriptors, retrieval_config)
  return [RankedImage(image_id, score) for image_id, score in ranked]


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
  RansacParams.from_config(retrieval_config). Candidates with at least
  ``rerank_min_inliers`` inliers come first, by decreasing inliers (ties: first-stage
  score, then first-stage order); then every other entry in first-stage order.
  ``rerank_min_inliers`` 1 (or 0) is the official code's order
  (detect_to_retrieve/image_reranking.py): any inlier moves a candidate up; a higher
  line leaves candidates with chance inlier counts where the first stage put them.
  Verified ones carry their inliers, the others None. ``min_inliers`` does not change
  the order: it is the line above which a pair counts as the same place (see
  :func:`is_verified`).

  verified: {image id: inliers} of pairs already verified for this query;
    only the missing candidates are loaded and verified, and their counts
    are added to it (so several splits verify each pair once).
  timings: seconds added to its "loading", "matching" and "ransac" entries.
  """
  promote_at = _promotion_line(retrieval_config)
  verified = {} if verified is None else verified
  selected = rerank_candidates(ranked, retrieval_config, skip)
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
      if inliers >= promote_at:
        passed.append((inliers, position, entry))
        continue
    others.append(entry)
  passed.sort(key=lambda item: (-item[0], -item[2].score, item[1]))
  return [entry for _, _, entry in passed] + others


def rerank_candidates(
  ranked: list[RankedImage],
  retrieval_config: DelfRetrievalConfig,
  skip: Collection[str] = frozenset(),
) -> list[RankedImage]:
  """The entries :func:`rerank` verifies: the first ``rerank_top_n`` of ``ranked`` whose id
  is not in ``skip``."""
  return list(
    itertools.islice((e for e in ranked if e.image_id not in skip), retrieval_config.rerank_top_n)
  )


def _promotion_line(retrieval_config: DelfRetrievalConfig) -> int:
  """The inliers a candidate needs to move up in :func:`rerank`: rerank_min_inliers, at least
  1 (0 and 1 are both the official order); ConfigError when negative (the config's check, for a
  ``DelfRetrievalConfig`` made in code)."""
  line = retrieval_config.rerank_min_inliers
  check_retrieval_value("rerank_min_inliers", line)
  return max(1, line)


def is_verified(entry: RankedImage, retrieval_config: DelfRetrievalConfig) -> bool:
  """Whether a ranked entry was verified as the same place: RANSAC kept at least
  ``retrieval_config.min_inliers`` inliers."""
  return entry.inliers is not None and entry.inliers >= retrieval_config.min_inliers


@overload
def load_index(
  index: FirstStageIndex, retrieval_config: DelfRetrievalConfig
) -> FirstStageIndex: ...


@overload
def load_index(
  index: LocalFeatureIndex | str | os.PathLike, retrieval_config: DelfRetrievalConfig
) -> LocalFeatureIndex: ...


def load_index(index, retrieval_config):
  """The votes index (loaded from its folder unless already loaded) with the config's search
  breadth; a first stage opened with first_stage.open_first_stage is returned as it is.

  A folder is opened only as a votes index: FirstStageError (one line naming both) when the
  folder holds another first stage or the config asks for another.
  """
  if isinstance(index, (VotesStage, AsmkStage, GlobalStage)):
    return index
  if not isinstance(index, LocalFeatureIndex):
    wanted = check_stage(index, retrieval_config)  # Another stage's folder: refused.
    if wanted != "votes":
      raise FirstStageError(
        f"{index}: this tool ranks with first_stage 'votes' only, the config asks for "
        f"first_stage {wanted!r}"
      )
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
  index: LocalFeatureIndex | FirstStageIndex,
  retrieval_config: DelfRetrievalConfig,
  timings: dict[str, float] | None = None,
  global_descriptor: np.ndarray | None = None,
) -> list[RankedImage]:
  """The first-stage ranked list of a query (none ranked: an empty list); seconds in
  timings["search"].

  index: a votes index (descriptor votes, rank_database) or a first stage of
  delf_ret.retrieval.first_stage (votes, ASMK or global); global_descriptor: the
  query's raw global descriptor float32 [D], which the global stage needs.
  """
  start = time.perf_counter()
  stage = VotesStage(index) if isinstance(index, LocalFeatureIndex) else index
  ranked = [
    RankedImage(image_id, score)
    for image_id, score in stage.rank(query, global_descriptor, retrieval_config)
  ]
  add_seconds(timings, "search", start)
  return ranked


def retrieve(
  query: LocalFeatures,
  index: LocalFeatureIndex | FirstStageIndex,
  load_features: Callable[[str], LocalFeatures],
  retrieval_config: DelfRetrievalConfig,
  junk_by_split: dict[str, set[str]] | None = None,
  global_descriptor: np.ndarray | None = None,
) -> RetrievalResult:
  """Ranks the database for one query, then verifies the top (settings from the config).

  index and global_descriptor: as for :func:`first_stage`; the reranking is the same for
  every first stage.

  junk_by_split: {split: junk image ids} of a Revisited query: one reranked
    list per split, each skipping that split's junk images (as the official
    DELG evaluation), every (query, image) pair verified at most once across
    the splits; ``reranked`` is then the medium split's list.
  """
  seconds: dict[str, float] = {}
  ranked = first_stage(query, index, retrieval_config, seconds, global_descriptor)
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
