"""The flow-matching path and VideoJAM's joint training objective (DESIGN.md §1).

Time t in [0, 1], t = 0 is noise, t = 1 is data:
  x_t = t x1 + (1 - t) x0,   d_t = t d1 + (1 - t) d0     (same t, independent noise)
  loss = |u_x - (x1 - x0)|^2 + lambda_m |u_d - (d1 - d0)|^2
Text is dropped with probability p_text (the caption becomes the null caption) and
the motion input with probability p_motion (d_t becomes the null motion, zeros),
so one model serves all three conditions that Inner-Guidance combines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

Batch = dict[str, jnp.ndarray]


def sample_time(rng: jax.Array, batch: int, loss_config: ml_collections.ConfigDict) -> jnp.ndarray:
  """Training times t [B]: uniform; logit-normal (SD3's choice, more mass mid-path); or
  "shifted": the noise level s = 1 - t uniform, then shift s / (1 + (shift - 1) s) with
  shift = loss.time_shift (what Wan fine-tuning recipes use, e.g. shift 5: more mass
  near noise; the same shift as the sampler's time_shift)."""
  if loss_config.time_sampling == "uniform":
    return jax.random.uniform(rng, (batch,))
  if loss_config.time_sampling == "shifted":
    shift = loss_config.get("time_shift", 1.0)
    s = jax.random.uniform(rng, (batch,))
    return 1.0 - shift * s / (1.0 + (shift - 1.0) * s)
  if loss_config.time_sampling == "logit_normal":
    z = loss_config.logit_normal_mean + loss_config.logit_normal_std * jax.random.normal(rng, (batch,))
    return jax.nn.sigmoid(z)
  raise ValueError(f"loss.time_sampling must be 'uniform', 'logit_normal' or 'shifted', "
                   f"got {loss_config.time_sampling!r}")


def interpolate(x1: jnp.ndarray, x0: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
  """The point at time t [B] on the straight path from noise x0 to data x1."""
  t = t.reshape((-1,) + (1,) * (x1.ndim - 1))
  return t * x1 + (1 - t) * x0


def mean_squared(x: jnp.ndarray) -> jnp.ndarray:
  """Per-example mean of squares over all but the batch axis -> [B]."""
  return jnp.mean(jnp.square(x.astype(jnp.float32)), axis=tuple(range(1, x.ndim)))


def joint_loss(apply_fn: Callable[..., tuple[jnp.ndarray, jnp.ndarray | None]],
               params: Any, batch: Batch, rng: jax.Array,
               loss_config: ml_collections.ConfigDict, jam: bool,
               ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """VideoJAM loss for one batch; returns (loss, metrics).

  batch: video, motion [B,T,H,W,3] in [-1, 1]; text [B,L] ids or [B,L,D]
  embeddings; text_mask [B,L]. With jam=False only the video term is used (the
  pixel-only baseline) and the motion stream is ignored.
  """
  x1 = batch["video"]
  b = x1.shape[0]
  rng_t, rng_x0, rng_d0, rng_text, rng_motion = jax.random.split(rng, 5)
  t = sample_time(rng_t, b, loss_config)
  x0 = jax.random.normal(rng_x0, x1.shape, x1.dtype)
  x_t = interpolate(x1, x0, t)
  text_keep = jax.random.uniform(rng_text, (b,)) >= loss_config.text_dropout

  d_t = None
  if jam:
    d1 = batch["motion"]
    d0 = jax.random.normal(rng_d0, d1.shape, d1.dtype)
    motion_keep = jax.random.uniform(rng_motion, (b,)) >= loss_config.motion_dropout
    d_t = jnp.where(motion_keep[:, None, None, None, None], interpolate(d1, d0, t), 0.0)

  u_x, u_d = apply_fn(params, x_t, d_t, t, batch["text"], batch["text_mask"], text_keep)
  video_loss = mean_squared(u_x - (x1 - x0)).mean()
  metrics = {"video_loss": video_loss}
  loss = video_loss
  if jam:
    motion_loss = mean_squared(u_d - (d1 - d0)).mean()
    loss = loss + loss_config.motion_weight * motion_loss
    metrics["motion_loss"] = motion_loss
  metrics["loss"] = loss
  return loss, metrics


def per_clip_normal(key: jax.Array, clip_index: jnp.ndarray, shape: tuple[int, ...]) -> jnp.ndarray:
  """Standard normal noise [B, *shape] where row b depends only on (key, clip_index[b]).

  Held-out losses use it so that a clip always meets the same noise, whatever the
  batch size, the process layout or the step: curves compare across runs.
  """
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape))(clip_index)


def fixed_time_losses(apply_fn: Callable[..., tuple[jnp.ndarray, jnp.ndarray | None]],
                      params: Any, batch: Batch, t: float | jnp.ndarray, key: jax.Array,
                      jam: bool) -> dict[str, jnp.ndarray]:
  """Per-clip flow-matching losses [B] at one time t, with the caption and motion kept.

  The held-out measure: no dropout, the time fixed, and the noise a function of
  (key, batch["clip_index"]) only (`per_clip_normal`). Returns video_loss and, for
  a VideoJAM model, motion_loss.
  """
  x1 = batch["video"]
  b = x1.shape[0]
  key_x, key_d = jax.random.split(key)
  index = batch["clip_index"]
  x0 = per_clip_normal(key_x, index, x1.shape[1:]).astype(x1.dtype)
  times = jnp.full((b,), t, jnp.float32)
  d_t = None
  if jam:
    d1 = batch["motion"]
    d0 = per_clip_normal(key_d, index, d1.shape[1:]).astype(d1.dtype)
    d_t = interpolate(d1, d0, times)
  u_x, u_d = apply_fn(params, interpolate(x1, x0, times), d_t, times, batch["text"],
                      batch["text_mask"], jnp.ones((b,), bool))
  losses = {"video_loss": mean_squared(u_x - (x1 - x0))}
  if jam:
    losses["motion_loss"] = mean_squared(u_d - (d1 - d0))
  return losses
