"""The self-supervised stage from its script: killed, resumed at the saved step, packaged;
the recipe's deterministic training gives the same weights again."""

import json
import os
import shutil

import numpy as np
import pytest

from conftest import REPO
from conftest import kill_after_checkpoint
from conftest import run_command
from conftest import tool_env

TINY = [
  "--config_override=selfsup.crop_size=64",
  "--config_override=selfsup.pairs_per_batch=2",
  "--config_override=selfsup.max_steps=6",
  "--config_override=selfsup.attention_steps=2",
  "--config_override=selfsup.warmup_steps=1",
  "--config_override=selfsup.photo_max_side=256",
  "--config_override=selfsup.use_skimage_photos=false",
  "--config_override=save_every=2",
  "--config_override=summary_every=1",
]
ENV = tool_env()
SCRIPT = REPO / "scripts" / "train_default_model.sh"
RECIPE = REPO / "configs" / "delf_default_model.pbtxt"


def train_selfsup(photos, output_dir, *flags, timeout):
  """``train_delf --stage=selfsup`` with the recipe's config, from ``photos`` into ``output_dir``."""
  command = ["train_delf", "--stage=selfsup", f"--photos={photos}", f"--output_dir={output_dir}"]
  return run_command([*command, f"--config_path={RECIPE}", *flags], timeout=timeout, env=ENV)


def model_weights(path) -> list[np.ndarray]:
  import keras

  import delf_ret.model  # noqa: F401  (registers the model's classes)

  return keras.models.load_model(path, compile=False).get_weights()


def assert_same_weights(path_a, path_b) -> None:
  first, second = model_weights(path_a), model_weights(path_b)
  assert len(first) == len(second) > 0
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_usage_on_bad_arguments(tmp_path):
  result = run_command(
    ["bash", str(SCRIPT), str(tmp_path / "missing"), str(tmp_path)], timeout=None, env=ENV
  )
  assert result.returncode == 2 and "Usage:" in result.stdout
  assert "photo folder not found" in result.stderr


@pytest.mark.slow
def test_killed_run_resumes_at_the_saved_step_and_packages_a_loadable_model(tmp_path, shared_data):
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ("0000.jpg", "0001.jpg", "0002.jpg", "0003.jpg"):  # Overlapping views.
    shutil.copyfile(shared_data / "train" / "strecha" / "fountain-P11" / name, photos / name)
  out = tmp_path / "run"
  command = ["bash", str(SCRIPT), str(photos), str(out), *TINY]
  checkpoints = out / "selfsup" / "checkpoints"
  kill_after_checkpoint(command, checkpoints / "ckpt-2.index", env=ENV)
  import tensorflow as tf

  saved_step = int(tf.train.latest_checkpoint(str(checkpoints)).rsplit("-", 1)[1])
  assert 2 <= saved_step < 8
  result = run_command(command, timeout=900, env=ENV)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"at step {saved_step}" in result.stdout  # "resumed from ... at step N"
  assert "selfsup step 8/8: attention" in result.stdout  # The attention phase ran.
  assert "done: selfsup at step 8" in result.stdout
  # Killed and resumed, the recipe's deterministic training ends where an uninterrupted run does.
  straight = tmp_path / "straight"
  result = train_selfsup(photos, straight, *TINY, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_same_weights(out / "selfsup" / "delf_model.keras", straight / "delf_model.keras")

  from delf_ret.config import load_config
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.images import load_image

  model_dir = out / "default_model"
  assert sorted(p.name for p in model_dir.iterdir()) == [
    "TRAINING.json",
    "delf_config.pbtxt",
    "delf_default.npz",
    "pca_mean.npy",
    "pca_projection.npy",
    "pca_variances.npy",
  ]
  facts = json.loads((model_dir / "TRAINING.json").read_text())
  assert facts["training_steps"] == 8 and facts["training_wall_seconds"] > 0
  assert facts["cpu_cores"] == os.cpu_count() and isinstance(facts["cpu_model"], str)
  assert facts["libraries"]["tensorflow"] == tf.__version__
  extractor = DelfExtractor(
    load_config(
      model_dir / "delf_config.pbtxt", ["max_image_size=256", "delf_local_config.score_threshold=0"]
    )
  )
  features = extractor.extract(load_image(photos / "0000.jpg"))
  assert features.num_features > 0 and features.descriptor_dim == 40
  assert np.isfinite(features.descriptors).all()


@pytest.mark.slow
def test_recipe_reruns_to_the_same_weights(tmp_path, shared_data):
  """Two runs of the recipe at its real batch size give bit-identical weights.

  Without the config's ``deterministic: true`` such runs on 2 cores already
  differ in their fourth step's loss (ops running side by side sum in varying
  order) and drift apart over the 2000 steps of a full run.
  """
  photos = shared_data / "train" / "strecha" / "fountain-P11"
  runs = []
  for name in ("first", "second"):
    out = tmp_path / name
    result = train_selfsup(
      photos,
      out,
      "--num_steps=4",
      "--config_override=selfsup.use_skimage_photos=false",
      timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: selfsup at step 4" in result.stdout
    assert "selfsup: deterministic training (TensorFlow op determinism" in result.stdout
    runs.append(out / "delf_model.keras")
  assert_same_weights(*runs)


@pytest.mark.slow
def test_deterministic_training_refuses_several_devices(tmp_path):
  result = train_selfsup(
    tmp_path, tmp_path / "run", "--strategy=mirrored", "--num_devices=2", timeout=None
  )
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
    "error: deterministic training runs on one device: use --strategy default, or "
    "--config_override=deterministic=false for --strategy mirrored"
  )


def test_determinism_asked_for_after_tensorflow_started_is_a_package_error():
  import tensorflow as tf

  from delf_ret.train.trainer import TrainingError
  from delf_ret.train.trainer import set_determinism

  assert float(tf.constant(1.0) + 1.0) == 2.0  # The runtime has started in this process.
  assert tf.config.threading.get_inter_op_parallelism_threads() != 1
  with pytest.raises(TrainingError, match="must take effect before TensorFlow starts"):
    set_determinism(True)
  from tensorflow.python.framework import config as tf_config  # No public reader in TF 2.21.

  assert not tf_config.is_op_determinism_enabled()  # Nothing half-set.
  set_determinism(False)  # Off: nothing to do, no error.
