"""The training loop on a one-layer model: cadence, resume equals an uninterrupted run."""

import numpy as np
import pytest
import tensorflow as tf

from delf_ret.train.loop import MODEL_FILE
from delf_ret.train.loop import LoopSpec
from delf_ret.train.loop import open_checkpoints
from delf_ret.train.loop import run_loop


def run(output_dir, num_steps=None, save_at=(), total_steps=6):
  """A linear regression run through the loop: (result, log lines, on_save calls, weights)."""
  import keras

  lines, saves = [], []
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros")])
  optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
  optimizer.build(model.trainable_variables)
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)

  def current_step():
    return int(optimizer.iterations.numpy())

  manager, _ = open_checkpoints(
    checkpoint, output_dir / "checkpoints", 10, current_step, lines.append
  )

  def step_fn(step):
    # The batch is a function of the step, as in the self-supervised stage.
    rng = np.random.default_rng(step)
    x = rng.normal(size=(8, 2)).astype(np.float32)
    y = x @ np.array([[2.0], [-1.0]], np.float32)
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean((model(x) - y) ** 2)
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.weights))
    return {"loss": float(loss), "accuracy": float(step)}

  def summarise(step, metrics):
    tf.summary.scalar("loss", metrics["loss"])
    return f"loss {metrics['loss']:.3f}"

  spec = LoopSpec(
    stage="toy",
    output_dir=output_dir,
    model=model,
    manager=manager,
    current_step=current_step,
    total_steps=total_steps,
    summary_every=2,
    save_every=4,
    save_at=save_at,
    on_save=lambda step, seconds: saves.append(step),
  )
  result = run_loop(spec, step_fn, summarise, num_steps, lines.append)
  return result, lines, saves, [w.numpy() for w in model.weights]


def test_cadence_of_logs_summaries_and_checkpoints(tmp_path):
  result, lines, saves, _ = run(tmp_path, save_at=(3,))
  assert (result.step, result.accuracy) == (6, 5.0)  # The last step's metrics.
  assert result.model_path == tmp_path / MODEL_FILE and result.model_path.is_file()
  assert np.isfinite(result.loss) and result.ms_per_step > 0
  assert [line.split(":")[0] for line in lines] == [
    "toy step 2/6",
    "toy step 4/6",
    "toy step 6/6",
    "toy",  # toy: step 6, model saved to ...
  ]
  assert saves == [3, 4, 6]  # save_every, save_at and the last step.
  assert (
    tf.train.get_checkpoint_state(str(tmp_path / "checkpoints"))
    .all_model_checkpoint_paths[-1]
    .endswith("ckpt-6")
  )
  assert list((tmp_path / "tensorboard" / "toy").glob("events.out.*"))


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
  straight, _, _, weights = run(tmp_path / "straight")
  first, _, saves, _ = run(tmp_path / "split", num_steps=3)
  assert first.step == 3 and saves == [3]  # A run's last step is always saved.
  resumed, lines, saves, resumed_weights = run(tmp_path / "split")
  assert lines[0].startswith("resumed from") and lines[0].endswith("at step 3")
  assert saves == [4, 6] and resumed.step == 6
  assert resumed.loss == straight.loss
  for a, b in zip(weights, resumed_weights):
    np.testing.assert_array_equal(a, b)
  # Run again once finished: no step, NaN metrics, the same model saved again.
  again, _, saves, again_weights = run(tmp_path / "split")
  assert again.step == 6 and np.isnan(again.loss) and saves == []
  assert np.isnan(again.ms_per_step)
  for a, b in zip(weights, again_weights):
    np.testing.assert_array_equal(a, b)


def test_must_match_lets_other_objects_be_absent(tmp_path):
  import keras

  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
  optimizer = keras.optimizers.Adam()
  optimizer.build(model.trainable_variables)
  both = tf.train.Checkpoint(model=model, optimizer=optimizer)
  lines = []
  manager, resumed = open_checkpoints(
    both, tmp_path, 1, lambda: 0, lines.append, must_match=tf.train.Checkpoint(model=model)
  )
  assert resumed and lines == [f"resumed from {manager.latest_checkpoint} at step 0"]
  with pytest.raises(AssertionError):
    open_checkpoints(both, tmp_path, 1, lambda: 0, lines.append)
