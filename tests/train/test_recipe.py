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


def test_training_facts_need_the_selfsup_time_file(tmp_path, capsys):
  (tmp_path / "default_model").mkdir()
  assert recipe.main(["facts", str(tmp_path), "12", "/data/train"]) == 1
  assert capsys.readouterr().err.startswith(f"error: {tmp_path / recipe.SELFSUP_TIME_FILE}")
  (tmp_path / "selfsup").mkdir()
  (tmp_path / recipe.SELFSUP_TIME_FILE).write_text('{"step": 8, "seconds": 31.5}')
  assert recipe.main(["facts", str(tmp_path), "12", "/data/train"]) == 0
  facts = json.loads((tmp_path / "default_model" / recipe.FACTS_FILE).read_text())
  assert json.loads(capsys.readouterr().out) == facts
  assert (facts["training_steps"], facts["training_wall_seconds"]) == (8, 31.5)
  assert (facts["script_wall_seconds_this_run"], facts["train_dir"]) == (12, "train")
  assert facts["cpu_cores"] == os.cpu_count()
  with pytest.raises(SystemExit):
    recipe.main(["facts", str(tmp_path), "not a number", "x"])
