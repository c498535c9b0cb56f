"""A retrieval benchmark end to end: the wiring perform_retrieval and the benchmarks call.

One call runs a dataset's queries against an index built beforehand
(delf_ret.index.builder) and writes the report:
  index (loaded, search settings from the config) -> check that every database
  image is indexed -> per query: cropped query image -> features (DELF with the
  config, or any ``extract`` function) -> ranked list -> RANSAC-reranked list
  (both cached, so a rerun resumes) -> ranked_lists.json -> metrics of both
  stages under the dataset's protocol (and optionally further protocols of the
  same queries) -> mAP.txt, metrics.json, pr_<split>.png.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Callable
from typing import Sequence

import numpy as np

from delf_ret.config import DelfConfig
from delf_ret.evaluation.ground_truth import RetrievalDataset
from delf_ret.evaluation.ground_truth import in_query_order
from delf_ret.evaluation.metrics import DEFAULT_KS
from delf_ret.evaluation.metrics import SplitMetrics
from delf_ret.evaluation.report import write_report
from delf_ret.extract.settings import check_database_features
from delf_ret.extract.settings import extraction_settings
from delf_ret.features import LocalFeatures
from delf_ret.features import feature_loader
from delf_ret.index import LocalFeatureIndex
from delf_ret.retrieval.dataset_runner import check_database_indexed
from delf_ret.retrieval.dataset_runner import evaluate_results
from delf_ret.retrieval.dataset_runner import mean_seconds
from delf_ret.retrieval.dataset_runner import run_queries
from delf_ret.retrieval.dataset_runner import write_ranked_lists
from delf_ret.retrieval.first_stage import FirstStageIndex
from delf_ret.retrieval.first_stage import QueryExtract
from delf_ret.retrieval.ranking import RetrievalResult
from delf_ret.retrieval.ranking import load_index

RANKED_LISTS_FILE = "ranked_lists.json"


@dataclasses.dataclass
class BenchmarkRun:
  """What run_benchmark computed and wrote.

  results: first-stage and reranked list of every query, in qimlist order.
  metrics: {stage ("first_stage", "reranked"): {split: SplitMetrics}}.
  written: ranked_lists.json, mAP.txt, metrics.json and the pr_<split>.png files.
  seconds_per_query: wall time of the query loop (extraction, votes,
    verification; cached queries are fast) divided by the number of queries.
  stage_seconds: mean seconds per query of each stage when it was computed
    (extraction, search, loading, matching, ransac, total), as in metrics.json.
  """

  dataset: RetrievalDataset
  results: list[RetrievalResult]
  metrics: dict[str, dict[str, SplitMetrics]]
  written: list[pathlib.Path]
  seconds_per_query: float
  stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def delf_query_extractor(
  config: DelfConfig, backend: str = "compiled"
) -> Callable[[np.ndarray], LocalFeatures]:
  """image uint8 [H, W, 3] -> DELF features with ``config``; the model loads on the first call.

  A resumed run whose queries are all cached never loads the model.
  """
  extractor = None

  def extract(image: np.ndarray) -> LocalFeatures:
    nonlocal extractor
    if extractor is None:
      from delf_ret.extract.extractor import DelfExtractor

      extractor = DelfExtractor(config, backend=backend)
    return extractor.extract(image)

  return extract


def run_benchmark(
  config: DelfConfig,
  dataset: RetrievalDataset,
  index: LocalFeatureIndex | FirstStageIndex | str | os.PathLike,
  features_dir: str | os.PathLike,
  output_dir: str | os.PathLike,
  extract: QueryExtract | None = None,
  backend: str = "compiled",
  also_score: Sequence[RetrievalDataset] = (),
  log: Callable[[str], None] = print,
  load_features: Callable[[str], LocalFeatures] | None = None,
) -> BenchmarkRun:
  """Runs every query of ``dataset`` and writes the report to ``output_dir``.

  Args:
    config: retrieval settings (``retrieval_config``) and, unless ``extract``
      is given, the query extraction settings.
    dataset: queries, database and ground truth (evaluation.ground_truth).
    index: the database's first stage (votes index, ASMK or global), or its folder
      (build_index; a votes index).
    features_dir: the database images' feature files (<image id>.delf), read
      for reranking.
    output_dir: caches (query_features/, ranked/) and the report files.
    extract: query image -> features, or (features, global descriptor [D]) for the
      global first stage; default: DELF with ``config`` and ``backend``.
    also_score: further ground truths of the same queries (e.g. the original
      protocol beside the Revisited one); their splits join each stage's metrics.
    log: progress lines.
    load_features: image id -> database features for reranking; default: the
      ``.delf`` files of ``features_dir`` (retrieval.indexing.database_feature_loader
      reads an index's packed store).
  """
  output_dir = pathlib.Path(output_dir)
  retrieval_config = config.retrieval_config
  index = load_index(index, retrieval_config)
  check_database_indexed(dataset, index)
  log(
    f"{dataset.name} ({dataset.protocol} protocol): {len(dataset.qimlist)} queries, "
    f"{len(dataset.imlist)} database images; index of {len(index)} images"
  )
  features_settings = None
  if extract is None:  # Queries extracted with the config: database features must match it.
    features_settings = extraction_settings(config, config.model_path)
    check_database_features(features_dir, features_settings)
  start = time.time()
  results = run_queries(
    dataset,
    index,
    load_features or feature_loader(features_dir),
    extract or delf_query_extractor(config, backend),
    retrieval_config,
    output_dir,
    log,
    features_settings,
  )
  seconds = (time.time() - start) / max(1, len(dataset.qimlist))
  write_ranked_lists(output_dir / RANKED_LISTS_FILE, dataset, results)
  ks = tuple(retrieval_config.eval_ks) or DEFAULT_KS
  stage_seconds = mean_seconds(results)
  if stage_seconds:
    log(
      "seconds per query: "
      + ", ".join(f"{stage} {value:.3f}" for stage, value in stage_seconds.items())
    )
  metrics = evaluate_results(dataset, results, ks, log)
  for other in also_score:
    for stage, splits in evaluate_results(
      in_query_order(other, dataset.qimlist), results, ks, log
    ).items():
      metrics[stage].update(splits)
  protocol = " + ".join([dataset.protocol, *(other.protocol for other in also_score)])
  written = write_report(
    output_dir, dataset.name, protocol, dataset.qimlist, metrics, stage_seconds
  )
  return BenchmarkRun(
    dataset, results, metrics, [output_dir / RANKED_LISTS_FILE, *written], seconds, stage_seconds
  )
