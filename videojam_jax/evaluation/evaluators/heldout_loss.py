"""Held-out flow-matching loss at fixed times, video and motion separately.

The first `num_clips` clips of a split (the eval split by default) are loaded once.
At each time t in `times` every clip meets the same noise at every evaluation
(`flow_matching.fixed_time_losses`: noise drawn from (seed, t index, clip index)),
with its caption and motion kept: the curves compare across steps and across runs.
Yields `video_loss_t<t>` and `motion_loss_t<t>` for each t, and their means over the
times, `video_loss` and `motion_loss`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from videojam_jax.data import pipeline
from videojam_jax.evaluation import evaluators
from videojam_jax.training import flow_matching

OPTIONS = ("split", "num_clips", "batch_size", "times", "seed")
DEFAULT_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


class Evaluator:
  """Mean held-out losses of `num_clips` fixed clips at each of `times`."""

  def __init__(self, options: ml_collections.ConfigDict, context: evaluators.EvalContext):
    evaluators.check_known(options, OPTIONS, "heldout_loss")
    exp = context.experiment
    self._model, self._plan = exp.model, exp.plan
    config = exp.config
    self.split = str(evaluators.option(options, "split", config.data.eval_split))
    self.times = tuple(float(t) for t in evaluators.option(options, "times", DEFAULT_TIMES))
    if not self.times or not all(0.0 <= t <= 1.0 for t in self.times):
      raise evaluators.EvaluatorConfigError(f"heldout_loss.times={self.times} must be in [0, 1]")
    self._key = jax.random.key(int(evaluators.option(options, "seed", 0)))
    num_clips = int(evaluators.option(options, "num_clips", 32))
    batch_size = int(evaluators.option(options, "batch_size", 8))
    self._plan.check_batch_divisible(batch_size, "heldout_loss.batch_size")
    self._captions = exp.captions
    self._batches, self.num_clips = self._load(config.data, exp.captions, num_clips, batch_size)
    logging.info("heldout_loss: %d clips of split %r at t = %s", self.num_clips, self.split,
                 self.times)
    jam = self._model.jam

    def losses(params, batch, t, key):
      return flow_matching.fixed_time_losses(self._model.apply, params, batch, t, key, jam)

    self._losses = jax.jit(losses)

  def _load(self, data_config, captions, num_clips: int, batch_size: int):
    """The split's first num_clips clips as global batches, the last one padded (weight 0)."""
    local_batch = batch_size // jax.process_count()
    ds = pipeline.create_dataset(data_config, self.split, batch_size=batch_size,
                                 captions=captions, shuffle=False, repeat=False,
                                 with_index=True, drop_remainder=False)
    batches, count = [], 0
    self._local_batches = []   # this process's rows of each batch (for with_captions)
    for local in ds:
      keep = np.asarray(local["clip_index"]) < num_clips
      if not keep.any():
        break
      rows = {k: np.asarray(v)[keep] for k, v in local.items()}
      n = int(keep.sum())
      pad = local_batch - n
      padded = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) if pad else v
                for k, v in rows.items()}
      padded["weight"] = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
      self._local_batches.append(padded)
      batches.append(self._global(padded))
      count += n
    if not batches:
      raise ValueError(f"heldout_loss: split {self.split!r} gave no clips")
    total = int(jax.device_get(sum(jnp.sum(b["weight"]) for b in batches)))
    return batches, total

  def _global(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    shardings = {k: self._plan.batch_sharding(v.ndim) for k, v in local.items()}
    return pipeline.make_global_batch(local, shardings)

  def with_captions(self, captions: list[str]) -> list[dict[str, jax.Array]]:
    """The held-out batches with clip i captioned captions[i] instead (same clips, noise)."""
    batches = []
    for local in self._local_batches:
      text, mask = self._captions([captions[i] for i in np.asarray(local["clip_index"])])
      batches.append(self._global(dict(local, text=text, text_mask=mask)))
    return batches

  def per_clip(self, params: Any, batches: list[dict[str, jax.Array]] | None = None
               ) -> dict[str, np.ndarray]:
    """Each loss of each held-out clip at each time: name -> [num_clips, len(times)],
    rows in record order (of `batches`, default the held-out batches as loaded)."""
    gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
    batches = self._batches if batches is None else batches
    per_time: dict[str, list[list[np.ndarray]]] = {}
    with self._plan.active():
      # On several hosts the gathered rows interleave the hosts' slices: sort them back.
      order = np.argsort(np.concatenate(
          [gather(b["clip_index"])[gather(b["weight"]) > 0] for b in batches]), kind="stable")
      for i, t in enumerate(self.times):
        key = jax.random.fold_in(self._key, i)
        for batch in batches:
          keep = gather(batch["weight"]) > 0   # padding rows of the last batch
          for name, value in self._losses(params, batch, jnp.float32(t), key).items():
            per_time.setdefault(name, [[] for _ in self.times])[i].append(gather(value)[keep])
    return {name: np.stack([np.concatenate(chunks)[order] for chunks in columns], axis=1)
            for name, columns in per_time.items()}

  def run(self, params: Any, step: int) -> Iterator[tuple[str, float]]:
    del step
    for name, losses in self.per_clip(params).items():
      means = losses.mean(axis=0)
      for t, mean in zip(self.times, means):
        yield f"{name}_t{t:g}", float(mean)
      yield name, float(np.mean(means))
