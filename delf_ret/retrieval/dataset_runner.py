"""Running every query of a retrieval dataset against an index, resumably, and scoring it.

Data flow per query: cropped query image -> query features (cached as
``<work_dir>/query_features/<query>.delf``, and ``<query>.delg_global`` for the global
first stage) -> first-stage ranked list -> reranked list
(cached as ``<work_dir>/ranked/<query>.json``). A rerun reuses both caches,
so an interrupted run resumes. Scoring turns the lists into database indices
and applies the dataset's protocol.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Callable

import numpy as np
from google.protobuf import text_format

from delf_ret.atomic import atomic_write
from delf_ret.atomic import remove_leftovers
from delf_ret.evaluation.ground_truth import RetrievalDataset
from delf_ret.evaluation.metrics import DEFAULT_KS
from delf_ret.evaluation.metrics import SplitMetrics
from delf_ret.evaluation.metrics import evaluate_original
from delf_ret.evaluation.metrics import evaluate_revisited
from delf_ret.evaluation.metrics import revisited_splits
from delf_ret.extract.settings import check_feature_folder
from delf_ret.features import LocalFeatures
from delf_ret.features import feature_file_name
from delf_ret.features import global_file_name
from delf_ret.features import read_features
from delf_ret.features import read_global_descriptor
from delf_ret.features import write_features
from delf_ret.features import write_global_descriptor
from delf_ret.images import crop_to_box
from delf_ret.images import load_image
from delf_ret.index import LocalFeatureIndex
from delf_ret.index import LocalIndexError
from delf_ret.retrieval.first_stage import FirstStageError
from delf_ret.retrieval.first_stage import FirstStageIndex
from delf_ret.retrieval.first_stage import QueryExtract
from delf_ret.retrieval.first_stage import VotesStage
from delf_ret.retrieval.ranking import RankedImage
from delf_ret.retrieval.ranking import RetrievalResult
from delf_ret.retrieval.ranking import retrieve

# Report stage name -> the RetrievalResult list it scores.
STAGES = {"first_stage": "ranked", "reranked": "reranked"}


def check_database_indexed(
  dataset: RetrievalDataset, index: LocalFeatureIndex | FirstStageIndex
) -> None:
  """Raises LocalIndexError if database images of the dataset are missing from the index
  (a votes index or any first stage)."""
  missing = [name for name in dataset.imlist if name not in index]
  if missing:
    raise LocalIndexError(
      f"{len(missing)} of {len(dataset.imlist)} database images of "
      f"{dataset.name} are not in the index, e.g. {missing[0]}; index them "
      f"with build_index first"
    )


def query_features(
  dataset: RetrievalDataset,
  query: int,
  cache_dir: pathlib.Path,
  extract: QueryExtract,
  with_global: bool = False,
) -> tuple[LocalFeatures, np.ndarray | None]:
  """Features of query ``query`` cropped to its box, and with ``with_global`` its global
  descriptor (else None); extracted once (``<query>.delf``, ``<query>.delg_global``), then
  read from the cache.

  extract: image -> features, or -> (features, global descriptor float32 [D]); one that
  gives no global descriptor where ``with_global`` asks for it raises FirstStageError.
  """
  name = dataset.qimlist[query]
  path, global_path = cache_dir / feature_file_name(name), cache_dir / global_file_name(name)
  if path.exists() and (not with_global or global_path.exists()):
    return read_features(path), read_global_descriptor(global_path) if with_global else None
  image = load_image(dataset.image_path(name))
  box = dataset.gnd[query].get("bbx")
  if box is not None and len(box) == 4:
    image = crop_to_box(image, box)
  extracted = extract(image)
  features, descriptor = extracted if isinstance(extracted, tuple) else (extracted, None)
  if with_global:
    if descriptor is None:
      raise FirstStageError(
        f"query {name}: first_stage global needs the query's global descriptor, and the "
        f"query extractor gives local features only"
      )
    write_global_descriptor(global_path, descriptor)
  write_features(path, features)
  return features, descriptor if with_global else None


def _entries_json(entries: list[RankedImage]) -> list[list]:
  return [[e.image_id, round(e.score, 6), e.inliers] for e in entries]


def _entries_from_json(rows: list[list]) -> list[RankedImage]:
  return [RankedImage(image_id, score, inliers) for image_id, score, inliers in rows]


def _lists_json(result: RetrievalResult) -> dict:
  """A result's lists ([image id, score, inliers]) and stage seconds, JSON-ready.

  "reranked_by_split" only where splits were reranked separately.
  """
  lists: dict[str, object] = {
    "ranked": _entries_json(result.ranked),
    "reranked": _entries_json(result.reranked),
  }
  if result.reranked_by_split:
    lists["reranked_by_split"] = {
      split: _entries_json(entries) for split, entries in result.reranked_by_split.items()
    }
  lists["seconds"] = {stage: round(value, 6) for stage, value in result.seconds.items()}
  return lists


def _result_from_json(data: dict) -> RetrievalResult:
  return RetrievalResult(
    _entries_from_json(data["ranked"]),
    _entries_from_json(data["reranked"]),
    {split: _entries_from_json(rows) for split, rows in data.get("reranked_by_split", {}).items()},
    dict(data.get("seconds", {})),
  )


def retrieval_settings(retrieval_config) -> str:
  """The retrieval settings a cached ranked list depends on (every field but eval_ks), as text."""
  settings = type(retrieval_config)()
  settings.CopyFrom(retrieval_config)
  settings.ClearField("eval_ks")
  return text_format.MessageToString(settings, as_one_line=True)


def split_junk_names(dataset: RetrievalDataset) -> list[dict[str, set[str]]] | None:
  """Per query, {split: names of the images ignored in that split}, for Revisited datasets.

  easy ignores junk + hard, medium junk, hard junk + easy (evaluation.metrics.revisited_splits);
  None for other protocols.
  """
  if dataset.protocol != "revisited":
    return None
  per_split = {split: ignored for split, (_, ignored) in revisited_splits(dataset.gnd).items()}
  return [
    {
      split: {dataset.imlist[i] for i in ignored[query].tolist() if 0 <= i < len(dataset.imlist)}
      for split, ignored in per_split.items()
    }
    for query in range(len(dataset.qimlist))
  ]


def run_queries(
  dataset: RetrievalDataset,
  index: LocalFeatureIndex | FirstStageIndex,
  load_features: Callable[[str], LocalFeatures],
  extract: QueryExtract,
  retrieval_config,
  work_dir: str | pathlib.Path,
  log: Callable[[str], None] = print,
  features_settings: dict | None = None,
) -> list[RetrievalResult]:
  """Ranked and reranked lists of every query, in qimlist order (cached in ``work_dir``).

  index: a votes index or a first stage (delf_ret.retrieval.first_stage); for the global
  stage ``extract`` must give (features, global descriptor) (first_stage.query_extractor).

  Revisited datasets with ``retrieval_config.rerank_skip_junk`` get one
  reranked list per split (ranking.retrieve). A cached list made with
  other retrieval settings is recomputed. features_settings: what the query
  features are extracted with (delf_ret.extract.settings.extraction_settings);
  cached query features and lists made with other ones are recomputed. Each
  result's ``seconds`` holds the wall time per stage, extraction included (0
  for a cached query image).
  """
  work_dir = pathlib.Path(work_dir)
  features_dir, ranked_dir = work_dir / "query_features", work_dir / "ranked"
  features_dir.mkdir(parents=True, exist_ok=True)
  ranked_dir.mkdir(parents=True, exist_ok=True)
  for folder in (work_dir, features_dir, ranked_dir):
    remove_leftovers(folder, log)
  check_feature_folder(features_dir, features_settings, overwrite=True, log=log)
  settings = retrieval_settings(retrieval_config)
  if features_settings is not None:
    settings += " " + json.dumps(features_settings, sort_keys=True)
  junk = (
    split_junk_names(dataset)
    if retrieval_config.rerank_skip_junk and retrieval_config.rerank_top_n > 0
    else None
  )
  stage = VotesStage(index) if isinstance(index, LocalFeatureIndex) else index
  with_global = stage.needs_global  # The query's global descriptor is extracted too.
  results, start, computed = [], time.time(), 0
  total = len(dataset.qimlist)
  for i, name in enumerate(dataset.qimlist):
    cached = ranked_dir / f"{name}.json"
    if cached.exists():
      data = json.loads(cached.read_text())
      if data.get("settings") == settings:
        results.append(_result_from_json(data))
        continue
    extraction_start = time.perf_counter()
    query, descriptor = query_features(dataset, i, features_dir, extract, with_global)
    extraction = time.perf_counter() - extraction_start
    result = retrieve(
      query,
      stage,
      load_features,
      retrieval_config,
      None if junk is None else junk[i],
      descriptor,
    )
    result.seconds = {"extraction": extraction, **result.seconds}
    lists = _lists_json(result)
    with atomic_write(cached, "w") as handle:
      json.dump({"query": name, "settings": settings, **lists}, handle)
    # The seconds as cached (microseconds): a resumed run reports the same means and total.
    result.seconds = dict(lists["seconds"])
    results.append(result)
    computed += 1
    # The best verified image (the list may start with ignored images that are never verified).
    top = next((e for e in result.reranked if e.inliers is not None), None)
    best = f"top {top.image_id} ({top.inliers} inliers)" if top else "nothing verified"
    log(
      f"[{i + 1}/{total}] {name}: {query.num_features} features, {best} "
      f"[{(time.time() - start) / computed:.1f} s/query]"
    )
  return results


def mean_seconds(results: list[RetrievalResult]) -> dict[str, float]:
  """Mean seconds per query of each stage over the results that recorded it, plus their total."""
  stages = ("extraction", "search", "loading", "matching", "ransac")
  means = {
    stage: float(np.mean([r.seconds.get(stage, 0.0) for r in results]))
    for stage in stages
    if any(stage in r.seconds for r in results)
  }
  if means:
    means["total"] = sum(means.values())
  return means


def not_in_database(entries: list[RankedImage], dataset: RetrievalDataset) -> list[str]:
  """Ids of ranked images that are not in the dataset's database list (imlist)."""
  database = set(dataset.imlist)
  return [e.image_id for e in entries if e.image_id not in database]


def ranked_indices(entries: list[RankedImage], dataset: RetrievalDataset) -> np.ndarray:
  """A complete ranked list of database indices for scoring, int64 [len(imlist)].

  The ranked images in the dataset's database list first, then the database
  images that got no vote, in imlist order. Ranked ids outside the database
  list (for example query images that were indexed although the Revisited
  database excludes them) are dropped; evaluate_results reports them.
  """
  position = {name: i for i, name in enumerate(dataset.imlist)}
  ranked = list(dict.fromkeys(position[e.image_id] for e in entries if e.image_id in position))
  seen = set(ranked)
  ranked += [i for i in range(len(dataset.imlist)) if i not in seen]
  return np.asarray(ranked, np.int64)


def _split_lists(
  results: list[RetrievalResult], dataset: RetrievalDataset, attribute: str
) -> list[np.ndarray] | dict[str, list[np.ndarray]]:
  if attribute == "reranked" and results and all(r.reranked_by_split for r in results):
    splits = results[0].reranked_by_split
    return {
      split: [ranked_indices(r.reranked_by_split[split], dataset) for r in results]
      for split in splits
    }
  return [ranked_indices(getattr(r, attribute), dataset) for r in results]


def evaluate_results(
  dataset: RetrievalDataset,
  results: list[RetrievalResult],
  ks: tuple[int, ...] = DEFAULT_KS,
  log: Callable[[str], None] = print,
) -> dict[str, dict[str, SplitMetrics]]:
  """Metrics of both stages by the dataset's protocol: {stage: {split: metrics}}.

  Reranked lists made per split (reranked_by_split) score their own split.
  Ranked images outside the database list are dropped, with one log line.
  """
  outside = sorted(
    {
      name
      for r in results
      for entries in (r.ranked, r.reranked)
      for name in not_in_database(entries, dataset)
    }
  )
  if outside:
    log(
      f"dropped {len(outside)} ranked images that are not in {dataset.name}'s database list "
      f"before scoring (e.g. {outside[0]}); build the index from the database list "
      f"(build_index --dataset_gnd_path / --dataset_gt_dir) to avoid it"
    )
  scored, size = {}, len(dataset.imlist)
  for stage, attribute in STAGES.items():
    lists = _split_lists(results, dataset, attribute)
    if dataset.protocol == "revisited":
      scored[stage] = evaluate_revisited(lists, dataset.gnd, ks, size)
    else:
      if isinstance(lists, dict):
        lists = lists.get("medium", next(iter(lists.values())))
      scored[stage] = {"original": evaluate_original(lists, dataset.gnd, ks, size)}
  return scored


def write_ranked_lists(
  path: str | pathlib.Path, dataset: RetrievalDataset, results: list[RetrievalResult]
) -> None:
  """One JSON file with every query's lists ([image id, score, inliers]) and stage seconds.

  Per query: "ranked" (first stage), "reranked", and where splits were
  reranked separately "reranked_by_split".
  """
  queries = {name: _lists_json(r) for name, r in zip(dataset.qimlist, results)}
  with atomic_write(path, "w") as handle:
    json.dump({"dataset": dataset.name, "queries": queries}, handle)
