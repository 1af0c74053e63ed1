"""The training loop: data -> jitted step -> metrics, checkpoints and evaluators.

Host-side work (logging, checkpointing, evaluators) stays out of the jitted step.
A run resumes from its newest checkpoint that restores (state and data position);
a stop request (SIGTERM, Ctrl-C, a TPU preemption notice) saves a checkpoint at a
step all processes agree on and exits cleanly, so the restarted run continues
exactly. Whatever ends the loop, a checkpoint save in flight is finished first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview
from etils import epath
from flax import traverse_util

from videojam_jax import files
from videojam_jax.data import pipeline
from videojam_jax.evaluation import evaluators as evaluators_lib
from videojam_jax.training import checkpoints
from videojam_jax.training import config_checks
from videojam_jax.training import experiment as experiment_lib
from videojam_jax.training import metric_writer
from videojam_jax.training import preemption
from videojam_jax.training import runs
from videojam_jax.training import state as state_lib
from videojam_jax.training import step as step_lib
from videojam_jax.training.state import TrainState

CONFIG_FILE = runs.CONFIG_FILE
PROFILE_DIR = "profile"
GUARDED_METRICS = ("loss", "grad_norm")


class NonFiniteError(FloatingPointError):
  """A train step produced a non-finite loss or gradient."""


def save_config(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
  if jax.process_index() == 0:
    files.atomic_write(workdir / CONFIG_FILE, config.to_json_best_effort(indent=2))


def check_finite(host_metrics: Sequence[Mapping[str, Any]], first_step: int,
                 last_good_step: int | None) -> None:
  """Raises NonFiniteError naming the first step whose loss or gradient norm is not finite."""
  for offset, metrics in enumerate(host_metrics):
    bad = [k for k in GUARDED_METRICS if k in metrics and not np.isfinite(metrics[k])]
    if bad:
      values = ", ".join(f"{k}={float(metrics[k])}" for k in bad)
      where = ("the last good checkpoint is step %d" % last_good_step if last_good_step is not None
               else "no checkpoint was written")
      raise NonFiniteError(
          f"step {first_step + offset}: non-finite {values}; stopping without saving "
          f"this state ({where}). Lower optim.learning_rate, check the data, or resume from "
          "that checkpoint.")


class Profiler:
  """jax.profiler traces of the steps in config.train.profile_steps (viewable in
  TensorBoard's profile plugin or XProf), written under `<workdir>/profile`."""

  def __init__(self, steps: Sequence[int], workdir: epath.Path):
    self.first, self.last = (min(steps), max(steps)) if steps else (None, None)
    self.logdir = str(workdir / PROFILE_DIR)
    self.active = False

  def before_step(self, step: int) -> None:
    if self.first is not None and step == self.first and not self.active:
      jax.profiler.start_trace(self.logdir)
      self.active = True
      logging.info("profiling steps %d-%d into %s", self.first, self.last, self.logdir)

  def after_step(self, step: int, state: TrainState) -> None:
    if self.active and step >= self.last:
      jax.block_until_ready(state)   # the trace must contain the steps' device work
      self.stop()

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


def initial_state(exp: experiment_lib.Experiment, tx, train_config: ml_collections.ConfigDict,
                  seed: int) -> TrainState:
  """A fresh state, with weights from train.init_from when it names another run."""
  params = None
  if train_config.init_from:
    params = runs.load_params(exp.model, train_config.init_from, train_config.init_from_weights,
                              adapter_key=jax.random.key(seed),
                              motion_head=train_config.retrofit_motion_head)
    logging.info("initialised from %s (%s weights)", train_config.init_from,
                 train_config.init_from_weights)
  return state_lib.init_state(exp.model, tx, jax.random.key(seed), params)


def _run_evaluators(scheduled, state: TrainState, step: int, final: bool, writer) -> None:
  for ev in scheduled:
    if not ev.due(step, final):
      continue
    params = state_lib.model_params(state, ev.weights)
    values = {f"{ev.name}/{k}": v for k, v in ev.evaluator.run(params, step)}
    if values:
      writer.write_scalars(step, values)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains for config.train.num_steps (resuming if workdir has a checkpoint)."""
  config_checks.check_config(config)
  workdir = epath.Path(workdir)
  if files.is_local(workdir):
    workdir = workdir.resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  save_config(config, workdir)

  exp = experiment_lib.build(config)
  plan, train = exp.plan, config.train
  plan.check_batch_divisible(train.batch_size)
  logging.info("mesh %s on %d devices, %d processes", dict(plan.mesh.shape), jax.device_count(),
               jax.process_count())

  train_ds = pipeline.create_dataset(config.data, config.data.train_split,
                                     batch_size=train.batch_size, captions=exp.captions)
  data_iter = iter(train_ds)
  tx = state_lib.create_optimizer(config.optim, train.num_steps)
  abstract = state_lib.abstract_state(exp.model, tx)
  manager = checkpoints.create_manager(str(workdir), train)
  writer = None
  try:
    state, restored_step = checkpoints.restore_latest(manager, abstract, data_iter)
    if state is None:
      state = initial_state(exp, tx, train, config.seed)
    else:
      logging.info("resuming from checkpoint at step %d", restored_step)
    last_saved = restored_step
    first_step = int(jax.device_get(state.step))
    num_steps = int(train.num_steps)
    if first_step >= num_steps:
      logging.info("already trained to step %d (train.num_steps=%d): nothing to do",
                   first_step, num_steps)
    total = state_lib.count_params(state_lib.model_params(state))
    trained = state_lib.count_params(state.params)
    if is_main:
      parameter_overview.log_parameter_overview(
          state.params, include_stats=jax.process_count() == 1,
          msg="model parameters" if trained == total else "trained parameters (LoRA)")
    logging.info("model: %s parameters, %s of them trained%s", f"{total:,}", f"{trained:,}",
                 " (LoRA: the rest frozen)" if trained < total else "")

    step_fn = step_lib.TrainStep(
        exp.model, tx, loss_config=config.loss, ema_decay=config.optim.ema_decay,
        grad_accum_steps=config.optim.grad_accum_steps, seed=config.seed,
        state_shardings=state_lib.shardings(abstract),
        batch_spec=pipeline.batch_spec(exp.video_shape, exp.captions, train.batch_size))
    writer = metric_writer.create_writer(str(workdir), is_main=is_main,
                                         backend=train.metric_writer)
    if first_step == 0:
      writer.write_hparams({k: v for k, v in traverse_util.flatten_dict(
          config.to_dict(), sep=".").items() if isinstance(v, (int, float, str, bool))})
    scheduled = evaluators_lib.create(config.evals, evaluators_lib.EvalContext(exp, workdir))
    progress = metric_writer.ProgressReporter(writer, num_steps=num_steps)
    progress(first_step)
    profiler = Profiler(tuple(train.profile_steps), workdir)
    learning_rate = state_lib.learning_rate_schedule(config.optim, num_steps)
    pending: list[dict[str, jax.Array]] = []

    # The stop step is agreed by all processes (preemption.py).
    with preemption.StopRequest(first_step) as stop:
      step = first_step
      while step < num_steps:
        batch = pipeline.make_global_batch(next(data_iter), step_fn.batch_shardings)
        profiler.before_step(step + 1)
        # Everything the step needs is on the devices already: an implicit
        # host-to-device transfer here would be a bug (and a silent slowdown).
        with jax.transfer_guard("disallow"):
          state, metrics = step_fn(state, batch)
        step += 1
        profiler.after_step(step, state)
        pending.append(metrics)

        final = step == num_steps
        stopping = stop.should_stop(step)
        saving = final or stopping or step % train.checkpoint_every == 0
        if saving or step % train.log_every == 0:
          # One device->host transfer per logging interval, not per step; and always
          # before a save, so that a non-finite state is never written.
          host = jax.device_get(pending)
          pending = []
          check_finite(host, step - len(host) + 1, last_saved)
          means = {f"train/{k}": float(np.mean([m[k] for m in host])) for k in host[0]}
          means["train/learning_rate"] = float(learning_rate(step - 1))
          writer.write_scalars(step, means)
          progress(step)
        if saving:
          checkpoints.save(manager, step, state, data_iter)
          last_saved = step
        _run_evaluators(scheduled, state, step, final, writer)
        if stopping:
          logging.warning("stopping at step %d after saving a checkpoint (%s)", step,
                          stop.reason)
          break
    profiler.stop()
    return state
  finally:
    # Whatever ended the loop (the end, a stop request, an exception in an evaluator
    # or in logging), a save in flight completes: its checkpoint is never lost.
    manager.wait_until_finished()
    manager.close()
    if writer is not None:
      writer.close()
