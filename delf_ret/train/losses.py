"""The self-supervised stage's losses on L2-normalised conv4 cells (TensorFlow).

Views come in pairs (A, B) of square feature maps of ``side`` x ``side``
cells, flattened row-major; ``targets`` give, for each A cell, the flat index
of its corresponding cell in its own B view, or -1 (no correspondent). P:
pairs in the batch; N, M: cells of an A view and of a B view; D: channels.
"""

from __future__ import annotations

import tensorflow as tf


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
