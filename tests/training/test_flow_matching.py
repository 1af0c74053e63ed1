"""Tests for the flow-matching path and VideoJAM's joint loss (videojam_jax/training/flow_matching.py).

The loss is driven with model-free apply functions that record what they are
given, so every check reads the inputs the model would see.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.conftest import FAST_COMPILE
from videojam_jax.training import flow_matching

SHAPE = (4, 2, 4, 4, 3)     # [B, T, H, W, C]


DEFAULTS = dict(motion_weight=1.0, text_dropout=0.0, motion_dropout=0.0, time_sampling="uniform",
                logit_normal_mean=0.0, logit_normal_std=1.0)


def loss_config(**overrides):
  return ml_collections.ConfigDict({**DEFAULTS, **overrides})


def make_batch(seed=0, batch=SHAPE[0], with_motion=True):
  rng = np.random.default_rng(seed)
  shape = (batch,) + SHAPE[1:]
  out = {"video": jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32),
         "text": jnp.ones((batch, 8), jnp.int32),
         "text_mask": jnp.ones((batch, 8), bool)}
  if with_motion:
    out["motion"] = jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32)
  return out


class Recorder:
  """An apply_fn that records its inputs and returns `velocity(inputs)` (default zeros)."""

  def __init__(self, velocity=None):
    self.calls = []
    self._velocity = velocity

  def __call__(self, params, x_t, d_t, t, text, text_mask, text_keep):
    inputs = dict(x_t=x_t, d_t=d_t, t=t, text=text, text_mask=text_mask, text_keep=text_keep)
    self.calls.append(inputs)
    if self._velocity is not None:
      return self._velocity(inputs)
    return jnp.zeros_like(x_t), None if d_t is None else jnp.zeros_like(d_t)

  @property
  def last(self):
    return self.calls[-1]


@functools.lru_cache(maxsize=None)
def _compiled_loss(jam, velocity, time_sampling):
  """joint_loss in one compiled program, returning the inputs the model saw.

  The numeric loss settings are traced arguments, so tests that only change
  weights or dropout rates share one compile.
  """
  def run(batch, key, numbers):
    recorder = Recorder(None if velocity is None else functools.partial(velocity, batch))
    config = loss_config(time_sampling=time_sampling, **numbers)
    loss, metrics = flow_matching.joint_loss(recorder, None, batch, key, config, jam)
    return recorder.last, loss, metrics
  return jax.jit(run, compiler_options=FAST_COMPILE)


def run_loss(batch, rng=0, jam=True, velocity=None, time_sampling="uniform", **numbers):
  """(inputs the model saw, loss, metrics) for `batch`; `velocity(batch, inputs)` is the model."""
  numbers = {k: jnp.float32(numbers.get(k, v)) for k, v in DEFAULTS.items() if k != "time_sampling"}
  return jax.device_get(_compiled_loss(jam, velocity, time_sampling)(batch, jax.random.key(rng), numbers))


def test_interpolate_endpoints_and_midpoint():
  rng = np.random.default_rng(0)
  x1, x0 = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2))
  t = jnp.asarray([0.0, 1.0, 0.25, 0.5])
  x_t = np.asarray(flow_matching.interpolate(jnp.asarray(x1), jnp.asarray(x0), t))
  np.testing.assert_array_equal(x_t[0], x0[0])        # t = 0 is noise
  np.testing.assert_array_equal(x_t[1], x1[1])        # t = 1 is data
  np.testing.assert_allclose(x_t[2], 0.25 * x1[2] + 0.75 * x0[2], rtol=1e-6)
  np.testing.assert_allclose(x_t[3], 0.5 * (x1[3] + x0[3]), rtol=1e-6)


def test_inputs_lie_on_the_straight_path_with_one_t_for_both_streams():
  # Same rng (hence same t and noise), two different data batches: the inputs
  # differ by exactly t * (data difference), in both streams, with the t the
  # model was given.
  a, b = make_batch(0), make_batch(1)
  in_a, _, _ = run_loss(a, rng=3)
  in_b, _, _ = run_loss(b, rng=3)
  np.testing.assert_array_equal(in_a["t"], in_b["t"])
  t = np.asarray(in_a["t"]).reshape(-1, 1, 1, 1, 1)
  assert np.all((t > 0) & (t < 1)) and np.ptp(t) > 0
  np.testing.assert_allclose(in_a["x_t"] - in_b["x_t"], t * (a["video"] - b["video"]), atol=1e-5)
  np.testing.assert_allclose(in_a["d_t"] - in_b["d_t"], t * (a["motion"] - b["motion"]), atol=1e-5)
  # The implied noises x0 = (x_t - t x1) / (1 - t) are standard normal and the
  # video and motion noises are independent draws.
  x0 = (np.asarray(in_a["x_t"]) - t * np.asarray(a["video"])) / (1 - t)
  d0 = (np.asarray(in_a["d_t"]) - t * np.asarray(a["motion"])) / (1 - t)
  for noise in (x0, d0):
    assert abs(noise.mean()) < 0.15 and 0.85 < noise.std() < 1.15
  assert abs(np.corrcoef(x0.ravel(), d0.ravel())[0, 1]) < 0.15


def oracle(batch, inputs):
  """The exact target velocities, recovered from the point on the path: x1 - x0 = (x1 - x_t) / (1 - t)."""
  t = inputs["t"].reshape(-1, 1, 1, 1, 1)
  u_x = (batch["video"] - inputs["x_t"]) / (1 - t)
  u_d = None if inputs["d_t"] is None else (batch["motion"] - inputs["d_t"]) / (1 - t)
  return u_x, u_d


def constant(batch, inputs):
  return jnp.full(SHAPE, 0.5), jnp.full(SHAPE, -0.25)


@pytest.mark.parametrize("time_sampling", ["uniform", "logit_normal"])
def test_oracle_velocity_has_zero_loss(time_sampling):
  batch = make_batch(0)
  _, loss, metrics = run_loss(batch, velocity=oracle, time_sampling=time_sampling,
                              motion_weight=2.0)
  assert float(loss) < 1e-8
  assert float(metrics["video_loss"]) < 1e-8 and float(metrics["motion_loss"]) < 1e-8
  # A wrong velocity (zero) is penalised by E|x1 - x0|^2 = E|x1|^2 + 1 in each stream.
  _, zero_loss, zero_metrics = run_loss(batch, rng=0, time_sampling=time_sampling)
  expected = 1 + float(jnp.mean(batch["video"] ** 2))
  assert 0.8 * expected < float(zero_metrics["video_loss"]) < 1.2 * expected


def test_baseline_loss_has_no_motion_term_and_ignores_motion():
  batch = make_batch(0)
  inputs, loss, metrics = run_loss(batch, jam=False)
  assert inputs["d_t"] is None
  assert set(metrics) == {"loss", "video_loss"}
  assert float(loss) == float(metrics["video_loss"])
  # The motion stream is never read: no motion, or garbage motion, same loss.
  _, loss_without, _ = run_loss(make_batch(0, with_motion=False), jam=False)
  _, loss_garbage, _ = run_loss(dict(batch, motion=jnp.full(SHAPE, 1e6)), jam=False)
  assert float(loss_without) == float(loss) == float(loss_garbage)


def test_motion_weight_scales_only_the_motion_term():
  batch = make_batch(0)
  _, loss1, m1 = run_loss(batch, motion_weight=1.0)
  _, loss3, m3 = run_loss(batch, motion_weight=3.0)
  assert float(m1["motion_loss"]) > 0.5
  assert float(m1["video_loss"]) == float(m3["video_loss"])
  assert float(m1["motion_loss"]) == float(m3["motion_loss"])
  np.testing.assert_allclose(float(loss1), float(m1["video_loss"] + m1["motion_loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(loss3), float(m3["video_loss"] + 3.0 * m3["motion_loss"]), rtol=1e-6)


def test_loss_is_per_element_mean_squared_error():
  batch = make_batch(0)
  inputs, loss, metrics = run_loss(batch, rng=7, velocity=constant, motion_weight=0.5)
  t = np.asarray(inputs["t"]).reshape(-1, 1, 1, 1, 1)
  x1, d1 = np.asarray(batch["video"]), np.asarray(batch["motion"])
  x0 = (np.asarray(inputs["x_t"]) - t * x1) / (1 - t)
  d0 = (np.asarray(inputs["d_t"]) - t * d1) / (1 - t)
  video = np.mean((0.5 - (x1 - x0)) ** 2)
  motion = np.mean((-0.25 - (d1 - d0)) ** 2)
  np.testing.assert_allclose(float(metrics["video_loss"]), video, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["motion_loss"]), motion, rtol=1e-4)
  np.testing.assert_allclose(float(loss), video + 0.5 * motion, rtol=1e-4)


def test_text_and_motion_dropout():
  batch = make_batch(0, batch=512)
  inputs, _, _ = run_loss(batch, text_dropout=0.99, motion_dropout=0.99)
  dropped_motion = np.all(np.asarray(inputs["d_t"]) == 0, axis=(1, 2, 3, 4))
  assert (~np.asarray(inputs["text_keep"])).sum() > 490
  assert dropped_motion.sum() > 490
  # Text and motion are dropped independently of each other.
  assert not np.array_equal(dropped_motion, ~np.asarray(inputs["text_keep"]))
  # The kept examples still get their point on the path, and the video is never dropped.
  assert not np.any(np.all(np.asarray(inputs["x_t"]) == 0, axis=(1, 2, 3, 4)))
  inputs, _, _ = run_loss(batch, text_dropout=0.0, motion_dropout=0.0)
  assert np.all(np.asarray(inputs["text_keep"]))
  assert not np.any(np.all(np.asarray(inputs["d_t"]) == 0, axis=(1, 2, 3, 4)))
  inputs, _, _ = run_loss(batch, text_dropout=0.25, motion_dropout=0.5)
  assert 0.18 < 1 - np.mean(inputs["text_keep"]) < 0.32
  assert 0.42 < np.mean(np.all(np.asarray(inputs["d_t"]) == 0, axis=(1, 2, 3, 4))) < 0.58


def test_motion_dropout_still_trains_the_motion_head():
  # With the motion input dropped the target is still d1 - d0: the model must
  # predict motion from the video alone.
  batch = make_batch(0)
  inputs, _, metrics = run_loss(batch, motion_dropout=0.99)
  assert np.all(np.asarray(inputs["d_t"]) == 0)
  expected = 1 + float(jnp.mean(batch["motion"] ** 2))
  assert 0.7 * expected < float(metrics["motion_loss"]) < 1.3 * expected


def test_time_distributions():
  n = 20000
  uniform = np.asarray(flow_matching.sample_time(jax.random.key(0), n, loss_config()))
  assert uniform.min() >= 0 and uniform.max() <= 1
  assert abs(uniform.mean() - 0.5) < 0.01 and abs(uniform.std() - 12 ** -0.5) < 0.01
  assert abs(np.mean(uniform < 0.1) - 0.1) < 0.01
  logit = np.asarray(flow_matching.sample_time(
      jax.random.key(0), n, loss_config(time_sampling="logit_normal")))
  assert abs(logit.mean() - 0.5) < 0.01
  # Logit-normal puts more mass mid-path: P(t < 0.1) = Phi(logit(0.1)) ~ 0.014.
  assert np.mean(logit < 0.1) < 0.03 and logit.std() < 0.25
  shifted = np.asarray(flow_matching.sample_time(
      jax.random.key(0), n, loss_config(time_sampling="logit_normal", logit_normal_mean=1.0)))
  # E[sigmoid(N(1, 1))] ~ 0.697.
  assert abs(shifted.mean() - 0.697) < 0.01
  # Wan's shifted sampling: noise level s uniform, shifted by 5. P(t < 0.5) = P(s' > 0.5)
  # = P(s > 1/6) = 5/6: most of the mass near noise.
  wan = np.asarray(flow_matching.sample_time(
      jax.random.key(0), n, loss_config(time_sampling="shifted", time_shift=5.0)))
  assert wan.min() >= 0 and wan.max() <= 1
  assert abs(np.mean(wan < 0.5) - 5 / 6) < 0.01
  same = np.asarray(flow_matching.sample_time(
      jax.random.key(0), n, loss_config(time_sampling="shifted", time_shift=1.0)))
  np.testing.assert_allclose(same, 1 - uniform, atol=1e-6)       # shift 1: uniform again
  with pytest.raises(ValueError, match="time_sampling"):
    flow_matching.sample_time(jax.random.key(0), 4, loss_config(time_sampling="beta"))


def test_loss_is_deterministic_given_the_rng():
  batch = make_batch(0)
  a, loss_a, _ = run_loss(batch, rng=5, text_dropout=0.5, motion_dropout=0.5)
  b, loss_b, _ = run_loss(batch, rng=5, text_dropout=0.5, motion_dropout=0.5)
  c, _, _ = run_loss(batch, rng=6, text_dropout=0.5, motion_dropout=0.5)
  assert float(loss_a) == float(loss_b)
  np.testing.assert_array_equal(a["x_t"], b["x_t"])
  assert not np.array_equal(a["x_t"], c["x_t"])
