"""Verified inliers of many pairs among one list of photos' features, on every core.

The maths is delf_ret.match's (putative matching, then RANSAC/MAGSAC); this module only
spreads the pairs over worker processes. Workers are started with ``spawn`` (never forked:
the caller may have TensorFlow loaded) and import only this module's light imports (numpy,
faiss, OpenCV, delf_ret.match; Python also imports the caller's ``__main__`` module by name
or path, its ``if __name__ == "__main__"`` block left out). Each worker receives the
features once, when it starts; a task is a slice of pairs (indices into that list) and its
answer an int array of inliers.

Results equal a serial loop's, in any order and any process: every verification seeds its
RANSAC itself (delf_ret.match.verify_matches: ``cv2.setRNGSeed(params.seed)`` before each
OpenCV call, ``np.random.default_rng(params.seed)`` for scikit-image), so a pair's inliers
do not depend on the pairs verified before it.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os
import signal
from typing import Callable
from typing import Sequence

import numpy as np

from delf_ret.features import LocalFeatures
from delf_ret.match import DescriptorMatcher
from delf_ret.match import RansacParams
from delf_ret.match import verify_matches

# Pairs of one task at most: ~1-2 s of work on a loaded core, so that Ctrl-C waits little
# for the tasks under way, and the last tasks leave no core idle for long.
MAX_CHUNK = 64
# Tasks per worker at least (when there are enough pairs): even shares of the work.
CHUNKS_PER_WORKER = 8

# The features of a worker process, set once by _start_worker.
_worker_features: list[LocalFeatures] = []


def available_cpus() -> int:
  """The CPUs this process may run on (its affinity mask, not the machine's count)."""
  return len(os.sched_getaffinity(0))


def count_inliers(
  features: Sequence[LocalFeatures], pairs: np.ndarray, params: Sequence[RansacParams]
) -> np.ndarray:
  """Inliers int64 [P, len(params)] of pairs int [P, 2] (A, B indices into ``features``),
  one column per RansacParams: each entry equals
  ``verify_pair(features[A], features[B], params[k]).num_inliers``.

  The putative matches of a pair are found once per distinct matching rule among
  ``params`` (distance, ratio, mutual), and A's matcher is reused by consecutive pairs
  with the same A; neither changes a result.
  """
  rules = list(dict.fromkeys((p.distance_threshold, p.ratio_threshold, p.mutual) for p in params))
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  counts = np.zeros((len(pairs), len(params)), np.int64)
  matcher, matcher_a = None, -1
  for row, (a, b) in enumerate(pairs.tolist()):
    features_a, features_b = features[a], features[b]
    if features_a.num_features == 0 or features_b.num_features == 0:
      continue  # verify_pair: no inliers.
    if matcher is None or matcher_a != a:
      matcher, matcher_a = DescriptorMatcher(features_a.descriptors), a
    matches = {rule: matcher.match(features_b.descriptors, *rule) for rule in rules}
    for column, param in enumerate(params):
      rule = (param.distance_threshold, param.ratio_threshold, param.mutual)
      counts[row, column] = verify_matches(
        features_a.locations, features_b.locations, matches[rule], param
      ).num_inliers
  return counts


def _start_worker(features: list[LocalFeatures]) -> None:
  """Pool initializer: keeps the features; Ctrl-C is the parent's to handle."""
  global _worker_features
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  _worker_features = features


def _count_in_worker(pairs: np.ndarray, params: tuple[RansacParams, ...]) -> np.ndarray:
  return count_inliers(_worker_features, pairs, params)


class PairVerifier:
  """Verifies pairs among a fixed list of features with ``workers`` processes.

  workers: the processes that verify (None: :func:`available_cpus`); 1 verifies in this
  process, no pool. The pool starts at the first parallel call and serves every later
  one (the features are sent to each worker once); :meth:`close` (or leaving a ``with``
  block) stops it.
  """

  def __init__(self, features: Sequence[LocalFeatures], workers: int | None = None):
    self.workers = available_cpus() if workers is None else int(workers)
    if self.workers < 1:
      raise ValueError(f"workers must be at least 1, got {workers}")
    self._features = list(features)
    self._executor: concurrent.futures.ProcessPoolExecutor | None = None

  def __enter__(self) -> "PairVerifier":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def close(self) -> None:
    """Stops the workers (tasks not started are dropped); the verifier can start anew."""
    if self._executor is not None:
      self._executor.shutdown(wait=True, cancel_futures=True)
      self._executor = None

  def inliers(
    self,
    pairs: np.ndarray | Sequence[tuple[int, int]],
    params: Sequence[RansacParams],
    progress: Callable[[int, int], None] | None = None,
  ) -> np.ndarray:
    """:func:`count_inliers` of ``pairs`` [P, 2] under each of ``params``: int64
    [P, len(params)], the same in any number of workers.

    progress: called with (pairs done, P) about every tenth of the pairs and at the end.
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    params = tuple(params)
    total = len(pairs)
    counts = np.zeros((total, len(params)), np.int64)
    size = max(1, min(MAX_CHUNK, math.ceil(total / (self.workers * CHUNKS_PER_WORKER))))
    starts = range(0, total, size)
    reporter = _Progress(total, progress)
    if self.workers == 1 or len(starts) < 2:
      for start in starts:
        counts[start : start + size] = count_inliers(
          self._features, pairs[start : start + size], params
        )
        reporter.add(len(counts[start : start + size]))
      return counts
    executor = self._pool()
    try:
      futures = {
        executor.submit(_count_in_worker, pairs[start : start + size], params): start
        for start in starts
      }
      for future in concurrent.futures.as_completed(futures):
        start = futures[future]
        counts[start : start + size] = future.result()
        reporter.add(len(counts[start : start + size]))
    except BaseException:
      self.close()  # Ctrl-C or a failed task: drop the tasks not started, stop the workers.
      raise
    return counts

  def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
    if self._executor is None:
      self._executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=self.workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(self._features,),
      )
    return self._executor


class _Progress:
  """Calls progress(done, total) each time ``done`` passes another tenth of ``total``."""

  def __init__(self, total: int, progress: Callable[[int, int], None] | None):
    self.total, self.done, self.progress = total, 0, progress
    self.next_tenth = 1

  def add(self, count: int) -> None:
    self.done += count
    if self.progress is None or self.done * 10 < self.next_tenth * self.total:
      return
    self.progress(self.done, self.total)
    self.next_tenth = self.done * 10 // self.total + 1
