"""delf_demo end to end through its console script, on the photos bundled with the package."""

import os
import re
import shutil

import pytest

from conftest import FAST_DEMO as FAST
from conftest import copy_demo_folder
from conftest import run_command

# Runs the delf_demo console script end to end.
pytestmark = pytest.mark.slow


def run_demo(*args, cwd):
  script = shutil.which("delf_demo")
  if script is None:
    pytest.skip("the delf_demo console script is not installed (pip install -e .)")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", DELF_RET_SHARED_DATA=str(cwd / "no_shared"))
  return run_command([script, *args], timeout=900, env=env, cwd=cwd)


def test_demo_runs_the_whole_pipeline_on_the_bundled_photos_then_reuses_features(
  bundled_demo_run, tmp_path
):
  # The first run (FAST, no shared data found) is shared with test_new_user_27.py; the
  # second runs in a copy of its folder.
  ran_in, first = bundled_demo_run
  output = ran_in / "demo_output"
  assert first.returncode == 0, first.stderr[-3000:]
  assert "data: bundled demo photos" in first.stdout
  assert "delf_ret/default_model/delf_default.npz" in first.stdout
  assert len(list((output / "features").glob("*.delf"))) == 20
  for name in (
    "retrieval/mAP.txt",
    "retrieval/metrics.json",
    "retrieval/ranked_lists.json",
    "top_results.png",
    "matches_graffiti_1_3.png",
    "matches_campus_building.png",
  ):
    assert (output / name).is_file(), name
  assert "after RANSAC reranking" in first.stdout and f"output folder: {output}" in first.stdout
  clone = copy_demo_folder(ran_in, tmp_path / "clone")
  second = run_demo(*FAST, cwd=clone)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "features: 0 photos extracted, 20 reused" in second.stdout
  # The cached rerun states one seconds-per-query figure (the queries' recorded stage total).
  (total,) = re.findall(r"seconds per query: .*total (\d+\.\d+)", second.stdout)
  assert set(re.findall(r"(\d+\.\d+) s per query", second.stdout)) == {total}, second.stdout


def test_demo_names_a_data_folder_without_labels(tmp_path):
  result = run_demo(f"--data_dir={tmp_path}", cwd=tmp_path)
  assert result.returncode == 2 and "no labels.csv" in result.stderr
