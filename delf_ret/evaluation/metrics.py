"""Retrieval metrics of the Oxford5k/Paris6k and Revisited ROxford/RParis protocols.

Pure numpy; no TensorFlow. A ranked list is an int array of database image
indices, best first; a ground truth per query is index arrays of positives and
of ignored images (junk, and in some splits easy or hard ones).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from delf_ret.errors import DelfRetError

DEFAULT_KS = (1, 5, 10)
RECALL_LEVELS = tuple(np.linspace(0.0, 1.0, 21).round(2).tolist())


class RankingError(DelfRetError):
  """Ranked lists that do not fit the ground truth (count, shape, type) or a bad k."""


def _indices(entry: dict, *keys: str) -> np.ndarray:
  """The ground-truth index lists ``keys`` of one query, concatenated, as int64 [n]."""
  return np.concatenate([np.asarray(entry.get(key, []), np.int64).reshape(-1) for key in keys])


def positive_ranks(ranked: np.ndarray, positives: np.ndarray, ignored: np.ndarray) -> np.ndarray:
  """0-based positions of the positives in ``ranked`` after removing ignored images."""
  ranked = np.asarray(ranked, np.int64)
  kept = ranked[~np.isin(ranked, np.asarray(ignored, np.int64))]
  return np.nonzero(np.isin(kept, np.asarray(positives, np.int64)))[0]


def average_precision(ranks: np.ndarray, num_positives: int) -> float:
  """AP with the protocols' trapezoidal interpolation.

  With positives at 0-based positions r_0 < r_1 < ... (ignored images removed):
  AP = sum_j ((j / r_j, or 1 when r_j = 0) + (j + 1) / (r_j + 1)) / 2 / num_positives.
  Positives missing from the ranked list add nothing.
  """
  if num_positives <= 0:
    raise ValueError("average precision needs at least one positive")
  total = 0.0
  for j, rank in enumerate(np.sort(np.asarray(ranks))):
    precision_before = 1.0 if rank == 0 else j / rank
    precision_after = (j + 1) / (rank + 1)
    total += (precision_before + precision_after) / 2.0
  return total / num_positives


def interpolated_precision(
  ranks: np.ndarray, num_positives: int, recall_levels: tuple[float, ...] = RECALL_LEVELS
) -> np.ndarray:
  """Precision-recall curve of one query, float [len(recall_levels)].

  At each recall level: the highest precision (j + 1) / (r_j + 1) of any cut-off
  after the j-th positive whose recall (j + 1) / num_positives reaches the
  level; 0 for levels the ranked list never reaches.
  """
  ranks = np.sort(np.asarray(ranks))
  found = np.arange(1, ranks.size + 1)
  precision, recall = found / (ranks + 1.0), found / float(num_positives)
  curve = np.zeros(len(recall_levels))
  for i, level in enumerate(recall_levels):
    reached = recall >= level - 1e-12
    curve[i] = precision[reached].max() if reached.any() else 0.0
  return curve


@dataclasses.dataclass
class SplitMetrics:
  """Metrics of one split over the queries that have positives in it.

  ap_per_query holds NaN for queries without positives (excluded, as in the
  Revisited protocol). pr_curve is the mean interpolated precision at
  RECALL_LEVELS over those queries.
  """

  mean_ap: float
  precision_at: dict[int, float]
  recall_at: dict[int, float]
  ap_per_query: list[float]
  num_queries: int
  pr_curve: list[float] = dataclasses.field(default_factory=list)


def precision_at_k(ranks: np.ndarray, k: int) -> float:
  """mP@k of one query as revisitop's compute_map and the official DELF code compute it.

  With the positives' 1-based positions p (ignored images removed) and
  kq = min(max(p), k): positives within the first kq / kq. A perfect ranking
  scores 1 even when the query has fewer than k positives; no positive
  retrieved scores 0.
  """
  positions = np.asarray(ranks, np.int64) + 1
  if positions.size == 0:
    return 0.0
  kq = min(int(positions.max()), k)
  return float((positions <= kq).sum()) / kq


def check_rankings(
  ranked_lists: list[np.ndarray],
  num_queries: int,
  ks: tuple[int, ...],
  num_database: int | None = None,
) -> None:
  """Raises RankingError unless the rankings can be scored.

  There must be one 1-d integer ranked list per query, every id in it a
  database index (>= 0, and < ``num_database`` when given), and every k >= 1.
  """
  if len(ranked_lists) != num_queries:
    raise RankingError(
      f"{len(ranked_lists)} ranked lists for {num_queries} queries (one list "
      f"per query, best first; a transposed matrix gives this)"
    )
  for number, ranked in enumerate(ranked_lists):
    ranked = np.asarray(ranked)
    if ranked.ndim != 1 or (ranked.size and not np.issubdtype(ranked.dtype, np.integer)):
      raise RankingError(
        f"ranked list {number} must be a 1-d array of database indices, got "
        f"shape {ranked.shape} of {ranked.dtype}"
      )
    if ranked.size:
      outside = ranked[
        (ranked < 0)
        | (ranked >= (num_database if num_database is not None else np.iinfo(np.int64).max))
      ]
      if outside.size:
        limit = f"0..{num_database - 1}" if num_database is not None else "0 or more"
        raise RankingError(
          f"ranked list {number} holds {outside.size} ids outside the database "
          f"(ids must be {limit}), e.g. {int(outside[0])}"
        )
  if not ks or any(int(k) < 1 for k in ks):
    raise RankingError(f"every k of mP@k / mR@k must be at least 1, got {list(ks)}")


def evaluate_split(
  ranked_lists: list[np.ndarray],
  positives: list[np.ndarray],
  ignored: list[np.ndarray],
  ks: tuple[int, ...] = DEFAULT_KS,
  num_database: int | None = None,
) -> SplitMetrics:
  """mAP, mP@k (revisitop's, see precision_at_k) and mR@k (positives in the top k / positives).

  An image listed twice among a query's positives (or ignored images) counts once.
  With ``num_database``, ranked ids must be below it (see check_rankings).
  """
  check_rankings(ranked_lists, len(positives), ks, num_database)
  aps: list[float] = []
  precisions: dict[int, list[float]] = {k: [] for k in ks}
  recalls: dict[int, list[float]] = {k: [] for k in ks}
  curves = []
  for ranked, pos, ign in zip(ranked_lists, positives, ignored):
    pos, ign = np.unique(np.asarray(pos, np.int64)), np.unique(np.asarray(ign, np.int64))
    if len(pos) == 0:
      aps.append(float("nan"))
      continue
    ranks = positive_ranks(ranked, pos, ign)
    aps.append(average_precision(ranks, len(pos)))
    curves.append(interpolated_precision(ranks, len(pos)))
    for k in ks:
      precisions[k].append(precision_at_k(ranks, k))
      recalls[k].append(int((ranks < k).sum()) / len(pos))
  valid = [ap for ap in aps if not np.isnan(ap)]
  mean = lambda values: float(np.mean(values)) if values else float("nan")
  return SplitMetrics(
    mean_ap=mean(valid),
    precision_at={k: mean(v) for k, v in precisions.items()},
    recall_at={k: mean(v) for k, v in recalls.items()},
    ap_per_query=aps,
    num_queries=len(valid),
    pr_curve=np.mean(curves, axis=0).tolist() if curves else [],
  )


def revisited_splits(gnd: list[dict]) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
  """(positives, ignored) per query for the easy, medium and hard splits.

  easy: positives easy, ignored junk + hard; medium: positives easy + hard,
  ignored junk; hard: positives hard, ignored junk + easy.
  """
  rules = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
  }
  return {
    name: (
      [_indices(entry, *positive) for entry in gnd],
      [_indices(entry, *ignored) for entry in gnd],
    )
    for name, (positive, ignored) in rules.items()
  }


def evaluate_revisited(
  ranked_lists: list[np.ndarray] | dict[str, list[np.ndarray]],
  gnd: list[dict],
  ks: tuple[int, ...] = DEFAULT_KS,
  num_database: int | None = None,
) -> dict[str, SplitMetrics]:
  """Easy / medium / hard metrics of the Revisited protocol.

  ranked_lists: one list per query for every split, or {split: lists} where
  the splits were ranked separately (reranking that skips each split's junk).
  """
  lists_of = (
    ranked_lists.__getitem__ if isinstance(ranked_lists, dict) else lambda name: ranked_lists
  )
  return {
    name: evaluate_split(lists_of(name), pos, ign, ks, num_database)
    for name, (pos, ign) in revisited_splits(gnd).items()
  }


def evaluate_original(
  ranked_lists: list[np.ndarray],
  gnd: list[dict],
  ks: tuple[int, ...] = DEFAULT_KS,
  num_database: int | None = None,
) -> SplitMetrics:
  """Original Oxford5k/Paris6k protocol: good + ok positive, junk ignored."""
  positives = [_indices(entry, "good", "ok") for entry in gnd]
  ignored = [_indices(entry, "junk") for entry in gnd]
  return evaluate_split(ranked_lists, positives, ignored, ks, num_database)


def all_pairs_map(
  scores: np.ndarray, labels: Sequence, queries: Sequence[int] | None = None
) -> float:
  """mAP of every photo (or of those in ``queries``) as a query against all the others,
  ranked by ``scores``.

  scores: float [N, N], scores[q, d] of database photo d for query q (higher first; the
  diagonal is ignored; ties keep the lower index first). labels: N group labels; a
  query's positives are the other photos of its label. Queries without a positive
  are left out. AP as in :func:`average_precision`.
  """
  scores = np.asarray(scores, np.float64)
  label_array = np.asarray(labels)
  count = len(label_array)
  if scores.ndim != 2 or scores.shape != (count, count):
    raise ValueError(f"scores must be [N, N] for N = {count} labels, got {scores.shape}")
  aps = []
  for query in range(count) if queries is None else queries:
    others = np.delete(np.arange(count), query)
    positives = others[label_array[others] == label_array[query]]
    if not positives.size:
      continue
    ranked = others[np.argsort(-scores[query, others], kind="stable")]
    ranks = positive_ranks(ranked, positives, np.zeros(0, np.int64))
    aps.append(average_precision(ranks, positives.size))
  if not aps:
    raise ValueError("no photo shares its label with another: no query has a positive")
  return float(np.mean(aps))
