"""Recognition from a labelled gallery, and answering many query photos in one run.

Recognition: a query's label is voted by its ``recognition_top_k`` best verified
neighbours (the reranked list restricted to entries with at least
``min_inliers`` RANSAC inliers, in rank order), each vote weighted by its
inliers; the label with the most summed inliers wins (ties: the label whose
best neighbour ranks first), and the answer is "unknown" (None) when no label
got a vote or the winner's sum is below ``recognition_min_score``. A gallery
image without a label still takes its place among the top k but votes for no
label, so unlabelled photos in a gallery pull doubtful answers towards "unknown".

Batch queries: :class:`QueryRunner` answers one query photo at a time with the
extractor, first stage (votes, ASMK or global) and database features loaded once
(:meth:`QueryRunner.open` is how query_index and recognize open an index folder;
delf_serve's service uses the same pieces: first_stage.open_first_stage,
query_extractor and Query); :func:`answer_queries` runs a list of photos, skipping
(and reporting) unreadable ones, and records each answer in a :class:`QueryJournal`
(a JSON-lines file) so that an interrupted run, started again with the same settings,
resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Callable
from typing import Iterable
from typing import Mapping
from typing import Sequence

import numpy as np

from delf_ret.config import DelfConfig
from delf_ret.config import DelfRetrievalConfig
from delf_ret.errors import DelfRetError
from delf_ret.features import LocalFeatures
from delf_ret.features import image_id_of
from delf_ret.images import crop_to_box
from delf_ret.images import load_image
from delf_ret.index import LocalFeatureIndex
from delf_ret.retrieval.first_stage import FirstStageIndex
from delf_ret.retrieval.first_stage import Query
from delf_ret.retrieval.first_stage import QueryExtract
from delf_ret.retrieval.first_stage import VotesStage
from delf_ret.retrieval.first_stage import open_first_stage
from delf_ret.retrieval.first_stage import query_extractor
from delf_ret.retrieval.indexing import database_feature_loader
from delf_ret.retrieval.ranking import RankedImage
from delf_ret.retrieval.ranking import is_verified
from delf_ret.retrieval.ranking import retrieve


@dataclasses.dataclass(frozen=True)
class RecognitionResult:
  """A recognition answer.

  label: the winning label, or None for "unknown".
  score: the winning label's summed inliers (0.0 when no neighbour voted); given
    also when the answer is "unknown" (it was below the threshold).
  votes: {label: summed inliers} of every label voted for.
  """

  label: str | None
  score: float
  votes: dict[str, float]


def recognize(
  candidates: Sequence[tuple[str, int]],
  labels: Mapping[str, str | None],
  top_k: int,
  min_score: float,
) -> RecognitionResult:
  """Labels a query from its verified neighbours (see the module docstring).

  candidates: (image id, inliers) of the reranked list in rank order, already
    restricted to verified entries (inliers >= min_inliers).
  labels: {image id: label or None} of the gallery; ids missing are unlabelled.
  top_k: how many of the first candidates vote (retrieval_config.recognition_top_k, >= 1).
  min_score: the least summed inliers of a label given as the answer
    (retrieval_config.recognition_min_score).
  """
  if top_k < 1:
    raise ValueError(f"top_k must be at least 1, got {top_k}")
  votes: dict[str, float] = {}
  first_rank: dict[str, int] = {}
  for rank, (image_id, inliers) in enumerate(candidates[:top_k]):
    label = labels.get(image_id)
    if label is None:
      continue
    votes[label] = votes.get(label, 0.0) + float(inliers)
    first_rank.setdefault(label, rank)
  if not votes:
    return RecognitionResult(None, 0.0, {})
  winner = max(votes, key=lambda label: (votes[label], -first_rank[label]))
  score = votes[winner]
  return RecognitionResult(winner if score >= min_score else None, score, votes)


def verified_candidates(
  reranked: Iterable[RankedImage], retrieval_config: DelfRetrievalConfig
) -> list[tuple[str, int]]:
  """(image id, inliers) of the verified entries of a reranked list, in rank order."""
  return [
    (entry.image_id, int(entry.inliers))
    for entry in reranked
    if entry.inliers is not None and is_verified(entry, retrieval_config)
  ]


def gallery_labels(index: FirstStageIndex | LocalFeatureIndex) -> dict[str, str | None]:
  """{image id: label or None} of every image of the index or first stage (labels recorded by
  build_index)."""
  return {image_id: index.image_label(image_id) for image_id in index.image_ids()}


def recognize_ranked(
  reranked: Iterable[RankedImage],
  labels: Mapping[str, str | None],
  retrieval_config: DelfRetrievalConfig,
  min_score: float | None = None,
) -> RecognitionResult:
  """recognize() of a reranked list with the config's top k and threshold (``min_score``:
  instead of the config's recognition_min_score)."""
  return recognize(
    verified_candidates(reranked, retrieval_config),
    labels,
    retrieval_config.recognition_top_k,
    retrieval_config.recognition_min_score if min_score is None else min_score,
  )


@dataclasses.dataclass
class QueryAnswer:
  """The answer to one query photo.

  query: the photo's path as given; num_features: features extracted from it;
  ranked: the head of its reranked list (the first max(num_results,
  rerank_top_n) entries, so every verified entry is there).
  """

  query: str
  num_features: int
  ranked: list[RankedImage]

  @property
  def image_id(self) -> str:
    return image_id_of(self.query)

  def to_json(self) -> dict:
    return {
      "query": self.query,
      "num_features": self.num_features,
      "ranked": [[e.image_id, e.score, e.inliers] for e in self.ranked],
    }

  @classmethod
  def from_json(cls, data: dict) -> "QueryAnswer":
    ranked = [
      RankedImage(str(i), float(s), None if n is None else int(n)) for i, s, n in data["ranked"]
    ]
    return cls(str(data["query"]), int(data["num_features"]), ranked)


class QueryRunner:
  """Answers query photos one at a time; the extractor, first stage and features are loaded once.

  extract: image uint8 [H, W, 3] -> what the first stage needs of a query: LocalFeatures, or
    (LocalFeatures, global descriptor float32 [D]) for "global" (first_stage.query_extractor).
  index: the first stage (first_stage.open_first_stage: votes, ASMK or global; a
    LocalFeatureIndex is taken as the votes stage); it holds the images' records
    (image_path / image_label).
  load_features: image id -> its LocalFeatures, for reranking (the packed store or .delf files).
  num_results: entries kept of each reranked list (at least rerank_top_n are kept).
  box: (x1, y1, x2, y2) pixels each query is cropped to, or None.
  prepare: loads the model ahead of the first query (its errors stop a batch, where a
    photo's own errors only skip that photo); None: nothing to load.
  """

  def __init__(
    self,
    extract: QueryExtract,
    index: FirstStageIndex | LocalFeatureIndex,
    load_features: Callable[[str], LocalFeatures],
    config: DelfConfig,
    num_results: int,
    box: tuple[float, float, float, float] | None = None,
    prepare: Callable[[], None] | None = None,
  ):
    self.extract, self.load_features = extract, load_features
    self.prepare = prepare or (lambda: None)
    self.stage: FirstStageIndex = (
      VotesStage(index) if isinstance(index, LocalFeatureIndex) else index
    )
    self.config = config
    self.keep = max(num_results, config.retrieval_config.rerank_top_n)
    self.box = box

  @classmethod
  def open(
    cls,
    config: DelfConfig,
    index_dir: str | os.PathLike,
    features_dir: str | os.PathLike,
    num_results: int,
    box: tuple[float, float, float, float] | None = None,
    backend: str = "compiled",
    log: Callable[[str], None] = print,
  ) -> "QueryRunner":
    """The runner of the tools that query an index folder (query_index, recognize): the
    first stage it was built with (the config's retrieval_config.first_stage must agree:
    FirstStageError naming both otherwise), the query extractor that stage needs (the
    model loads at the first extraction) and reranking's reader of the database features
    (the index's packed store, else the .delf files of ``features_dir``)."""
    stage = open_first_stage(index_dir, config.retrieval_config)
    extract = query_extractor(config, backend)
    loader = database_feature_loader(index_dir, features_dir, log)
    return cls(extract, stage, loader, config, num_results, box, extract.load)

  def features(self, path: str | os.PathLike) -> tuple[np.ndarray, Query]:
    """The query image (cropped to the box) and what the first stage needs of it (its local
    features, and its global descriptor for "global"); DelfRetError for an unusable image
    (unreadable, too small, too large, a box outside it)."""
    image = load_image(path, self.config.max_image_pixels)
    if self.box is not None:
      image = crop_to_box(image, self.box)
    return image, Query.of(self.extract(image))

  def answer_features(self, path: str | os.PathLike, query: Query | LocalFeatures) -> QueryAnswer:
    """Ranks the database with the first stage and reranks the top for a query."""
    query = Query.of(query)
    result = retrieve(
      query.features,
      self.stage,
      self.load_features,
      self.config.retrieval_config,
      global_descriptor=query.global_descriptor,
    )
    return QueryAnswer(str(path), query.features.num_features, result.reranked[: self.keep])

  def fingerprint(self, features_dir: str | os.PathLike) -> str:
    """What the answers depend on: config (its first stage included), the stage's images,
    features folder, kept entries, box."""
    digest = hashlib.sha256(self.config.SerializeToString(deterministic=True))
    settings: list = [self.stage.name, sorted(self.stage.image_ids())]
    settings += [str(pathlib.Path(features_dir).resolve()), self.keep, self.box]
    digest.update(json.dumps(settings).encode())
    return digest.hexdigest()


class QueryJournal:
  """Answers already given, one JSON line each after a header line with the settings'
  fingerprint, appended (and flushed to disk) as each query is answered.

  Opening a journal whose fingerprint differs (other config, gallery, or number of
  results) starts it afresh; a line torn by a crash is ignored.
  """

  def __init__(self, path: str | os.PathLike, fingerprint: str):
    self.path = pathlib.Path(path)
    self.answers: dict[str, QueryAnswer] = {}
    lines = self._read_lines()
    if lines and lines[0].get("fingerprint") == fingerprint:
      for line in lines[1:]:
        with contextlib.suppress(KeyError, TypeError, ValueError):
          answer = QueryAnswer.from_json(line)
          self.answers[answer.query] = answer
    else:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self.path.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")

  def _read_lines(self) -> list[dict]:
    if not self.path.is_file():
      return []
    lines = []
    for text in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
      with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict):
          lines.append(data)
    return lines

  def add(self, answer: QueryAnswer) -> None:
    self.answers[answer.query] = answer
    with open(self.path, "a", encoding="utf-8") as handle:
      handle.write(json.dumps(answer.to_json()) + "\n")
      handle.flush()
      os.fsync(handle.fileno())

  def remove(self) -> None:
    self.path.unlink(missing_ok=True)


@dataclasses.dataclass
class BatchAnswers:
  """Answers in the order of the queries, (path, reason) of each query skipped, how many
  came from the journal, and the journal."""

  answers: list[QueryAnswer]
  failures: list[tuple[str, str]]
  resumed: int = 0
  journal: QueryJournal | None = None


def answer_queries(
  paths: Sequence[str | os.PathLike],
  runner: QueryRunner,
  journal: QueryJournal | None,
  log: Callable[[str], None],
) -> BatchAnswers:
  """Answers every query photo, logging ``[i/n] <path>: ...`` per query.

  A photo that cannot be used (unreadable, too small, ...) is logged as one
  ``error:`` line and skipped; errors of the gallery (a missing feature file)
  stop the run. Queries already in ``journal`` are not run again.
  """
  batch = BatchAnswers([], [])
  if journal is None or any(str(path) not in journal.answers for path in paths):
    runner.prepare()  # The model's errors stop the run here, not once per photo.
  for number, path in enumerate(paths, 1):
    step = f"[{number}/{len(paths)}] {path}"
    if journal is not None and str(path) in journal.answers:
      batch.answers.append(journal.answers[str(path)])
      batch.resumed += 1
      log(f"{step}: answered in an earlier run")
      continue
    try:
      _, features = runner.features(path)
    except (DelfRetError, OSError) as error:
      reason = str(error) if str(path) in str(error) else f"{path}: {error}"
      log(f"[{number}/{len(paths)}] error: {reason}")
      batch.failures.append((str(path), reason))
      continue
    answer = runner.answer_features(path, features)
    if journal is not None:
      journal.add(answer)
    batch.answers.append(answer)
    best = answer.ranked[0] if answer.ranked else None
    top = "no match" if best is None else f"top {best.image_id} ({best.inliers or 0} inliers)"
    log(f"{step}: {answer.num_features} features, {top}")
  return batch
