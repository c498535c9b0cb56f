"""Recognition: recognize() on hand-built candidate lists, and the recognize tool end to end.

The end-to-end test uses the shipped default model (at a small image size) on the bundled
demo photos: a gallery of one photo per place (and an unlabelled distractor), queried with
the other photo of two places, two unrelated OpenCV photos and a corrupt file.
"""

import dataclasses
import json

import pytest

from conftest import BUNDLED_IMAGES
from conftest import installed_script
from conftest import run_command
from delf_ret.config import DelfRetrievalConfig
from delf_ret.retrieval.ranking import RankedImage
from delf_ret.retrieval.recognition import RecognitionResult
from delf_ret.retrieval.recognition import recognize
from delf_ret.retrieval.recognition import recognize_ranked

LABELS = {"a": "X", "b": "Y", "c": "X", "d": None}


def test_inliers_summed_per_label_over_the_top_k():
  candidates = [("a", 30), ("b", 50), ("c", 25), ("d", 100)]
  result = recognize(candidates, LABELS, top_k=3, min_score=22)
  assert result == RecognitionResult("X", 55.0, {"X": 55.0, "Y": 50.0})
  # Only the first two vote: Y's 50 beats X's 30.
  assert recognize(candidates, LABELS, top_k=2, min_score=22).label == "Y"
  # Below the threshold: "unknown", with the winner's score and the votes kept.
  below = recognize(candidates, LABELS, top_k=3, min_score=60)
  assert (below.label, below.score, below.votes) == (None, 55.0, {"X": 55.0, "Y": 50.0})
  # The threshold itself is enough.
  assert recognize(candidates, LABELS, top_k=3, min_score=55).label == "X"


def test_unlabelled_neighbours_take_a_place_but_vote_for_nothing():
  assert recognize([("d", 100), ("a", 30)], LABELS, top_k=1, min_score=0) == RecognitionResult(
    None, 0.0, {}
  )
  assert recognize([("d", 100), ("a", 30)], LABELS, top_k=2, min_score=0).label == "X"
  assert recognize([("unknown_id", 100)], LABELS, top_k=5, min_score=0).label is None
  assert recognize([], LABELS, top_k=5, min_score=0) == RecognitionResult(None, 0.0, {})


def test_a_tie_goes_to_the_label_ranked_first():
  assert recognize([("b", 20), ("a", 20)], LABELS, top_k=2, min_score=0).label == "Y"
  assert recognize([("a", 20), ("b", 20)], LABELS, top_k=2, min_score=0).label == "X"


def test_result_is_frozen_and_top_k_checked():
  result = recognize([("a", 30)], LABELS, top_k=1, min_score=0)
  with pytest.raises(dataclasses.FrozenInstanceError):
    result.label = "Y"  # type: ignore[misc]
  with pytest.raises(ValueError, match="top_k"):
    recognize([("a", 30)], LABELS, top_k=0, min_score=0)


def test_recognize_ranked_uses_only_verified_entries_and_the_config():
  config = DelfRetrievalConfig(min_inliers=20, recognition_top_k=2, recognition_min_score=30)
  ranked = [
    RankedImage("b", 9.0, 19),  # Not verified: below min_inliers.
    RankedImage("a", 8.0, 25),
    RankedImage("c", 7.0, 20),
    RankedImage("d", 6.0, None),  # Not reranked.
  ]
  assert recognize_ranked(ranked, LABELS, config) == RecognitionResult("X", 45.0, {"X": 45.0})
  assert recognize_ranked(ranked, LABELS, config, min_score=50.0).label is None


GALLERY = {
  "campus_building_1": "campus_building",
  "graffiti_1": "graffiti_wall",
  "roofs_1": "roofs",
  "leuven_a": "leuven_street",
  "opencv_home": "",
}
QUERIES = {
  "campus_building_2": "campus_building",
  "graffiti_3": "graffiti_wall",
  "opencv_messi5": "",
  "opencv_starry_night": "",
  "broken": "",
}
SMALL = "--config_override=max_image_size=320"  # The default model, on small images.


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
  root = tmp_path_factory.mktemp("gallery")
  (root / "photos").mkdir()
  for name in GALLERY:
    (root / "photos" / f"{name}.jpg").symlink_to(BUNDLED_IMAGES / f"{name}.jpg")
  (root / "gallery.csv").write_text(
    "image,label\n" + "".join(f"{n}.jpg,{label}\n" for n, label in GALLERY.items())
  )
  result = run_command(
    [
      installed_script("build_index"),
      f"--images_dir={root / 'photos'}",
      f"--labels_csv={root / 'gallery.csv'}",
      f"--features_dir={root / 'features'}",
      f"--index_dir={root / 'index'}",
      SMALL,
    ],
    timeout=600,
  )
  assert result.returncode == 0, result.stderr
  return root


@pytest.mark.slow
def test_recognize_tool_labels_landmarks_and_says_unknown_for_distractors(gallery, tmp_path):
  (tmp_path / "broken.jpg").write_bytes(b"not a photo")
  lines = [str(BUNDLED_IMAGES / f"{name}.jpg") for name in QUERIES if name != "broken"]
  (tmp_path / "queries.txt").write_text("\n".join([*lines, str(tmp_path / "broken.jpg")]) + "\n")
  (tmp_path / "truth.csv").write_text(
    "image,label\n" + "".join(f"{n}.jpg,{label}\n" for n, label in QUERIES.items())
  )
  result = run_command(
    [
      installed_script("recognize"),
      f"--index_dir={gallery / 'index'}",
      f"--features_dir={gallery / 'features'}",
      f"--list_images_path={tmp_path / 'queries.txt'}",
      f"--ground_truth_csv={tmp_path / 'truth.csv'}",
      f"--output_json={tmp_path / 'answers.json'}",
      f"--output_csv={tmp_path / 'answers.csv'}",
      "--calibrate",
      SMALL,
    ],
    timeout=600,
  )
  # The corrupt photo is reported in one line and skipped: exit status 1.
  assert result.returncode == 1, result.stderr
  assert "1 queries failed" in result.stderr and "broken.jpg: not an image" in result.stderr
  assert "Traceback" not in result.stderr
  printed = {line.split(": ")[0]: line for line in result.stdout.splitlines() if " (score " in line}
  answers = {
    name: printed[str(BUNDLED_IMAGES / f"{name}.jpg")].split(": ")[1].split(" (")[0]
    for name in QUERIES
    if name != "broken"
  }
  assert answers == {
    "campus_building_2": "campus_building",
    "graffiti_3": "graffiti_wall",
    "opencv_messi5": "unknown",
    "opencv_starry_night": "unknown",
  }
  data = json.loads((tmp_path / "answers.json").read_text())
  assert [q["label"] for q in data["queries"]] == ["campus_building", "graffiti_wall", None, None]
  assert data["queries"][0]["score"] >= 22 and data["queries"][0]["neighbours"][0][0] == (
    "campus_building_1"
  )
  assert data["failed"][0]["query"] == str(tmp_path / "broken.jpg")
  assert data["metrics"]["gap"] == 1.0 and data["metrics"]["accuracy"] == 1.0
  # Unknown: an empty label, apart from any gallery label (even one named "unknown").
  assert (tmp_path / "answers.csv").read_text().splitlines()[3].endswith("opencv_messi5.jpg,,0")
  assert "GAP 100.0%, accuracy 100.0%" in result.stdout
  assert "retrieval_config { recognition_min_score: " in result.stdout
  assert not (tmp_path / "answers.json.partial").exists()


@pytest.mark.slow
def test_recognize_one_distractor_photo_is_unknown(gallery):
  result = run_command(
    [
      installed_script("recognize"),
      f"--index_dir={gallery / 'index'}",
      f"--features_dir={gallery / 'features'}",
      f"--image={BUNDLED_IMAGES / 'opencv_building.jpg'}",
      SMALL,
    ],
    timeout=600,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().endswith("opencv_building.jpg: unknown (score 0)"), result.stdout
  usage = run_command([installed_script("recognize"), "--calibrate", "--image=x.jpg"], timeout=60)
  assert usage.returncode == 1 and "--index_dir is required" in usage.stderr
