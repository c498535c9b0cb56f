"""The self-supervised stage: DELF local descriptors and attention from unlabelled photos.

Each step takes a batch of view pairs (:mod:`delf_ret.train.selfsup_data`):
homographic warps of single photos and crops of overlapping real photos with
verified correspondences. The conv4 cells of both views are L2-normalised and an
InfoNCE loss (both directions) pulls each cell towards its corresponding cell
and away from every other cell of the batch's other views. The attention head
sees the same features with their gradient stopped and learns, with a logistic
loss, whether each cell's nearest neighbour is its true correspondent. Then,
for ``attention_steps`` more steps, the backbone is frozen (batch norms in
inference mode, as at extraction) and the attention head alone learns whether
each cell's nearest neighbour in the other view lies within
``attention_neighbourhood`` cells of its correspondent: its score ranks cells
by how reliably they match.

Resuming: a batch is a pure function of (seed, step) and the checkpoint holds
the model and the optimizer (whose step counter is the global step), so
running the same command again continues where the last checkpoint left off
and sees the same batches; the global step is the sum of both phases'
optimizer steps. TensorBoard logs go to
``<output_dir>/tensorboard/selfsup``; the final model to
``<output_dir>/delf_model.keras``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from delf_ret.atomic import atomic_write
from delf_ret.config import DelfTrainingConfig
from delf_ret.model import DelfModel
from delf_ret.model.delf import caffe_preprocess
from delf_ret.train import selfsup_data
from delf_ret.train.trainer import (
  TrainingError,
  TrainingResult,
  apply_determinism,
  attention_image,
  finish_run,
  is_chief,
)

REAL_PAIRS_FILE = "real_pairs.npz"
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


def view_settings(config: DelfTrainingConfig) -> selfsup_data.ViewSettings:
  """The view-making settings of the config's ``selfsup`` block."""
  s = config.selfsup
  return selfsup_data.ViewSettings(
    crop_size=s.crop_size,
    min_photo_scale=s.min_photo_scale,
    max_photo_scale=s.max_photo_scale,
    max_rotation_deg=s.max_rotation_deg,
    min_zoom=s.min_zoom,
    max_zoom=s.max_zoom,
    max_perspective=s.max_perspective,
    max_shift=s.max_shift,
    brightness=s.brightness,
    contrast=s.contrast,
    gamma=s.gamma,
    colour=s.colour,
    blur_probability=s.blur_probability,
    noise_std=s.noise_std,
  )


def validate_selfsup(config: DelfTrainingConfig) -> None:
  """Raises TrainingError for values the stage cannot run with."""
  s = config.selfsup
  checks = [
    ("pairs_per_batch", s.pairs_per_batch >= 1),
    ("crop_size", s.crop_size >= 64 and s.crop_size % 16 == 0),
    ("real_pair_fraction", 0.0 <= s.real_pair_fraction <= 1.0),
    ("learning_rate", np.isfinite(s.learning_rate) and s.learning_rate > 0),
    ("warmup_steps", 0 <= s.warmup_steps < s.max_steps),
    ("max_steps", s.max_steps >= 1),
    ("temperature", np.isfinite(s.temperature) and s.temperature > 0),
    (
      "attention_loss_weight",
      np.isfinite(s.attention_loss_weight) and s.attention_loss_weight >= 0,
    ),
    ("photo_max_side", s.photo_max_side >= s.crop_size),
    ("min_photo_scale", 0 < s.min_photo_scale <= s.max_photo_scale),
    ("min_zoom", 0 < s.min_zoom <= s.max_zoom),
    ("max_pair_gap", s.max_pair_gap >= 0),
    ("min_pair_matches", s.min_pair_matches >= 1),
    ("negative_exclusion_radius", s.negative_exclusion_radius >= 0),
  ]
  for name, ok in checks:
    if not ok:
      raise TrainingError(f"selfsup.{name} is out of range: {getattr(s, name)}")


def load_real_pairs(
  photos: list[np.ndarray],
  paths: list[pathlib.Path],
  train_root: pathlib.Path,
  config: DelfTrainingConfig,
  cache_dir: pathlib.Path,
  log: Callable[[str], None],
) -> list[selfsup_data.RealPair]:
  """Finds (or reads from ``cache_dir``) the overlapping real pairs among the photos."""
  s = config.selfsup
  if s.max_pair_gap == 0 or s.real_pair_fraction == 0:
    return []
  key = hashlib.sha256(
    json.dumps(
      {
        "photos": [str(p) for p in paths],
        "max_side": s.photo_max_side,
        "gap": s.max_pair_gap,
        "min": s.min_pair_matches,
        "epipolar": s.max_epipolar_px,
      }
    ).encode()
  ).hexdigest()
  cache = cache_dir / REAL_PAIRS_FILE
  if cache.is_file():
    with np.load(cache, allow_pickle=False) as data:
      if str(data["key"]) == key:
        offsets = data["offsets"]
        return [
          selfsup_data.RealPair(int(a), int(b), data["matches"][offsets[i] : offsets[i + 1]])
          for i, (a, b) in enumerate(zip(data["index_a"], data["index_b"]))
        ]
  start = time.time()
  cameras = selfsup_data.strecha_cameras(paths, photos, train_root)
  pairs = selfsup_data.find_real_pairs(
    photos, paths, s.max_pair_gap, s.min_pair_matches, cameras, s.max_epipolar_px, log=log
  )
  log(
    f"real pairs: {len(pairs)} found in {time.time() - start:.0f} s "
    f"({len(cameras)} photos with ground-truth cameras)"
  )
  offsets = np.cumsum([0] + [len(p.matches) for p in pairs])
  matches = np.concatenate([p.matches for p in pairs]) if pairs else np.zeros((0, 4), np.float32)
  cache_dir.mkdir(parents=True, exist_ok=True)
  with atomic_write(cache) as handle:
    np.savez(
      handle,
      key=np.array(key),
      offsets=offsets,
      matches=matches,
      index_a=np.array([p.index_a for p in pairs], np.int64),
      index_b=np.array([p.index_b for p in pairs], np.int64),
    )
  return pairs


def grid_distance(cells: tf.Tensor, targets: tf.Tensor, side: int) -> tf.Tensor:
  """Chebyshev distance (cells) between grid indices (row * side + column) of a
  side x side view; ``cells`` and ``targets`` broadcast, targets < 0 count as cell 0."""
  safe = tf.where(targets >= 0, targets, tf.zeros_like(targets))
  return tf.maximum(tf.abs(cells // side - safe // side), tf.abs(cells % side - safe % side))


def excluded_negatives(targets: tf.Tensor, side: int, radius: int) -> tf.Tensor:
  """Which B cells are left out of each A cell's InfoNCE negatives.

  Args:
    targets: int32 [P, N], index (row * side + column) of each A cell's
      correspondent in its own side x side B view, or -1 (none).
    side: cells per side of the square B views.
    radius: B cells of the A cell's own pair at Chebyshev distance 1 ..
      radius (cells) from the correspondent are excluded; 0 excludes none.

  Returns:
    bool [P * N, P * side * side]: row = A cell, column = B cell of the batch
    (pair-major, as the logits of ``info_nce``).
  """
  pairs, cells_a = tf.shape(targets)[0], tf.shape(targets)[1]
  cells_b = side * side
  if radius <= 0:
    return tf.zeros([pairs * cells_a, pairs * cells_b], tf.bool)
  distance = grid_distance(tf.range(cells_b), targets[..., None], side)  # [P, N, M]
  near = (distance >= 1) & (distance <= radius) & (targets >= 0)[..., None]  # [P, N, M]
  own_pair = tf.eye(pairs, dtype=tf.bool)[:, None, :, None]  # [P, 1, P, 1]
  full = near[:, :, None, :] & own_pair  # [P, N, P, M]
  return tf.reshape(full, [pairs * cells_a, pairs * cells_b])


def info_nce(
  features_a: tf.Tensor,
  features_b: tf.Tensor,
  targets: tf.Tensor,
  temperature: float,
  side: int = 0,
  exclusion_radius: int = 0,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """InfoNCE of view-A cells against every view-B cell of the batch.

  Args:
    features_a: [P, N, D] L2-normalised cells of the A views.
    features_b: [P, M, D] L2-normalised cells of the B views (M = side * side).
    targets: int32 [P, N], index of each A cell's corresponding cell in its
      own B view, or -1 (such cells are ignored).
    temperature: divides the cosine similarities.
    side: cells per side of the B views (needed when exclusion_radius > 0).
    exclusion_radius: B cells this close to the correspondent (Chebyshev,
      cells; see ``excluded_negatives``) are not negatives.

  Returns:
    (summed loss over cells with a target, float [P, N] 1.0 where the
    nearest B cell of the whole batch is the target, float [P, N] mask of
    cells with a target).
  """
  pairs, cells_b = tf.shape(features_a)[0], tf.shape(features_b)[1]
  depth = tf.shape(features_a)[2]
  logits = (
    tf.matmul(
      tf.reshape(features_a, [-1, depth]), tf.reshape(features_b, [-1, depth]), transpose_b=True
    )
    / temperature
  )
  valid = tf.reshape(targets >= 0, [-1])
  labels = tf.reshape(targets + tf.range(pairs)[:, None] * cells_b, [-1])
  labels = tf.where(valid, labels, tf.zeros_like(labels))
  loss_logits = logits
  if exclusion_radius > 0:
    loss_logits = tf.where(
      excluded_negatives(targets, side, exclusion_radius), tf.constant(-1e4, logits.dtype), logits
    )
  per_cell = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=loss_logits)
  mask = tf.cast(valid, tf.float32)
  correct = (
    tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels), tf.float32) * mask
  )
  shape = tf.shape(targets)
  return tf.reduce_sum(per_cell * mask), tf.reshape(correct, shape), tf.reshape(mask, shape)


def reliability_loss(logits: tf.Tensor, correct: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """Summed logistic loss of attention logits [P, N] against match correctness, where mask."""
  per_cell = tf.nn.sigmoid_cross_entropy_with_logits(labels=correct, logits=logits)
  return tf.reduce_sum(per_cell * mask)


def near_matches(
  features_a: tf.Tensor,
  features_b: tf.Tensor,
  targets: tf.Tensor,
  side: int,
  neighbourhood: int,
  against_batch: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Whether each A cell's nearest B cell is within ``neighbourhood`` cells
  (Chebyshev distance on the grid) of its target.

  features_a, features_b: [P, side * side, D] L2-normalised; targets: int32
  [P, side * side] (-1: none). The nearest cell is looked for in the A
  cell's own B view, or, with ``against_batch``, among the B cells of every
  pair (a nearest cell in another pair's view is never near). Returns (float
  [P, N] 1.0 where near, float [P, N] mask of cells with a target).
  """
  pairs, cells = tf.shape(features_b)[0], tf.shape(features_b)[1]
  if against_batch:
    similarity = tf.einsum("pnd,qmd->pnqm", features_a, features_b)
    flat = tf.reshape(similarity, [pairs, tf.shape(features_a)[1], pairs * cells])
    overall = tf.argmax(flat, axis=-1, output_type=tf.int32)
    nearest = overall % cells
    own_pair = tf.equal(overall // cells, tf.range(pairs)[:, None])
  else:
    nearest = tf.argmax(
      tf.einsum("pnd,pmd->pnm", features_a, features_b), axis=-1, output_type=tf.int32
    )
    own_pair = tf.ones_like(nearest, tf.bool)
  distance = grid_distance(nearest, targets, side)
  mask = tf.cast(targets >= 0, tf.float32)
  return tf.cast((distance <= neighbourhood) & own_pair, tf.float32) * mask, mask


def reinitialise_attention_head(model, seed: int) -> None:
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
  """The photos of a folder or list file (plus scikit-image's, if configured)."""
  s = config.selfsup
  paths = selfsup_data.list_training_photos(source)
  photos, kept, skipped = selfsup_data.load_training_photos(paths, s.photo_max_side, s.crop_size)
  for line in skipped:
    log(f"skipped: {line}")
  if not photos:
    raise TrainingError(f"{source}: no usable training photos")
  log(f"{len(photos)} training photos from {source}")
  return photos, kept


def train_selfsup(
  photo_source: str | os.PathLike,
  output_dir: str | os.PathLike,
  config: DelfTrainingConfig,
  strategy: tf.distribute.Strategy | None = None,
  num_steps: int | None = None,
  log: Callable[[str], None] = print,
) -> TrainingResult:
  """Runs (or resumes) the self-supervised stage up to selfsup.max_steps (or ``num_steps`` more).

  photo_source: a folder of photos (searched recursively) or a list file.
  The global batch is generated identically on every machine; each replica
  trains on its slice of it.
  """
  validate_selfsup(config)
  s = config.selfsup
  strategy = strategy or tf.distribute.get_strategy()
  output_dir = pathlib.Path(output_dir)
  chief = is_chief(strategy)
  replicas = strategy.num_replicas_in_sync
  if s.pairs_per_batch % replicas:
    raise TrainingError(
      f"selfsup.pairs_per_batch {s.pairs_per_batch} is not divisible by the {replicas} replicas"
    )
  per_replica = s.pairs_per_batch // replicas
  apply_determinism(config, strategy, "selfsup", log)
  settings = view_settings(config)

  photos, paths = load_training_photos(photo_source, config, log)
  root = pathlib.Path(photo_source)  # Where cameras.csv files are looked for.
  real_pairs = load_real_pairs(
    photos, paths, root if root.is_dir() else root.parent, config, output_dir, log
  )
  if s.use_skimage_photos:
    photos = photos + selfsup_data.skimage_photos(s.photo_max_side)
  log(
    f"selfsup: {len(photos)} photos, {len(real_pairs)} real pairs, {replicas} replica(s), "
    f"{s.pairs_per_batch} pairs of {s.crop_size} px views per step"
  )

  keras.utils.set_random_seed(config.seed)
  with strategy.scope():
    weights = None if config.backbone_weights in ("", "random") else config.backbone_weights
    model = DelfModel(num_classes=1, backbone_weights=weights, seed=config.seed)
    descriptor_vars = model.backbone.trainable_variables
    attention_vars = [
      v
      for layer in (model.attention_conv1, model.attention_bn, model.attention_conv2)
      for v in layer.trainable_variables
    ]
    variables = descriptor_vars + attention_vars
    schedule = WarmupLinearDecay(s.learning_rate, s.warmup_steps, s.max_steps)
    optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum)
    optimizer.build(variables)
    attention_schedule = keras.optimizers.schedules.PolynomialDecay(
      s.attention_learning_rate, max(1, s.attention_steps), 0.0
    )
    attention_optimizer = keras.optimizers.Adam(attention_schedule)
    attention_optimizer.build(attention_vars)
    checkpoint = tf.train.Checkpoint(
      model=model, optimizer=optimizer, attention_optimizer=attention_optimizer
    )
    manager = tf.train.CheckpointManager(
      checkpoint, output_dir / "checkpoints", max_to_keep=config.max_checkpoints
    )
    if manager.latest_checkpoint:
      # The model must match; an optimizer of a phase not reached yet may be absent.
      tf.train.Checkpoint(model=model).restore(
        manager.latest_checkpoint
      ).assert_existing_objects_matched()
      checkpoint.restore(manager.latest_checkpoint).expect_partial()
      log(
        f"resumed from {manager.latest_checkpoint} at step "
        f"{int(optimizer.iterations.numpy()) + int(attention_optimizer.iterations.numpy())}"
      )

  def replica_part() -> slice:
    """This replica's slice of the global batch (called inside strategy.run)."""
    if replicas == 1:
      return slice(None)
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    return slice(replica * per_replica, (replica + 1) * per_replica)

  side = selfsup_data.grid_side(s.crop_size)

  def step_fn(view_a, view_b, targets_ab, targets_ba):
    part = replica_part()
    images = tf.concat([view_a[part], view_b[part]], axis=0)
    targets_ab, targets_ba = targets_ab[part], targets_ba[part]
    with tf.GradientTape() as tape:
      raw, _ = model.feature_maps(images, training=True)
      cells = tf.shape(raw)[1] * tf.shape(raw)[2]
      flat = tf.reshape(raw, [tf.shape(raw)[0], cells, raw.shape[-1]])
      normalized = tf.math.l2_normalize(flat, axis=-1)
      feats_a, feats_b = normalized[:per_replica], normalized[per_replica:]
      sum_ab, correct_ab, mask_ab = info_nce(
        feats_a, feats_b, targets_ab, s.temperature, side, s.negative_exclusion_radius
      )
      sum_ba, correct_ba, mask_ba = info_nce(
        feats_b, feats_a, targets_ba, s.temperature, side, s.negative_exclusion_radius
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
    gradients = tape.gradient(loss, variables)
    if config.clip_gradient_norm > 0:
      gradients, _ = tf.clip_by_global_norm(gradients, config.clip_gradient_norm)
    optimizer.apply_gradients(zip(gradients, variables))
    accuracy = (tf.reduce_sum(correct_ab) + tf.reduce_sum(correct_ba)) / count
    return contrastive / replicas, reliability / replicas, accuracy / replicas

  def attention_step_fn(view_a, view_b, targets_ab, targets_ba):
    part = replica_part()
    images = tf.concat([view_a[part], view_b[part]], axis=0)
    raw = model.backbone(caffe_preprocess(tf.cast(images, tf.float32)), training=False)
    cells = side * side
    normalized = tf.math.l2_normalize(tf.reshape(raw, [-1, cells, raw.shape[-1]]), axis=-1)
    near_ab, mask_ab = near_matches(
      normalized[:per_replica],
      normalized[per_replica:],
      targets_ab[part],
      side,
      s.attention_neighbourhood,
      s.attention_against_batch,
    )
    near_ba, mask_ba = near_matches(
      normalized[per_replica:],
      normalized[:per_replica],
      targets_ba[part],
      side,
      s.attention_neighbourhood,
      s.attention_against_batch,
    )
    count = tf.maximum(tf.reduce_sum(mask_ab) + tf.reduce_sum(mask_ba), 1.0)
    with tf.GradientTape() as tape:
      logits = tf.reshape(model.attention_logits(raw, training=True), [-1, cells])
      reliability = (
        reliability_loss(logits[:per_replica], near_ab, mask_ab)
        + reliability_loss(logits[per_replica:], near_ba, mask_ba)
      ) / count
      loss = reliability / replicas
    gradients = tape.gradient(loss, attention_vars)
    attention_optimizer.apply_gradients(zip(gradients, attention_vars))
    accuracy = (tf.reduce_sum(near_ab) + tf.reduce_sum(near_ba)) / count
    return tf.zeros(()), reliability / replicas, accuracy / replicas

  def distributed(replica_fn):
    """A compiled step running ``replica_fn`` on every replica and summing its outputs."""

    @tf.function
    def run(view_a, view_b, targets_ab, targets_ba):
      results = strategy.run(replica_fn, args=(view_a, view_b, targets_ab, targets_ba))
      return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

    return run

  train_step, attention_step = distributed(step_fn), distributed(attention_step_fn)

  def batch_of(step: int) -> dict[str, np.ndarray]:
    return selfsup_data.make_batch(
      config.seed, step, s.pairs_per_batch, s.real_pair_fraction, photos, real_pairs, settings
    )

  sample = batch_of(2**31 - 1)["view_a"][:2] if chief else None  # Fixed attention-image input.
  writer = (
    tf.summary.create_file_writer(str(output_dir / "tensorboard" / "selfsup"))
    if chief
    else tf.summary.create_noop_writer()
  )

  def global_step() -> int:
    return int(optimizer.iterations.numpy()) + int(attention_optimizer.iterations.numpy())

  total_steps = s.max_steps + s.attention_steps
  step = global_step()
  last_step = total_steps if num_steps is None else min(total_steps, step + num_steps)
  contrastive = reliability = accuracy = float("nan")
  time_file = output_dir / TIME_FILE
  spent_before = json.loads(time_file.read_text())["seconds"] if time_file.is_file() else 0.0
  start, start_step, step_times = time.time(), step, []
  while step < last_step:
    step_start = time.perf_counter()
    batch = batch_of(step)
    phase_one = step < s.max_steps
    if step == s.max_steps and s.reinit_attention_head:  # The attention phase's first step.
      reinitialise_attention_head(model, config.seed)
      log(f"selfsup: attention head re-initialised for its phase at step {step}")
    run_step = train_step if phase_one else attention_step
    outputs = run_step(batch["view_a"], batch["view_b"], batch["targets_ab"], batch["targets_ba"])
    step = global_step()
    contrastive, reliability, accuracy = (float(v) for v in outputs)
    step_times.append(time.perf_counter() - step_start)
    if not np.isfinite(contrastive) or not np.isfinite(reliability):
      raise TrainingError(
        f"selfsup: the loss became {contrastive}, {reliability} at step "
        f"{step}; lower selfsup.learning_rate or attention_learning_rate"
      )
    if step % config.summary_every == 0 or step == last_step:
      rate = (time.time() - start) / max(1, step - start_step)
      if phase_one:
        what = (
          f"contrastive {contrastive:.4f}, reliability {reliability:.4f}, correspondence "
          f"accuracy {accuracy:.3f}, lr {float(schedule(step)):.5f}"
        )
      else:
        what = (
          f"attention: reliability {reliability:.4f}, near matches {accuracy:.3f}, lr "
          f"{float(attention_schedule(step - s.max_steps)):.6f}"
        )
      log(f"selfsup step {step}/{total_steps}: {what} [{1000 * rate:.0f} ms/step]")
      with writer.as_default(step=step):
        if phase_one:
          tf.summary.scalar("loss", contrastive + s.attention_loss_weight * reliability)
          tf.summary.scalar("contrastive_loss", contrastive)
          tf.summary.scalar("correspondence_accuracy", accuracy)
          tf.summary.scalar("learning_rate", schedule(step))
        else:
          tf.summary.scalar("near_match_accuracy", accuracy)
          tf.summary.scalar("attention_learning_rate", attention_schedule(step - s.max_steps))
        tf.summary.scalar("reliability_loss", reliability)
        if chief:
          tf.summary.image("attention", attention_image(model(sample)["attention"]))
    if step % config.save_every == 0 or step == last_step or step == s.max_steps:
      manager.save(checkpoint_number=step)
      if chief:
        with atomic_write(time_file, "w") as handle:
          json.dump({"step": step, "seconds": round(spent_before + time.time() - start, 1)}, handle)
  writer.flush()
  model_path, ms_per_step = finish_run(model, output_dir, chief, "selfsup", step, step_times, log)
  # The loss of the phase the run ended in: contrastive, or the attention head's reliability.
  loss = contrastive if step <= s.max_steps else reliability
  return TrainingResult(step, loss, accuracy, model_path, ms_per_step)
