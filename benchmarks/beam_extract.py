"""Extraction throughput: extract_features against extract_features_beam with 1 and 2 workers.

The same 40 real photos (PHOTOS: the 17 of ../shared/data/landmarks, the 15 distractors and
8 photos of train/sceaux_castle) go through the single-machine extract_features, then
extract_features_beam with the local runner (--direct_running_mode=multi_processing) and 1,
then 2, worker processes, each into a fresh folder, with the shipped default model and
config (or --config_override). Reports per run: wall time, images per second over the whole
run (start-up included) and in steady state (between the first and the last per-image log
line, start-up excluded), the ratio of each to extract_features', and whether every feature
file is byte for byte extract_features' one.

apache-beam needs protobuf < 7: run the Beam tool from a virtual environment that has it,
e.g. the one tests/beam builds (~/.cache/delf-ret-tests/beam-venv-*), named by --beam_python:
  python benchmarks/beam_extract.py --beam_python ~/.cache/delf-ret-tests/beam-venv-*/bin/python
(extract_features runs beside this interpreter; extract_features_beam beside --beam_python.)
Writes benchmarks/results/beam_extract.json.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from results_io import write_result

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SCEAUX = [f"train/sceaux_castle/100_71{number:02d}.jpg" for number in range(8)]
WORKERS = (1, 2)


def photos(shared: pathlib.Path) -> list[pathlib.Path]:
  """The 40 photos: landmarks/ and distractors/ (all, sorted), 8 of train/sceaux_castle."""
  found = sorted((shared / "landmarks").iterdir()) + sorted((shared / "distractors").iterdir())
  found += [shared / name for name in SCEAUX]
  missing = [str(path) for path in found if not path.is_file()]
  if missing or len(found) != 40:
    raise SystemExit(f"expected 40 photos under {shared}; missing: {missing}")
  return found


def timed_run(command: list[str], env: dict[str, str]) -> dict:
  """Runs ``command``; returns its wall time, the arrival times of its per-image lines
  (stdout lines '<image>: <n> features (dim <d>) -> <feature file> ...') and the machine's
  load averages (1, 5, 15 minutes) before and after."""
  load_before = os.getloadavg()
  start = time.monotonic()
  process = subprocess.Popen(
    command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
  )
  arrivals = []
  assert process.stdout is not None
  for line in process.stdout:
    if " features (dim " in line:
      arrivals.append(time.monotonic() - start)
  errors = process.stderr.read() if process.stderr else ""
  if process.wait() != 0:
    raise SystemExit(f"{command[0]} failed ({process.returncode}): {errors[-3000:]}")
  wall = time.monotonic() - start
  return {"wall_s": wall, "arrivals": arrivals, "load": [load_before, os.getloadavg()]}


def figures(run: dict, count: int) -> dict:
  arrivals = run["arrivals"]
  steady = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else None
  return {
    "wall_s": round(run["wall_s"], 1),
    "images_per_s": round(count / run["wall_s"], 4),
    "steady_images_per_s": round(steady, 4) if steady else None,
    "first_image_after_s": round(arrivals[0], 1) if arrivals else None,
    "load_average_before_after": [[round(value, 2) for value in load] for load in run["load"]],
  }


def same_bytes(folder: pathlib.Path, reference: pathlib.Path) -> bool:
  names = sorted(path.name for path in reference.iterdir())
  return names == sorted(path.name for path in folder.iterdir()) and all(
    (folder / name).read_bytes() == (reference / name).read_bytes() for name in names
  )


def _versions(python: str) -> dict:
  code = "import apache_beam, google.protobuf as p; print(apache_beam.__version__, p.__version__)"
  found = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
  beam, protobuf = found.stdout.split()
  return {"apache_beam": beam, "protobuf_of_the_beam_environment": protobuf}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--beam_python", default=sys.executable, help="Python with apache-beam.")
  parser.add_argument("--shared_data", default=str(SHARED))
  parser.add_argument("--config_override", action="append", default=[])
  parser.add_argument(
    "--output", default=str(REPO / "benchmarks" / "results" / "beam_extract.json")
  )
  args = parser.parse_args()
  paths = photos(pathlib.Path(args.shared_data))
  env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
  overrides = [f"--config_override={override}" for override in args.config_override]
  runs, identical = {}, {}
  with tempfile.TemporaryDirectory(prefix="beam_extract_") as work:
    listing = pathlib.Path(work, "photos.txt")
    listing.write_text("".join(f"{path}\n" for path in paths))
    inputs = [f"--list_images_path={listing}", *overrides]
    reference = pathlib.Path(work, "single")
    single = pathlib.Path(sys.executable).parent / "extract_features"
    print(f"extract_features on {len(paths)} photos ...", flush=True)
    run = timed_run([str(single), *inputs, f"--output_dir={reference}"], env)
    runs["extract_features"] = figures(run, len(paths))
    beam_tool = pathlib.Path(args.beam_python).parent / "extract_features_beam"
    for workers in WORKERS:
      name = f"extract_features_beam_{workers}_worker{'s' if workers > 1 else ''}"
      options = f"--direct_num_workers={workers} --direct_running_mode=multi_processing"
      output = pathlib.Path(work, name)
      print(f"{name} ...", flush=True)
      command = [str(beam_tool), *inputs, f"--output_dir={output}"]
      run = timed_run([*command, f"--beam_pipeline_options={options}"], env)
      runs[name] = figures(run, len(paths))
      identical[name] = same_bytes(output, reference)
  base = runs["extract_features"]
  for name, figure in runs.items():
    figure["ratio_to_extract_features"] = round(figure["images_per_s"] / base["images_per_s"], 3)
    if figure["steady_images_per_s"] and base["steady_images_per_s"]:
      steady = figure["steady_images_per_s"] / base["steady_images_per_s"]
      figure["steady_ratio_to_extract_features"] = round(steady, 3)
  result = {
    "photos": [str(path.relative_to(args.shared_data)) for path in paths],
    "config": "shipped default model and config" + (f", {args.config_override}" * bool(overrides)),
    "runner": "FnApiRunner (Beam's in-process runner), direct_running_mode=multi_processing",
    "runs": runs,
    "byte_identical_to_extract_features": identical,
    **_versions(args.beam_python),
  }
  write_result(args.output, result)


if __name__ == "__main__":
  main()
