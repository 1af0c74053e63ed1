"""Flow-matching sampling with classifier-free and Inner-Guidance (DESIGN.md §1).

Integrates dx/dt = u from t = 0 (noise) to t = 1 (data) for the video x and,
for VideoJAM models, jointly for the motion d. Guidance, with u = u+([x, d], y):

  none:   u
  cfg:    (1 + w1) u - w1 u+([x, d], null_text)
  inner:  (1 + w1 + w2) u - w1 u+([x, d], null_text) - w2 u+([x, null_motion], y)

The conditions of one step are stacked on the batch axis and evaluated in ONE
forward pass; the captions are encoded once per call, not at every step.
Inner-Guidance applies for t < inner_guidance_until and falls back to text
guidance (two conditions) after it. The whole loop is one compiled program
(lax.fori_loop) that takes w1 and w2 as inputs; results are deterministic
given the seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from videojam_jax.model import functional
from videojam_jax.parallel import sharding

GUIDANCE_MODES = ("none", "cfg", "inner")
SOLVERS = ("euler", "heun")


class GuidanceError(ValueError):
  """The requested guidance does not make sense for this model."""


# inner_guidance_until at or above this applies Inner-Guidance at every step.
ALWAYS_INNER_GUIDANCE = 1.0


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """How to sample. No defaults here: configs/sampling.py holds them (config.sample)."""
  num_steps: int
  solver: str                  # euler | heun
  time_shift: float            # > 1 spends more steps near noise
  schedule: str                # where the steps' times lie: see time_grid
  guidance: str                # none | cfg | inner
  text_scale: float            # w1
  motion_scale: float          # w2
  inner_guidance_until: float  # Inner-Guidance for t < this, text guidance after
  batched: bool                # False: one forward per condition (benchmarks only)

  def validate(self, jam: bool) -> "SamplerSettings":
    if self.guidance not in GUIDANCE_MODES:
      raise GuidanceError(f"guidance must be one of {GUIDANCE_MODES}, got {self.guidance!r}")
    if self.solver not in SOLVERS:
      raise GuidanceError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
    if self.num_steps < 1:
      raise GuidanceError(f"num_steps must be >= 1, got {self.num_steps}")
    if self.time_shift <= 0:
      raise GuidanceError(f"time_shift must be > 0, got {self.time_shift}")
    if self.schedule not in TIME_SCHEDULES:
      raise GuidanceError(f"schedule must be one of {TIME_SCHEDULES}, got {self.schedule!r}")
    if self.guidance == "inner" and not jam:
      raise GuidanceError(
          "Inner-Guidance needs a VideoJAM model (it guides with the model's own motion "
          "prediction); this checkpoint is a baseline (model.jam=False). Use guidance='cfg'.")
    return self


def settings_from_config(sample_config: ml_collections.ConfigDict, **overrides: Any) -> SamplerSettings:
  """SamplerSettings from config.sample (configs/sampling.py), with `overrides` on top."""
  fields = [f.name for f in dataclasses.fields(SamplerSettings)]
  values = {k: v for k, v in sample_config.items() if k in fields}
  # Runs saved before config.sample.schedule existed all sampled on the uniform grid.
  values.setdefault("schedule", "uniform")
  values.update(overrides)
  missing = [f for f in fields if f not in values]
  if missing:
    raise GuidanceError(f"sampler settings lack {missing} (config.sample: see configs/sampling.py)")
  return SamplerSettings(**values)


TIME_SCHEDULES = ("uniform", "flow_match_euler", "unipc_flow")
TRAIN_TIMESTEPS = 1000   # the diffusers schedulers' num_train_timesteps (Wan's configs)
UNIPC_FIRST_SIGMA_OFFSET = 1e-6   # UniPC keeps its first sigma below 1 (log(alpha) finite)


def _shifted(s: np.ndarray, shift: float) -> np.ndarray:
  return shift * s / (1.0 + (shift - 1.0) * s)


def time_grid(num_steps: int, shift: float, schedule: str = "uniform") -> np.ndarray:
  """num_steps + 1 times from 0 to 1 (float32); shift > 1 spends more steps near noise.

  With noise level s = 1 - t, the shifted level is s' = shift s / (1 + (shift - 1) s)
  (the SD3 / Flux time shift written in our t = 0 is noise convention). Host
  numpy: the grid depends only on the settings. `schedule` places the levels:

    uniform           s evenly from 1 to 0, then shifted;
    flow_match_euler  diffusers' FlowMatchEulerDiscreteScheduler (shift=...): s evenly
                      from 1 to the shifted 1/1000, shifted (again), then 0;
    unipc_flow        diffusers' UniPCMultistepScheduler with use_flow_sigmas and
                      flow_shift=... (Wan's default pipelines): s evenly from 1 towards
                      1/1000 (num_steps of num_steps + 1 points), shifted, the first
                      lowered by 1e-6 as there, then 0.
  """
  if schedule == "uniform":
    s = _shifted(1.0 - np.linspace(0.0, 1.0, num_steps + 1), shift)
  elif schedule == "flow_match_euler":
    s_min = _shifted(np.float64(1.0 / TRAIN_TIMESTEPS), shift)
    s = np.append(_shifted(np.linspace(1.0, s_min, num_steps), shift), 0.0)
  elif schedule == "unipc_flow":
    s = _shifted(np.linspace(1.0, 1.0 / TRAIN_TIMESTEPS, num_steps + 1)[:-1], shift)
    s[0] -= UNIPC_FIRST_SIGMA_OFFSET
    s = np.append(s, 0.0)
  else:
    raise GuidanceError(f"time schedule must be one of {TIME_SCHEDULES}, got {schedule!r}")
  return (1.0 - s).astype(np.float32)


ApplyFn = Callable[..., tuple[jnp.ndarray, jnp.ndarray | None]]
Scales = tuple[jnp.ndarray | float, jnp.ndarray | float]


def guided_velocity(apply_fn: ApplyFn, params: Any, x: jnp.ndarray, d: jnp.ndarray | None,
                    t: jnp.ndarray, text: jnp.ndarray, text_mask: jnp.ndarray,
                    settings: SamplerSettings, jam: bool, scales: Scales | None = None,
                    null_text: tuple[jnp.ndarray, jnp.ndarray] | None = None,
                    ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
  """The guided joint velocity at scalar time t for a batch (x, d).

  `text` is whatever `apply_fn` takes as the caption (token ids, or tokens
  already encoded). `scales` = (w1, w2), possibly traced, overrides the
  settings' text_scale and motion_scale. `null_text` = (text, mask) of a
  negative prompt, shaped like `text`: the unconditional term then sees it
  (with text kept) instead of the model's null caption, as Wan's pipelines do.
  """
  b = x.shape[0]
  if settings.guidance == "none":
    return apply_fn(params, x, d, jnp.full((b,), t), text, text_mask, jnp.ones((b,), bool))

  w1, w2 = (settings.text_scale, settings.motion_scale) if scales is None else scales
  # Past inner_guidance_until the motion term is off: plain text guidance.
  w2 = jnp.where(t < settings.inner_guidance_until, w2, 0.0)
  # Conditions: (text, motion), (null text, motion) [, (text, null motion)].
  keeps = [True, null_text is not None] + ([True] if settings.guidance == "inner" else [])
  zeros_d = None if d is None else jnp.zeros_like(d)
  ds = [d, d] + ([zeros_d] if settings.guidance == "inner" else [])
  null = (text, text_mask) if null_text is None else null_text
  texts = [text, null[0]] + ([text] if settings.guidance == "inner" else [])
  masks = [text_mask, null[1]] + ([text_mask] if settings.guidance == "inner" else [])
  n = len(keeps)
  keep = jnp.repeat(jnp.asarray(keeps), b)

  if settings.batched:
    stack = lambda xs: jnp.concatenate(xs, axis=0)
    u_x, u_d = apply_fn(params, stack([x] * n), None if d is None else stack(ds),
                        jnp.full((n * b,), t), stack(texts), stack(masks), keep)
    split = lambda u: None if u is None else jnp.split(u, n, axis=0)
    parts_x, parts_d = split(u_x), split(u_d)
  else:
    outs = [apply_fn(params, x, di, jnp.full((b,), t), ti, mi, jnp.full((b,), k))
            for di, ti, mi, k in zip(ds, texts, masks, keeps)]
    parts_x = [o[0] for o in outs]
    parts_d = None if d is None else [o[1] for o in outs]

  def combine(parts):
    if parts is None:
      return None
    if settings.guidance == "cfg":
      return (1 + w1) * parts[0] - w1 * parts[1]
    return (1 + w1 + w2) * parts[0] - w1 * parts[1] - w2 * parts[2]

  return combine(parts_x), combine(parts_d)


def inner_guidance_steps(settings: SamplerSettings) -> int:
  """How many leading steps start at t < inner_guidance_until (all when it is >= 1)."""
  if settings.guidance != "inner":
    return 0
  times = time_grid(settings.num_steps, settings.time_shift, settings.schedule)[:-1]
  return int(np.sum(times < settings.inner_guidance_until))


def sample_loop(apply_fn: ApplyFn, params: Any, noise_x: jnp.ndarray, noise_d: jnp.ndarray | None,
                text: jnp.ndarray, text_mask: jnp.ndarray, settings: SamplerSettings,
                jam: bool, scales: Scales | None = None,
                null_text: tuple[jnp.ndarray, jnp.ndarray] | None = None,
                ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
  """Integrates from the given noise to t = 1; returns (video, motion) in model space.
  `null_text`: a negative prompt for the unconditional term (see guided_velocity).

  With Inner-Guidance limited to t < inner_guidance_until, the steps after it run
  as a second loop with text guidance only: two conditions per step instead of
  three, the same result as three with w2 = 0.
  """
  times = jnp.asarray(time_grid(settings.num_steps, settings.time_shift, settings.schedule))

  def body_for(phase_settings: SamplerSettings):
    def velocity(x, d, t):
      return guided_velocity(apply_fn, params, x, d, t, text, text_mask, phase_settings, jam,
                             scales, null_text)

    def body(i, carry):
      x, d = carry
      t, t_next = times[i], times[i + 1]
      dt = t_next - t
      u_x, u_d = velocity(x, d, t)
      x_e = x + dt * u_x
      d_e = None if d is None else d + dt * u_d
      if settings.solver == "euler":
        return x_e, d_e
      # Heun: average the slopes at both ends of the interval.
      v_x, v_d = velocity(x_e, d_e, t_next)
      x_h = x + dt * 0.5 * (u_x + v_x)
      d_h = None if d is None else d + dt * 0.5 * (u_d + v_d)
      return x_h, d_h

    return body

  carry = (noise_x, noise_d)
  if settings.guidance != "inner":
    return jax.lax.fori_loop(0, settings.num_steps, body_for(settings), carry)
  inner_steps = inner_guidance_steps(settings)
  if inner_steps:
    carry = jax.lax.fori_loop(0, inner_steps, body_for(settings), carry)
  if inner_steps < settings.num_steps:
    text_only = dataclasses.replace(settings, guidance="cfg")
    carry = jax.lax.fori_loop(inner_steps, settings.num_steps, body_for(text_only), carry)
  return carry


class Sampler:
  """A jitted `sampler(params, text, text_mask, rng, *, text_scale=None, motion_scale=None)
  -> (video, motion)` in [-1, 1] for one model and sampler settings.

  The batch is sharded over the plan's batch axes; the noise is drawn from `rng`,
  so the same seed and prompts give the same clips. Each caption is encoded
  once per call, outside the loop. The guidance scales are inputs of the
  compiled program (defaults: the settings'), so a sweep over w1 and w2 reuses
  one compilation. `text` is what `data.text.CaptionInputs` gives: token ids or
  precomputed embeddings.
  """

  def __init__(self, model: functional.FunctionalModel, settings: SamplerSettings):
    self.model, self.settings = model, settings.validate(model.jam)
    jam, shape = model.jam, model.video_shape.dims

    def apply_fn(params, x, d_t, t, encoded_text, text_mask, text_keep):
      return model.apply(params, x, d_t, t, None, text_mask, text_keep, encoded_text=encoded_text)

    def sample(params, text, text_mask, rng, text_scale, motion_scale):
      rng_x, rng_d = jax.random.split(rng)
      full = (text.shape[0],) + shape
      constrain = lambda a: sharding.constrain(a, ("activation_batch", None, None, None, None))
      noise_x = constrain(jax.random.normal(rng_x, full))
      noise_d = constrain(jax.random.normal(rng_d, full)) if jam else None
      encoded = model.encode_text(params, text, text_mask)
      x, m = sample_loop(apply_fn, params, noise_x, noise_d, encoded, text_mask, settings, jam,
                         (text_scale, motion_scale))
      clip = lambda a: None if a is None else jnp.clip(a, -1.0, 1.0)
      return clip(x), clip(m)

    self.jitted = jax.jit(sample)

  def __call__(self, params: Any, text: Any, text_mask: Any, rng: jax.Array, *,
               text_scale: float | None = None, motion_scale: float | None = None
               ) -> tuple[jax.Array, jax.Array | None]:
    scale = lambda value, default: jnp.float32(default if value is None else value)
    with self.model.plan.active():
      return self.jitted(params, text, text_mask, rng,
                         scale(text_scale, self.settings.text_scale),
                         scale(motion_scale, self.settings.motion_scale))
