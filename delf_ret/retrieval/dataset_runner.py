"""Running every query of a retrieval dataset against an index, resumably, and scoring it.

Data flow per query: cropped query image -> query features (cached as
``<work_dir>/query_features/<query>.delf``) -> ranked list -> reranked list
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

from delf_ret.atomic import atomic_write
from delf_ret.evaluation.ground_truth import RetrievalDataset, crop_to_box
from delf_ret.evaluation.metrics import DEFAULT_KS, SplitMetrics, evaluate_original, evaluate_revisited
from delf_ret.features import LocalFeatures, feature_file_name, read_features, write_features
from delf_ret.images import load_image
from delf_ret.index import LocalFeatureIndex, LocalIndexError
from delf_ret.retrieval.ranking import RankedImage, RetrievalResult, retrieve

# Report stage name -> the RetrievalResult list it scores.
STAGES = {"first_stage": "ranked", "reranked": "reranked"}


def check_database_indexed(dataset: RetrievalDataset, index: LocalFeatureIndex) -> None:
  """Raises LocalIndexError if database images of the dataset are missing from the index."""
  missing = [name for name in dataset.imlist if name not in index]
  if missing:
    raise LocalIndexError(f"{len(missing)} of {len(dataset.imlist)} database images of "
                          f"{dataset.name} are not in the index, e.g. {missing[0]}; index them "
                          f"with build_index first")


def query_features(dataset: RetrievalDataset, query: int, cache_dir: pathlib.Path,
                   extract: Callable[[np.ndarray], LocalFeatures]) -> LocalFeatures:
  """Features of query ``query`` cropped to its box; extracted once, then read from the cache."""
  path = cache_dir / feature_file_name(dataset.qimlist[query])
  if path.exists():
    return read_features(path)
  image = load_image(dataset.image_path(dataset.qimlist[query]))
  box = dataset.gnd[query].get("bbx")
  if box is not None and len(box) == 4:
    image = crop_to_box(image, box)
  features = extract(image)
  write_features(path, features)
  return features


def _entries_json(entries: list[RankedImage]) -> list[list]:
  return [[e.image_id, round(e.score, 6), e.inliers] for e in entries]


def _entries_from_json(rows: list[list]) -> list[RankedImage]:
  return [RankedImage(image_id, score, inliers) for image_id, score, inliers in rows]


def run_queries(dataset: RetrievalDataset, index: LocalFeatureIndex,
                load_features: Callable[[str], LocalFeatures],
                extract: Callable[[np.ndarray], LocalFeatures], retrieval_config,
                work_dir: str | pathlib.Path,
                log: Callable[[str], None] = print) -> list[RetrievalResult]:
  """Ranked and reranked list of every query, in qimlist order (cached in ``work_dir``)."""
  work_dir = pathlib.Path(work_dir)
  features_dir, ranked_dir = work_dir / "query_features", work_dir / "ranked"
  features_dir.mkdir(parents=True, exist_ok=True)
  ranked_dir.mkdir(parents=True, exist_ok=True)
  results, start, computed = [], time.time(), 0
  total = len(dataset.qimlist)
  for i, name in enumerate(dataset.qimlist):
    cached = ranked_dir / f"{name}.json"
    if cached.exists():
      data = json.loads(cached.read_text())
      results.append(RetrievalResult(_entries_from_json(data["ranked"]),
                                     _entries_from_json(data["reranked"])))
      continue
    query = query_features(dataset, i, features_dir, extract)
    result = retrieve(query, index, load_features, retrieval_config)
    with atomic_write(cached, "w") as handle:
      json.dump({"query": name, "ranked": _entries_json(result.ranked),
                 "reranked": _entries_json(result.reranked)}, handle)
    results.append(result)
    computed += 1
    top = result.reranked[0] if result.reranked else None
    best = f"top {top.image_id} ({top.inliers} inliers)" if top else "no result"
    log(f"[{i + 1}/{total}] {name}: {query.num_features} features, {best} "
        f"[{(time.time() - start) / computed:.1f} s/query]")
  return results


def ranked_indices(entries: list[RankedImage], dataset: RetrievalDataset) -> np.ndarray:
  """A complete ranked list of database indices for scoring, int64 [>= len(imlist)].

  The ranked images first (ids not in the dataset, e.g. extra distractors,
  get indices from len(imlist) up: always negatives), then the database images
  that got no vote, in imlist order.
  """
  position = {name: i for i, name in enumerate(dataset.imlist)}
  extra = len(dataset.imlist)
  ranked, seen = [], set()
  for entry in entries:
    index = position.get(entry.image_id)
    if index is None:
      index, extra = extra, extra + 1
    else:
      seen.add(index)
    ranked.append(index)
  ranked += [i for i in range(len(dataset.imlist)) if i not in seen]
  return np.asarray(ranked, np.int64)


def evaluate_results(dataset: RetrievalDataset, results: list[RetrievalResult],
                     ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, dict[str, SplitMetrics]]:
  """Metrics of both stages by the dataset's protocol: {stage: {split: metrics}}."""
  scored = {}
  for stage, attribute in STAGES.items():
    lists = [ranked_indices(getattr(r, attribute), dataset) for r in results]
    if dataset.protocol == "revisited":
      scored[stage] = evaluate_revisited(lists, dataset.gnd, ks)
    else:
      scored[stage] = {"original": evaluate_original(lists, dataset.gnd, ks)}
  return scored


def write_ranked_lists(path: str | pathlib.Path, dataset: RetrievalDataset,
                       results: list[RetrievalResult]) -> None:
  """One JSON file with every query's first-stage and reranked list ([image id, score, inliers])."""
  payload = {"dataset": dataset.name, "queries": {
      name: {"ranked": _entries_json(r.ranked), "reranked": _entries_json(r.reranked)}
      for name, r in zip(dataset.qimlist, results)}}
  with atomic_write(path, "w") as handle:
    json.dump(payload, handle)

