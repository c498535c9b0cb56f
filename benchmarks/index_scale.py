"""Index scale: build time, memory, query time and recall of each index type.

For N = 1e5, 1e6, 1e7 random unit 40-d descriptors, grouped as 1000 per
database image and added image by image through delf_ret.index.LocalFeatureIndex
(the way build_index adds them), it measures for "flat" (exact, the baseline of
the same run), "ivfpq" and "hnsw":
  * build seconds (IVF-PQ: training on a sample included);
  * bytes per descriptor of the serialised index (faiss.serialize_index, id
    map included);
  * median milliseconds of one search of a 1000-descriptor query, k = 10;
  * recall@1 / recall@10: fraction of query descriptors whose true nearest
    neighbour (exact search) is the first hit / among the 10 hits.
The query is a noisy copy (cosine ~0.9) of the 1000 descriptors of one
database image, as the features of a matching photo would be. Uniform random
descriptors are the hardest case for approximate indexes.

IVF-PQ is measured at nprobe 16 and 64, HNSW at ef_search 64 and 128 (one
build each). Queries repeat up to --repeats times (fewer once 30 s were spent).

Usage: python benchmarks/index_scale.py [--sizes 100000,1000000,10000000]
           [--types flat,ivfpq,hnsw] [--max_hnsw 1000000]
           [--output benchmarks/results/index_scale.json]
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import time

import faiss
import numpy as np
from results_io import write_result

REPO = pathlib.Path(__file__).resolve().parents[1]
DIM, PER_IMAGE, K = 40, 1000, 10


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
  rows = rng.standard_normal((n, DIM), dtype=np.float32)
  rows /= np.linalg.norm(rows, axis=1, keepdims=True)
  return rows


def ivfpq_nlist(n: int) -> int:
  """IVF lists: a power of two near sqrt(N) (faiss' guideline range 1-16 sqrt(N))."""
  return int(2 ** round(np.log2(np.sqrt(n))))


def params_for(index_type: str, n: int):
  from delf_ret.index import IndexParams
  if index_type == "ivfpq":
    return IndexParams("ivfpq", nlist=ivfpq_nlist(n), pq_m=20, pq_nbits=8, nprobe=16)
  if index_type == "hnsw":
    return IndexParams("hnsw", hnsw_m=32, ef_search=64)
  return IndexParams("flat")


def timed_search(index, query, max_repeats: int) -> tuple[np.ndarray, np.ndarray, float]:
  """Median ms of up to max_repeats searches (fewer once 30 s were spent); the hits."""
  times = []
  while len(times) < max_repeats and (not times or sum(times) < 30.0):
    start = time.perf_counter()
    slots, keypoints, _ = index.search(query, K)
    times.append(time.perf_counter() - start)
  return slots, keypoints, 1000 * float(np.median(times))


SEARCH_VARIANTS = {"flat": [{}], "ivfpq": [{"nprobe": 16}, {"nprobe": 64}],
                   "hnsw": [{"ef_search": 64}, {"ef_search": 128}]}


def measure(index_type: str, database: np.ndarray, query: np.ndarray, true_nn: np.ndarray,
            repeats: int) -> list[dict]:
  """One build, then one result row per search setting of SEARCH_VARIANTS."""
  import dataclasses

  from delf_ret.index import LocalFeatureIndex
  n = database.shape[0]
  params = params_for(index_type, n)
  start = time.perf_counter()
  index = LocalFeatureIndex(DIM, params)
  if index.needs_training:
    sample_size = min(n, 64 * params.nlist)
    sample = database[np.random.default_rng(1).choice(n, sample_size, replace=False)]
    index.train(sample)
  for image in range(n // PER_IMAGE):
    index.add(f"img{image:06d}", database[image * PER_IMAGE:(image + 1) * PER_IMAGE])
  build_s = time.perf_counter() - start
  serialized_bytes = int(faiss.serialize_index(index.index).size)
  rows = []
  for variant in SEARCH_VARIANTS[index_type]:
    index.params = dataclasses.replace(params, **variant)
    slots, keypoints, query_ms = timed_search(index, query, repeats)
    found = slots * PER_IMAGE + keypoints  # Database row of each hit.
    found[slots < 0] = -1
    rows.append({
        "index_type": index_type, "num_descriptors": n,
        "params": dataclasses.asdict(index.params), "build_s": round(build_s, 2),
        "bytes_per_descriptor": round(serialized_bytes / n, 1),
        "index_mb": round(serialized_bytes / 2**20, 1), "query_ms": round(query_ms, 1),
        "recall_at_1": round(float((found[:, 0] == true_nn).mean()), 4),
        "recall_at_10": round(float((found == true_nn[:, None]).any(axis=1).mean()), 4)})
  del index
  return rows


def exact_nearest(database: np.ndarray, query: np.ndarray) -> np.ndarray:
  """Row of each query's nearest database descriptor (unit vectors: largest dot product)."""
  best = np.full(query.shape[0], -np.inf, np.float32)
  best_row = np.zeros(query.shape[0], np.int64)
  for start in range(0, database.shape[0], 1_000_000):
    scores = query @ database[start:start + 1_000_000].T
    arg = scores.argmax(axis=1)
    value = scores[np.arange(query.shape[0]), arg]
    better = value > best
    best[better], best_row[better] = value[better], arg[better] + start
  return best_row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="100000,1000000,10000000")
  parser.add_argument("--types", default="flat,ivfpq,hnsw")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--max_hnsw", type=int, default=1_000_000,
                      help="largest N for which the HNSW index is built")
  parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "index_scale.json"))
  args = parser.parse_args()
  types = args.types.split(",")
  rows, skipped = [], []
  for n in (int(float(s)) for s in args.sizes.split(",")):
    rng = np.random.default_rng(0)
    database = unit_rows(rng, n)
    source = database[:PER_IMAGE]
    query = source + 0.5 * unit_rows(rng, PER_IMAGE)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    true_nn = exact_nearest(database, query)
    baseline = None
    for index_type in types:
      if index_type == "hnsw" and n > args.max_hnsw:
        skipped.append({"index_type": "hnsw", "num_descriptors": n, "reason": (
            f"not built: above --max_hnsw {args.max_hnsw}; at 440 bytes per descriptor it "
            f"needs {440 * n / 2**30:.1f} GiB, over the 1 GB aim, and its build time grows "
            f"faster than linearly (see the 1e6 row)")})
        continue
      print(f"N={n:,} {index_type} ...", flush=True)
      for result in measure(index_type, database, query, true_nn, args.repeats):
        if index_type == "flat":
          baseline = result
        if baseline is not None:
          result["query_speedup_vs_flat"] = round(baseline["query_ms"] / result["query_ms"], 2)
          result["memory_ratio_vs_flat"] = round(
              result["bytes_per_descriptor"] / baseline["bytes_per_descriptor"], 3)
        print(f"  {result}", flush=True)
        rows.append(result)
      write_result(args.output, {
          "benchmark": "index_scale", "dim": DIM, "descriptors_per_image": PER_IMAGE,
          "k": K, "query_descriptors": PER_IMAGE, "faiss_threads": faiss.omp_get_max_threads(),
          "faiss_version": faiss.__version__, "machine": platform.processor() or platform.machine(),
          "results": rows, "skipped": skipped})
    del database


if __name__ == "__main__":
  main()
