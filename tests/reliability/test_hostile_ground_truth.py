"""Hostile and careless ground-truth files: no code runs, no name leaves its folder, clear errors."""

import os
import pickle

import numpy as np
import pytest

from conftest import installed_script
from conftest import run_command
from delf_ret.evaluation.ground_truth import GroundTruthError
from delf_ret.evaluation.ground_truth import read_original_gt
from delf_ret.evaluation.ground_truth import read_revisited_gnd


class _WritesAFile:
  """Pickles to a call of os.system: loading it with pickle.load would run the command."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def _gnd(**changes):
  data = {
    "imlist": ["a", "b", "c"],
    "qimlist": ["q"],
    "gnd": [
      {"bbx": np.array([1.0, 2.0, 30.0, 40.0]), "easy": np.array([0]), "hard": [1], "junk": []}
    ],
  }
  data.update(changes)
  return data


def test_published_layout_with_numpy_arrays_loads(tmp_path):
  (tmp_path / "gnd_toy.pkl").write_bytes(pickle.dumps(_gnd()))
  dataset = read_revisited_gnd(tmp_path / "gnd_toy.pkl")
  assert dataset.imlist == ["a", "b", "c"] and dataset.gnd[0]["easy"].tolist() == [0]
  np.testing.assert_array_equal(dataset.gnd[0]["bbx"], [1, 2, 30, 40])


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
  marker = tmp_path / "pwned"
  (tmp_path / "gnd_evil.pkl").write_bytes(pickle.dumps(_gnd(imlist=[_WritesAFile(marker)])))
  with pytest.raises(GroundTruthError, match=r"refused to load posix\.system|refused to load os"):
    read_revisited_gnd(tmp_path / "gnd_evil.pkl")
  assert not marker.exists()


@pytest.mark.slow  # Runs perform_retrieval in a subprocess.
def test_perform_retrieval_refuses_a_hostile_pickle_with_one_line(tmp_path):
  marker = tmp_path / "pwned"
  (tmp_path / "gnd_evil.pkl").write_bytes(pickle.dumps(_gnd(imlist=[_WritesAFile(marker)])))
  script = installed_script("perform_retrieval")
  result = run_command(
    [
      script,
      f"--dataset_gnd_path={tmp_path / 'gnd_evil.pkl'}",
      f"--images_dir={tmp_path}",
      f"--index_dir={tmp_path / 'index'}",
      f"--features_dir={tmp_path}",
      f"--output_dir={tmp_path / 'out'}",
    ],
    timeout=300,
  )
  assert result.returncode == 2
  assert result.stderr.strip().startswith("error:") and "refused to load" in result.stderr
  assert "Traceback" not in result.stderr and not marker.exists()


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"qimlist": ["/abs/path"]}, "not a plain file name"),
    ({"qimlist": ["../../escape"]}, "not a plain file name"),
    ({"imlist": ["a", "sub/b", "c"]}, "not a plain file name"),
    ({"imlist": ["a", "a", "c"]}, "lists 'a' twice"),
    ({"gnd": ["not a dict"]}, "must be a dict"),
    ({"gnd": [{"bbx": [1.0, 2.0, 3.0], "easy": [0]}]}, "4 finite numbers"),
    ({"gnd": [{"bbx": [1.0, 2.0, np.nan, 4.0], "easy": [0]}]}, "4 finite numbers"),
    ({"gnd": [{"easy": [-1]}]}, "index out of range"),
    ({"gnd": [{"junk": [3]}]}, "index out of range"),
    ({"gnd": [{"easy": ["x"]}]}, "malformed"),
    ({"imlist": "abc"}, "must be a list"),
  ],
)
def test_malformed_revisited_files_give_clear_errors(tmp_path, changes, message):
  (tmp_path / "gnd_bad.pkl").write_bytes(pickle.dumps(_gnd(**changes)))
  with pytest.raises(GroundTruthError, match=message):
    read_revisited_gnd(tmp_path / "gnd_bad.pkl")


def test_a_pickle_that_is_not_a_dict_is_refused(tmp_path):
  (tmp_path / "gnd_list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
  with pytest.raises(GroundTruthError, match="expected a dict"):
    read_revisited_gnd(tmp_path / "gnd_list.pkl")


def _original(tmp_path, query_line):
  gt, images = tmp_path / "gt", tmp_path / "jpg"
  gt.mkdir()
  images.mkdir()
  for name in ("a", "b"):
    (images / f"{name}.jpg").write_bytes(b"")
  (gt / "x_1_query.txt").write_text(query_line + "\n")
  for kind, names in (("good", "b"), ("ok", ""), ("junk", "")):
    (gt / f"x_1_{kind}.txt").write_text(names + "\n")
  return gt, images


@pytest.mark.parametrize(
  "line, message",
  [
    ("oxc1_/abs/path 0 0 100 100", "not a plain file name"),
    ("oxc1_../a 0 0 100 100", "not a plain file name"),
    ("oxc1_a 0 0 100", "expected 'name x1 y1 x2 y2'"),
    ("oxc1_a 0 0 nan 100", "4 finite numbers"),
    ("oxc1_a 0 0 inf 100", "4 finite numbers"),
  ],
)
def test_original_query_files_with_paths_or_bad_boxes_are_refused(tmp_path, line, message):
  gt, images = _original(tmp_path, line)
  with pytest.raises(GroundTruthError, match=message):
    read_original_gt(gt, images)


def test_two_query_files_with_one_query_image_are_refused(tmp_path):
  gt, images = _original(tmp_path, "oxc1_a 0 0 10 10")
  (gt / "x_2_query.txt").write_text("oxc1_a 1 1 9 9\n")
  for kind in ("good", "ok", "junk"):
    (gt / f"x_2_{kind}.txt").write_text("b\n" if kind == "good" else "\n")
  with pytest.raises(GroundTruthError, match="already the query of another"):
    read_original_gt(gt, images)
