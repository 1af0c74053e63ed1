"""The training loop: data -> jitted step -> metrics, checkpoints and samples.

Host-side work (logging, checkpointing, sample writing) stays out of the
jitted step. A run resumes from its latest checkpoint (state and data position);
SIGTERM (or a TPU preemption notice) saves a checkpoint at the current step and
exits cleanly, so the restarted run continues exactly.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging

from videojam_jax.training import checkpoints
from videojam_jax.training import config_checks
from videojam_jax.data import pipeline as input_pipeline
from videojam_jax.model import retrofit
from videojam_jax.sampling import sampler as sampler_lib
from videojam_jax.sampling import samples
from videojam_jax.parallel import sharding
from videojam_jax.training import state as train_state_lib
from videojam_jax.training import step as train_step_lib


class StopSignal:
  """Records SIGTERM/SIGINT so the loop can save and exit at a step boundary."""

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: will checkpoint and stop after this step", signum)
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))


def eval_captions(config: ml_collections.ConfigDict, count: int) -> list[str]:
  """The first `count` captions of the eval split (stable prompts for samples)."""
  source, _ = input_pipeline.open_clip_source(config, config.data.eval_split)
  captions = []
  for i in range(min(count, len(source))):
    c = source[i]["caption"]
    captions.append(c.decode("utf-8") if isinstance(c, bytes) else str(c))
  return captions


def initial_params(config: ml_collections.ConfigDict, abstract_params: Any, shardings: Any) -> Any:
  """Weights from config.train.init_from, retrofitted to VideoJAM if they are a base model's."""
  loaded = checkpoints.load_weights(config.train.init_from, config.train.init_from_weights)
  params = retrofit.load_into(loaded, abstract_params, jam=bool(config.model.jam))
  return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), params, shardings)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> train_state_lib.TrainState:
  """Trains for config.train.num_steps (resuming if workdir has a checkpoint)."""
  config_checks.check_config(config)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  save_config(config, workdir)

  mesh = sharding.create_mesh(config.mesh)
  rules = sharding.get_rules(config.mesh.rules)
  sharding.check_batch_divisible(config.train.batch_size, mesh, rules)
  logging.info("mesh %s on %d devices, %d processes", dict(mesh.shape), jax.device_count(),
               jax.process_count())

  train_ds = input_pipeline.create_dataset(config, config.data.train_split)
  data_iter = iter(train_ds)
  tx = train_state_lib.create_optimizer(config)
  abstract_state, state_shardings = train_state_lib.abstract_state_and_shardings(config, mesh, tx)
  manager = checkpoints.create_manager(workdir, config.train)

  latest = manager.latest_step()
  if latest is not None:
    logging.info("resuming from checkpoint at step %d", latest)
    state = checkpoints.restore(manager, latest, abstract_state, data_iter)
  else:
    state, _ = train_state_lib.create_train_state(config, mesh, tx)
    if config.train.init_from:
      params = initial_params(config, abstract_state.params, state_shardings.params)
      state = state.replace(params=params, ema_params=params, opt_state=tx.init(params))
      logging.info("initialised from %s (%s weights)", config.train.init_from,
                   config.train.init_from_weights)
  first_step = int(jax.device_get(state.step))
  num_steps = config.train.num_steps
  if first_step >= num_steps:
    logging.info("already trained to step %d (train.num_steps=%d): nothing to do", first_step, num_steps)
  logging.info("model: %s parameters", f"{train_state_lib.count_params(state.params):,}")

  spec = input_pipeline.batch_spec(config)
  step_fn = train_step_lib.make_train_step(config, mesh, tx, state_shardings, spec)
  # clu's writers load TensorFlow (for TensorBoard): imported here, not at module
  # import, so that config and flag errors come back in a second.
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top

  sample_fn = None
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
  if first_step == 0:
    writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()
                          if isinstance(v, (int, float, str, bool))})
  # Called every step (clu requires it) but after the metrics fetch below, so its
  # timed points (multiples of log_every) fall right after a device sync: steps
  # are dispatched asynchronously and only synced points give true steps/s.
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_steps=config.train.log_every, every_secs=None)
  pending: list[dict[str, jax.Array]] = []

  with StopSignal() as stop:
    step = first_step
    while step < num_steps:
      local = next(data_iter)
      batch = input_pipeline.make_global_batch(local, step_fn.in_batch_shardings)
      state, metrics = step_fn(state, batch)
      step += 1
      pending.append(metrics)

      if step % config.train.log_every == 0 or step == num_steps:
        # One device->host transfer per logging interval, not per step.
        host = jax.device_get(pending)
        means = {f"train/{k}": float(np.mean([m[k] for m in host])) for k in host[0]}
        means["train/learning_rate"] = float(
            train_state_lib.learning_rate_schedule(config.optim, num_steps)(step - 1))
        writer.write_scalars(step, means)
        pending = []
      report(step)

      preempted = manager.reached_preemption(step)
      final = step == num_steps
      if final or preempted or stop.received or step % config.train.checkpoint_every == 0:
        checkpoints.save(manager, step, state, data_iter)

      if step % config.train.sample_every == 0 or final:
        if sample_fn is None:
          settings = sampler_lib.settings_from_config(config.sample)
          if not config.model.jam and settings.guidance == "inner":
            settings = sampler_lib.settings_from_config(config.sample, guidance="cfg")
          sample_fn = sampler_lib.make_sampler(config, mesh, settings)
          captions = eval_captions(config, config.sample.num_samples)
        videos, motions = samples.generate(sample_fn, state.ema_params, config, captions, config.seed)
        if is_main:
          paths = samples.write_samples(os.path.join(workdir, "samples", f"step_{step:06d}"),
                                        videos, motions, captions, config.sample.fps,
                                        config.data.flow_sigma)
          logging.info("wrote %d samples to %s", len(paths), os.path.dirname(paths[0]))

      if stop.received or preempted:
        logging.warning("stopping at step %d after saving a checkpoint", step)
        break

  manager.wait_until_finished()
  writer.flush()
  manager.close()
  return state


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
