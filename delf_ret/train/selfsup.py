"""The self-supervised stage: DELF local descriptors and attention from unlabelled photos.

Each step takes a batch of view pairs (:mod:`delf_ret.train.views`):
homographic warps of single photos and crops of overlapping real photos with
verified correspondences (:mod:`delf_ret.train.real_pairs`). The conv4 cells
of both views are L2-normalised and an InfoNCE loss (both directions,
:mod:`delf_ret.train.losses`) pulls each cell towards its corresponding cell
and away from every other cell of the batch's other views. The attention head
sees the same features with their gradient stopped and learns, with a logistic
loss, whether each cell's nearest neighbour is its true correspondent. Then,
for ``attention_steps`` more steps, the backbone is frozen (batch norms in
inference mode, as at extraction) and the attention head alone learns whether
each cell's nearest neighbour in the other view lies within
``attention_neighbourhood`` cells of its correspondent: its score ranks cells
by how reliably they match.

Both phases run in :func:`delf_ret.train.loop.run_loop`. Resuming: a batch is
a pure function of (seed, step) and the checkpoint holds the model and both
optimizers (whose step counters sum to the global step), so running the same
command again continues where the last checkpoint left off and sees the same
batches. TensorBoard logs go to ``<output_dir>/tensorboard/selfsup``; the
final model to ``<output_dir>/delf_model.keras``.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from delf_ret.config import DelfTrainingConfig
from delf_ret.config import validate_training_config
from delf_ret.model import DelfModel
from delf_ret.model.delf import caffe_preprocess
from delf_ret.train import photos as photos_lib
from delf_ret.train.loop import LoopSpec
from delf_ret.train.loop import Metrics
from delf_ret.train.loop import TrainingResult
from delf_ret.train.loop import open_checkpoints
from delf_ret.train.loop import run_loop
from delf_ret.train.loop import time_recorder
from delf_ret.train.losses import info_nce
from delf_ret.train.losses import near_matches
from delf_ret.train.losses import reliability_loss
from delf_ret.train.real_pairs import RealPair
from delf_ret.train.real_pairs import load_real_pairs
from delf_ret.train.trainer import TrainingError
from delf_ret.train.trainer import is_chief
from delf_ret.train.trainer import prepare_run
from delf_ret.train.views import grid_side
from delf_ret.train.views import make_batch

# Training wall time over all runs of an output folder (resumes included), updated at each save.
TIME_FILE = "selfsup_time.json"


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up from 0 over ``warmup`` steps, then linear decay to 0 at ``total`` steps."""

  def __init__(self, peak: float, warmup: int, total: int):
    self.peak, self.warmup, self.total = float(peak), int(warmup), int(total)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    warm = step / max(1, self.warmup)
    decay = (self.total - step) / max(1, self.total - self.warmup)
    return self.peak * tf.clip_by_value(tf.minimum(warm, decay), 0.0, 1.0)

  def get_config(self) -> dict:
    return {"peak": self.peak, "warmup": self.warmup, "total": self.total}


def reinitialise_attention_head(model: DelfModel, seed: int) -> None:
  """Gives the attention head fresh seeded weights: Glorot-uniform kernels, zero biases,
  a batch norm back at its initial state (gamma 1, beta 0, moving mean 0, variance 1)."""
  for offset, conv in enumerate((model.attention_conv1, model.attention_conv2)):
    conv.kernel.assign(keras.initializers.GlorotUniform(seed=seed + offset)(conv.kernel.shape))
    conv.bias.assign(tf.zeros_like(conv.bias))
  bn = model.attention_bn
  for variable, value in (
    (bn.gamma, 1.0),
    (bn.beta, 0.0),
    (bn.moving_mean, 0.0),
    (bn.moving_variance, 1.0),
  ):
    variable.assign(tf.fill(variable.shape, value))


def load_training_photos(
  source: str | os.PathLike, config: DelfTrainingConfig, log: Callable[[str], None]
) -> tuple[list[np.ndarray], list[pathlib.Path]]:
  """The photos (RGB uint8 [H, W, 3]) of a folder or list file and their paths, loaded with
  the ``selfsup`` block's photo_max_side; photos smaller than crop_size are skipped."""
  s = config.selfsup
  paths = photos_lib.list_training_photos(source)
  photos, kept, skipped = photos_lib.load_training_photos(paths, s.photo_max_side, s.crop_size)
  for line in skipped:
    log(f"skipped: {line}")
  if not photos:
    raise TrainingError(f"{source}: no usable training photos")
  log(f"{len(photos)} training photos from {source}")
  return photos, kept


def load_selfsup_data(
  photo_source: str | os.PathLike,
  config: DelfTrainingConfig,
  cache_dir: pathlib.Path,
  log: Callable[[str], None],
) -> tuple[list[np.ndarray], list[RealPair]]:
  """The stage's photos (scikit-image's last, if configured) and the real pairs among them
  (cached in ``cache_dir``); ground-truth cameras come from a cameras.csv in a photo's folder
  or a folder above it, whether the source is a folder or a list file."""
  s = config.selfsup
  photos, paths = load_training_photos(photo_source, config, log)
  real_pairs = load_real_pairs(photos, paths, s, cache_dir, log)
  if s.use_skimage_photos:
    photos = photos + photos_lib.skimage_photos(s.photo_max_side)
  return photos, real_pairs


class SelfsupTraining:
  """The model, both phases' optimizers and compiled steps (built inside the strategy's scope).

  Phase 1 (global steps [0, selfsup.max_steps)): SGD on the backbone and the
  attention head. Phase 2 (attention_steps more): Adam on the attention head
  alone. Steps take the views uint8 [P, S, S, 3] and targets int32 [P, n * n]
  of :func:`delf_ret.train.views.make_batch`.
  """

  def __init__(self, config: DelfTrainingConfig, strategy: tf.distribute.Strategy):
    s = self.settings = config.selfsup
    self.config, self.strategy = config, strategy
    self.replicas = strategy.num_replicas_in_sync
    self.per_replica = s.pairs_per_batch // self.replicas
    self.side = grid_side(s.crop_size)
    weights = None if config.backbone_weights in ("", "random") else config.backbone_weights
    model = self.model = DelfModel(num_classes=1, backbone_weights=weights, seed=config.seed)
    self.attention_vars = [
      v
      for layer in (model.attention_conv1, model.attention_bn, model.attention_conv2)
      for v in layer.trainable_variables
    ]
    self.variables = model.backbone.trainable_variables + self.attention_vars
    self.schedule = WarmupLinearDecay(s.learning_rate, s.warmup_steps, s.max_steps)
    self.optimizer = keras.optimizers.SGD(self.schedule, momentum=config.momentum)
    self.optimizer.build(self.variables)
    self.attention_schedule = keras.optimizers.schedules.PolynomialDecay(
      s.attention_learning_rate, max(1, s.attention_steps), 0.0
    )
    self.attention_optimizer = keras.optimizers.Adam(self.attention_schedule)
    self.attention_optimizer.build(self.attention_vars)
    self.checkpoint = tf.train.Checkpoint(
      model=model, optimizer=self.optimizer, attention_optimizer=self.attention_optimizer
    )
    self.contrastive_step = self._distributed(self._contrastive_replica_step)
    self.attention_step = self._distributed(self._attention_replica_step)

  def global_step(self) -> int:
    """Both phases' optimizer steps."""
    return int(self.optimizer.iterations.numpy()) + int(self.attention_optimizer.iterations.numpy())

  def _replica_part(self) -> slice:
    """This replica's slice of the global batch (called inside strategy.run)."""
    if self.replicas == 1:
      return slice(None)
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    return slice(replica * self.per_replica, (replica + 1) * self.per_replica)

  def _contrastive_replica_step(self, view_a, view_b, targets_ab, targets_ba):
    """Phase 1 on a replica: (contrastive loss, reliability loss, correspondence accuracy),
    each divided by the replica count."""
    s, model, per_replica, replicas = self.settings, self.model, self.per_replica, self.replicas
    part = self._replica_part()
    images = tf.concat([view_a[part], view_b[part]], axis=0)
    targets_ab, targets_ba = targets_ab[part], targets_ba[part]
    with tf.GradientTape() as tape:
      raw, _ = model.feature_maps(images, training=True)
      cells = tf.shape(raw)[1] * tf.shape(raw)[2]
      flat = tf.reshape(raw, [tf.shape(raw)[0], cells, raw.shape[-1]])
      normalized = tf.math.l2_normalize(flat, axis=-1)
      feats_a, feats_b = normalized[:per_replica], normalized[per_replica:]
      radius = s.negative_exclusion_radius
      sum_ab, correct_ab, mask_ab = info_nce(
        feats_a, feats_b, targets_ab, s.temperature, self.side, radius
      )
      sum_ba, correct_ba, mask_ba = info_nce(
        feats_b, feats_a, targets_ba, s.temperature, self.side, radius
      )
      count = tf.maximum(tf.reduce_sum(mask_ab) + tf.reduce_sum(mask_ba), 1.0)
      contrastive = (sum_ab + sum_ba) / count
      logits = tf.reshape(
        model.attention_logits(tf.stop_gradient(raw), training=True), [tf.shape(raw)[0], cells]
      )
      reliability = (
        reliability_loss(logits[:per_replica], correct_ab, mask_ab)
        + reliability_loss(logits[per_replica:], correct_ba, mask_ba)
      ) / count
      loss = (contrastive + s.attention_loss_weight * reliability) / replicas
    gradients = tape.gradient(loss, self.variables)
    if self.config.clip_gradient_norm > 0:
      gradients, _ = tf.clip_by_global_norm(gradients, self.config.clip_gradient_norm)
    self.optimizer.apply_gradients(zip(gradients, self.variables))
    accuracy = (tf.reduce_sum(correct_ab) + tf.reduce_sum(correct_ba)) / count
    return contrastive / replicas, reliability / replicas, accuracy / replicas

  def _attention_replica_step(self, view_a, view_b, targets_ab, targets_ba):
    """Phase 2 on a replica: (0, reliability loss, near-match accuracy), each divided by the
    replica count."""
    s, per_replica, side = self.settings, self.per_replica, self.side
    part = self._replica_part()
    images = tf.concat([view_a[part], view_b[part]], axis=0)
    raw = self.model.backbone(caffe_preprocess(tf.cast(images, tf.float32)), training=False)
    cells = side * side
    normalized = tf.math.l2_normalize(tf.reshape(raw, [-1, cells, raw.shape[-1]]), axis=-1)
    feats_a, feats_b = normalized[:per_replica], normalized[per_replica:]
    near = (s.attention_neighbourhood, s.attention_against_batch)
    near_ab, mask_ab = near_matches(feats_a, feats_b, targets_ab[part], side, *near)
    near_ba, mask_ba = near_matches(feats_b, feats_a, targets_ba[part], side, *near)
    count = tf.maximum(tf.reduce_sum(mask_ab) + tf.reduce_sum(mask_ba), 1.0)
    with tf.GradientTape() as tape:
      logits = tf.reshape(self.model.attention_logits(raw, training=True), [-1, cells])
      reliability = (
        reliability_loss(logits[:per_replica], near_ab, mask_ab)
        + reliability_loss(logits[per_replica:], near_ba, mask_ba)
      ) / count
      loss = reliability / self.replicas
    gradients = tape.gradient(loss, self.attention_vars)
    self.attention_optimizer.apply_gradients(zip(gradients, self.attention_vars))
    accuracy = (tf.reduce_sum(near_ab) + tf.reduce_sum(near_ba)) / count
    return tf.zeros(()), reliability / self.replicas, accuracy / self.replicas

  def _distributed(self, replica_fn):
    """A compiled step running ``replica_fn`` on every replica and summing its outputs."""
    strategy = self.strategy

    @tf.function
    def run(view_a, view_b, targets_ab, targets_ba):
      results = strategy.run(replica_fn, args=(view_a, view_b, targets_ab, targets_ba))
      return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

    return run

  def step(self, step: int, batch: dict[str, np.ndarray], log: Callable[[str], None]) -> Metrics:
    """One step of the phase the global ``step`` is in, on ``batch``; the attention phase's
    first step may re-initialise the head. Raises TrainingError if a loss is not finite."""
    s = self.settings
    phase_one = step < s.max_steps
    if step == s.max_steps and s.reinit_attention_head:  # The attention phase's first step.
      reinitialise_attention_head(self.model, self.config.seed)
      log(f"selfsup: attention head re-initialised for its phase at step {step}")
    run_step = self.contrastive_step if phase_one else self.attention_step
    outputs = run_step(batch["view_a"], batch["view_b"], batch["targets_ab"], batch["targets_ba"])
    contrastive, reliability, accuracy = (float(v) for v in outputs)
    if not np.isfinite(contrastive) or not np.isfinite(reliability):
      raise TrainingError(
        f"selfsup: the loss became {contrastive}, {reliability} at step "
        f"{self.global_step()}; lower selfsup.learning_rate or attention_learning_rate"
      )
    # The loss of the phase: contrastive, or the attention head's reliability.
    loss = contrastive if phase_one else reliability
    return {
      "loss": loss,
      "contrastive": contrastive,
      "reliability": reliability,
      "accuracy": accuracy,
    }

  def summarise(self, step: int, metrics: Metrics) -> str:
    """TensorBoard scalars of the phase that ran the step ending at ``step``; the log text."""
    s = self.settings
    contrastive, reliability, accuracy = (
      metrics[k] for k in ("contrastive", "reliability", "accuracy")
    )
    tf.summary.scalar("reliability_loss", reliability)
    if step <= s.max_steps:
      tf.summary.scalar("loss", contrastive + s.attention_loss_weight * reliability)
      tf.summary.scalar("contrastive_loss", contrastive)
      tf.summary.scalar("correspondence_accuracy", accuracy)
      tf.summary.scalar("learning_rate", self.schedule(step))
      return (
        f"contrastive {contrastive:.4f}, reliability {reliability:.4f}, correspondence "
        f"accuracy {accuracy:.3f}, lr {float(self.schedule(step)):.5f}"
      )
    rate = self.attention_schedule(step - s.max_steps)
    tf.summary.scalar("near_match_accuracy", accuracy)
    tf.summary.scalar("attention_learning_rate", rate)
    return (
      f"attention: reliability {reliability:.4f}, near matches {accuracy:.3f}, lr {float(rate):.6f}"
    )


def train_selfsup(
  photo_source: str | os.PathLike,
  output_dir: str | os.PathLike,
  config: DelfTrainingConfig,
  strategy: tf.distribute.Strategy | None = None,
  num_steps: int | None = None,
  log: Callable[[str], None] = print,
) -> TrainingResult:
  """Runs (or resumes) the self-supervised stage up to selfsup.max_steps + attention_steps
  (or ``num_steps`` more).

  photo_source: a folder of photos (searched recursively) or a list file.
  The global batch is generated identically on every machine; each replica
  trains on its slice of it. The result's loss is that of the phase the run
  ended in.
  """
  validate_training_config(config)
  s = config.selfsup
  strategy = strategy or tf.distribute.get_strategy()
  output_dir = pathlib.Path(output_dir)
  chief, replicas = is_chief(strategy), strategy.num_replicas_in_sync
  if s.pairs_per_batch % replicas:
    raise TrainingError(
      f"selfsup.pairs_per_batch {s.pairs_per_batch} is not divisible by the {replicas} replicas"
    )
  prepare_run(config, strategy, "selfsup", log)
  photos, real_pairs = load_selfsup_data(photo_source, config, output_dir, log)
  log(
    f"selfsup: {len(photos)} photos, {len(real_pairs)} real pairs, {replicas} replica(s), "
    f"{s.pairs_per_batch} pairs of {s.crop_size} px views per step"
  )
  with strategy.scope():
    training = SelfsupTraining(config, strategy)
    # The model must match; an optimizer of a phase not reached yet may be absent.
    manager, _ = open_checkpoints(
      training.checkpoint,
      output_dir / "checkpoints",
      config.max_checkpoints,
      training.global_step,
      log,
      must_match=tf.train.Checkpoint(model=training.model),
    )

  def batch_of(step: int) -> dict[str, np.ndarray]:
    return make_batch(
      config.seed, step, s.pairs_per_batch, s.real_pair_fraction, photos, real_pairs, s
    )

  spec = LoopSpec(
    stage="selfsup",
    output_dir=output_dir,
    model=training.model,
    manager=manager,
    current_step=training.global_step,
    total_steps=s.max_steps + s.attention_steps,
    summary_every=config.summary_every,
    save_every=config.save_every,
    chief=chief,
    save_at=(s.max_steps,),
    attention_input=batch_of(2**31 - 1)["view_a"][:2] if chief else None,
    on_save=time_recorder(output_dir / TIME_FILE, chief),
  )
  return run_loop(
    spec, lambda step: training.step(step, batch_of(step), log), training.summarise, num_steps, log
  )
