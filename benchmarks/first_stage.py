"""The three first stages (votes, ASMK* / ASMK, global) side by side, one run.

Every method goes through the same code: the shipped default model's features
(delf_ret/default_model with its packaged config; every database image extracted
once, with its global descriptor, into one feature folder shared by the stages)
-> the first stage of ``retrieval_config.first_stage`` built by
delf_ret.retrieval.indexing.index_first_stage -> run_benchmark (ranked list,
RANSAC reranking of the top ``rerank_top_n``, the same metrics code, Revisited
junk handling) -> mAP of the first stage and after reranking.

Methods (retrieval_config otherwise the packaged one):
  * votes: DELF's k-NN descriptor votes (first_stage "votes", the flat index);
  * asmk_star: ASMK* (first_stage "asmk", asmk_binary true, the proto defaults:
    codebook size by rule, alpha 3, threshold 0, 5 query assignments);
  * asmk: real-valued ASMK (asmk_binary false, else the same);
  * global: first_stage "global" on GeM (p = 3) of the shipped default model's
    conv4 map at the image scales 0.7071 and 1.0 (delf_global_config.image_scales_ind
    [3, 4], the DELG rule within the model's pyramid), summed and L2-normalised; not
    a trained DELG head. PCA-whitening is learned on the database only when it has at
    least 2 images per dimension (first_stage.whitening_rule): never on these sets.
Datasets (the default-model benchmark's construction, benchmarks/default_model.py):
  * demo: the bundled photos (delf_ret/demo_data/labels.csv);
  * mini_landmarks: ../shared/data/labels.csv, hard positives of
    benchmarks/mini_landmarks_hard.txt (Revisited easy / medium / hard);
  * ukbench: ../shared/data/ukbench (each image a query; reranking does not skip the
    query's own copy, as in default_model.py).
Figures: mAP per split of the first stage and after reranking; mean seconds per
query of each stage as run_benchmark reports them (extraction: 0 for queries whose
features were already computed as database images; search; loading; matching;
ransac); index build seconds; bytes per image of each first stage (its files on
disk: the votes index folder, ``asmk/``, ``global/``; the ``.delf`` files read for
reranking are the same for all and counted apart).

Optional small-database part (``--thousand_images 1000``): a query against a synthetic
database of demo-photo features with noise through the whole pipeline (index_first_stage
with its packed feature store, then retrieve: first stage + RANSAC reranking of the top
rerank_top_n), for votes, ASMK* and global: median seconds per query by stage.

Optional scale part (``--scale_sizes 100000,1000000``): synthetic databases for ASMK* and
global, descriptors drawn from the dev part's real ones with noise (run_scale): index bytes,
RSS after build and peak RSS (a fresh process per first stage and size), ms per query
(median of 20). ASMK* aggregation (1000 descriptors per image against the codebook) is far
too slow here for a million images, so it is measured on a pool of synthetic images and the
database is drawn from the pool's aggregated vectors (words resampled, bits flipped) and
added with AsmkIndex.add_aggregated: build seconds = measured aggregation rate x images +
measured insertion. Votes is not built at these sizes; its bytes are stated.

Results go to benchmarks/results/first_stage.json; the table in docs/benchmarks.md
(between the first_stage markers) is rendered from it (``--render_only`` re-renders
it without running anything).

Usage: python benchmarks/first_stage.py [--datasets demo,mini_landmarks,ukbench]
           [--budget_s 1200] [--thousand_images 1000] [--scale_sizes 100000,1000000]
           [--scale_only] [--render_only]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import time
from typing import Any

import numpy as np
from default_model import HARD_FILE
from default_model import SHARED
from default_model import ukbench_labels
from default_model import ukbench_score
from results_io import render_between
from results_io import write_result

from delf_ret.provenance import environment

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "first_stage.json"
DOC = REPO / "docs" / "benchmarks.md"
START, END = "<!-- first_stage: start -->", "<!-- first_stage: end -->"
README = REPO / "README.md"  # Its summary table: render_summary.
SUMMARY_START, SUMMARY_END = (
  "<!-- first_stage summary: start -->",
  "<!-- first_stage summary: end -->",
)
DATASETS = ("demo", "mini_landmarks", "ukbench")
METHODS = ("votes", "asmk_star", "asmk", "global")
LABELS = {"votes": "votes", "asmk_star": "ASMK*", "asmk": "ASMK", "global": "global (GeM conv4)"}
OVERRIDES = {
  "votes": ["retrieval_config.first_stage=votes"],
  "asmk_star": ["retrieval_config.first_stage=asmk", "retrieval_config.asmk_binary=true"],
  "asmk": ["retrieval_config.first_stage=asmk", "retrieval_config.asmk_binary=false"],
  "global": ["retrieval_config.first_stage=global"],
}
GLOBAL_OVERRIDES = [
  "use_global_features=true",
  "delf_global_config.use_pca=false",
  "delf_global_config.image_scales_ind=3,4",
]
STAGE_KEYS = ("extraction", "search", "loading", "matching", "ransac", "total")


def folder_bytes(path: pathlib.Path, skip: str = "features") -> int:
  """Bytes of the files under ``path``, leaving out its ``skip`` subfolder (the packed
  feature store beside an index, counted apart)."""
  return sum(
    p.stat().st_size
    for p in path.rglob("*")
    if p.is_file() and skip not in p.relative_to(path).parts[:1]
  )


def dataset_facts(name: str, work: pathlib.Path):
  """(labels.csv, hard positives, also the original protocol, skip junk in reranking)."""
  if name == "demo":
    return REPO / "delf_ret" / "demo_data" / "labels.csv", frozenset(), False, True
  if name == "mini_landmarks":
    hard = frozenset(
      line.split("#")[0].strip()
      for line in HARD_FILE.read_text().splitlines()
      if line.split("#")[0].strip()
    )
    return SHARED / "labels.csv", hard, True, True
  return ukbench_labels(work), frozenset(), False, False


def run_dataset(name: str, base_config, extractor, work: pathlib.Path, methods) -> dict:
  """Every method on one dataset; the database is extracted once (local + global)."""
  from delf_ret import config as config_lib
  from delf_ret.datasets.labelled import write_labelled_benchmark
  from delf_ret.evaluation.ground_truth import read_original_gt
  from delf_ret.evaluation.ground_truth import read_revisited_gnd
  from delf_ret.extract.global_features import GlobalExtraction
  from delf_ret.features import feature_loader
  from delf_ret.features import global_file_name
  from delf_ret.features import image_id_of
  from delf_ret.features import read_global_descriptor
  from delf_ret.images import load_image
  from delf_ret.retrieval.benchmark import run_benchmark
  from delf_ret.retrieval.demo import ContentCache
  from delf_ret.retrieval.indexing import database_image_paths
  from delf_ret.retrieval.indexing import index_first_stage

  labels, hard, also_original, skip_junk = dataset_facts(name, work)
  paths = write_labelled_benchmark(labels, work / "dataset", name=name, hard_images=hard)
  revisited = read_revisited_gnd(paths["gnd_path"], paths["images_dir"])
  others = [read_original_gt(paths["gt_dir"], paths["images_dir"], name)] if also_original else []
  images = database_image_paths(revisited)
  features_dir = work / "features"
  print(f"{name}: extracting {len(images)} images (local + global) ...", flush=True)
  start = time.perf_counter()
  global_config = config_lib.DelfConfig()
  global_config.CopyFrom(base_config)
  config_lib.apply_overrides(global_config, OVERRIDES["global"])
  global_config.retrieval_config.rerank_skip_junk = skip_junk
  first = index_first_stage(
    work / "global" / "index",
    features_dir,
    global_config,
    images=images,
    extract=extractor,
    log=lambda line: None,
  )
  assert not first.failures, first.failures
  extraction_seconds = time.perf_counter() - start
  # The queries are whole database photos: they reuse the database features.
  cache = ContentCache(GlobalExtraction(extractor).extract_with_global)
  load = feature_loader(features_dir)
  for path in images:
    image_id = image_id_of(path)
    cache.add(
      load_image(path),
      (load(image_id), read_global_descriptor(features_dir / global_file_name(image_id))),
    )
  delf_bytes = sum((features_dir / f"{image_id_of(p)}.delf").stat().st_size for p in images)
  row: dict[str, Any] = {
    "queries": len(revisited.qimlist),
    "database_images": len(revisited.imlist),
    "extraction_seconds_per_image": round(extraction_seconds / len(images), 2),
    "delf_bytes_per_image": round(delf_bytes / len(images)),
    "methods": {},
  }
  for method in methods:
    print(f"{name}: {method} ...", flush=True)
    config = config_lib.DelfConfig()
    config.CopyFrom(global_config)
    config_lib.apply_overrides(config, OVERRIDES[method])
    index_dir = work / method / "index"
    if method == "global":
      indexed = first
    else:
      indexed = index_first_stage(
        index_dir,
        features_dir,
        config,
        feature_paths=first.feature_paths,
        log=lambda line: None,
      )
      assert not indexed.failures, indexed.failures
    stage = indexed.stage
    start = time.perf_counter()
    run = run_benchmark(
      config,
      revisited,
      stage,
      features_dir,
      work / method / "run",
      extract=cache,
      also_score=others,
      log=lambda line: None,
    )
    wall = (time.perf_counter() - start) / max(1, len(revisited.qimlist))
    stage_dir = {"votes": index_dir, "asmk_star": index_dir / "asmk", "asmk": index_dir / "asmk"}
    stage_dir["global"] = work / "global" / "index" / "global"
    entry = {
      "mAP": {
        stage_name: {
          split: (round(100 * m.mean_ap, 2) if np.isfinite(m.mean_ap) else None)
          for split, m in splits.items()
        }
        for stage_name, splits in run.metrics.items()
      },
      "seconds_per_query": {k: round(v, 4) for k, v in run.stage_seconds.items()},
      "wall_seconds_per_query": round(wall, 3),
      "build_seconds": round(indexed.seconds.get("index", 0.0), 2),
      "bytes_per_image": round(folder_bytes(stage_dir[method]) / len(revisited.imlist)),
      "feature_store_bytes_per_image": round(
        folder_bytes(
          stage_dir[method].parent / "features" if method != "votes" else index_dir / "features",
          skip="",
        )
        / len(revisited.imlist)
      ),
    }
    if method.startswith("asmk"):
      entry["codebook_words"] = int(getattr(stage, "asmk").codebook().shape[0])
    if method == "global":
      entry["whitened"] = getattr(stage, "whitening") is not None
      entry["descriptor_dim"] = int(
        read_global_descriptor(features_dir / global_file_name(image_id_of(images[0]))).shape[0]
      )
    if name == "ukbench":
      entry["ukbench_score"] = {
        s: round(ukbench_score(revisited, run.results, a), 3)
        for s, a in (("first_stage", "ranked"), ("reranked", "reranked"))
      }
    row["methods"][method] = entry
    print(f"{name}: {method}: {json.dumps(entry)}", flush=True)
  return row


def rss_mb() -> float:
  """Resident set size of this process now, MB (/proc/self/status VmRSS)."""
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmRSS:"):
      return int(line.split()[1]) / 1024
  return float("nan")


def peak_rss_mb() -> float:
  """Peak resident set size of this process so far, MB (getrusage ru_maxrss)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available_mb() -> float:
  """Memory the machine can still give, MB (/proc/meminfo MemAvailable)."""
  for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
    if line.startswith("MemAvailable:"):
      return int(line.split()[1]) / 1024
  return float("inf")


# Synthetic scale databases (see run_scale).
SCALE_NOISE = 0.05  # Gaussian noise per descriptor dimension (then L2-normalised).
WORD_RESAMPLE = 0.1  # Share of a synthetic image's aggregated entries moved to another word.
BIT_FLIP = 0.05  # Probability of each sign bit of an aggregated vector flipping.
SCALE_QUERIES = 20
# The ASMK* database is added in 4 batches, each filed into one inverted-file segment by a
# search (AsmkIndex keeps at most 4 segments before merging them all, which at 1,000,000
# images needs more memory than this machine has). Filing a batch peaks at about
# FILING_BYTES_PER_ENTRY bytes per entry of it (its pending vectors included; measured at
# 100,000 images) above what is already held, so later batches are smaller.
BATCH_SHARES = (0.337, 0.271, 0.218, 0.174)
FILING_BYTES_PER_ENTRY = 52
SAVE_MAX_ENTRIES = 200_000_000  # Larger ASMK* scale indexes are not saved (see scale_asmk).


def real_scale_sources(work: pathlib.Path, sources: list[str]):
  """The real local descriptors (a list of float32 [n, D], one per image) and global
  descriptors (float32 [I, G]) of the ``sources`` datasets' database features."""
  from delf_ret.features import read_features
  from delf_ret.features import read_global_descriptor

  local, global_ = [], []
  for name in sources:
    folder = work / name / "features"
    for path in sorted(folder.glob("*.delf")):
      local.append(read_features(path).descriptors.astype(np.float32))
      global_.append(read_global_descriptor(path.with_suffix(".delg_global")))
  if not local:
    raise SystemExit(
      f"no .delf files under {work}/{{{','.join(sources)}}}/features: run the dev-set part first"
    )
  return local, np.stack(global_).astype(np.float32)


def noisy(rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
  """``rows`` float32 [n, D] plus Gaussian noise (SCALE_NOISE per dimension), L2-normalised."""
  out = rows + rng.normal(0, SCALE_NOISE, rows.shape).astype(np.float32)
  return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def synthetic_image(rng: np.random.Generator, local: list[np.ndarray], per_image: int):
  """One synthetic image's descriptors [per_image, D]: a random real image's descriptors
  (drawn without replacement when it has enough) with noise."""
  real = local[int(rng.integers(len(local)))]
  rows = rng.choice(real.shape[0], per_image, replace=real.shape[0] < per_image)
  return noisy(rng, real[rows])


def scale_pool(work: pathlib.Path, local, per_image: int, pool_images: int, words: int) -> dict:
  """The ASMK* codebook of ``words`` words and the aggregated vectors of ``pool_images``
  synthetic images, aggregated by AsmkIndex.aggregate and timed (saved to
  ``work/pool.npz``); returns the timing record."""
  from delf_ret.index.asmk import MAX_POINTS_PER_WORD
  from delf_ret.index.asmk import AsmkIndex
  from delf_ret.index.asmk import AsmkParams

  rng = np.random.default_rng(1)
  dim = local[0].shape[1]
  # The codebook: faiss k-means' initialisation (a random sample of the database's
  # descriptors), without its iterations (see the timing record).
  sample = noisy(rng, np.concatenate(local)[rng.integers(0, sum(map(len, local)), words)])
  asmk = AsmkIndex(dim, AsmkParams(codebook_size=words))
  asmk.set_codebook(sample)
  pool_words, pool_vectors, lengths = [], [], []
  seconds = 0.0
  for i in range(pool_images):
    descriptors = synthetic_image(rng, local, per_image)
    start = time.perf_counter()
    w, v = asmk.aggregate(descriptors, query=False)
    seconds += time.perf_counter() - start
    pool_words.append(w.astype(np.int32))
    pool_vectors.append(v)
    lengths.append(len(w))
    if i % 100 == 0:
      print(f"scale pool: aggregated {i}/{pool_images} ({seconds:.0f} s)", flush=True)
  work.mkdir(parents=True, exist_ok=True)
  np.savez(
    work / "pool.npz",
    codebook=asmk.codebook(),
    words=np.concatenate(pool_words),
    vectors=np.concatenate(pool_vectors),
    lengths=np.array(lengths, np.int64),
  )
  per_descriptor = seconds / (pool_images * per_image)
  return {
    "images": pool_images,
    "seconds_per_image": round(seconds / pool_images, 4),
    "words_per_image_mean": round(float(np.mean(lengths)), 1),
    "kmeans_iteration_seconds_estimate": round(per_descriptor * MAX_POINTS_PER_WORD * words),
  }


def asmk_batches(rng: np.random.Generator, pool: dict, count: int, block: int = 5000):
  """Synthetic images' aggregated entries, ``block`` images at a time: each a random pool
  image's (words int32, packed sign bits), WORD_RESAMPLE of its entries moved to a word drawn
  from the pool's entries (so word frequencies stay the pool's; a word the image already has
  is dropped), each bit flipped with probability BIT_FLIP. Yields (lengths, words, vectors)
  of the block, image by image."""
  words, vectors, lengths = pool["words"], pool["vectors"], pool["lengths"]
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  flips = np.packbits(rng.random((1 << 16, 8 * vectors.shape[1])) < BIT_FLIP, axis=1)
  for first in range(0, count, block):
    n = min(block, count - first)
    source = rng.integers(0, len(lengths), n)
    counts = lengths[source]
    rows = np.repeat(starts[source] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    image = np.repeat(np.arange(n, dtype=np.int64), counts)
    w = words[rows].astype(np.int64)
    moved = rng.random(len(w)) < WORD_RESAMPLE
    w[moved] = words[rng.integers(0, len(words), int(moved.sum()))]
    v = vectors[rows] ^ flips[rng.integers(0, len(flips), len(rows))]
    keys, keep = np.unique(image * (1 << 32) + w, return_index=True)
    yield (
      np.bincount(keys >> 32, minlength=n),
      (keys & 0xFFFFFFFF).astype(np.int32),
      v[keep],
    )


def scale_asmk(work: pathlib.Path, local, num_images: int, per_image: int) -> dict:
  """ASMK* on ``num_images`` synthetic images added by AsmkIndex.add_aggregated (see
  asmk_batches), in the BATCH_SHARES batches; figures of this process."""
  from delf_ret.index.asmk import AsmkIndex
  from delf_ret.index.asmk import AsmkParams

  base = rss_mb()
  with np.load(work / "pool.npz") as stored:
    pool = {k: stored[k] for k in stored.files}
  codebook = pool.pop("codebook")
  asmk = AsmkIndex(codebook.shape[1], AsmkParams(codebook_size=codebook.shape[0]))
  asmk.set_codebook(codebook)
  rng = np.random.default_rng(2)
  probe = noisy(rng, local[0][:1])
  sizes = [int(round(share * num_images)) for share in BATCH_SHARES]
  sizes[-1] = num_images - sum(sizes[:-1])
  added = entries = 0
  insert_seconds = generate_seconds = filing_seconds = 0.0
  stopped = None
  for batch, size in enumerate(sizes):
    start = time.perf_counter()
    batch_entries = 0
    for lengths, words, vectors in asmk_batches(rng, pool, size):
      generate_seconds += time.perf_counter() - start
      start = time.perf_counter()
      ends = np.cumsum(lengths).tolist()
      begin = 0
      for i, end in enumerate(ends):
        asmk.add_aggregated(f"img{added + i:07d}", words[begin:end], vectors[begin:end])
        begin = end
      added += len(ends)
      batch_entries += ends[-1]
      insert_seconds += time.perf_counter() - start
      start = time.perf_counter()
    entries += batch_entries
    need = (FILING_BYTES_PER_ENTRY - 9) * batch_entries / 2**20 + 1024  # Beyond the pending.
    if available_mb() < need:
      stopped = f"batch {batch + 1}: {available_mb():.0f} MB available, filing needs ~{need:.0f}"
      break
    start = time.perf_counter()
    asmk.search_images(probe, 1)  # Files the batch into a segment.
    filing_seconds += time.perf_counter() - start
    print(
      f"scale asmk* {num_images}: {added} images, {entries} entries, RSS {rss_mb():.0f} MB, "
      f"peak {peak_rss_mb():.0f} MB",
      flush=True,
    )
  steady = rss_mb()
  totals, aggregation = [], []
  for _ in range(SCALE_QUERIES):
    query = synthetic_image(rng, local, per_image)
    start = time.perf_counter()
    asmk.aggregate(query, query=True)
    aggregation.append(time.perf_counter() - start)
    start = time.perf_counter()
    asmk.search_images(query, 100)
    totals.append(time.perf_counter() - start)
  words = codebook.shape[0]
  index_bytes = entries * (4 + -(-codebook.shape[1] // 8)) + 8 * (words + 1) + codebook.nbytes
  index_bytes += 8 * added
  saved: dict = {"build_peak_rss_mb": round(peak_rss_mb())}
  # Saving merges the 4 segments into one in memory: done where it fits (SAVE_MAX_ENTRIES).
  if entries <= SAVE_MAX_ENTRIES:
    folder = work / f"asmk_saved_{num_images}"
    shutil.rmtree(folder, ignore_errors=True)
    before = peak_rss_mb()
    start = time.perf_counter()
    asmk.save(folder)
    saved = {
      "save_seconds": round(time.perf_counter() - start, 1),
      "saved_bytes": folder_bytes(folder, skip=""),
      "save_peak_rss_mb": round(peak_rss_mb()),
      # Above the RSS after build, per entry (when the save set the peak).
      "save_peak_bytes_per_entry": round((peak_rss_mb() - steady) * 2**20 / entries, 1),
      "save_set_peak": peak_rss_mb() > before,
    }
    shutil.rmtree(folder, ignore_errors=True)
  return {
    **saved,
    "images": added,
    "stopped": stopped,
    "entries": entries,
    "entries_per_image": round(entries / max(1, added), 1),
    "insert_seconds": round(insert_seconds + filing_seconds, 1),
    "filing_seconds": round(filing_seconds, 1),
    "synthesis_seconds": round(generate_seconds, 1),
    "index_bytes": int(index_bytes),
    "rss_mb": round(steady),
    "rss_growth_mb": round(steady - base),
    "peak_rss_mb": round(peak_rss_mb()),
    "ms_per_query_median": round(1000 * float(np.median(totals)), 1),
    "query_aggregation_ms_median": round(1000 * float(np.median(aggregation)), 1),
  }


def scale_global(local_global: np.ndarray, num_images: int) -> dict:
  """Global descriptors of ``num_images`` synthetic images (real ones with noise) in a
  GlobalDescriptorIndex (add_many, 10,000 at a time); figures of this process."""
  from delf_ret.index.global_index import GlobalDescriptorIndex

  base = rss_mb()
  rng = np.random.default_rng(3)
  dim = local_global.shape[1]
  table = GlobalDescriptorIndex(dim)
  seconds = 0.0
  chunk = 10000
  for first in range(0, num_images, chunk):
    n = min(chunk, num_images - first)
    rows = noisy(rng, local_global[rng.integers(0, len(local_global), n)])
    ids = [f"img{i:07d}" for i in range(first, first + n)]
    start = time.perf_counter()
    table.add_many(ids, rows)
    seconds += time.perf_counter() - start
  steady = rss_mb()
  times = []
  for _ in range(SCALE_QUERIES):
    query = noisy(rng, local_global[rng.integers(0, len(local_global), 1)])[0]
    start = time.perf_counter()
    table.search_images(query, 100)
    times.append(time.perf_counter() - start)
  return {
    "images": num_images,
    "dim": dim,
    "build_seconds": round(seconds, 1),
    "index_bytes": (4 * dim + 8) * num_images,
    "rss_mb": round(steady),
    "rss_growth_mb": round(steady - base),
    "peak_rss_mb": round(peak_rss_mb()),
    "ms_per_query_median": round(1000 * float(np.median(times)), 2),
  }


def votes_estimate(num_images: int, per_image: int, dim: int) -> dict:
  """Bytes the votes index would hold (not built): flat float32 descriptors plus a faiss id
  each, or IVF-PQ codes of the packaged pq_m / pq_nbits plus the id."""
  from delf_ret.protos.delf_config_pb2 import DelfRetrievalConfig

  config = DelfRetrievalConfig()
  descriptors = num_images * per_image
  return {
    "descriptors": descriptors,
    "flat_bytes": descriptors * (4 * dim + 8),
    "ivfpq_bytes": descriptors * (config.pq_m * config.pq_nbits // 8 + 8),
    "ivfpq": f"pq_m {config.pq_m}, pq_nbits {config.pq_nbits}, 8-byte faiss ids",
  }


def run_scale(args, work_dir: pathlib.Path) -> dict:
  """The scale part: each (first stage, size) measured in a fresh child process (its own
  peak RSS), ASMK* from a pool of aggregated synthetic images (see the module docstring)."""
  import subprocess
  import sys

  from delf_ret.index.asmk import codebook_size_for

  sizes = [int(s) for s in args.scale_sizes.split(",") if s]
  sources = [s for s in args.scale_source.split(",") if s]
  work = work_dir / "scale"
  local, real_global = real_scale_sources(work_dir, sources)
  words = args.scale_codebook or codebook_size_for(max(sizes) * args.scale_per_image)
  result: dict = {
    "descriptors_per_image": args.scale_per_image,
    "descriptor_source": f"{', '.join(sources)} database features ({len(local)} images)",
    "synthesis": (
      f"each synthetic image: a random real image's {args.scale_per_image} descriptors with "
      f"Gaussian noise (sigma {SCALE_NOISE} per dimension, renormalised); ASMK* database "
      f"images: a random pool image's aggregated vectors, {WORD_RESAMPLE:.0%} of its entries "
      f"moved to words drawn from the pool's entries, each sign bit flipped with probability "
      f"{BIT_FLIP}; global: a random real global descriptor with the same noise"
    ),
    "codebook_words": words,
    "asmk_batch_shares": list(BATCH_SHARES),
    "codebook_words_by_rule": {str(n): codebook_size_for(n * args.scale_per_image) for n in sizes},
  }
  start = time.perf_counter()
  result["aggregation"] = scale_pool(work, local, args.scale_per_image, args.scale_pool, words)
  print(f"scale pool: {result['aggregation']} ({time.perf_counter() - start:.0f} s)", flush=True)
  result["sizes"] = {}
  for n in sizes:
    row: dict = {}
    for part in ("global", "asmk_star"):
      out = work / f"{part}_{n}.json"
      command = [
        sys.executable,
        __file__,
        "--scale_child",
        f"{part}:{n}",
        "--work_dir",
        str(work_dir),
        "--scale_source",
        args.scale_source,
        "--scale_per_image",
        str(args.scale_per_image),
      ]
      subprocess.run(command, check=True)
      row[part] = json.loads(out.read_text())
      print(f"scale {part} {n}: {row[part]}", flush=True)
    a = row["asmk_star"]
    a["aggregation_seconds_estimate"] = round(result["aggregation"]["seconds_per_image"] * n)
    a["build_seconds_estimate"] = a["aggregation_seconds_estimate"] + round(a["insert_seconds"])
    row["votes"] = votes_estimate(n, args.scale_per_image, local[0].shape[1])
    result["sizes"][str(n)] = row
  return result


def scale_child(args) -> None:
  """One (first stage, size) of the scale part, in this process; writes its JSON."""
  part, size = args.scale_child.split(":")
  work_dir = pathlib.Path(args.work_dir)
  local, real_global = real_scale_sources(work_dir, args.scale_source.split(","))
  if part == "global":
    figures = scale_global(real_global, int(size))
  else:
    figures = scale_asmk(work_dir / "scale", local, int(size), args.scale_per_image)
  (work_dir / "scale" / f"{part}_{size}.json").write_text(json.dumps(figures))


THOUSAND_METHODS = ("votes", "asmk_star", "global")
THOUSAND_STAGES = ("search", "loading", "matching", "ransac")


def run_thousand(args, work_dir: pathlib.Path) -> dict:
  """A query against a synthetic database of ``args.thousand_images`` images through the
  real pipeline (index_first_stage with its packed feature store, retrieve: first stage and
  RANSAC reranking of the top rerank_top_n), for votes, ASMK* and global; after extraction.

  Each database image: a demo photo's features (the dev part's ``demo/features``, shipped
  default model) with SCALE_NOISE on its descriptors and global descriptor and 1 px of noise
  on its keypoints; each query likewise from a random demo photo."""
  from delf_ret import config as config_lib
  from delf_ret.default_model import CONFIG_FILE
  from delf_ret.default_model import default_model_dir
  from delf_ret.features import LocalFeatures
  from delf_ret.features import read_features
  from delf_ret.features import read_global_descriptor
  from delf_ret.features import write_features
  from delf_ret.features import write_global_descriptor
  from delf_ret.retrieval import retrieve
  from delf_ret.retrieval.indexing import database_feature_loader
  from delf_ret.retrieval.indexing import index_first_stage

  rng = np.random.default_rng(4)
  source = work_dir / "demo" / "features"
  photos = [
    (read_features(path), read_global_descriptor(path.with_suffix(".delg_global")))
    for path in sorted(source.glob("*.delf"))
  ]
  if not photos:
    raise SystemExit(f"no .delf files in {source}: run the dev-set part (demo) first")

  def synthetic(features, global_descriptor):
    return (
      LocalFeatures(
        features.locations + rng.normal(0, 1.0, features.locations.shape).astype(np.float32),
        features.scales,
        noisy(rng, features.descriptors),
        features.attention,
        features.orientations,
      ),
      noisy(rng, global_descriptor[None])[0],
    )

  work = work_dir / "thousand"
  shutil.rmtree(work, ignore_errors=True)
  features_dir = work / "features"
  features_dir.mkdir(parents=True)
  paths = []
  for i in range(args.thousand_images):
    features, global_descriptor = synthetic(*photos[i % len(photos)])
    path = features_dir / f"syn{i:05d}.delf"
    write_features(path, features)
    write_global_descriptor(path.with_suffix(".delg_global"), global_descriptor)
    paths.append(path)
  model_dir = pathlib.Path(default_model_dir())
  base = config_lib.load_config(model_dir / CONFIG_FILE, GLOBAL_OVERRIDES)
  result: dict = {
    "images": args.thousand_images,
    "queries": args.thousand_queries,
    "features_per_image": int(np.mean([len(f.descriptors) for f, _ in photos])),
    "asmk_kmeans_iterations": args.thousand_kmeans_iterations,
    "methods": {},
  }
  for method in THOUSAND_METHODS:
    config = config_lib.DelfConfig()
    config.CopyFrom(base)
    config_lib.apply_overrides(
      config,
      OVERRIDES[method]
      + [f"retrieval_config.asmk_kmeans_iterations={args.thousand_kmeans_iterations}"],
    )
    index_dir = work / method / "index"
    start = time.perf_counter()
    indexed = index_first_stage(
      index_dir, features_dir, config, feature_paths=paths, log=lambda line: None
    )
    build = time.perf_counter() - start
    assert not indexed.failures, indexed.failures
    load = database_feature_loader(index_dir, features_dir, log=print)
    stages: dict[str, list[float]] = {k: [] for k in (*THOUSAND_STAGES, "total")}
    for _ in range(args.thousand_queries):
      query, global_descriptor = synthetic(*photos[int(rng.integers(len(photos)))])
      start = time.perf_counter()
      run = retrieve(
        query, indexed.stage, load, config.retrieval_config, global_descriptor=global_descriptor
      )
      stages["total"].append(time.perf_counter() - start)
      for key in THOUSAND_STAGES:
        stages[key].append(run.seconds.get(key, 0.0))
    entry = {
      "build_seconds": round(build, 1),
      "ranked_images_last_query": len(run.ranked),
      "seconds_per_query_median": {k: round(float(np.median(v)), 4) for k, v in stages.items()},
    }
    if method == "asmk_star":
      entry["codebook_words"] = int(getattr(indexed.stage, "asmk").codebook().shape[0])
    result["methods"][method] = entry
    print(f"thousand {method}: {entry}", flush=True)
  result["rerank_top_n"] = base.retrieval_config.rerank_top_n
  result["votes_index_type"] = base.retrieval_config.index_type
  result["retrieval"] = thousand_settings(base.retrieval_config)
  return result


def thousand_settings(retrieval_config) -> dict:
  """The packaged matching and verification settings a small-database run used."""
  return {
    name: getattr(retrieval_config, name)
    for name in (
      "match_ratio_threshold",
      "match_mutual",
      "ransac_method",
      "ransac_transform",
      "min_inliers",
      "rerank_min_inliers",
    )
    if hasattr(retrieval_config, name)
  }


def render_summary(result: dict) -> str:
  """The README's short table: medium mAP on mini_landmarks and UKBench mAP (first stage /
  reranked), bytes per image, a query against 1,000 images and the 1,000,000-image run."""
  datasets, thousand = result["datasets"], result.get("thousand", {}).get("methods", {})
  big = result.get("scale", {}).get("sizes", {}).get("1000000", {})

  def maps(name: str, method: str, split: str) -> str:
    entry = datasets.get(name, {}).get("methods", {}).get(method)
    if entry is None:
      return "-"
    return " / ".join(f"{entry['mAP'][stage][split]:.1f}" for stage in ("first_stage", "reranked"))

  def million(method: str) -> str:
    entry = big.get(method)
    if method == "votes" and entry:
      return f"not built: {gb(entry['ivfpq_bytes'])} as IVF-PQ"
    if not entry:
      return "-"
    return f"{mb_gb(entry['peak_rss_mb'])} peak, {entry['ms_per_query_median']:,.0f} ms"

  lines = [
    "| first stage | mini-landmarks medium mAP | UKBench mAP | bytes / image "
    "| 1,000 images: s / query | 1,000,000 images: memory, per query |",
    "|---|---|---|---|---|---|",
  ]
  for method in METHODS:
    if not any(method in row["methods"] for row in datasets.values()):
      continue
    sizes = [
      row["methods"][method]["bytes_per_image"]
      for row in datasets.values()
      if method in row["methods"]
    ]
    seconds = thousand.get(method, {}).get("seconds_per_query_median", {}).get("total")
    lines.append(
      f"| {LABELS[method]} | {maps('mini_landmarks', method, 'medium')} "
      f"| {maps('ukbench', method, 'easy')} | {max(sizes):,} "
      f"| {'-' if seconds is None else f'{seconds:.2f}'} | {million(method)} |"
    )
  return "\n".join(lines)


def render_table(result: dict) -> str:
  lines = []
  shown = [m for m in METHODS if any(m in r["methods"] for r in result["datasets"].values())]
  lines.append("| dataset | figure | " + " | ".join(LABELS[m] for m in shown) + " |")
  lines.append("|---|---|" + "---|" * len(shown))
  for name, row in result["datasets"].items():
    ms = row["methods"]
    splits = list(next(iter(ms.values()))["mAP"]["first_stage"])
    splits = [s for s in ("easy", "medium", "hard") if s in splits] or splits[:1]
    label = f"{name} ({row['queries']} q, {row['database_images']} db)"

    def cell(m, fn):
      return fn(ms[m]) if m in ms else "-"

    for stage, text in (("first_stage", "first stage"), ("reranked", "reranked")):
      lines.append(
        f"| {label} | mAP {' / '.join(splits)}, {text} | "
        + " | ".join(
          cell(
            m,
            lambda e, st=stage: " / ".join(
              "-" if e["mAP"][st][s] is None else f"{e['mAP'][st][s]:.1f}" for s in splits
            ),
          )
          for m in shown
        )
        + " |"
      )
    if name == "ukbench":
      lines.append(
        f"| {label} | UKBench score (of 4), first stage / reranked | "
        + " | ".join(
          cell(
            m,
            lambda e: (
              f"{e['ukbench_score']['first_stage']:.2f} / {e['ukbench_score']['reranked']:.2f}"
            ),
          )
          for m in shown
        )
        + " |"
      )
    lines.append(
      f"| {label} | s / query: search / loading / matching / ransac | "
      + " | ".join(
        cell(
          m,
          lambda e: " / ".join(
            f"{e['seconds_per_query'].get(k, float('nan')):.3f}"
            for k in ("search", "loading", "matching", "ransac")
          ),
        )
        for m in shown
      )
      + " |"
    )
    lines.append(
      f"| {label} | bytes / image (first stage) | "
      + " | ".join(cell(m, lambda e: f"{e['bytes_per_image']:,}") for m in shown)
      + " |"
    )
  lines.append("")
  notes = [
    "Shipped default model for every column; global = GeM (p = 3) of its conv4 map at "
    "scales 0.7071 and 1.0, not a trained DELG head, unwhitened (too few images per "
    "dimension to learn PCA-whitening).",
    "Reranking reads the `.delf` files whatever the stage: "
    + ", ".join(f"{n} {r['delf_bytes_per_image']:,} B/image" for n, r in result["datasets"].items())
    + ".",
  ]
  sizes = [r["database_images"] for r in result["datasets"].values()]
  top_n = result["retrieval"]["rerank_top_n"]
  if sizes and max(sizes) <= top_n:
    notes.append(
      f"Every database here has at most {max(sizes)} images, fewer than the {top_n} "
      "reranked: reranking verifies the whole database whatever the first stage, so the "
      "reranked rows differ between stages only in the order of the candidates that do not "
      "move up (fewer inliers than rerank_min_inliers, or tied), which keep first-stage "
      "order, and in images a stage did not rank at all."
    )
  notes.extend(result.get("notes", []))
  if result.get("left_out"):
    notes.append("Left out of this run: " + "; ".join(result["left_out"]) + ".")
  notes.append(
    f"One run on {result['environment'].get('cpu_cores', '?')} shared, loaded CPU cores "
    f"(`benchmarks/results/first_stage.json`; `python benchmarks/first_stage.py`)."
  )
  lines.extend(f"- {n}" for n in notes)
  if result.get("thousand"):
    lines.extend(["", *render_thousand(result["thousand"])])
  if result.get("scale", {}).get("sizes"):
    lines.extend(["", *render_scale(result["scale"], result.get("thousand"))])
  return "\n".join(lines)


def gb(value: float) -> str:
  """Bytes as GB (10^9 bytes)."""
  return f"{value / 1e9:.2f} GB"


def mb_gb(value: float) -> str:
  """MiB (as RSS figures are recorded) as GB (10^9 bytes)."""
  return f"{value * 2**20 / 1e9:.1f} GB"


def duration(seconds: float) -> str:
  return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:g} s"


def render_thousand(thousand: dict) -> list[str]:
  """The small-database query table (run_thousand) and its notes."""
  ms = thousand["methods"]
  lines = [
    f"Query against {thousand['images']:,} images (after extraction; reranking "
    f"{thousand['rerank_top_n']} included), median seconds of {thousand['queries']} queries:",
    "",
    "| first stage | search | loading | matching | RANSAC | total | aim 0.3 s |",
    "|---|---|---|---|---|---|---|",
  ]
  for method, entry in ms.items():
    t = entry["seconds_per_query_median"]
    lines.append(
      f"| {LABELS[method]} | "
      + " | ".join(f"{t[k]:.3f}" for k in (*THOUSAND_STAGES, "total"))
      + f" | {'met' if t['total'] < 0.3 else 'not met'} |"
    )
  lines.append("")
  few = {
    m: e["ranked_images_last_query"]
    for m, e in ms.items()
    if e.get("ranked_images_last_query", thousand["rerank_top_n"]) < thousand["rerank_top_n"]
  }
  words = ms.get("asmk_star", {}).get("codebook_words")
  lines.append(
    f"- Database: {thousand['images']:,} synthetic images, each a demo photo's features "
    f"(shipped default model, about {thousand['features_per_image']} per image) with noise, "
    "indexed by `index_first_stage` (packed feature store) and queried by "
    "`delf_ret.retrieval.retrieve` with the packaged retrieval settings ("
    + ", ".join(
      f"{k} {round(v, 4) if isinstance(v, float) else v}"
      for k, v in thousand.get("retrieval", {}).items()
    )
    + "; votes: the "
    f"{thousand.get('votes_index_type', 'flat')} index of "
    f"{thousand['images'] * thousand['features_per_image']:,} descriptors)"
    + (
      f"; ASMK* codebook {words:,} words (the rule), its k-means cut to "
      f"{thousand['asmk_kmeans_iterations']} iteration(s) to keep the build short (the query "
      "cost does not depend on it)."
      if words
      else "."
    )
  )
  if thousand.get("load_average_1min"):
    first, last = thousand["load_average_1min"]
    lines.append(
      f"- Run on {thousand['environment'].get('cpu_cores', '?')} CPU cores shared with other "
      f"jobs: 1-minute load average {first:g} at the start, {last:g} at the end."
    )
  if few:
    lines.append(
      "- "
      + "; ".join(f"{LABELS[m]} ranked only {n} images (the last query)" for m, n in few.items())
      + f", fewer than the {thousand['rerank_top_n']} reranked: votes rank only the images "
      "that the query descriptors' nearest neighbours vote for, so fewer were verified."
    )
  return lines


def render_scale(scale: dict, thousand: dict | None) -> list[str]:
  """The scale table (run_scale) and what it says about the issue's aims."""
  sizes = list(scale["sizes"])
  rows = {n: scale["sizes"][n] for n in sizes}
  head = [f"ASMK* {int(n):,}" for n in sizes] + [f"global {int(n):,}" for n in sizes]
  agg = scale["aggregation"]
  lines = [
    f"Scale: synthetic databases, {scale['descriptors_per_image']} descriptors per image "
    "(median of 20 queries each):",
    "",
    "| figure | " + " | ".join(head) + " |",
    "|---|" + "---|" * len(head),
  ]

  def row(label, asmk_fn, global_fn):
    cells = [asmk_fn(rows[n]["asmk_star"]) for n in sizes]
    cells += [global_fn(rows[n]["global"]) for n in sizes]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")

  row("images indexed", lambda a: f"{a['images']:,}", lambda g: f"{g['images']:,}")
  row(
    "build time",
    lambda a: (
      f"~{duration(a['build_seconds_estimate'])} (aggregation extrapolated; insertion "
      f"{duration(a['insert_seconds'])} measured)"
    ),
    lambda g: duration(g["build_seconds"]),
  )
  row("index bytes", lambda a: gb(a["index_bytes"]), lambda g: gb(g["index_bytes"]))
  row(
    "RSS after build / peak RSS while building",
    lambda a: f"{mb_gb(a['rss_mb'])} / {mb_gb(a.get('build_peak_rss_mb', a['peak_rss_mb']))}",
    lambda g: f"{mb_gb(g['rss_mb'])} / {mb_gb(g['peak_rss_mb'])}",
  )
  row(
    "ms / query",
    lambda a: (
      f"{a['ms_per_query_median']:,.0f} (query aggregation {a['query_aggregation_ms_median']:,.0f})"
    ),
    lambda g: f"{g['ms_per_query_median']:,.1f}",
  )
  lines.append("")
  big = sizes[-1]
  a, g = rows[big]["asmk_star"], rows[big]["global"]
  notes = [
    f"Descriptors: {scale['descriptor_source']}; {scale['synthesis']}.",
    f"ASMK* codebook: {scale['codebook_words']:,} words (codebook_size_for: "
    + ", ".join(f"{v:,} for {int(k):,} images" for k, v in scale["codebook_words_by_rule"].items())
    + "), the k-means initialisation (a random sample of noisy real descriptors) without its "
    f"iterations: one iteration over the {scale['codebook_words'] * 256:,}-descriptor sample "
    f"faiss would use takes about {agg['kmeans_iteration_seconds_estimate']:,} s here "
    "(estimated from the aggregation rate), 20 of them too long for this run.",
    f"ASMK* build: aggregating 1000 descriptors per image with this codebook was measured on "
    f"{agg['images']:,} synthetic images ({agg['seconds_per_image']:.3f} s per image, "
    f"{agg['words_per_image_mean']:.0f} words per image); the database images were then "
    "drawn from those aggregated vectors and added with `AsmkIndex.add_aggregated` (insertion "
    "measured), so build seconds are the aggregation rate times the images plus the measured "
    "insertion. Added in 4 batches, each filed into the inverted file by a search; RSS and "
    "peak RSS are of a fresh process per column.",
  ]
  saved = [n for n in sizes if rows[n]["asmk_star"].get("save_seconds") is not None]
  if saved:
    s = rows[saved[-1]]["asmk_star"]
    per_entry = s["save_peak_bytes_per_entry"]
    unsaved = [n for n in sizes if n not in saved]
    notes.append(
      f"Saving the ASMK* index of {int(saved[-1]):,} images took {duration(s['save_seconds'])} and "
      f"{gb(s['saved_bytes'])} on disk; it merges the inverted-file segments in memory, peaking "
      f"{per_entry:.0f} bytes per entry above the built index"
      + (
        "".join(
          f"; at {int(n):,} images ({rows[n]['asmk_star']['entries']:,} entries) that is "
          f"{gb(per_entry * rows[n]['asmk_star']['entries'] + rows[n]['asmk_star']['rss_mb'] * 2**20)}"
          " in all: not tried, it would not fit a 24 GB machine (a save writing the segments "
          "word by word to the files, without merging them in memory, would)"
          for n in unsaved
        )
      )
      + "."
    )
  for n in sizes:
    v = rows[n]["votes"]
    notes.append(
      f"Votes at {int(n):,} images (not built): {v['descriptors']:,} descriptors, "
      f"{gb(v['flat_bytes'])} flat, {gb(v['ivfpq_bytes'])} IVF-PQ ({v['ivfpq']})."
    )
  limit = 24e9
  verdict = []
  peak = a.get("build_peak_rss_mb", a["peak_rss_mb"])
  verdict.append(
    f"ASMK* at {int(big):,} images: {gb(a['index_bytes'])} index, {mb_gb(a['rss_mb'])} RSS "
    f"after build, {mb_gb(peak)} peak while building (aim under 16 GB: "
    f"{'met' if peak * 2**20 < 16e9 else 'not met'}), "
    f"{a['ms_per_query_median']:,.0f} ms per query (aim under 1 s: "
    f"{'met' if a['ms_per_query_median'] < 1000 else 'not met'}: "
    f"{a['query_aggregation_ms_median']:,.0f} ms assign the query's 1000 descriptors to 5 of "
    f"{scale['codebook_words']:,} words by exact search, the rest scans those words' inverted "
    "lists in single-threaded numpy; a query under 1 s would take a faster quantiser (HNSW), "
    "fewer query assignments, or a multi-threaded / compiled scan)"
  )
  verdict.append(
    f"global at {int(big):,} images: {gb(g['index_bytes'])} index, "
    f"{mb_gb(g['rss_mb'])} RSS (aim under 2 GB: "
    f"{'met' if g['rss_mb'] * 2**20 < 2e9 else 'not met'}; "
    f"{g['dim']}-d float32 is {4 * g['dim']:,} B per image: float16 and PCA to "
    f"{g['dim'] // 2}-d would make it a quarter), {g['ms_per_query_median']:,.0f} ms per query "
    f"by exact search (aim under 50 ms: {'met' if g['ms_per_query_median'] < 50 else 'not met'}"
    "; it would take an approximate index, e.g. faiss IVF probing a few lists, or HNSW)"
  )
  v = rows[big]["votes"]
  fits = [
    f"{int(n):,}: flat {'fits' if rows[n]['votes']['flat_bytes'] < limit else 'does not fit'},"
    f" IVF-PQ {'fits' if rows[n]['votes']['ivfpq_bytes'] < limit else 'does not fit'}"
    for n in sizes
  ]
  verdict.append(
    "votes on a 24 GB machine: " + "; ".join(fits) + f" (at {int(big):,} images IVF-PQ "
    f"needs {gb(v['ivfpq_bytes'])}: pq_m 10 would make it "
    f"{gb(v['descriptors'] * 18)}, else shards on "
    f"{-(-v['ivfpq_bytes'] // int(20e9))} machines)"
  )
  notes.append("Against the aims: " + "; ".join(verdict) + ".")
  lines.extend(f"- {n}" for n in notes)
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output", default=str(RESULT))
  parser.add_argument("--work_dir", default=str(REPO / "benchmarks" / "output" / "first_stage"))
  parser.add_argument("--datasets", default=",".join(DATASETS))
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument(
    "--budget_s",
    type=float,
    default=1200.0,
    help="skip the datasets (and scale part) that would start after this",
  )
  parser.add_argument(
    "--scale_sizes",
    default="",
    help="synthetic database sizes of the scale part, comma-separated (empty: skip it)",
  )
  parser.add_argument("--scale_per_image", type=int, default=1000)
  parser.add_argument(
    "--scale_source",
    default="demo,mini_landmarks,ukbench",
    help="datasets whose database features (in --work_dir) the synthetic ones are drawn from",
  )
  parser.add_argument(
    "--scale_pool",
    type=int,
    default=500,
    help="synthetic images aggregated (and timed) for the ASMK* pool",
  )
  parser.add_argument(
    "--scale_only",
    action="store_true",
    help="skip the dev-set part: run only the scale and small-database parts asked for, adding them to --output",
  )
  parser.add_argument(
    "--scale_codebook",
    type=int,
    default=0,
    help="ASMK* codebook words of the scale part (0: codebook_size_for the largest size)",
  )
  parser.add_argument("--scale_child", default="", help=argparse.SUPPRESS)
  parser.add_argument(
    "--thousand_images",
    type=int,
    default=0,
    help="run the query-against-a-small-database part with this many images (0: skip it)",
  )
  parser.add_argument("--thousand_queries", type=int, default=10)
  parser.add_argument(
    "--thousand_kmeans_iterations",
    type=int,
    default=1,
    help="ASMK* codebook k-means iterations of that part (build cost only)",
  )
  parser.add_argument(
    "--note",
    action="append",
    default=[],
    help="a sentence about this run, recorded in --output and shown under the table",
  )
  parser.add_argument("--render_only", action="store_true")
  args = parser.parse_args()
  if args.scale_child:
    scale_child(args)
    return
  if not args.render_only and not args.scale_only:
    from delf_ret import config as config_lib
    from delf_ret.default_model import CONFIG_FILE
    from delf_ret.default_model import default_model_dir
    from delf_ret.extract.extractor import DelfExtractor

    start = time.time()
    work = pathlib.Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    model_dir = pathlib.Path(default_model_dir())
    config = config_lib.load_config(model_dir / CONFIG_FILE, GLOBAL_OVERRIDES)
    extractor = DelfExtractor(config)
    methods = tuple(m for m in args.methods.split(",") if m)
    result: dict = {
      "benchmark": "first_stage",
      "model": str(model_dir.relative_to(REPO)),
      "global_descriptor": "GeM p=3 of the default model's conv4 map at image_scales_ind "
      "[3, 4] (0.7071, 1.0), summed, L2-normalised; not a trained DELG head",
      "retrieval": {
        "rerank_top_n": config.retrieval_config.rerank_top_n,
        "min_inliers": config.retrieval_config.min_inliers,
        "ransac": f"{config.retrieval_config.ransac_transform}, "
        f"{config.retrieval_config.ransac_residual_threshold:g} px",
      },
      "datasets": {},
      "left_out": [],
    }
    for name in [d for d in args.datasets.split(",") if d]:
      if time.time() - start > args.budget_s:
        result["left_out"].append(f"{name} (time budget of {args.budget_s:.0f} s spent)")
        continue
      result["datasets"][name] = run_dataset(name, config, extractor, work / name, methods)
      write_result(args.output, {**result, "benchmark_seconds": round(time.time() - start)})
    result["benchmark_seconds"] = round(time.time() - start)
    write_result(args.output, result)
  if args.scale_sizes and not args.render_only:
    start = time.time()
    load = os.getloadavg()[0]
    scale = run_scale(args, pathlib.Path(args.work_dir))
    scale["seconds"] = round(time.time() - start)
    scale["load_average_1min"] = [round(load, 1), round(os.getloadavg()[0], 1)]
    scale["environment"] = environment()
    result = json.loads(pathlib.Path(args.output).read_text())  # As written now.
    result["scale"] = scale
    write_result(args.output, result)
  if args.thousand_images and not args.render_only:
    load = os.getloadavg()[0]
    thousand = run_thousand(args, pathlib.Path(args.work_dir))
    thousand["load_average_1min"] = [round(load, 1), round(os.getloadavg()[0], 1)]
    thousand["environment"] = environment()
    result = json.loads(pathlib.Path(args.output).read_text())  # As written now.
    result["thousand"] = thousand
    write_result(args.output, result)
  result = json.loads(pathlib.Path(args.output).read_text())
  if args.note:
    result["notes"] = result.get("notes", []) + args.note
    write_result(args.output, result)
  render_between(DOC, render_table(result), START, END)
  render_between(README, render_summary(result), SUMMARY_START, SUMMARY_END)


if __name__ == "__main__":
  main()
