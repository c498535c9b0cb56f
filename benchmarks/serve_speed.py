"""delf_serve's page query speed against 1,000 indexed photos, and the page's responsiveness.

Data: the real photos of ../shared/data (landmarks/, distractors/, pairs/), extracted once
with the shipped default model and its config (cached in benchmarks/output/serve_speed/real/).
Three landmark photos are the queries; the other photos (a positive of each query
among them) are the database, each stored once as extracted and then repeated with small
noise until the collection holds 1,000 photos: descriptors + N(0, 0.01) per dimension,
L2-normalised again, points moved by N(0, 0.5 px) (cached in collection/, indexed with the
config's index settings: a flat index by default). So the database has real feature
counts and descriptor statistics, but near-duplicates.

The server is the one ``delf_serve`` runs (delf_ret.serve.app over
delf_ret.serve.service: model and every database feature file loaded once at start),
in this process, on a free local port. Each query is a page query over HTTP: the photo
uploaded, then the job polled (every 50 ms) until done; its seconds are split by stage
(extraction of the query, index search, RANSAC matching and RANSAC; the rest is upload,
decoding, recognition and polling). While each query runs, the page's stylesheet is
fetched again and again: its response times show whether the page stays responsive.
One warm-up query (the network's first call traces the graph) is not counted.

The table in docs/serve.md is rendered from the result JSON (``--render_only`` re-renders
it without running anything).

Usage: python benchmarks/serve_speed.py [--output benchmarks/results/serve_speed.json]
       python benchmarks/serve_speed.py --render_only
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import threading
import time
import urllib.request
import uuid

import numpy as np
from results_io import render_between
from results_io import write_result

from delf_ret.config import load_config
from delf_ret.default_model import default_config_path
from delf_ret.features import LocalFeatures
from delf_ret.features import feature_file_name
from delf_ret.features import read_features
from delf_ret.features import write_features
from delf_ret.images import list_images
from delf_ret.index import IndexParams
from delf_ret.index.builder import build_index

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("DELF_RET_SHARED_DATA", REPO.parent / "shared" / "data"))
OUTPUT = REPO / "benchmarks" / "output" / "serve_speed"
FOLDERS = ("landmarks", "distractors", "pairs")
QUERIES = (
  "campus_building_DSC_0411",
  "sacre_coeur_lightglue2",
  "london_bridge_49190386_5209386933",
)
RESULT = REPO / "benchmarks" / "results" / "serve_speed.json"
TABLE_FILE = REPO / "docs" / "serve.md"
START, END = "<!-- serve_speed: start -->", "<!-- serve_speed: end -->"
STAGES = (
  ("extraction", "extraction of the query photo"),
  ("search", "index search and votes"),
  ("loading", "candidate features (from memory)"),
  ("matching", "putative matches of the candidates"),
  ("ransac", "RANSAC"),
)
# Index settings: the default config's flat index, and the IVF-PQ settings docs/retrieval.md
# gives for large databases.
VARIANTS = (
  ("flat", []),
  (
    "ivfpq",
    [
      "retrieval_config.index_type=ivfpq",
      "retrieval_config.pq_fast_scan=true",
      "retrieval_config.pq_m=40",
      "retrieval_config.pq_nbits=4",
      "retrieval_config.nlist=4096",
      "retrieval_config.nprobe=32",
    ],
  ),
)
GOAL_SECONDS = 3.0
COLLECTION = 1000
REPEATS = 2  # Each query photo is asked this many times.


def real_features(extractor) -> dict[str, LocalFeatures]:
  """{image id: features} of every photo of FOLDERS, extracted once into OUTPUT/real."""
  folder = OUTPUT / "real"
  folder.mkdir(parents=True, exist_ok=True)
  features = {}
  photos = [path for name in FOLDERS for path in list_images(SHARED / name)]
  for number, path in enumerate(photos, 1):
    target = folder / feature_file_name(path.stem)
    if not target.is_file():
      write_features(target, extractor.extract_file(path))
      print(f"[{number}/{len(photos)}] extracted {path.name}", flush=True)
    features[path.stem] = read_features(target)
  return features


def noisy_copy(features: LocalFeatures, rng: np.random.Generator) -> LocalFeatures:
  """The features with small noise (see the module docstring)."""
  descriptors = features.descriptors + rng.normal(0, 0.01, features.descriptors.shape)
  descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
  locations = features.locations + rng.normal(0, 0.5, features.locations.shape)
  return LocalFeatures(
    locations.astype(np.float32),
    features.scales,
    descriptors.astype(np.float32),
    features.attention,
    features.orientations,
  )


def collection(real: dict[str, LocalFeatures]) -> list[pathlib.Path]:
  """Feature files of the 1,000-photo database (OUTPUT/collection/features), written once."""
  folder = OUTPUT / "collection" / "features"
  folder.mkdir(parents=True, exist_ok=True)
  database = sorted(name for name in real if name not in QUERIES)
  rng = np.random.default_rng(0)
  paths = []
  for number in range(COLLECTION):
    name = database[number % len(database)]
    copy = number // len(database)
    path = folder / feature_file_name(f"{name}__{copy:03d}")
    if not path.is_file():
      write_features(path, real[name] if copy == 0 else noisy_copy(real[name], rng))
    paths.append(path)
  return paths


def get(url: str) -> tuple[bytes, float]:
  start = time.perf_counter()
  with urllib.request.urlopen(url, timeout=120) as response:
    return response.read(), time.perf_counter() - start


def post_photo(url: str, token: str, photo: pathlib.Path) -> str:
  """Uploads ``photo`` as a page query; returns the job id."""
  boundary = uuid.uuid4().hex
  body = (
    (
      f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="{photo.name}"\r\n'
      "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    + photo.read_bytes()
    + f"\r\n--{boundary}--\r\n".encode()
  )
  request = urllib.request.Request(
    url + "api/query",
    data=body,
    headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "X-Delf-Token": token},
  )
  with urllib.request.urlopen(request, timeout=120) as response:
    return json.loads(response.read())["job"]


def cpu_seconds() -> float:
  """CPU seconds (user + system) of every thread of this process so far."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def page_query(url: str, token: str, photo: pathlib.Path, fetch: bool = True) -> dict:
  """One page query: wall seconds, the job's stage seconds and the static responses meanwhile."""
  static: list[float] = []
  done = threading.Event()

  def fetch_static() -> None:
    while not done.is_set():
      static.append(get(url + "static/style.css")[1])
      time.sleep(0.02)

  fetcher = threading.Thread(target=fetch_static)
  start, cpu_start = time.perf_counter(), cpu_seconds()
  job = post_photo(url, token, photo)
  if fetch:
    fetcher.start()
  while True:
    status = json.loads(get(f"{url}api/jobs/{job}")[0])
    if status["state"] in ("done", "failed"):
      break
    time.sleep(0.05)
  wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
  done.set()
  if fetch:
    fetcher.join()
  assert status["state"] == "done", status
  result = status["result"]
  return {
    "query": photo.stem,
    "wall_seconds": round(wall, 3),
    "cpu_seconds": round(cpu, 3),
    "stage_seconds": result["seconds"],
    "top": [entry["id"] for entry in result["results"][:3]],
    "recognised": result["recognition"]["label"],
    "static_seconds": static,
  }


def render_table(result: dict) -> str:
  """The docs' table of a result: seconds per page query by stage and index, and the page's
  static requests while a query runs."""
  variants = result["variants"]
  names = list(variants)
  header = f"| page query, {result['database_photos']:,} photos, {result['machine']} | " + (
    " | ".join(f"{name} index" for name in names) + " |"
  )
  rows = [header, "|---|" + "---|" * len(names)]
  for key, label in STAGES:
    rows.append(
      f"| {label} | "
      + " | ".join(f"{variants[n]['stage_seconds_mean'].get(key, 0.0):.3f}" for n in names)
      + " |"
    )
  rest = [
    variants[n]["seconds_per_query_mean"]
    - sum(variants[n]["stage_seconds_mean"].get(key, 0.0) for key, _ in STAGES)
    for n in names
  ]
  rows.append(
    "| upload, decoding, recognition, polling (every 50 ms) | "
    + " | ".join(f"{value:.3f}" for value in rest)
    + " |"
  )
  rows.append(
    f"| **seconds per page query** (mean of {len(variants[names[0]]['queries'])}; max) | "
    + " | ".join(
      f"**{variants[n]['seconds_per_query_mean']:.2f}** ({variants[n]['seconds_per_query_max']:.2f})"
      for n in names
    )
    + " |"
  )
  rows.append(
    "| the page's stylesheet while a query runs: median, max seconds | "
    + " | ".join(
      "{median:.3f}, {max:.3f}".format(**variants[n]["static_request_while_query_runs_seconds"])
      for n in names
    )
    + " |"
  )
  rows.append(
    "| CPU seconds per page query, all threads (mean of 3, no other requests) | "
    + " | ".join(
      f"{statistics.mean(variants[n]['cpu_seconds_per_query_without_static_requests']):.2f}"
      for n in names
    )
    + " |"
  )
  rows.append(
    "| load average (1 min) before, after: other jobs sharing the 2 cores | "
    + " | ".join("{}, {}".format(*variants[n]["load_average_1min_before_after"]) for n in names)
    + " |"
  )
  return "\n".join(rows)


def serve_queries(service, photos: list[pathlib.Path]) -> tuple[list[dict], list[float]]:
  """Page queries of ``photos`` over HTTP, after one warm-up: REPEATS times each with the
  stylesheet fetched meanwhile, then once each without (their CPU seconds: all threads of
  this process, so the server's alone)."""
  # Lazy: Flask and matplotlib, only when the benchmark runs (not --render_only).
  from delf_ret.serve.app import create_app
  from delf_ret.serve.app import make_server

  token = "benchmark"
  server = make_server("127.0.0.1", 0, create_app(service, token, 32 * 2**20))
  threading.Thread(target=server.serve_forever, daemon=True).start()
  url = f"http://127.0.0.1:{server.server_port}/"
  try:
    page_query(url, token, photos[0])  # Warm-up: the network's first call traces the graph.
    runs = [page_query(url, token, photo) for _ in range(REPEATS) for photo in photos]
    cpu = [page_query(url, token, photo, fetch=False)["cpu_seconds"] for photo in photos]
    return runs, cpu
  finally:
    server.shutdown()


def run_variant(name: str, overrides: list[str], extractor, paths: list[pathlib.Path]) -> dict:
  """Indexes the collection with the config and ``overrides``, serves it, runs the queries."""
  from delf_ret.serve.service import SearchService  # Lazy: matplotlib (match pictures).

  config = load_config(default_config_path(), overrides)
  index_dir = OUTPUT / "collection" / f"index_{name}"
  start = time.perf_counter()
  params = IndexParams.from_config(config.retrieval_config)
  build_index(paths, index_dir, params, log=lambda _: None)
  print(f"{name}: index of {len(paths)} photos ({time.perf_counter() - start:.1f} s)", flush=True)
  start = time.perf_counter()
  service = SearchService(config, index_dir, paths[0].parent, extractor.extract, log=lambda _: None)
  load_seconds = time.perf_counter() - start
  load_before = os.getloadavg()[0]
  runs, cpu = serve_queries(service, [SHARED / "landmarks" / f"{query}.jpg" for query in QUERIES])
  static = [value for run in runs for value in run.pop("static_seconds")]
  stages = sorted({stage for run in runs for stage in run["stage_seconds"]})
  return {
    "config_overrides": overrides,
    "descriptors_indexed": service.index.num_descriptors,
    "startup_seconds_loading_index_and_features": round(load_seconds, 2),
    "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    "queries": runs,
    "seconds_per_query_mean": round(statistics.mean(run["wall_seconds"] for run in runs), 3),
    "seconds_per_query_max": round(max(run["wall_seconds"] for run in runs), 3),
    "cpu_seconds_per_query_without_static_requests": [round(value, 3) for value in cpu],
    "stage_seconds_mean": {
      stage: round(statistics.mean(run["stage_seconds"].get(stage, 0.0) for run in runs), 3)
      for stage in stages
    },
    "static_request_while_query_runs_seconds": {
      "count": len(static),
      "median": round(statistics.median(static), 4),
      "max": round(max(static), 4),
    },
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", default=str(RESULT))
  parser.add_argument("--render_only", action="store_true", help="Only re-render the docs table.")
  args = parser.parse_args()
  if args.render_only:
    render_between(TABLE_FILE, render_table(json.loads(RESULT.read_text())), START, END)
    return
  from delf_ret.extract.extractor import DelfExtractor  # Lazy: TensorFlow.

  extractor = DelfExtractor(load_config(default_config_path()))
  real = real_features(extractor)
  paths = collection(real)
  variants = {name: run_variant(name, overrides, extractor, paths) for name, overrides in VARIANTS}
  result = {
    "benchmark": "serve_speed",
    "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}",
    "model": "delf_ret/default_model (shipped), its config (max_image_size 1024, 5 scales)",
    "database": (
      f"{len(paths)} photos: {len(real) - len(QUERIES)} real photos of ../shared/data "
      "(landmarks, distractors, pairs; default model), repeated with small noise "
      "(descriptors + N(0, 0.01), renormalised; points + N(0, 0.5 px))"
    ),
    "database_photos": len(paths),
    "queries": list(QUERIES),
    "goal_seconds_per_query": GOAL_SECONDS,
    "variants": variants,
  }
  write_result(args.output, result)
  if pathlib.Path(args.output).resolve() == RESULT:
    render_between(TABLE_FILE, render_table(result), START, END)
  for name, variant in variants.items():
    print(
      f"{name}: {variant['seconds_per_query_mean']:.2f} s per page query (max "
      f"{variant['seconds_per_query_max']:.2f}); stages {variant['stage_seconds_mean']}; "
      f"static requests meanwhile {variant['static_request_while_query_runs_seconds']}"
    )


if __name__ == "__main__":
  main()
