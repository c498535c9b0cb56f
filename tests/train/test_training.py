"""Both training stages from the shell scripts, resume after a kill, distribution.

The data is a tiny GLDv2-layout copy of the shared landmark photos; crops are
64 px and the backbone starts from random weights so each step stays fast.
"""

import math
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from conftest import kill_after_checkpoint
from conftest import run_command
from conftest import tool_env
from conftest import write_gldv2_layout

# Every test here runs training or a script in a subprocess.
pytestmark = pytest.mark.slow

TINY = [
  "--config_override=batch_size=4",
  "--config_override=image_size=64",
  "--config_override=backbone_weights=random",
  "--config_override=summary_every=1",
  "--config_override=save_every=2",
  "--config_override=shuffle_buffer=16",
]
ENV = tool_env()


@pytest.fixture(scope="module")
def shards(tmp_path_factory, shared_data):
  from delf_ret.train.gldv2 import prepare_gldv2

  root = tmp_path_factory.mktemp("gldv2")
  layout = write_gldv2_layout(root / "gldv2", shared_data)
  prepare_gldv2(
    layout["csv"], layout["train"], root / "shards", num_shards=2, log=lambda line: None
  )
  return root / "shards"


def run_script(name, *args):
  return run_command(["bash", str(REPO / "scripts" / name), *map(str, args)], timeout=900, env=ENV)


def test_scripts_print_usage_on_bad_arguments(tmp_path):
  for name, args in (
    ("train_tuning.sh", ["only_data"]),
    ("train_attention.sh", [tmp_path, tmp_path / "no_tuning", tmp_path / "o"]),
    ("run_train.sh", []),
  ):
    result = run_script(name, *args)
    assert result.returncode == 2 and "Usage:" in result.stdout, (name, result.stderr)


@pytest.fixture(scope="module")
def trained_run(shards, tmp_path_factory):
  """Both stages, 3 steps each, through scripts/run_train.sh with NUM_DEVICES 2 (the mirrored
  strategy on two CPU devices): (output folder, process result). The single-device default
  strategy is the killed-and-resumed run's (test_killed_run_resumes_at_the_saved_step)."""
  run = tmp_path_factory.mktemp("train") / "run"
  result = run_script("run_train.sh", shards, run, 2, *TINY, "--config_override=max_steps=3")
  assert result.returncode == 0, result.stderr[-3000:]
  return run, result


def test_run_train_both_stages_on_two_devices_then_frozen_backbone(trained_run):
  from delf_ret.model import load_delf_model

  run, result = trained_run
  assert "done: tuning at step 3" in result.stdout
  assert "initialised from the tuning checkpoint" in result.stdout
  assert "done: attention at step 3" in result.stdout
  # Both stages ran mirrored on the two CPU devices.
  assert result.stdout.count("2 replica(s), global batch 4, per-replica batch 2") == 2
  tuning = load_delf_model(run / "tuning" / "delf_model.keras")
  attention = load_delf_model(run / "attention" / "delf_model.keras")
  for a, b in zip(tuning.backbone.weights, attention.backbone.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())  # Backbone frozen in stage 2.
  changed = [
    not np.array_equal(a.numpy(), b.numpy())
    for a, b in zip(tuning.attention_conv2.weights, attention.attention_conv2.weights)
  ]
  assert any(changed)  # The attention head was trained.
  assert list((run / "tuning" / "tensorboard" / "tuning").glob("events.out.*"))


def test_attention_without_tuning_keeps_the_given_models_backbone(shards, tmp_path):
  from delf_ret.config import load_training_config
  from delf_ret.default_model import WEIGHTS_FILE
  from delf_ret.default_model import default_model_dir
  from delf_ret.model import load_delf_model
  from delf_ret.train.trainer import TrainingError
  from delf_ret.train.trainer import train_stage

  # Neither a tuning folder nor a model to keep: refused before any work (in this process;
  # train_delf turns a TrainingError into one line, see test_selfsup_training).
  config = load_training_config(
    None, [flag.split("=", 1)[1] for flag in TINY] + ["attention_max_steps=2"]
  )
  with pytest.raises(TrainingError) as refused:
    train_stage("attention", shards, tmp_path / "refused", config, log=lambda line: None)
  assert str(refused.value) == (
    "the attention stage needs the tuning output folder (init_from) or "
    "backbone_weights naming the weights its backbone keeps"
  )
  assert not (tmp_path / "refused").exists()
  weights = default_model_dir() / WEIGHTS_FILE
  args = [sys.executable, "-m", "delf_ret.cli.train_delf", "--stage=attention"]
  args += [f"--data_dir={shards}", f"--output_dir={tmp_path / 'attention'}", *TINY]
  given = f"--config_override=backbone_weights={weights}"
  result = run_command(
    [*args, "--config_override=attention_max_steps=2", given], timeout=900, env=ENV
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "done: attention at step 2" in result.stdout
  shipped = load_delf_model(weights)
  trained = load_delf_model(tmp_path / "attention" / "delf_model.keras")
  for a, b in zip(shipped.backbone.weights, trained.backbone.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_export_gives_the_checkpoint_features_then_compute_pca(trained_run, tmp_path, shared_data):
  from conftest import make_config_text
  from delf_ret.config import parse_config_text
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.images import load_image

  run, _ = trained_run
  checkpoint = run / "attention" / "delf_model.keras"
  result = run_script("export_model.sh", checkpoint, tmp_path / "saved")
  assert result.returncode == 0, result.stderr[-3000:]
  image = load_image(shared_data / "landmarks" / "sacre_coeur_lightglue1.jpg")
  features = []
  for model_path in (checkpoint, tmp_path / "saved"):
    config = parse_config_text(make_config_text(model_path, tmp_path / "pca", use_pca=False))
    features.append(DelfExtractor(config).extract(image))
  from_checkpoint, from_saved = features
  assert from_checkpoint.num_features == from_saved.num_features > 0
  np.testing.assert_allclose(from_saved.locations, from_checkpoint.locations, atol=1e-4)
  np.testing.assert_array_equal(from_saved.scales, from_checkpoint.scales)
  np.testing.assert_allclose(from_saved.attention, from_checkpoint.attention, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(from_saved.descriptors, from_checkpoint.descriptors, atol=1e-4)
  # compute_pca.sh writes the PCA files where the config points, using the SavedModel.
  config_path = tmp_path / "pca_config.pbtxt"
  config_path.write_text(make_config_text(tmp_path / "saved", tmp_path / "pca"))
  result = run_script(
    "compute_pca.sh", tmp_path / "saved", config_path, shared_data / "landmarks", 3
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(p.name for p in (tmp_path / "pca").iterdir()) == [
    "pca_mean.npy",
    "pca_projection.npy",
    "pca_variances.npy",
  ]


def test_killed_run_resumes_at_the_saved_step_and_equals_an_uninterrupted_run(shards, tmp_path):
  from delf_ret.config import load_training_config
  from delf_ret.model import load_delf_model
  from delf_ret.train.trainer import train_stage

  out = tmp_path / "tuning"
  command = [
    sys.executable,
    "-m",
    "delf_ret.cli.train_delf",
    "--stage=tuning",
    f"--data_dir={shards}",
    f"--output_dir={out}",
    *TINY,
    "--config_override=max_steps=50",
  ]
  # The checkpoint state file, written after ckpt-2's index: killed in between, there is
  # nothing to resume from.
  kill_after_checkpoint(command, out / "checkpoints" / "checkpoint", env=ENV)
  import tensorflow as tf

  saved_step = int(tf.train.latest_checkpoint(str(out / "checkpoints")).rsplit("-", 1)[1])
  assert saved_step >= 2
  result = run_command([*command, "--num_steps=1"], timeout=600, env=ENV)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "1 replica(s), global batch 4, per-replica batch 4" in result.stdout  # One device.
  assert f"at step {saved_step}" in result.stdout  # "resumed from ... at step N"
  assert f"done: tuning at step {saved_step + 1}" in result.stdout
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(out / "checkpoints")))
  iterations = [name for name in reader.get_variable_to_shape_map() if "iterations" in name]
  assert iterations and int(reader.get_tensor(iterations[0])) == saved_step + 1
  # Killed and resumed, the run ends where an uninterrupted one does (same weights, same
  # input position: the iterator is in the checkpoint). The uninterrupted run in this process.
  config = load_training_config(None, [flag.split("=", 1)[1] for flag in TINY] + ["max_steps=50"])
  straight = train_stage(
    "tuning", shards, tmp_path / "straight", config, num_steps=saved_step + 1, log=lambda _: None
  )
  assert straight.step == saved_step + 1
  resumed_loss = re.search(rf"done: tuning at step {saved_step + 1}, loss (\S+)", result.stdout)
  assert resumed_loss and float(resumed_loss[1]) == pytest.approx(straight.loss, abs=2e-4)
  resumed_model = load_delf_model(out / "delf_model.keras")
  straight_model = load_delf_model(tmp_path / "straight" / "delf_model.keras")
  assert len(resumed_model.weights) == len(straight_model.weights) > 0
  for a, b in zip(resumed_model.weights, straight_model.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
  # Run again with the stage finished: no step taken, no loss to report (train_delf's
  # "nothing left to train": test_selfsup_training's recipe run, third time through).
  config = load_training_config(
    None, [flag.split("=", 1)[1] for flag in TINY] + [f"max_steps={saved_step + 1}"]
  )
  lines = []
  finished = train_stage("tuning", shards, out, config, log=lines.append)
  assert finished.step == saved_step + 1 and math.isnan(finished.loss), lines
  assert any(f"at step {saved_step + 1}" in line for line in lines)  # Resumed, nothing run.


def free_port():
  import socket

  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def test_multi_worker_on_two_local_processes(shards, tmp_path):
  import json

  workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
  processes = []
  for index in range(2):
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    processes.append(
      subprocess.Popen(
        [
          sys.executable,
          "-m",
          "delf_ret.cli.train_delf",
          "--stage=tuning",
          f"--data_dir={shards}",
          f"--output_dir={tmp_path / 'run'}",
          "--strategy=multi_worker",
          *TINY,
          "--config_override=max_steps=2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        env=dict(ENV, TF_CONFIG=json.dumps(tf_config)),
      )
    )
  outputs = [process.communicate(timeout=600) for process in processes]
  for process, (stdout, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-3000:]
  assert "2 replica(s), global batch 4, per-replica batch 2" in outputs[0][0]
  assert "done: tuning at step 2" in outputs[0][0] and "done: tuning at step 2" in outputs[1][0]
  assert (tmp_path / "run" / "delf_model.keras").is_file()
  assert (tmp_path / "run" / "checkpoints" / "ckpt-2.index").is_file()
  assert (tmp_path / "run" / "worker_1_checkpoints" / "ckpt-2.index").is_file()
