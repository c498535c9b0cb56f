"""The tuning and attention stages of DELF, on one or many devices or machines, and what
every stage shares: its error type, determinism, seeds and distribution strategy.

Stage "tuning": backbone + tuning classifier, cross-entropy on the globally
average-pooled conv4 features. Stage "attention": starts from the tuning
stage's weights, freezes the backbone (its batch norms in inference mode) and
trains the attention head + attention classifier on attention-weighted pooled
features (loss scaled by attention_loss_weight).

Both run in :func:`delf_ret.train.loop.run_loop`. Everything a run needs to
continue lives in ``<output_dir>/checkpoints`` (tf.train.CheckpointManager):
model weights, optimizer state (its step counter is the global step) and the
input iterator position. With several machines, each reads its own shard of
the records and the other workers keep their checkpoints (with their own input
position) in ``worker_<i>_checkpoints``. Running the same command again
resumes at the saved step with the same next batches. TensorBoard logs go to
``<output_dir>/tensorboard/<stage>``; the final model to
``<output_dir>/delf_model.keras``.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Callable

import keras
import tensorflow as tf

from delf_ret.config import DelfTrainingConfig
from delf_ret.config import validate_training_config
from delf_ret.errors import DelfRetError
from delf_ret.model import DelfModel
from delf_ret.train.gldv2 import SPLIT_FILE
from delf_ret.train.loop import LoopSpec
from delf_ret.train.loop import Metrics
from delf_ret.train.loop import TrainingResult
from delf_ret.train.loop import open_checkpoints
from delf_ret.train.loop import run_loop
from delf_ret.train.loop import time_recorder
from delf_ret.train.pipeline import make_dataset

STAGES = ("tuning", "attention")


class TrainingError(DelfRetError):
  """Training cannot start (missing data, missing tuning checkpoint...)."""


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


def prepare_run(
  config: DelfTrainingConfig,
  strategy: tf.distribute.Strategy,
  stage: str,
  log: Callable[[str], None],
) -> None:
  """What every stage does before building anything: :func:`apply_determinism`, then
  config.seed for Python, numpy and TensorFlow (the data order depends on TensorFlow's
  global seed too)."""
  apply_determinism(config, strategy, stage, log)
  keras.utils.set_random_seed(config.seed)


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
  """The number of landmark classes of prepared GLDv2 shards (their split file)."""
  path = data_dir / SPLIT_FILE
  if not path.is_file():
    raise TrainingError(f"{path} not found: prepare the data with prepare_gldv2 first")
  return int(json.loads(path.read_text())["num_classes"])


def stage_steps(config: DelfTrainingConfig, stage: str) -> int:
  """The steps of a stage: max_steps, or attention_max_steps (when set) for the attention stage."""
  if stage == "attention" and config.attention_max_steps:
    return config.attention_max_steps
  return config.max_steps


def freeze_backbone_stages(model: DelfModel, num_stages: int) -> None:
  """Freezes the backbone's first ``num_stages`` ResNet50 stages (layers named conv1_...,
  pool1_..., conv2_..., conv3_...; 0: none): Keras then leaves their variables out of
  ``trainable_variables`` and runs their batch norms in inference mode."""
  prefixes = tuple(f"conv{stage}_" for stage in range(1, num_stages + 1))
  if num_stages:
    prefixes += ("pool1_",)
  for layer in model.backbone.layers:
    if layer.name.startswith(prefixes):
      layer.trainable = False


def trainable_parts(model: DelfModel, stage: str, frozen_stages: int = 0) -> list:
  """The layers a stage trains; in the attention stage the backbone is frozen, in the tuning
  stage its first ``frozen_stages`` ResNet50 stages (config tuning_frozen_stages)."""
  if stage == "tuning":
    freeze_backbone_stages(model, frozen_stages)
    return [model.backbone, model.tuning_classifier]
  model.backbone.trainable = False
  return [
    model.attention_conv1,
    model.attention_bn,
    model.attention_conv2,
    model.attention_classifier,
  ]


def _stage_dataset(
  data_dir: pathlib.Path, config: DelfTrainingConfig, strategy: tf.distribute.Strategy
) -> tf.data.Dataset:
  """This machine's share of each global batch, from its own shard of the records."""
  num_workers = strategy.num_replicas_in_sync // local_replica_count(strategy)
  return make_dataset(
    data_dir,
    "train",
    config.batch_size // num_workers,
    config.image_size,
    training=True,
    seed=config.seed,
    shuffle_buffer=config.shuffle_buffer,
    num_shards=num_workers,
    shard_index=worker_index_of(strategy),
    min_crop_area=config.min_crop_area,
  )


def _init_from_tuning(
  model: DelfModel, init_from: str | os.PathLike, log: Callable[[str], None]
) -> None:
  """Loads the model weights of the tuning stage's latest checkpoint (attention stage start)."""
  tuning_latest = tf.train.latest_checkpoint(pathlib.Path(init_from) / "checkpoints")
  if tuning_latest is None:
    raise TrainingError(f"no tuning checkpoint in {pathlib.Path(init_from) / 'checkpoints'}")
  tf.train.Checkpoint(model=model).restore(tuning_latest).expect_partial()
  log(f"initialised from the tuning checkpoint {tuning_latest}")


class _StageTraining:
  """The model, optimizer and compiled step of the tuning or attention stage (built inside the
  strategy's scope); the step reads the next batch of ``iterator``."""

  def __init__(
    self,
    stage: str,
    num_classes: int,
    config: DelfTrainingConfig,
    strategy: tf.distribute.Strategy,
    dataset: tf.data.Dataset,
    from_tuning: bool = False,
  ):
    self.stage, self.config, self.strategy = stage, config, strategy
    backbone_weights = None
    # The attention stage takes its backbone from backbone_weights only when it does not
    # start from a tuning checkpoint.
    if config.backbone_weights not in ("", "random") and not from_tuning:
      backbone_weights = config.backbone_weights
    self.model = DelfModel(
      num_classes=num_classes, backbone_weights=backbone_weights, seed=config.seed
    )
    parts = trainable_parts(self.model, stage, config.tuning_frozen_stages)
    self.variables = [v for part in parts for v in part.trainable_variables]
    initial_lr = (
      config.tuning_learning_rate if stage == "tuning" else config.attention_learning_rate
    )
    self.schedule = keras.optimizers.schedules.PolynomialDecay(
      initial_lr, stage_steps(config, stage), 0.0
    )
    self.optimizer = keras.optimizers.SGD(self.schedule, momentum=config.momentum)
    self.optimizer.build(self.variables)
    self.iterator = iter(dataset)
    self.checkpoint = tf.train.Checkpoint(
      model=self.model, optimizer=self.optimizer, iterator=self.iterator
    )
    self.logits_key = "tuning_logits" if stage == "tuning" else "attention_logits"
    self.loss_weight = 1.0 if stage == "tuning" else config.attention_loss_weight
    self.local_replicas = local_replica_count(strategy)
    self.per_replica = config.batch_size // strategy.num_replicas_in_sync
    self.train_step = tf.function(self._distributed_step)

  def global_step(self) -> int:
    """The optimizer's step counter: the global step."""
    return int(self.optimizer.iterations.numpy())

  def _replica_step(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """One replica's slice of the batch: (its share of the loss, its correct predictions)."""
    config, per_replica = self.config, self.per_replica
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    local = replica % self.local_replicas
    images = images[local * per_replica : (local + 1) * per_replica]
    labels = labels[local * per_replica : (local + 1) * per_replica]
    with tf.GradientTape() as tape:
      outputs = self.model(images, training=True)
      per_example = keras.losses.sparse_categorical_crossentropy(
        labels, outputs[self.logits_key], from_logits=True
      )
      loss = self.loss_weight * tf.nn.compute_average_loss(
        per_example, global_batch_size=config.batch_size
      )
    gradients = tape.gradient(loss, self.variables)
    if config.clip_gradient_norm > 0:
      gradients, _ = tf.clip_by_global_norm(gradients, config.clip_gradient_norm)
    self.optimizer.apply_gradients(zip(gradients, self.variables))
    predicted = tf.argmax(outputs[self.logits_key], axis=-1, output_type=tf.int32)
    correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))
    return loss, correct

  def _distributed_step(self) -> tuple[tf.Tensor, tf.Tensor]:
    images, labels = next(self.iterator)
    loss, correct = self.strategy.run(self._replica_step, args=(images, labels))
    return (
      self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
      self.strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None) / self.config.batch_size,
    )

  def step(self, step: int) -> Metrics:
    """The loop's step function: one step on the next batch (``step`` is not needed)."""
    del step
    loss, accuracy = self.train_step()
    return {"loss": float(loss), "accuracy": float(accuracy)}

  def summarise(self, step: int, metrics: Metrics) -> str:
    """TensorBoard scalars of a step; the log text."""
    tf.summary.scalar("loss", metrics["loss"])
    tf.summary.scalar("accuracy", metrics["accuracy"])
    tf.summary.scalar("learning_rate", self.schedule(step))
    return (
      f"loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.3f}, "
      f"lr {float(self.schedule(step)):.6f}"
    )


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
  """Runs (or resumes) one stage up to its :func:`stage_steps`, or ``num_steps`` more steps;
  the chief records its steps and training seconds in ``<output_dir>/<stage>_time.json``.

  init_from (attention stage): the tuning stage's output folder; its latest
  checkpoint initialises the model when this stage has no checkpoint yet. Without it the
  attention stage trains on the backbone of ``config.backbone_weights`` (a DELF model or
  ImageNet), which it keeps unchanged.
  """
  if stage not in STAGES:
    raise TrainingError(f"stage must be one of {STAGES}, got {stage!r}")
  validate_training_config(config)
  if stage == "attention" and init_from is None and config.backbone_weights in ("", "random"):
    raise TrainingError(
      "the attention stage needs the tuning output folder (init_from) or backbone_weights "
      "naming the weights its backbone keeps"
    )
  strategy = strategy or tf.distribute.get_strategy()
  data_dir, output_dir = pathlib.Path(data_dir), pathlib.Path(output_dir)
  chief, replicas = is_chief(strategy), strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise TrainingError(
      f"batch size {config.batch_size} is not divisible by the {replicas} replicas"
    )
  prepare_run(config, strategy, stage, log)
  log(
    f"{stage}: {replicas} replica(s), global batch {config.batch_size}, per-replica batch "
    f"{config.batch_size // replicas}"
  )
  dataset = _stage_dataset(data_dir, config, strategy)
  # Every worker saves (the save is collective); the others into their own folder,
  # which also keeps their own input position for a resume.
  checkpoints = "checkpoints" if chief else f"worker_{worker_index_of(strategy)}_checkpoints"
  with strategy.scope():
    training = _StageTraining(
      stage, num_classes_of(data_dir), config, strategy, dataset, init_from is not None
    )
    manager, resumed = open_checkpoints(
      training.checkpoint,
      output_dir / checkpoints,
      config.max_checkpoints,
      training.global_step,
      log,
    )
    if not resumed and stage == "attention" and init_from is not None:
      _init_from_tuning(training.model, init_from, log)
  spec = LoopSpec(
    stage=stage,
    output_dir=output_dir,
    model=training.model,
    manager=manager,
    current_step=training.global_step,
    total_steps=stage_steps(config, stage),
    summary_every=config.summary_every,
    save_every=config.save_every,
    chief=chief,
    # A fixed image for the attention summaries.
    attention_input=next(iter(dataset.take(1)))[0][:1] if chief else None,
    on_save=time_recorder(output_dir / f"{stage}_time.json", chief),
  )
  return run_loop(spec, training.step, training.summarise, num_steps, log)
