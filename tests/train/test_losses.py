"""The self-supervised losses against hand-computed values; the attention head reset."""

import numpy as np
import pytest
import tensorflow as tf

from delf_ret.train import losses


def test_excluded_negatives_are_the_correspondents_grid_neighbours_in_its_own_pair():
  # Two pairs of 3 x 3 views; A cells: pair 0 -> centre (4) and no target,
  # pair 1 -> corner 0 and corner 8.
  targets = tf.constant([[4, -1], [0, 8]], tf.int32)
  excluded = losses.excluded_negatives(targets, side=3, radius=1).numpy()
  assert excluded.shape == (4, 18)
  expected = np.zeros((4, 18), bool)
  expected[0, [0, 1, 2, 3, 5, 6, 7, 8]] = True  # every neighbour of the centre, not 4 itself
  expected[2, [9 + 1, 9 + 3, 9 + 4]] = True  # neighbours of corner 0 in pair 1's B view
  expected[3, [9 + 4, 9 + 5, 9 + 7]] = True  # neighbours of corner 8
  np.testing.assert_array_equal(excluded, expected)
  assert not losses.excluded_negatives(targets, side=3, radius=0).numpy().any()
  # Radius 2 on a 3 x 3 grid: every other cell of the own view.
  wide = losses.excluded_negatives(targets, side=3, radius=2).numpy()
  assert wide[2, 9:].sum() == 8 and not wide[2, :9].any()


def test_info_nce_leaves_excluded_cells_out_of_the_denominator():
  # One pair of 3 x 3 views, temperature 1; the A cell's target is B cell 0,
  # B cell 1 (a grid neighbour) is as similar as the target, the others orthogonal.
  a = np.zeros((1, 9, 2), np.float32)
  a[0, :, 0] = 1.0
  b = np.zeros((1, 9, 2), np.float32)
  b[0, :, 1] = 1.0
  b[0, 0] = b[0, 1] = [1.0, 0.0]
  targets = np.full((1, 9), -1, np.int32)
  targets[0, 0] = 0
  e = np.e
  total, correct, mask = losses.info_nce(tf.constant(a), tf.constant(b), tf.constant(targets), 1.0)
  assert float(total) == pytest.approx(np.log(2 * e + 7) - 1, rel=1e-5)
  assert mask.numpy().sum() == 1
  # Radius 1: B cells 1, 3 and 4 are no longer negatives.
  total, correct, mask = losses.info_nce(
    tf.constant(a), tf.constant(b), tf.constant(targets), 1.0, side=3, exclusion_radius=1
  )
  assert float(total) == pytest.approx(np.log(e + 5) - 1, rel=1e-5)
  assert correct.numpy()[0, 0] == 1.0  # argmax over the batch: the target (ties go to the first)


def test_near_matches_in_the_own_view_or_against_the_whole_batch():
  # Two pairs of 2 x 2 views. The one A cell with a target (pair 0, cell 0 -> B cell 0):
  # its nearest cell in its own B view is cell 1 (one cell from the target), but pair 1's
  # B cell 0 is nearer still.
  a = np.zeros((2, 4, 2), np.float32)
  a[0, 0] = [1.0, 0.0]
  b = np.tile(np.array([0.0, 1.0], np.float32), (2, 4, 1))
  b[0, 1] = [0.8, 0.6]
  b[1, 0] = [1.0, 0.0]
  targets = np.full((2, 4), -1, np.int32)
  targets[0, 0] = 0
  args = (tf.constant(a), tf.constant(b), tf.constant(targets), 2)
  near, mask = losses.near_matches(*args, neighbourhood=1)
  assert near.numpy()[0, 0] == 1.0 and mask.numpy().sum() == 1
  near, _ = losses.near_matches(*args, neighbourhood=0)
  assert near.numpy()[0, 0] == 0.0  # cell 1 is not the target itself
  near, mask = losses.near_matches(*args, neighbourhood=1, against_batch=True)
  assert near.numpy().sum() == 0.0 and mask.numpy().sum() == 1


@pytest.mark.slow  # Builds a DELF model: several seconds.
def test_reinitialise_attention_head_is_seeded_and_fresh():
  from delf_ret.model.delf import DelfModel
  from delf_ret.train import selfsup

  model = DelfModel(num_classes=1, backbone_weights=None, seed=0)
  model.feature_maps(tf.zeros([1, 64, 64, 3]))
  for variable in (
    model.attention_conv1.bias,
    model.attention_bn.moving_mean,
    model.attention_bn.gamma,
  ):
    variable.assign(variable + 3.0)
  selfsup.reinitialise_attention_head(model, seed=5)
  first = model.attention_conv1.kernel.numpy().copy()
  assert not model.attention_conv1.bias.numpy().any()
  assert not model.attention_bn.moving_mean.numpy().any()
  np.testing.assert_array_equal(model.attention_bn.gamma.numpy(), 1.0)
  np.testing.assert_array_equal(model.attention_bn.moving_variance.numpy(), 1.0)
  selfsup.reinitialise_attention_head(model, seed=5)
  np.testing.assert_array_equal(model.attention_conv1.kernel.numpy(), first)
  selfsup.reinitialise_attention_head(model, seed=6)
  assert not np.array_equal(model.attention_conv1.kernel.numpy(), first)
