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

Optional scale part (``--scale_images``): synthetic databases of N images for ASMK*
and global, descriptors drawn from the real ones with noise: build seconds, peak
RSS growth, ms per query; with an estimate for 1,000,000 images.

Results go to benchmarks/results/first_stage.json; the table in docs/benchmarks.md
(between the first_stage markers) is rendered from it (``--render_only`` re-renders
it without running anything).

Usage: python benchmarks/first_stage.py [--datasets demo,mini_landmarks,ukbench]
           [--budget_s 1200] [--scale_images 100000] [--render_only]
"""

from __future__ import annotations

import argparse
import json
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

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "first_stage.json"
DOC = REPO / "docs" / "benchmarks.md"
START, END = "<!-- first_stage: start -->", "<!-- first_stage: end -->"
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
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_scale(
  num_images: int,
  features_dir: pathlib.Path,
  per_image: int,
  queries: int,
  deadline: float,
  codebook_words: int,
) -> dict:
  """ASMK* and global on a synthetic database of ``num_images`` images: each image's
  ``per_image`` descriptors drawn from the real database's (with Gaussian noise, sigma 0.05
  per dimension, renormalised); global descriptors likewise from the real ones."""
  from delf_ret.features import read_features
  from delf_ret.features import read_global_descriptor
  from delf_ret.index.asmk import AsmkIndex
  from delf_ret.index.asmk import AsmkParams
  from delf_ret.index.asmk import codebook_size_for
  from delf_ret.index.global_index import GlobalDescriptorIndex

  rng = np.random.default_rng(0)
  real = np.concatenate([read_features(p).descriptors for p in sorted(features_dir.glob("*.delf"))])
  real_global = np.stack(
    [read_global_descriptor(p) for p in sorted(features_dir.glob("*.delg_global"))]
  )

  def noisy(rows: np.ndarray, count: int) -> np.ndarray:
    out = rows[rng.integers(0, rows.shape[0], count)] + rng.normal(
      0, 0.05, (count, rows.shape[1])
    ).astype(np.float32)
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

  result: dict = {"images": num_images, "descriptors_per_image": per_image}
  # Global.
  base, base_peak = rss_mb(), peak_rss_mb()
  start = time.perf_counter()
  gindex = GlobalDescriptorIndex(real_global.shape[1])
  chunk = 10000
  for s in range(0, num_images, chunk):
    n = min(chunk, num_images - s)
    gindex.add_many([f"img{i:07d}" for i in range(s, s + n)], noisy(real_global, n))
  build = time.perf_counter() - start
  times = []
  for _ in range(queries):
    q = noisy(real_global, 1)[0]
    t = time.perf_counter()
    gindex.search_images(q, 100)
    times.append(time.perf_counter() - t)
  result["global"] = {
    "dim": int(real_global.shape[1]),
    "build_seconds": round(build, 1),
    "rss_growth_mb": round(rss_mb() - base),
    "peak_rss_growth_mb": round(peak_rss_mb() - base_peak),
    "ms_per_query_median": round(1000 * float(np.median(times)), 2),
  }
  print(f"scale global: {result['global']}", flush=True)
  del gindex
  # ASMK*.
  base, base_peak = rss_mb(), peak_rss_mb()
  params = AsmkParams(codebook_size=codebook_words)
  index = AsmkIndex(real.shape[1], params)
  start = time.perf_counter()
  index.train(noisy(real, min(50 * codebook_words, num_images * per_image)))
  train_seconds = time.perf_counter() - start
  added = 0
  for i in range(num_images):
    if time.time() > deadline:
      break
    index.add(f"img{i:07d}", noisy(real, per_image))
    added += 1
    if i % 10000 == 0:
      print(f"scale asmk*: {i}/{num_images} ({time.perf_counter() - start:.0f} s)", flush=True)
  build = time.perf_counter() - start
  times = []
  for _ in range(queries):
    q = noisy(real, per_image)
    t = time.perf_counter()
    index.search_images(q, 100)
    times.append(time.perf_counter() - t)
  result["asmk_star"] = {
    "images_added": added,
    "stopped_early": added < num_images,
    "codebook_words": codebook_words,
    "codebook_words_by_rule": codebook_size_for(num_images * per_image),
    "train_seconds": round(train_seconds, 1),
    "build_seconds": round(build, 1),
    "rss_growth_mb": round(rss_mb() - base),
    "peak_rss_growth_mb": round(peak_rss_mb() - base_peak),
    "ms_per_query_median": round(1000 * float(np.median(times)), 1),
  }
  print(f"scale asmk*: {result['asmk_star']}", flush=True)
  del index
  a, g = result["asmk_star"], result["global"]
  factor = 1_000_000 / max(1, a["images_added"])
  gfactor = 1_000_000 / num_images
  result["million_estimate"] = (
    f"1,000,000 images, extrapolated linearly from this run (not measured): ASMK* about "
    f"{a['rss_growth_mb'] * factor / 1024:.1f} GB and {a['build_seconds'] * factor / 3600:.1f}"
    f" h to build on this machine, query time growing with the inverted lists (about "
    f"{a['ms_per_query_median'] * factor:.0f} ms if linear); global about "
    f"{g['rss_growth_mb'] * gfactor / 1024:.1f} GB ({g['dim']}-d float32: "
    f"{4 * g['dim'] / 1024:.0f} KiB per image) and about {g['ms_per_query_median'] * gfactor:.0f}"
    f" ms per query by exhaustive search"
  )
  return result


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
      "reranked rows differ between stages only through ties in inlier count (often 0), "
      "ordered by first-stage score, and images a stage did not rank at all; the "
      "first-stage rows and the costs are what tells the stages apart here."
    )
  notes.extend(result.get("notes", []))
  if result.get("left_out"):
    notes.append("Left out of this run: " + "; ".join(result["left_out"]) + ".")
  scale = result.get("scale")
  if scale:
    a, g = scale["asmk_star"], scale["global"]
    if a.get("stopped_early"):
      notes.append(
        f"The ASMK* scale build stopped at {a['images_added']:,} of {scale['images']:,} images "
        f"(time budget); its figures are for {a['images_added']:,} images."
      )
    notes.append(
      f"Scale ({scale['images']:,} synthetic images, {scale['descriptors_per_image']} "
      f"descriptors each): ASMK* build {a['build_seconds']:g} s, RSS +"
      f"{a['rss_growth_mb']:,} MB, {a['ms_per_query_median']:g} ms / query; global "
      f"build {g['build_seconds']:g} s, +{g['rss_growth_mb']:,} MB, "
      f"{g['ms_per_query_median']:g} ms / query. {scale.get('million_estimate', '')}."
    )
  notes.append(
    f"One run on {result['environment'].get('cpu_cores', '?')} shared, loaded CPU cores "
    f"(`benchmarks/results/first_stage.json`; `python benchmarks/first_stage.py`)."
  )
  lines.extend(f"- {n}" for n in notes)
  return "\n".join(lines)


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
    "--scale_images",
    type=int,
    default=0,
    help="synthetic database size for the scale part (0: skip it)",
  )
  parser.add_argument("--scale_per_image", type=int, default=1000)
  parser.add_argument(
    "--scale_source",
    default="mini_landmarks",
    help="dataset whose database features the synthetic ones are drawn from",
  )
  parser.add_argument(
    "--scale_budget_s",
    type=float,
    default=900.0,
    help="the ASMK* adds stop after this many seconds (figures say so)",
  )
  parser.add_argument(
    "--scale_only", action="store_true", help="run only the scale part and add it to --output"
  )
  parser.add_argument(
    "--scale_codebook",
    type=int,
    default=2048,
    help="ASMK* codebook words of the scale part (the rule's size takes hours to train here)",
  )
  parser.add_argument(
    "--note",
    action="append",
    default=[],
    help="a sentence about this run, recorded in --output and shown under the table",
  )
  parser.add_argument("--render_only", action="store_true")
  args = parser.parse_args()
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
  if args.scale_images and not args.render_only:
    source = pathlib.Path(args.work_dir) / args.scale_source / "features"
    result = {}
    result["scale"] = run_scale(
      args.scale_images,
      source,
      args.scale_per_image,
      20,
      time.time() + args.scale_budget_s,
      args.scale_codebook,
    )
    scale = result["scale"]
    result = json.loads(pathlib.Path(args.output).read_text())  # As written now.
    result["scale"] = scale
    result["scale"]["descriptor_source"] = f"{args.scale_source} database features"
    write_result(args.output, result)
  result = json.loads(pathlib.Path(args.output).read_text())
  if args.note:
    result["notes"] = result.get("notes", []) + args.note
    write_result(args.output, result)
  render_between(DOC, render_table(result), START, END)


if __name__ == "__main__":
  main()
