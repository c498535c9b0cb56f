"""The one resumable training loop every stage runs (tuning, attention, self-supervised).

A stage builds its model, optimizers and a ``tf.train.Checkpoint`` of them,
opens its checkpoints with :func:`open_checkpoints` (which restores the
latest one), and hands :func:`run_loop` a step function: given the global
step before it, the function runs one training step and returns its metrics
(python floats, at least "loss" and "accuracy"). The loop keeps the cadence:
a log line and TensorBoard scalars (plus the attention map of a fixed input)
every ``summary_every`` steps, a checkpoint every ``save_every`` steps and at
the run's last step, the wall time of each step; at the end it saves the model.

Resuming: the global step is read back from the checkpointed optimizers, so
running the same command again continues at the last checkpoint; a stage
whose batches are a function of the step (or whose input iterator is in the
checkpoint) then sees the same batches as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any
from typing import Callable

import tensorflow as tf

from delf_ret.atomic import atomic_write
from delf_ret.model import save_delf_model

MODEL_FILE = "delf_model.keras"

Metrics = dict[str, float]
# One training step: the global step before it -> its metrics ("loss", "accuracy", ...).
StepFn = Callable[[int], Metrics]
# Writes a summary's scalars (inside the stage's TensorBoard writer) for (step, metrics) and
# returns the text of its log line.
SummariseFn = Callable[[int, Metrics], str]


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


@dataclasses.dataclass
class LoopSpec:
  """What :func:`run_loop` needs besides the step function.

  stage: name in log lines, TensorBoard folder ``<output_dir>/tensorboard/<stage>``.
  model: saved to ``<output_dir>/delf_model.keras`` at the end (chief only).
  manager: from :func:`open_checkpoints`. current_step: the global step (from
    the optimizers). total_steps: where the stage ends (log lines say step/total).
  summary_every, save_every: cadence in steps; save_at: further steps that are
    checkpointed (a phase boundary). chief: this worker writes summaries and
    the model. attention_input: images [B, H, W, 3] whose attention maps go to
    TensorBoard (None: none). on_save: called after each checkpoint with
    (step, seconds since this run's loop started).
  """

  stage: str
  output_dir: pathlib.Path
  model: Any
  manager: tf.train.CheckpointManager
  current_step: Callable[[], int]
  total_steps: int
  summary_every: int
  save_every: int
  chief: bool = True
  save_at: tuple[int, ...] = ()
  attention_input: Any = None
  on_save: Callable[[int, float], None] | None = None


def attention_image(attention: tf.Tensor) -> tf.Tensor:
  """Attention maps [B, h, w] -> images [B, h, w, 1] scaled to [0, 1] per map."""
  peak = tf.reduce_max(attention, axis=[1, 2], keepdims=True)
  return (attention / tf.maximum(peak, 1e-12))[..., None]


def open_checkpoints(
  checkpoint: tf.train.Checkpoint,
  directory: pathlib.Path,
  max_to_keep: int,
  current_step: Callable[[], int],
  log: Callable[[str], None],
  must_match: tf.train.Checkpoint | None = None,
) -> tuple[tf.train.CheckpointManager, bool]:
  """The checkpoint manager of ``directory``, the latest checkpoint restored into
  ``checkpoint``; returns (manager, whether a checkpoint was restored).

  Every object of ``must_match`` (default: the whole checkpoint) must be in
  the file; with ``must_match`` given, the rest of ``checkpoint`` (e.g. the
  optimizer of a phase not reached yet) may be absent.
  """
  manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)
  latest = manager.latest_checkpoint
  if not latest:
    return manager, False
  if must_match is None:
    checkpoint.restore(latest).assert_existing_objects_matched()
  else:
    must_match.restore(latest).assert_existing_objects_matched()
    checkpoint.restore(latest).expect_partial()
  log(f"resumed from {latest} at step {current_step()}")
  return manager, True


def finish_run(
  model: Any,
  output_dir: pathlib.Path,
  chief: bool,
  stage: str,
  step: int,
  step_times: list[float],
  log: Callable[[str], None],
) -> tuple[pathlib.Path | None, float]:
  """Saves the final model (chief only); returns (its path or None, mean ms per step).

  step_times: seconds of each step of this run. The mean leaves out the run's
  first step, which includes tracing (NaN with fewer than two steps).
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


def _summarise(
  spec: LoopSpec, writer: Any, step: int, metrics: Metrics, summarise: SummariseFn
) -> str:
  """Writes the step's scalars and attention images; returns the log text."""
  with writer.as_default(step=step):
    text = summarise(step, metrics)
    if spec.chief and spec.attention_input is not None:
      attention = spec.model(spec.attention_input)["attention"]
      tf.summary.image("attention", attention_image(attention))
  return text


def run_loop(
  spec: LoopSpec,
  step_fn: StepFn,
  summarise: SummariseFn,
  num_steps: int | None,
  log: Callable[[str], None],
) -> TrainingResult:
  """Runs steps from the restored global step up to spec.total_steps (or ``num_steps`` more),
  then saves the model. Returns the last step's loss and accuracy (NaN if no step ran)."""
  writer = (
    tf.summary.create_file_writer(str(spec.output_dir / "tensorboard" / spec.stage))
    if spec.chief
    else tf.summary.create_noop_writer()
  )
  step = spec.current_step()
  last_step = spec.total_steps if num_steps is None else min(spec.total_steps, step + num_steps)
  metrics: Metrics = {"loss": float("nan"), "accuracy": float("nan")}
  start, start_step, step_times = time.time(), step, []
  while step < last_step:
    step_start = time.perf_counter()
    metrics = step_fn(step)
    step = spec.current_step()
    step_times.append(time.perf_counter() - step_start)
    if step % spec.summary_every == 0 or step == last_step:
      rate = (time.time() - start) / max(1, step - start_step)
      text = _summarise(spec, writer, step, metrics, summarise)
      log(f"{spec.stage} step {step}/{spec.total_steps}: {text} [{1000 * rate:.0f} ms/step]")
    if step % spec.save_every == 0 or step == last_step or step in spec.save_at:
      spec.manager.save(checkpoint_number=step)
      if spec.on_save is not None:
        spec.on_save(step, time.time() - start)
  writer.flush()
  model_path, ms_per_step = finish_run(
    spec.model, spec.output_dir, spec.chief, spec.stage, step, step_times, log
  )
  return TrainingResult(step, metrics["loss"], metrics["accuracy"], model_path, ms_per_step)


def time_recorder(time_file: pathlib.Path, chief: bool) -> Callable[[int, float], None]:
  """A loop's on_save: the chief records {"step", "seconds"} (training seconds over every run
  of the stage, resumed ones included) in ``time_file`` (JSON, written atomically)."""
  spent_before = json.loads(time_file.read_text())["seconds"] if time_file.is_file() else 0.0

  def record(step: int, seconds: float) -> None:
    if chief:
      with atomic_write(time_file, "w") as handle:
        json.dump({"step": step, "seconds": round(spent_before + seconds, 1)}, handle)

  return record
