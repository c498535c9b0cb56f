"""Ground-truth readers on small fixtures written in the published layouts."""

import pickle

import numpy as np
import pytest

from delf_ret.evaluation.ground_truth import GroundTruthError
from delf_ret.evaluation.ground_truth import read_original_gt
from delf_ret.evaluation.ground_truth import read_revisited_gnd
from delf_ret.evaluation.metrics import evaluate_revisited


@pytest.fixture
def oxford_layout(tmp_path):
  images = tmp_path / "jpg"
  images.mkdir()
  for name in ("all_souls_000001", "all_souls_000002", "radcliffe_000001", "magdalen_000007"):
    (images / f"{name}.jpg").write_bytes(b"")
  gt = tmp_path / "gt"
  gt.mkdir()
  (gt / "all_souls_1_query.txt").write_text("oxc1_all_souls_000001 136.5 34.1 648.5 955.7\n")
  (gt / "all_souls_1_good.txt").write_text("all_souls_000002\n")
  (gt / "all_souls_1_ok.txt").write_text("all_souls_000001\n")
  (gt / "all_souls_1_junk.txt").write_text("magdalen_000007\n")
  return gt, images


def test_original_layout(oxford_layout):
  gt, images = oxford_layout
  dataset = read_original_gt(gt, images)
  assert dataset.imlist == [
    "all_souls_000001",
    "all_souls_000002",
    "magdalen_000007",
    "radcliffe_000001",
  ]
  assert dataset.qimlist == ["all_souls_000001"]
  entry = dataset.gnd[0]
  assert list(entry["good"]) == [1] and list(entry["ok"]) == [0] and list(entry["junk"]) == [2]
  np.testing.assert_allclose(entry["bbx"], [136.5, 34.1, 648.5, 955.7])
  assert dataset.image_path("all_souls_000002") == images / "all_souls_000002.jpg"


def test_original_layout_errors(oxford_layout, tmp_path):
  gt, images = oxford_layout
  (gt / "all_souls_1_junk.txt").write_text("not_in_database\n")
  with pytest.raises(GroundTruthError, match="not in"):
    read_original_gt(gt, images)
  (gt / "all_souls_1_junk.txt").unlink()
  with pytest.raises(GroundTruthError, match="missing ground-truth file"):
    read_original_gt(gt, images)
  with pytest.raises(GroundTruthError, match="no \\*_query.txt"):
    read_original_gt(tmp_path / "jpg", images)


def test_revisited_layout_and_evaluation(tmp_path):
  data = {
    "imlist": ["a", "b", "c", "d"],
    "qimlist": ["q1", "q2"],
    "gnd": [
      {"bbx": [1.0, 2.0, 30.0, 40.0], "easy": [0], "hard": [1], "junk": [2]},
      {"bbx": [0.0, 0.0, 5.0, 5.0], "easy": [], "hard": [3], "junk": []},
    ],
  }
  path = tmp_path / "gnd_roxford5k.pkl"
  path.write_bytes(pickle.dumps(data))
  dataset = read_revisited_gnd(path, tmp_path / "jpg")
  assert dataset.name == "roxford5k" and dataset.protocol == "revisited"
  assert dataset.image_path("a") == tmp_path / "jpg" / "a.jpg"
  metrics = evaluate_revisited([np.array([0, 1, 2, 3]), np.array([3, 2, 1, 0])], dataset.gnd)
  assert metrics["easy"].num_queries == 1
  assert metrics["hard"].mean_ap == pytest.approx(1.0)


def test_revisited_errors(tmp_path):
  with pytest.raises(GroundTruthError, match="not found"):
    read_revisited_gnd(tmp_path / "gnd_x.pkl")
  (tmp_path / "bad.pkl").write_bytes(b"garbage")
  with pytest.raises(GroundTruthError, match="not a readable ground-truth pickle"):
    read_revisited_gnd(tmp_path / "bad.pkl")
  (tmp_path / "keys.pkl").write_bytes(pickle.dumps({"imlist": []}))
  with pytest.raises(GroundTruthError, match="missing keys"):
    read_revisited_gnd(tmp_path / "keys.pkl")
