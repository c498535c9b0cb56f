"""Calibration pairs (overlapping / unrelated training photos) on a hand-built folder tree."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from delf_ret.train.calibration import calibration_pairs
from delf_ret.train.calibration import calibration_photos
from delf_ret.train.calibration import threshold_above
from delf_ret.train.calibration import unrelated
from delf_ret.train.photos import TrainingDataError


def _photo(path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


@pytest.fixture
def folders(tmp_path):
  # landmarks/: 2 landmarks x 2 photos + an unlabelled row; scenes/: 2 scenes x 3 photos;
  # plain/: a camera sequence of 3 photos and a folder of 2 unrelated photos.
  rows = {"landmarks": [], "scenes": []}
  for name in ("tower", "bridge"):
    for i in range(2):
      _photo(tmp_path / "landmarks" / f"{name}{i}.jpg")
      rows["landmarks"].append(f"{name}{i}.jpg,{name}")
  _photo(tmp_path / "landmarks" / "who.jpg")
  rows["landmarks"].append("who.jpg,")
  for scene in ("s1", "s2"):
    for i in range(3):
      _photo(tmp_path / "scenes" / scene / f"{i}.jpg")
      rows["scenes"].append(f"{scene}/{i}.jpg,{scene}")
  (tmp_path / "landmarks" / "labels.csv").write_text(
    "image,landmark,source\n" + "\n".join(r + ",web" for r in rows["landmarks"]) + "\n"
  )
  (tmp_path / "scenes" / "labels.csv").write_text("image,scene\n" + "\n".join(rows["scenes"]))
  for i in range(3):
    _photo(tmp_path / "plain" / "castle" / "seq" / f"{i}.jpg")
  (tmp_path / "plain" / "castle" / "cameras.csv").write_text("image,scene\n")
  for i in range(2):
    _photo(tmp_path / "plain" / "coco" / f"{i}.jpg")
  return [tmp_path / "landmarks", tmp_path / "scenes", tmp_path / "plain"]


def test_groups_and_what_counts_as_unrelated(folders):
  root = folders[0].parent
  photos = {p.path.relative_to(root).as_posix(): p for p in calibration_photos(folders)}
  assert len(photos) == 4 + 6 + 5  # the unlabelled landmark row is left out
  tower, bridge = photos["landmarks/tower0.jpg"], photos["landmarks/bridge1.jpg"]
  s1, s2 = photos["scenes/s1/0.jpg"], photos["scenes/s2/2.jpg"]
  assert unrelated(tower, bridge)  # two landmarks are distinct things
  assert not unrelated(tower, photos["landmarks/tower1.jpg"])
  assert not unrelated(s1, s2)  # two scenes of one folder may neighbour
  assert unrelated(tower, s1)  # different folders
  coco = [photos["plain/coco/0.jpg"], photos["plain/coco/1.jpg"]]
  assert not unrelated(*coco) and not coco[0].overlapping
  castle = [photos[f"plain/castle/seq/{i}.jpg"] for i in range(3)]
  assert all(p.overlapping for p in castle) and len({p.group for p in castle}) == 1


def test_pairs_are_neighbours_or_unrelated_and_deterministic(folders):
  photos = calibration_photos(folders)
  overlapping, unrelated_pairs = calibration_pairs(photos, 100, 100, seed=0)
  # 2 scenes + 1 sequence of 3 photos: gaps 1, 2 -> 3 pairs each; 2 landmarks: 1 pair each.
  assert len(overlapping) == 11
  by_group = {p.path: (p.root, p.group) for p in calibration_photos(folders)}
  assert all(by_group[a] == by_group[b] and a != b for a, b in overlapping)
  by_path = {p.path: p for p in photos}
  assert unrelated_pairs and all(unrelated(by_path[a], by_path[b]) for a, b in unrelated_pairs)
  assert calibration_pairs(photos, 100, 100, seed=0) == (overlapping, unrelated_pairs)
  assert len(calibration_pairs(photos, 4, 5, seed=1)[1]) == 5


def test_threshold_is_one_above_the_most_unrelated_inliers():
  assert threshold_above([0, 3, 17, 2]) == 18
  assert threshold_above([0, 1]) == 4  # never below the published 4
  assert threshold_above([]) == 4


def test_missing_folder_and_bad_table_are_one_line_errors(tmp_path):
  with pytest.raises(TrainingDataError, match="not found"):
    calibration_photos([tmp_path / "missing"])
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "labels.csv").write_text("path;label\n")
  with pytest.raises(TrainingDataError, match=r"labels.csv: expected a header image,<label>"):
    calibration_photos([tmp_path / "bad"])
