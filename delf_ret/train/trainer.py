"""The training loop of both DELF stages, on one or many devices or machines.

Stage "tuning": backbone + tuning classifier, cross-entropy on the globally
average-pooled conv4 features. Stage "attention": starts from the tuning
stage's weights, freezes the backbone (its batch norms in inference mode) and
trains the attention head + attention classifier on attention-weighted pooled
features (loss scaled by attention_loss_weight).

Everything a run needs to continue lives in ``<output_dir>/checkpoints``
(tf.train.CheckpointManager): model weights, optimizer state (its step counter
is the global step) and the input iterator position. With several machines,
each reads its own shard of the records and the other workers keep their
checkpoints (with their own input position) in ``worker_<i>_checkpoints``. Running the same command
again resumes at the saved step with the same next batches. TensorBoard logs
go to ``<output_dir>/tensorboard``; the final model to
``<output_dir>/delf_model.keras``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Callable

import keras
import tensorflow as tf

from delf_ret.config import DelfTrainingConfig
from delf_ret.errors import DelfRetError
from delf_ret.model import DelfModel, save_delf_model
from delf_ret.train.gldv2 import SPLIT_FILE
from delf_ret.train.pipeline import make_dataset

STAGES = ("tuning", "attention")
MODEL_FILE = "delf_model.keras"


class TrainingError(DelfRetError):
  """Training cannot start (missing data, missing tuning checkpoint...)."""


@dataclasses.dataclass
class TrainingResult:
  """Where a run stopped: the global step, the last loss and accuracy, the model file.

  ms_per_step: mean wall time of this run's steps after its first (which
  includes tracing); NaN with fewer than two steps.
  """

  step: int
  loss: float
  accuracy: float
  model_path: pathlib.Path | None
  ms_per_step: float = float("nan")


def set_determinism(enabled: bool, strategy_kind: str = "default") -> None:
  """Makes this process's training bit-reproducible (config field ``deterministic``).

  TensorFlow's op determinism plus one inter-op thread: on CPU, ops that run
  side by side sum into shared buffers in whatever order they finish, so two
  runs drift apart by rounding within a few steps; one at a time (each still
  on every core), the same seed, photos, library versions, CPU type and core
  count give the same weights. Call before any other TensorFlow work, i.e.
  before :func:`make_strategy` (train_delf does); calling it again is harmless.
  strategy_kind: that function's ``kind``; only "default" (one device) is
  allowed with ``enabled``.
  """
  if not enabled:
    return
  if strategy_kind != "default":
    raise TrainingError(
      f"deterministic training runs on one device: use --strategy default, "
      f"or --config_override=deterministic=false for --strategy {strategy_kind}"
    )
  try:
    tf.config.threading.set_inter_op_parallelism_threads(1)
  except RuntimeError:
    raise TrainingError(
      "config deterministic: true must take effect before TensorFlow starts: "
      "call delf_ret.train.trainer.set_determinism first, as train_delf "
      "does"
    ) from None
  tf.config.experimental.enable_op_determinism()


def apply_determinism(
  config: DelfTrainingConfig,
  strategy: tf.distribute.Strategy,
  stage: str,
  log: Callable[[str], None],
) -> None:
  """The training functions' side of ``config.deterministic``: checks one device, makes
  sure :func:`set_determinism` took effect and says so in the log."""
  if not config.deterministic:
    return
  if strategy.num_replicas_in_sync > 1:
    raise TrainingError(
      f"deterministic training runs on one device, not "
      f"{strategy.num_replicas_in_sync} replicas: use "
      f"--config_override=deterministic=false"
    )
  set_determinism(True)
  log(f"{stage}: deterministic training (TensorFlow op determinism, one inter-op thread)")


def make_strategy(kind: str, num_devices: int = 0) -> tf.distribute.Strategy:
  """The distribution strategy of a run.

  kind: "default" (one device), "mirrored" (this machine's GPUs; without GPUs,
  ``num_devices`` logical CPU devices) or "multi_worker" (machines listed in
  the TF_CONFIG environment variable). num_devices: how many local devices
  to use (0: all GPUs, or one CPU). Call before any other TensorFlow work.
  """
  if kind == "default":
    return tf.distribute.get_strategy()
  if kind not in ("mirrored", "multi_worker"):
    raise TrainingError(f"unknown strategy {kind!r}: use default, mirrored or multi_worker")
  if kind == "multi_worker" and "TF_CONFIG" not in os.environ:
    raise TrainingError("multi_worker needs the TF_CONFIG environment variable (cluster + task)")
  gpus = tf.config.list_physical_devices("GPU")
  devices = None
  if gpus:
    devices = [f"/gpu:{i}" for i in range(num_devices or len(gpus))]
    if len(devices) > len(gpus):
      raise TrainingError(f"{num_devices} devices asked for, {len(gpus)} GPUs present")
  elif num_devices > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices
    )
    devices = [f"/cpu:{i}" for i in range(num_devices)]
  if kind == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  return tf.distribute.MirroredStrategy(devices)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True for the worker that writes checkpoints, summaries and the final model."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == "chief" or (
    resolver.task_type == "worker"
    and resolver.task_id == 0
    and "chief" not in resolver.cluster_spec().as_dict()
  )


def local_replica_count(strategy: tf.distribute.Strategy) -> int:
  """Replicas on this machine (1 for the default strategy)."""
  try:
    return len(strategy.extended.worker_devices)
  except RuntimeError:  # The default strategy has no device list.
    return 1


def worker_index_of(strategy: tf.distribute.Strategy) -> int:
  """0-based index of this machine among the workers (0 without a cluster)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return 0
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  if resolver.task_type == "chief":
    return 0
  return resolver.task_id + (1 if has_chief else 0)


def num_classes_of(data_dir: pathlib.Path) -> int:
  path = data_dir / SPLIT_FILE
  if not path.is_file():
    raise TrainingError(f"{path} not found: prepare the data with prepare_gldv2 first")
  return int(json.loads(path.read_text())["num_classes"])


def trainable_parts(model: DelfModel, stage: str) -> list:
  """The layers a stage trains; in the attention stage the backbone is frozen."""
  if stage == "tuning":
    return [model.backbone, model.tuning_classifier]
  model.backbone.trainable = False
  return [
    model.attention_conv1,
    model.attention_bn,
    model.attention_conv2,
    model.attention_classifier,
  ]


def attention_image(attention: tf.Tensor) -> tf.Tensor:
  """Attention maps [B, h, w] -> images [B, h, w, 1] scaled to [0, 1] per map."""
  peak = tf.reduce_max(attention, axis=[1, 2], keepdims=True)
  return (attention / tf.maximum(peak, 1e-12))[..., None]


def finish_run(
  model: DelfModel,
  output_dir: pathlib.Path,
  chief: bool,
  stage: str,
  step: int,
  step_times: list[float],
  log: Callable[[str], None],
) -> tuple[pathlib.Path | None, float]:
  """Saves the final model (chief only); returns (its path or None, mean ms per step).

  The mean leaves out the run's first step, which includes tracing (NaN with
  fewer than two steps).
  """
  model_path = None
  if chief:
    model_path = output_dir / MODEL_FILE
    save_delf_model(model, model_path)
    log(f"{stage}: step {step}, model saved to {model_path}")
  ms_per_step = (
    1000 * sum(step_times[1:]) / (len(step_times) - 1) if len(step_times) > 1 else float("nan")
  )
  return model_path, ms_per_step


def train_stage(
  stage: str,
  data_dir: str | os.PathLike,
  output_dir: str | os.PathLike,
  config: DelfTrainingConfig,
  strategy: tf.distribute.Strategy | None = None,
  init_from: str | os.PathLike | None = None,
  num_steps: int | None = None,
  log: Callable[[str], None] = print,
) -> TrainingResult:
  """Runs (or resumes) one stage up to config.max_steps, or ``num_steps`` more steps.

  init_from (attention stage): the tuning stage's output folder; its latest
  checkpoint initialises the model when this stage has no checkpoint yet.
  """
  if stage not in STAGES:
    raise TrainingError(f"stage must be one of {STAGES}, got {stage!r}")
  strategy = strategy or tf.distribute.get_strategy()
  data_dir, output_dir = pathlib.Path(data_dir), pathlib.Path(output_dir)
  chief = is_chief(strategy)
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise TrainingError(
      f"batch size {config.batch_size} is not divisible by the {replicas} replicas"
    )
  # The data order depends on TensorFlow's global seed too: fix it before building anything.
  apply_determinism(config, strategy, stage, log)
  keras.utils.set_random_seed(config.seed)
  log(
    f"{stage}: {replicas} replica(s), global batch {config.batch_size}, per-replica batch "
    f"{config.batch_size // replicas}"
  )
  # Each machine reads its own shard of the records with a plain (checkpointable)
  # iterator of its share of the global batch; each local replica takes its slice.
  local_replicas = local_replica_count(strategy)
  num_workers, worker_index = replicas // local_replicas, worker_index_of(strategy)
  dataset = make_dataset(
    data_dir,
    "train",
    config.batch_size // num_workers,
    config.image_size,
    training=True,
    seed=config.seed,
    shuffle_buffer=config.shuffle_buffer,
    num_shards=num_workers,
    shard_index=worker_index,
  )
  # Every worker saves (the save is collective); the others into their own folder,
  # which also keeps their own input position for a resume.
  checkpoint_dir = output_dir / ("checkpoints" if chief else f"worker_{worker_index}_checkpoints")

  with strategy.scope():
    backbone_weights = None
    if stage == "tuning" and config.backbone_weights not in ("", "random"):
      backbone_weights = config.backbone_weights
    model = DelfModel(
      num_classes=num_classes_of(data_dir), backbone_weights=backbone_weights, seed=config.seed
    )
    parts = trainable_parts(model, stage)
    variables = [v for part in parts for v in part.trainable_variables]
    initial_lr = (
      config.tuning_learning_rate if stage == "tuning" else config.attention_learning_rate
    )
    schedule = keras.optimizers.schedules.PolynomialDecay(initial_lr, config.max_steps, 0.0)
    optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum)
    optimizer.build(variables)
    iterator = iter(dataset)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, iterator=iterator)
    manager = tf.train.CheckpointManager(
      checkpoint, checkpoint_dir, max_to_keep=config.max_checkpoints
    )
    if manager.latest_checkpoint:
      checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
      log(f"resumed from {manager.latest_checkpoint} at step {int(optimizer.iterations.numpy())}")
    elif stage == "attention":
      if init_from is None:
        raise TrainingError("the attention stage needs the tuning output folder (init_from)")
      tuning_latest = tf.train.latest_checkpoint(pathlib.Path(init_from) / "checkpoints")
      if tuning_latest is None:
        raise TrainingError(f"no tuning checkpoint in {pathlib.Path(init_from) / 'checkpoints'}")
      tf.train.Checkpoint(model=model).restore(tuning_latest).expect_partial()
      log(f"initialised from the tuning checkpoint {tuning_latest}")

  logits_key = "tuning_logits" if stage == "tuning" else "attention_logits"
  loss_weight = 1.0 if stage == "tuning" else config.attention_loss_weight

  per_replica = config.batch_size // replicas

  def step_fn(images, labels):
    local = tf.distribute.get_replica_context().replica_id_in_sync_group % local_replicas
    images = images[local * per_replica : (local + 1) * per_replica]
    labels = labels[local * per_replica : (local + 1) * per_replica]
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      per_example = keras.losses.sparse_categorical_crossentropy(
        labels, outputs[logits_key], from_logits=True
      )
      loss = loss_weight * tf.nn.compute_average_loss(
        per_example, global_batch_size=config.batch_size
      )
    gradients = tape.gradient(loss, variables)
    if config.clip_gradient_norm > 0:
      gradients, _ = tf.clip_by_global_norm(gradients, config.clip_gradient_norm)
    optimizer.apply_gradients(zip(gradients, variables))
    correct = tf.reduce_sum(
      tf.cast(
        tf.equal(tf.argmax(outputs[logits_key], axis=-1, output_type=tf.int32), labels), tf.float32
      )
    )
    return loss, correct

  @tf.function
  def train_step():
    images, labels = next(iterator)
    loss, correct = strategy.run(step_fn, args=(images, labels))
    return (
      strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
      strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None) / config.batch_size,
    )

  sample_image = next(iter(dataset.take(1)))[0][:1] if chief else None  # Fixed image summary input.
  writer = (
    tf.summary.create_file_writer(str(output_dir / "tensorboard" / stage))
    if chief
    else tf.summary.create_noop_writer()
  )
  step = int(optimizer.iterations.numpy())
  last_step = config.max_steps if num_steps is None else min(config.max_steps, step + num_steps)
  loss = accuracy = float("nan")
  start, start_step = time.time(), step
  step_times = []
  while step < last_step:
    step_start = time.perf_counter()
    loss_tensor, accuracy_tensor = train_step()
    step = int(optimizer.iterations.numpy())
    loss, accuracy = float(loss_tensor), float(accuracy_tensor)
    step_times.append(time.perf_counter() - step_start)
    if step % config.summary_every == 0 or step == last_step:
      rate = (time.time() - start) / max(1, step - start_step)
      log(
        f"{stage} step {step}/{config.max_steps}: loss {loss:.4f}, accuracy {accuracy:.3f}, "
        f"lr {float(schedule(step)):.6f} [{1000 * rate:.0f} ms/step]"
      )
      with writer.as_default(step=step):
        tf.summary.scalar("loss", loss)
        tf.summary.scalar("accuracy", accuracy)
        tf.summary.scalar("learning_rate", schedule(step))
        if chief:
          tf.summary.image("attention", attention_image(model(sample_image)["attention"]))
    if step % config.save_every == 0 or step == last_step:
      manager.save(checkpoint_number=step)
  writer.flush()
  model_path, ms_per_step = finish_run(model, output_dir, chief, stage, step, step_times, log)
  return TrainingResult(step, loss, accuracy, model_path, ms_per_step)
