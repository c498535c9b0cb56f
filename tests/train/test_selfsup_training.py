"""The default-model recipe from its script: killed in the self-supervised and the tuning
stage, resumed at the saved steps, packaged; its deterministic training gives the same
weights again."""

import json
import os
import shutil
import subprocess

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


def selfsup_command(photos, output_dir, *flags) -> list[str]:
  """``train_delf --stage=selfsup`` with the recipe's config, from ``photos`` into ``output_dir``."""
  command = ["train_delf", "--stage=selfsup", f"--photos={photos}", f"--output_dir={output_dir}"]
  return [*command, f"--config_path={RECIPE}", *flags]


def train_selfsup(photos, output_dir, *flags, timeout):
  return run_command(selfsup_command(photos, output_dir, *flags), timeout=timeout, env=ENV)


@pytest.fixture
def background():
  """Processes a test starts beside its other work; those still running at its end are killed."""
  processes: list[subprocess.Popen] = []
  yield processes
  for process in processes:
    if process.poll() is None:
      process.kill()
      process.wait()


def start_selfsup(background, photos, output_dir, *flags) -> subprocess.Popen:
  """:func:`selfsup_command` started in the background (to run beside other work), listed in
  ``background`` (the fixture); see :func:`finish`."""
  process = subprocess.Popen(
    selfsup_command(photos, output_dir, *flags),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    stdin=subprocess.DEVNULL,
    text=True,
    env=ENV,
  )
  background.append(process)
  return process


def finish(process: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
  """Waits for a :func:`start_selfsup` process: its completed process (output captured)."""
  try:
    stdout, stderr = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    raise
  return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def model_weights(path) -> list[np.ndarray]:
  import keras

  import delf_ret.model  # noqa: F401  (registers the model's classes)

  return keras.models.load_model(path, compile=False).get_weights()


def assert_same_weights(path_a, path_b) -> None:
  first, second = model_weights(path_a), model_weights(path_b)
  assert len(first) == len(second) > 0
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)


# The tuning and attention stages of the recipe, at test size.
TINY_STAGES = [
  "--config_override=batch_size=4",
  "--config_override=image_size=64",
  "--config_override=max_steps=4",
  "--config_override=attention_max_steps=2",
  "--config_override=shuffle_buffer=16",
]


PHOTO_SIDE = 320  # Longest side of recipe_data's photos (selfsup.photo_max_side is 256).


def recipe_data(root, shared_data):
  """A DATA_DIR at test size: train/ (4 overlapping Strecha photos), train_sequences/ (the
  same 4 as one scene) and train_landmarks/ (5 photos of each of 3 landmarks, +2), each
  scaled down to PHOTO_SIDE px at most."""
  from test_labelled_photos import photo_folder

  for folder in ("train/fountain", "train_sequences/fountain"):
    (root / folder).mkdir(parents=True)
    for name in ("0000.jpg", "0001.jpg", "0002.jpg", "0003.jpg"):  # Overlapping views.
      shutil.copyfile(
        shared_data / "train" / "strecha" / "fountain-P11" / name, root / folder / name
      )
  rows = "".join(f"fountain/000{i}.jpg,fountain,strecha\n" for i in range(4))
  (root / "train_sequences" / "labels.csv").write_text("image,scene,source\n" + rows)
  photo_folder(root / "train_landmarks", shared_data, header=("image", "landmark", "source"))
  # Photos of at most PHOTO_SIDE px: the recipe's steps after training (PCA, calibration,
  # validation) extract features with the packaged config (up to 1024 px, 5 scales); on the
  # full-size photos that was about a fifth of this test's CPU time.
  from PIL import Image

  for path in root.glob("train*/**/*.jpg"):
    with Image.open(path) as photo:
      photo.load()
      small = photo.convert("RGB")
    small.thumbnail((PHOTO_SIDE, PHOTO_SIDE))
    small.save(path, quality=95)
  return root


@pytest.mark.slow
def test_usage_on_bad_arguments(tmp_path):
  result = run_command(
    ["bash", str(SCRIPT), str(tmp_path / "missing"), str(tmp_path)], timeout=None, env=ENV
  )
  assert result.returncode == 2 and "Usage:" in result.stdout
  assert f"photo folder not found: {tmp_path / 'missing'}/train" in result.stderr
  (tmp_path / "data" / "train").mkdir(parents=True)
  (tmp_path / "data" / "train_landmarks").mkdir()
  result = run_command(
    ["bash", str(SCRIPT), str(tmp_path / "data"), str(tmp_path / "out"), "--selfsup_model=x.npz"],
    timeout=None,
    env=ENV,
  )
  assert result.returncode == 2 and "selfsup model not found: x.npz" in result.stderr


@pytest.mark.slow
def test_killed_recipe_resumes_each_stage_and_packages_a_loadable_model(
  tmp_path, shared_data, background
):
  data = recipe_data(tmp_path / "data", shared_data)
  out = tmp_path / "run"
  command = ["bash", str(SCRIPT), str(data), str(out), *TINY, *TINY_STAGES]
  # Killed in the self-supervised stage, then in the tuning stage; the third run finishes.
  # Killed once the checkpoint state file names ckpt-2: killed after the index but before
  # that file, the run has no checkpoint to resume from (seen on a loaded machine).
  kill_after_checkpoint(command, out / "selfsup" / "checkpoints" / "checkpoint", env=ENV)
  # The uninterrupted selfsup run to compare with (below) runs beside the rest of the recipe.
  straight = tmp_path / "straight"
  straight_run = start_selfsup(background, out / "selfsup_photos.txt", straight, *TINY)
  kill_after_checkpoint(command, out / "tuning" / "checkpoints" / "checkpoint", env=ENV)
  import tensorflow as tf

  tuning_step = int(
    tf.train.latest_checkpoint(str(out / "tuning" / "checkpoints")).rsplit("-", 1)[1]
  )
  assert 2 <= tuning_step < 4
  result = run_command(command, timeout=900, env=ENV)
  assert result.returncode == 0, result.stderr[-3000:]
  # The selfsup stage finished in the second run: train_delf says there is nothing left.
  assert "done: selfsup at step 8, nothing left to train" in result.stdout
  assert f"at step {tuning_step}" in result.stdout  # "resumed from ... at step N"
  assert "done: tuning at step 4" in result.stdout
  assert "initialised from the tuning checkpoint" in result.stdout
  assert "done: attention at step 2" in result.stdout
  # Killed and resumed, the recipe's deterministic training ends where an uninterrupted run does.
  result = finish(straight_run, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "done: selfsup at step 8" in result.stdout
  assert_same_weights(out / "selfsup" / "delf_model.keras", straight / "delf_model.keras")
  check_packaged_model(out, data)


def check_packaged_model(out, data) -> None:
  """The recipe's default_model folder: every file, its facts and usable features."""
  import tensorflow as tf

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
  assert [facts["stages"][s]["step"] for s in ("selfsup", "tuning", "attention")] == [8, 4, 2]
  assert facts["training_steps"] == 14 and facts["training_wall_seconds"] > 0
  assert facts["train_folders"] == ["train", "train_sequences", "train_landmarks"]
  assert facts["cpu_cores"] == os.cpu_count() and isinstance(facts["cpu_model"], str)
  assert facts["libraries"]["tensorflow"] == tf.__version__
  config_text = (model_dir / "delf_config.pbtxt").read_text()
  assert "Chosen by scripts/calibrate_matching.py" in config_text and "min_inliers:" in config_text
  validation = json.loads((out / "validation.json").read_text())
  assert (validation["photos"], validation["labels"], validation["queries"]) == (3, 3, 0)
  extractor = DelfExtractor(
    load_config(
      model_dir / "delf_config.pbtxt", ["max_image_size=256", "delf_local_config.score_threshold=0"]
    )
  )
  features = extractor.extract(load_image(data / "train" / "fountain" / "0000.jpg"))
  assert features.num_features > 0 and features.descriptor_dim == 40
  assert np.isfinite(features.descriptors).all()


@pytest.mark.slow
def test_recipe_reruns_to_the_same_weights(tmp_path, shared_data, background):
  """Two runs of the recipe at its real batch size give bit-identical weights.

  Without the config's ``deterministic: true`` such runs on 2 cores already
  differ in their fourth step's loss (ops running side by side sum in varying
  order) and drift apart over the 2000 steps of a full run.
  """
  photos = shared_data / "train" / "strecha" / "fountain-P11"
  flags = ["--num_steps=4", "--config_override=selfsup.use_skimage_photos=false"]
  # Side by side: two processes (nothing shared but the photos), half the waiting on 2 cores.
  started = [
    start_selfsup(background, photos, tmp_path / name, *flags) for name in ("first", "second")
  ]
  runs = []
  for name, process in zip(("first", "second"), started):
    out = tmp_path / name
    result = finish(process, timeout=900)
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
