"""The default-model recipe's Python steps (the script runs them end to end in
test_selfsup_training.py)."""

import json
import os

import pytest

from delf_ret.default_model import default_config_path
from delf_ret.train import recipe


def test_pca_photos_are_every_third_training_photo_beside_the_default_config(tmp_path):
  photos = tmp_path / "photos"
  (photos / "b").mkdir(parents=True)
  for name in ("a/0.jpg", "a/1.jpg", "a/2.jpg", "b/3.png", "b/4.jpg"):
    (photos / name).parent.mkdir(exist_ok=True)
    (photos / name).write_bytes(b"x")
  model_dir = tmp_path / "out" / "default_model"
  model_dir.mkdir(parents=True)
  assert recipe.main(["pca-photos", str(model_dir), str(photos)]) == 0
  listing = tmp_path / "out" / recipe.PCA_PHOTOS_FILE
  assert listing.read_text().splitlines() == [str(photos / "a/0.jpg"), str(photos / "b/3.png")]
  assert (model_dir / "delf_config.pbtxt").read_text() == default_config_path().read_text()


def test_training_facts_need_every_stage_time_file(tmp_path, capsys):
  (tmp_path / "default_model").mkdir()
  data = tmp_path / "data"
  (data / "train").mkdir(parents=True)
  (data / "train_landmarks").mkdir()
  assert recipe.main(["facts", str(tmp_path), "12", str(data)]) == 1
  missing = tmp_path / "selfsup" / "selfsup_time.json"
  assert capsys.readouterr().err.startswith(f"error: {missing} not found")
  for stage, times in (
    ("selfsup", '{"step": 8, "seconds": 31.5}'),
    ("tuning", '{"step": 4, "seconds": 10.0}'),
    ("attention", '{"step": 2, "seconds": 3.25}'),
  ):
    (tmp_path / stage).mkdir()
    (tmp_path / stage / f"{stage}_time.json").write_text(times)
  assert recipe.main(["facts", str(tmp_path), "12", str(data)]) == 0
  facts = json.loads((tmp_path / "default_model" / recipe.FACTS_FILE).read_text())
  assert json.loads(capsys.readouterr().out) == facts
  assert (facts["training_steps"], facts["training_wall_seconds"]) == (14, 44.8)
  assert facts["stages"]["tuning"] == {"step": 4, "seconds": 10.0}
  assert facts["train_folders"] == ["train", "train_landmarks"]
  assert facts["script_wall_seconds_this_run"] == 12
  assert facts["cpu_cores"] == os.cpu_count()
  # Started from an existing self-supervised model: that stage names it and adds no steps.
  (tmp_path / "selfsup" / "selfsup_time.json").unlink()
  args = ["facts", str(tmp_path), "5", str(data), "--selfsup_model", "/m/selfsup.npz"]
  assert recipe.main(args) == 0
  facts = json.loads(capsys.readouterr().out)
  assert facts["stages"]["selfsup"] == {"model": "/m/selfsup.npz"}
  assert facts["training_steps"] == 6
  # --no_tuning: no tuning folder at all; the stage is recorded as skipped.
  import shutil

  shutil.rmtree(tmp_path / "tuning")
  assert recipe.main(args) == 0
  facts = json.loads(capsys.readouterr().out)
  assert facts["stages"]["tuning"] == {"skipped": True}
  assert facts["training_steps"] == 2
  with pytest.raises(SystemExit):
    recipe.main(["facts", str(tmp_path), "not a number", "x"])


def test_selfsup_photos_list_every_training_folder(tmp_path, capsys):
  data = tmp_path / "data"
  for name in (
    "train/a/0.jpg",
    "train_objects/1.jpg",
    "train_landmarks/w/2.png",
    "landmarks/3.jpg",
  ):
    (data / name).parent.mkdir(parents=True, exist_ok=True)
    (data / name).write_bytes(b"x")
  listing = tmp_path / "photos.txt"
  assert recipe.main(["selfsup-photos", str(data), str(listing)]) == 0
  # Evaluation folders (landmarks/) are never listed.
  assert listing.read_text().splitlines() == [
    str(data / "train/a/0.jpg"),
    str(data / "train_objects/1.jpg"),
    str(data / "train_landmarks/w/2.png"),
  ]
  assert capsys.readouterr().out == f"3 training photos listed in {listing}\n"
  assert recipe.main(["selfsup-photos", str(tmp_path / "none"), str(listing)]) == 1
  assert "none of the training folders" in capsys.readouterr().err
