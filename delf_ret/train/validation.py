"""Choosing between model variants on training data only: retrieval among the validation
photos of labelled shards (prepare_labelled_photos), never an evaluation set.

Every validation photo is a query against all the others; database photos are ranked by
verified inliers (putative matching + RANSAC with the config's retrieval_config), the
positives are the photos of its label (the N (N - 1) / 2 pairs are verified by worker
processes on every CPU, delf_ret.train.pair_verification: the inliers of one process). The
figures: that all-pairs mAP, the share of same-label pairs that reach ``min_inliers``, and
the different-label pairs that do; when the shards hold labels out of training
(``prepare_labelled_photos --holdout_labels``), also the mAP and share of those labels'
photos alone ("unseen"), the only figures that compare models on landmarks none of them
trained on. Ranking every pair by inliers leaves out the first stage; the "pipeline"
figures run delf-ret's retrieval itself (a flat index of the validation photos, votes,
RANSAC reranking of the top ``rerank_top_n``, the query itself skipped) and give the mAP
after votes and after reranking, of all photos and of the unseen ones: what a model's
attention does to the vote ranking shows there.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pathlib
from typing import Callable
from typing import Sequence

import numpy as np
import tensorflow as tf

from delf_ret.config import DelfConfig
from delf_ret.config import DelfRetrievalConfig
from delf_ret.evaluation.false_positives import count_false_positives
from delf_ret.evaluation.metrics import all_pairs_map
from delf_ret.features import LocalFeatures
from delf_ret.index import LocalFeatureIndex
from delf_ret.match import RansacParams
from delf_ret.retrieval.ranking import first_stage
from delf_ret.retrieval.ranking import rerank
from delf_ret.retrieval.ranking import rerank_candidates
from delf_ret.train.gldv2 import LABEL_MAP_FILE
from delf_ret.train.gldv2 import SPLIT_FILE
from delf_ret.train.pair_verification import PairVerifier
from delf_ret.train.photos import TrainingDataError
from delf_ret.train.pipeline import parse_example
from delf_ret.train.pipeline import shard_files


def read_validation_photos(shards_dir: str | os.PathLike) -> tuple[list[np.ndarray], list[int]]:
  """The validation split's photos (uint8 [H, W, 3] RGB) and labels, in shard order."""
  try:
    files = shard_files(pathlib.Path(shards_dir), "validation")
  except FileNotFoundError:
    raise TrainingDataError(
      f"{shards_dir}: no validation-*.tfrecord shards (write them with prepare_labelled_photos)"
    ) from None
  photos, labels = [], []
  for serialized in tf.data.TFRecordDataset(files):
    image, label = parse_example(serialized)
    photos.append(image.numpy())
    labels.append(int(label))
  return photos, labels


def held_out_labels(shards_dir: str | os.PathLike) -> list[int]:
  """The labels (ints of label_map.csv) that ``split.json`` says training never saw."""
  shards_dir = pathlib.Path(shards_dir)
  try:
    names = json.loads((shards_dir / SPLIT_FILE).read_text()).get("holdout_labels", [])
    with open(shards_dir / LABEL_MAP_FILE, newline="") as handle:
      rows = list(csv.reader(handle))[1:]
  except (OSError, ValueError, AttributeError) as error:
    raise TrainingDataError(f"{shards_dir}: unreadable {SPLIT_FILE} or {LABEL_MAP_FILE}: {error}")
  label_of = {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit()}
  missing = [name for name in names if name not in label_of]
  if missing:
    raise TrainingDataError(f"{shards_dir}: held-out labels not in {LABEL_MAP_FILE}: {missing}")
  return sorted(label_of[name] for name in names)


def inlier_matrix(
  features: list[LocalFeatures],
  params: RansacParams,
  workers: int | None = None,
  log: Callable[[str], None] | None = None,
  verifier: PairVerifier | None = None,
) -> np.ndarray:
  """Verified inliers of every pair, int [N, N], symmetric (A matched against B for A < B).

  workers: processes verifying the N (N - 1) / 2 pairs (None: every CPU this process may
  use; 1: this process alone); the matrix is the same for any number. log: a line about
  every tenth of the pairs. verifier: a PairVerifier of these ``features`` to use (and
  leave open) instead of starting one with ``workers``.
  """
  count = len(features)
  first, second = np.triu_indices(count, 1)
  pairs = np.stack([first, second], axis=1)

  def progress(done: int, total: int) -> None:
    if log is not None:
      log(f"validation: verified {done}/{total} pairs")

  with _verifier_of(features, workers, verifier) as running:
    counts = running.inliers(pairs, [params], progress)[:, 0]
  inliers = np.zeros((count, count), np.int64)
  inliers[first, second] = inliers[second, first] = counts
  return inliers


def pipeline_scores(
  features: list[LocalFeatures],
  retrieval_config: DelfRetrievalConfig,
  workers: int | None = None,
  log: Callable[[str], None] | None = None,
  inliers: np.ndarray | None = None,
  verifier: PairVerifier | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Scores [N, N] of photo d for query q from delf-ret's retrieval over a flat index of all
  N photos: (after votes, after reranking), each N - position in q's list (0: not listed).
  The query itself is left out of reranking; all_pairs_map ignores the diagonal.

  Each query's list is what :func:`delf_ret.retrieval.ranking.retrieve` gives: the votes of
  every query first, then the (query, candidate) pairs of the reranked top verified by
  ``workers`` processes (as in :func:`inlier_matrix`; a line to ``log`` about every tenth),
  then :func:`~delf_ret.retrieval.ranking.rerank` of each list with those counts.
  inliers: the :func:`inlier_matrix` [N, N] of this config's verification, if computed:
  its entry [q, d] for q < d is that pair's count already (query q matched against d).
  verifier: as in :func:`inlier_matrix`.
  """
  count = len(features)
  votes, reranked = np.zeros((count, count)), np.zeros((count, count))
  dims = {f.descriptors.shape[1] for f in features if f.num_features}
  if not dims:
    return votes, reranked
  index = LocalFeatureIndex(dims.pop())
  for i, feature in enumerate(features):
    if feature.num_features:
      index.add(str(i), feature.descriptors)
  queries = [query for query in range(count) if features[query].num_features]
  rankings = {query: first_stage(features[query], index, retrieval_config) for query in queries}
  candidates = [
    (query, int(entry.image_id))
    for query in queries
    for entry in rerank_candidates(rankings[query], retrieval_config, {str(query)})
  ]
  verified: dict[int, dict[str, int]] = {query: {} for query in queries}
  if inliers is not None:
    for query, image in candidates:
      if query < image:
        verified[query][str(image)] = int(inliers[query, image])
  missing = [(q, d) for q, d in candidates if str(d) not in verified[q]]

  def progress(done: int, total: int) -> None:
    if log is not None:
      log(f"validation: reranking verified {done}/{total} pairs")

  with _verifier_of(features, workers, verifier) as running:
    params = RansacParams.from_config(retrieval_config)
    counts = running.inliers(np.asarray(missing, np.int64), [params], progress)[:, 0]
  for (query, image), inlier_count in zip(missing, counts.tolist()):
    verified[query][str(image)] = inlier_count
  for query in queries:
    ranked = rankings[query]
    result = rerank(
      features[query],
      ranked,
      lambda name: features[int(name)],
      retrieval_config,
      skip={str(query)},
      verified=verified[query],
    )
    for scores, listing in ((votes, ranked), (reranked, result)):
      for position, entry in enumerate(listing):
        scores[query, int(entry.image_id)] = count - position
  return votes, reranked


def _verifier_of(
  features: list[LocalFeatures], workers: int | None, verifier: PairVerifier | None
) -> contextlib.AbstractContextManager[PairVerifier]:
  """``verifier`` left open, or a new PairVerifier of ``workers`` closed at the end."""
  if verifier is not None:
    return contextlib.nullcontext(verifier)
  return PairVerifier(features, workers)


def pipeline_figures(
  votes: np.ndarray, reranked: np.ndarray, labels: list[int], unseen: Sequence[int] = ()
) -> dict:
  """mAP (percent) after votes and after reranking of :func:`pipeline_scores`, over every
  photo with another of its label, and over the unseen labels' photos (None: no query)."""
  label_array = np.asarray(labels)
  has_positive = [i for i in range(len(labels)) if np.sum(label_array == labels[i]) > 1]
  figures: dict = {}
  for name, queries in (
    ("", has_positive),
    ("unseen_", [i for i in has_positive if labels[i] in unseen]),
  ):
    if name and not unseen:
      continue
    for stage, scores in (("votes", votes), ("reranked", reranked)):
      figures[f"{name}{stage}_map"] = (
        round(100.0 * all_pairs_map(scores, labels, queries), 2) if queries else None
      )
  return figures


def validation_figures(
  inliers: np.ndarray, labels: list[int], min_inliers: int, unseen: Sequence[int] = ()
) -> dict:
  """The figures of an inlier matrix [N, N] and labels: all-pairs mAP (percent; None when no
  label has two photos), the share of same-label pairs reaching min_inliers, and the
  different-label pairs that do. With ``unseen`` labels (held out of training), the
  "unseen" figures: mAP of their photos as queries against all photos, and their share."""
  same = np.equal.outer(labels, labels)
  upper = np.triu(np.ones_like(same), 1)
  related = inliers[same & upper]
  groups = {str(i): str(label) for i, label in enumerate(labels)}
  queries = int(np.sum(same.sum(axis=1) > 1))  # Photos with another photo of their label.
  unrelated = count_false_positives(groups, lambda a, b: inliers[int(a), int(b)], min_inliers)
  figures: dict = {
    "photos": len(labels),
    "labels": len(set(labels)),
    # None when no label has two validation photos.
    "map_by_inliers": (
      round(100.0 * all_pairs_map(inliers.astype(np.float64), labels), 2) if queries else None
    ),
    "queries": queries,
    "related_pairs": int(related.size),
    "related_verified_share": (
      round(float(np.mean(related >= min_inliers)), 4) if related.size else None
    ),
    "related_median_inliers": float(np.median(related)) if related.size else None,
    "unrelated_pairs": unrelated.pairs["landmark-landmark"],
    "unrelated_verified": unrelated.count("landmark-landmark"),
    "unrelated_max_inliers": int(inliers[~same].max(initial=0)),
    "min_inliers": min_inliers,
  }
  if unseen:
    figures["unseen"] = _unseen_figures(inliers, labels, min_inliers, unseen)
  return figures


def _unseen_figures(
  inliers: np.ndarray, labels: list[int], min_inliers: int, unseen: Sequence[int]
) -> dict:
  """Figures of the held-out labels' photos: queries among all photos, their own pairs."""
  label_array = np.asarray(labels)
  queries = [
    i for i in range(len(labels)) if labels[i] in unseen and np.sum(label_array == labels[i]) > 1
  ]
  related = [inliers[a, b] for a in queries for b in queries if a < b and labels[a] == labels[b]]
  return {
    "labels": sorted(set(unseen)),
    "queries": len(queries),
    "map_by_inliers": (
      round(100.0 * all_pairs_map(inliers.astype(np.float64), labels, queries), 2)
      if queries
      else None
    ),
    "related_verified_share": (
      round(float(np.mean(np.asarray(related) >= min_inliers)), 4) if related else None
    ),
  }


def validate_model(
  config: DelfConfig,
  shards_dir: str | os.PathLike,
  log: Callable[[str], None] = print,
  workers: int | None = None,
  pipeline_only: bool = False,
) -> dict:
  """Extracts every validation photo with ``config`` (its model, pyramid, PCA) and returns
  :func:`validation_figures` with the config's matching rule and min_inliers (the pairs
  verified by ``workers`` processes, as in :func:`inlier_matrix`) and, under "pipeline",
  :func:`pipeline_figures`. pipeline_only: only the photo and label counts and the
  pipeline figures (no all-pairs verification: with ``retrieval_config.rerank_top_n`` 0,
  a screen of the votes that takes minutes instead of an hour)."""
  # Lazy: the extractor loads the model (TensorFlow + Keras) only when a model is validated.
  from delf_ret.extract.extractor import DelfExtractor

  photos, labels = read_validation_photos(shards_dir)
  extractor = DelfExtractor(config)
  features = []
  for index, photo in enumerate(photos):
    features.append(extractor.extract(photo))
    if (index + 1) % 25 == 0 or index + 1 == len(photos):
      log(f"validation: extracted {index + 1}/{len(photos)} photos")
  retrieval = config.retrieval_config
  unseen = held_out_labels(shards_dir)
  inliers = None
  # One pool of workers (each sent the features once) for both verifications.
  with PairVerifier(features, workers) as verifier:
    if pipeline_only:
      figures: dict = {"photos": len(labels), "labels": len(set(labels))}
    else:
      params = RansacParams.from_config(retrieval)
      inliers = inlier_matrix(features, params, log=log, verifier=verifier)
      figures = validation_figures(inliers, labels, retrieval.min_inliers, unseen)
    scores = pipeline_scores(features, retrieval, log=log, inliers=inliers, verifier=verifier)
  figures["pipeline"] = pipeline_figures(*scores, labels, unseen)
  figures["shards"] = str(pathlib.Path(shards_dir).resolve())
  figures["mean_features"] = round(float(np.mean([f.num_features for f in features])), 1)
  return figures
