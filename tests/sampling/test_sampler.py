"""Tests for flow-matching sampling with CFG and Inner-Guidance (videojam_jax/sampling/sampler.py)."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sampling
from tests.conftest import CAPTIONS
from tests.conftest import FAST_COMPILE
from videojam_jax.data import text as text_lib
from videojam_jax.sampling import sampler as sampler_lib


def Settings(**changes) -> sampler_lib.SamplerSettings:  # pylint: disable=invalid-name
  """configs/sampling.py's settings (the one place their defaults live), with changes."""
  return sampler_lib.settings_from_config(sampling.get_config(), **changes)

SHAPE = (2, 2, 4, 4, 3)


def test_time_grid_runs_from_noise_to_data():
  for shift in (1.0, 3.0, 0.5):
    times = np.asarray(sampler_lib.time_grid(8, shift))
    assert times.shape == (9,)
    assert times[0] == 0.0 and times[-1] == 1.0
    assert np.all(np.diff(times) > 0)
  np.testing.assert_allclose(sampler_lib.time_grid(4, 1.0), [0, 0.25, 0.5, 0.75, 1.0], atol=1e-7)


def test_time_shift_spends_more_steps_near_noise():
  uniform = np.asarray(sampler_lib.time_grid(10, 1.0))
  shifted = np.asarray(sampler_lib.time_grid(10, 3.0))
  assert np.all(shifted[1:-1] < uniform[1:-1])
  assert np.diff(shifted)[0] < np.diff(uniform)[0] < np.diff(shifted)[-1]
  assert np.sum(shifted < 0.5) > np.sum(uniform < 0.5)
  # s' = shift s / (1 + (shift - 1) s) with s = 1 - t: at t = 0.5, s' = 0.75.
  np.testing.assert_allclose(sampler_lib.time_grid(2, 3.0)[1], 0.25, rtol=1e-6)


def field(velocity):
  """An apply_fn from a model-free velocity field (x, d, t) -> (u_x, u_d)."""
  def apply_fn(params, x, d, t, text, text_mask, text_keep):
    del params, text, text_mask, text_keep
    return velocity(x, d, t)
  return apply_fn


def _text(batch=SHAPE[0]):
  return jnp.ones((batch, 8), jnp.int32), jnp.ones((batch, 8), bool)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("guidance", ["none", "cfg"])
def test_euler_follows_a_straight_path_exactly(shift, guidance):
  rng = np.random.default_rng(0)
  x0, x1, d0, d1 = (jnp.asarray(rng.standard_normal(SHAPE), jnp.float32) for _ in range(4))
  # The straight-path velocity is constant: Euler is exact on any time grid. The
  # field ignores the caption, so text guidance changes nothing.
  tile = lambda u, like: jnp.concatenate([u] * (like.shape[0] // u.shape[0]))  # conditions stacked on batch
  apply_fn = field(lambda x, d, t: (tile(x1 - x0, x), tile(d1 - d0, d)))
  settings = Settings(num_steps=3, time_shift=shift, guidance=guidance, solver="euler")
  x, d = jax.jit(lambda: sampler_lib.sample_loop(apply_fn, None, x0, d0, *_text(), settings, True))()
  np.testing.assert_allclose(x, x1, atol=1e-5)
  np.testing.assert_allclose(d, d1, atol=1e-5)


def test_heun_is_more_accurate_than_euler():
  # dx/dt = x from x(0) = 1: x(1) = e.
  apply_fn = field(lambda x, d, t: (x, None))
  x0 = jnp.ones(SHAPE)
  errors = {}
  for solver in ("euler", "heun"):
    settings = Settings(num_steps=10, solver=solver, guidance="none")
    x, d = sampler_lib.sample_loop(apply_fn, None, x0, None, *_text(), settings, False)
    assert d is None
    errors[solver] = float(jnp.abs(x - np.e).max())
  np.testing.assert_allclose(errors["euler"], np.e - 1.1 ** 10, rtol=1e-4)
  assert errors["heun"] < errors["euler"] / 20


def test_heun_reads_the_velocity_at_the_end_of_each_step():
  # dx/dt = 2t from x(0) = 0: x(1) = 1; Heun (trapezoid) is exact for linear-in-t fields.
  apply_fn = field(lambda x, d, t: (jnp.broadcast_to(2 * t[:, None, None, None, None], x.shape), None))
  settings = Settings(num_steps=3, solver="heun", guidance="none", time_shift=2.0)
  x, _ = sampler_lib.sample_loop(apply_fn, None, jnp.zeros(SHAPE), None, *_text(), settings, False)
  np.testing.assert_allclose(x, 1.0, rtol=1e-6)


class CountingApply:
  """Wraps an apply_fn and records the batch size and keep flags of every call."""

  def __init__(self, apply_fn):
    self.apply_fn, self.calls = apply_fn, []

  def __call__(self, params, x, d, t, text, text_mask, text_keep):
    self.calls.append(dict(batch=x.shape[0], d=d, keep=text_keep))
    return self.apply_fn(params, x, d, t, text, text_mask, text_keep)


@pytest.mark.parametrize("guidance, conditions", [("none", 1), ("cfg", 2), ("inner", 3)])
def test_one_forward_pass_per_velocity_when_batched(model_inputs, guidance, conditions):
  x, d, text, mask = (model_inputs[k] for k in ("x_t", "d_t", "text", "text_mask"))
  for batched in (True, False):
    counter = CountingApply(field(lambda x, d, t: (2 * x, 3 * d)))
    settings = Settings(guidance=guidance, batched=batched)
    jax.make_jaxpr(lambda: sampler_lib.guided_velocity(
        counter, None, x, d, jnp.float32(0.5), text, mask, settings, True))()
    if batched or guidance == "none":
      assert [c["batch"] for c in counter.calls] == [2 * conditions]
    else:
      assert [c["batch"] for c in counter.calls] == [2] * conditions
  # Over a whole Heun sample: two velocity evaluations per step, traced once.
  counter = CountingApply(field(lambda x, d, t: (x, d)))
  settings = Settings(guidance=guidance, solver="heun", num_steps=4)
  jax.make_jaxpr(lambda: sampler_lib.sample_loop(counter, None, x, d, text, mask, settings, True))()
  assert [c["batch"] for c in counter.calls] == [2 * conditions] * 2


def test_batched_conditions_are_text_null_text_null_motion(model_inputs):
  counter = CountingApply(field(lambda x, d, t: (x, d)))
  x, d = model_inputs["x_t"], model_inputs["d_t"]
  sampler_lib.guided_velocity(counter, None, x, d, jnp.float32(0.5), model_inputs["text"],
                              model_inputs["text_mask"], Settings(guidance="inner"), True)
  (call,) = counter.calls
  np.testing.assert_array_equal(call["keep"], [True, True, False, False, True, True])
  np.testing.assert_array_equal(call["d"][:4], jnp.concatenate([d, d]))
  np.testing.assert_array_equal(call["d"][4:], 0)


@pytest.mark.parametrize("batched", [True, False])
def test_a_negative_prompt_replaces_the_null_caption(batched):
  # Text-dependent field: u = x * (1 + sum of the caption features); a negative prompt
  # enters the unconditional term with text kept, as Wan's pipelines do.
  def apply_fn(params, x, d, t, text, text_mask, text_keep):
    scale = jnp.where(text_keep, 1.0 + text.sum(axis=(1, 2)), 0.5)[:, None, None, None, None]
    return scale * x, None
  x = jnp.ones(SHAPE)
  text, negative = jnp.full((2, 3, 4), 0.25), jnp.full((2, 3, 4), -0.05)
  mask = jnp.ones((2, 3), bool)
  settings = Settings(guidance="cfg", text_scale=4.0, batched=batched)
  counter = CountingApply(apply_fn)
  u, _ = sampler_lib.guided_velocity(counter, None, x, None, jnp.float32(0.5), text, mask,
                                     settings, False, null_text=(negative, mask))
  assert all(bool(c["keep"].all()) for c in counter.calls)
  np.testing.assert_allclose(u, (1 + 4.0) * 4.0 - 4.0 * 0.4, rtol=1e-6)   # 5 u(y) - 4 u(neg)
  u_null, _ = sampler_lib.guided_velocity(apply_fn, None, x, None, jnp.float32(0.5), text,
                                          mask, settings, False)
  np.testing.assert_allclose(u_null, 5 * 4.0 - 4 * 0.5, rtol=1e-6)       # the model's null


def test_settings_of_older_runs_default_to_the_uniform_schedule():
  old = sampling.get_config()
  del old["schedule"]
  assert sampler_lib.settings_from_config(old).schedule == "uniform"
  with pytest.raises(sampler_lib.GuidanceError, match="schedule must be one of"):
    Settings(schedule="karras").validate(jam=True)


@pytest.fixture(scope="module")
def random_jam(tiny_jam, perturb_params):
  """A tiny JAM model whose output depends on text and motion (nothing zero-initialised)."""
  return perturb_params(tiny_jam.init_params, seed=21)


def test_batched_equals_unbatched(tiny_jam, random_jam, model_inputs):
  args = (model_inputs["x_t"], model_inputs["d_t"], jnp.float32(0.3), model_inputs["text"],
          model_inputs["text_mask"])
  batched = sampler_lib.guided_velocity(tiny_jam.apply, random_jam, *args,
                                        Settings(guidance="inner", batched=True), True)
  unbatched = sampler_lib.guided_velocity(tiny_jam.apply, random_jam, *args,
                                          Settings(guidance="inner", batched=False), True)
  cfg = sampler_lib.guided_velocity(tiny_jam.apply, random_jam, *args,
                                    Settings(guidance="cfg", batched=False), True)
  for b, u, c in zip(batched, unbatched, cfg):
    # Forward passes at batch 6 and batch 2 may round differently; guidance scales
    # those differences by up to 1 + w1 + w2 = 9.
    np.testing.assert_allclose(b, u, rtol=1e-4, atol=1e-4)
    # Inner-Guidance does something here: it is not text guidance.
    assert float(jnp.abs(b - c).max()) > 1e-2


def test_inner_guidance_formula(tiny_jam, random_jam, model_inputs):
  x, d, text, mask = (model_inputs[k] for k in ("x_t", "d_t", "text", "text_mask"))
  t, ones, zeros = jnp.float32(0.3), jnp.ones((2,), bool), jnp.zeros((2,), bool)
  tt = jnp.full((2,), t)
  u = tiny_jam.apply(random_jam, x, d, tt, text, mask, ones)
  u_null_text = tiny_jam.apply(random_jam, x, d, tt, text, mask, zeros)
  u_null_motion = tiny_jam.apply(random_jam, x, jnp.zeros_like(d), tt, text, mask, ones)
  w1, w2 = 5.0, 3.0
  guided = sampler_lib.guided_velocity(
      tiny_jam.apply, random_jam, x, d, t, text, mask,
      Settings(guidance="inner", text_scale=w1, motion_scale=w2, batched=False), True)
  for i in range(2):
    expected = (1 + w1 + w2) * u[i] - w1 * u_null_text[i] - w2 * u_null_motion[i]
    np.testing.assert_allclose(guided[i], expected, rtol=1e-5, atol=1e-5)


def test_inner_guidance_until_zero_is_text_guidance(tiny_jam, random_jam, model_inputs):
  args = (model_inputs["x_t"], model_inputs["d_t"], jnp.float32(0.3), model_inputs["text"],
          model_inputs["text_mask"])
  cfg = sampler_lib.guided_velocity(tiny_jam.apply, random_jam, *args,
                                    Settings(guidance="cfg", batched=False), True)
  until0 = sampler_lib.guided_velocity(
      tiny_jam.apply, random_jam, *args,
      Settings(guidance="inner", inner_guidance_until=0.0, batched=False), True)
  until_half = sampler_lib.guided_velocity(
      tiny_jam.apply, random_jam, *args,
      Settings(guidance="inner", inner_guidance_until=0.5, batched=False), True)
  for c, u0, uh in zip(cfg, until0, until_half):
    np.testing.assert_allclose(u0, c, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(uh - c).max()) > 1e-2     # t = 0.3 < 0.5: Inner-Guidance on


@pytest.fixture(scope="module")
def samplers(tiny_jam, random_jam):
  """Full samplers (2 Euler steps) for Inner-Guidance and for CFG.

  Each is make_sampler's own jitted program, compiled ahead of time with cheap
  XLA backend options (a third of the compile time on 2 CPU cores). w1 and w2
  are inputs of the compiled programs.
  """
  config = tiny_jam.config
  ids, mask = _prompts(config)
  compiled = {}
  for name, settings in [("inner", Settings(num_steps=2, guidance="inner")),
                         ("cfg", Settings(num_steps=2, guidance="cfg"))]:
    run = sampler_lib.Sampler(tiny_jam.model, settings)
    with tiny_jam.model.plan.active():
      lowered = run.jitted.lower(random_jam, ids, mask, jax.random.key(0), jnp.float32(5.0),
                                 jnp.float32(3.0))
    compiled[name] = lowered.compile(compiler_options=FAST_COMPILE)
  return compiled


def _prompts(config):
  return text_lib.tokenize(list(CAPTIONS), config.model.text.max_length)


def test_full_sampler_inner_guidance_without_motion_term_is_cfg(tiny_jam, random_jam, samplers):
  ids, mask = _prompts(tiny_jam.config)
  key, w1 = jax.random.key(3), jnp.float32(5.0)
  inner_x, inner_d = samplers["inner"](random_jam, ids, mask, key, w1, jnp.float32(0.0))
  cfg_x, cfg_d = samplers["cfg"](random_jam, ids, mask, key, w1, jnp.float32(3.0))
  assert inner_x.shape == inner_d.shape == (2, 4, 16, 16, 3)
  assert float(jnp.abs(inner_x).max()) <= 1.0          # clipped to the data range
  assert float(jnp.mean(jnp.abs(inner_x) < 1.0)) > 0.1  # ... but mostly not saturated: a real comparison
  np.testing.assert_allclose(inner_x, cfg_x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(inner_d, cfg_d, rtol=1e-5, atol=1e-5)
  # The same compiled program with w2 = 3: the scale is a live input, not baked in.
  guided_x, _ = samplers["inner"](random_jam, ids, mask, key, w1, jnp.float32(3.0))
  assert float(jnp.abs(guided_x - cfg_x).max()) > 1e-2


def test_sampling_is_deterministic_given_the_seed(tiny_jam, random_jam, samplers):
  ids, mask = _prompts(tiny_jam.config)
  sample = lambda key: samplers["inner"](random_jam, ids, mask, key, jnp.float32(5.0),
                                         jnp.float32(3.0))
  a, b, c = sample(jax.random.key(0)), sample(jax.random.key(0)), sample(jax.random.key(1))
  for u, v, w in zip(a, b, c):
    np.testing.assert_array_equal(u, v)
    assert float(jnp.abs(u - w).mean()) > 1e-2


LOOPS = ("while", "scan")   # fori_loop with static bounds lowers to scan


def _primitives(jaxpr, inside_loop: bool = False) -> list[tuple[str, bool]]:
  """(primitive name, whether it runs inside a loop) for every equation, recursively."""
  found = []
  for eqn in jaxpr.eqns:
    found.append((eqn.primitive.name, inside_loop))
    for sub in jax.core.jaxprs_in_params(eqn.params):
      found += _primitives(sub, inside_loop or eqn.primitive.name in LOOPS)
  return found


def test_captions_are_encoded_once_outside_the_loop(tiny_jam, random_jam):
  # The byte encoder's embedding lookup is the model's only gather.
  config = tiny_jam.config
  ids, mask = _prompts(config)
  run = sampler_lib.Sampler(tiny_jam.model, Settings(num_steps=3, guidance="inner"))
  with tiny_jam.model.plan.active():
    jaxpr = jax.make_jaxpr(run.jitted)(random_jam, ids, mask, jax.random.key(0),
                                       jnp.float32(5.0), jnp.float32(3.0)).jaxpr
  found = _primitives(jaxpr)
  assert any(name in LOOPS for name, _ in found)
  assert [inside for name, inside in found if name == "gather"] == [False]
  # ... and the encoded caption gives what the model computes from token ids.
  x, d = (jax.random.normal(jax.random.key(i), (2, 4, 16, 16, 3)) for i in (1, 2))
  t, keep = jnp.full((2,), 0.4), jnp.array([True, False])
  encoded = tiny_jam.model.encode_text(random_jam, ids, mask)
  from_ids = tiny_jam.apply(random_jam, x, d, t, ids, mask, keep)
  from_encoded = tiny_jam.model.apply(random_jam, x, d, t, None, mask, keep, encoded_text=encoded)
  for a, b in zip(from_ids, from_encoded):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)   # jitted vs eager rounding


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_steps_after_inner_guidance_until_run_two_conditions(tiny_jam, random_jam, model_inputs,
                                                             solver):
  settings = Settings(guidance="inner", num_steps=4, inner_guidance_until=0.5, solver=solver)
  assert sampler_lib.inner_guidance_steps(settings) == 2      # steps from t = 0 and t = 0.25
  assert sampler_lib.inner_guidance_steps(dataclasses.replace(settings, inner_guidance_until=1.0)) == 4
  assert sampler_lib.inner_guidance_steps(dataclasses.replace(settings, guidance="cfg")) == 0
  x, d, text, mask = (model_inputs[k] for k in ("x_t", "d_t", "text", "text_mask"))
  counter = CountingApply(field(lambda x, d, t: (x, d)))
  jax.make_jaxpr(lambda: sampler_lib.sample_loop(counter, None, x, d, text, mask, settings, True))()
  per_step = 2 if solver == "heun" else 1
  assert [c["batch"] for c in counter.calls] == [6] * per_step + [4] * per_step
  # The two loops give what one loop of three conditions (w2 = 0 from t = 0.5 on) gives.
  times = np.asarray(sampler_lib.time_grid(4, 1.0))
  velocity = lambda x, d, t: sampler_lib.guided_velocity(
      tiny_jam.apply, random_jam, x, d, jnp.float32(t), text, mask, settings, True)
  ref_x, ref_d = x, d
  for t, t_next in zip(times[:-1], times[1:]):
    u_x, u_d = velocity(ref_x, ref_d, t)
    x_e, d_e = ref_x + (t_next - t) * u_x, ref_d + (t_next - t) * u_d
    if solver == "heun":
      v_x, v_d = velocity(x_e, d_e, t_next)
      x_e, d_e = (ref_x + (t_next - t) * 0.5 * (u_x + v_x), ref_d + (t_next - t) * 0.5 * (u_d + v_d))
    ref_x, ref_d = x_e, d_e
  apply = tiny_jam.model.apply
  out_x, out_d = jax.jit(lambda: sampler_lib.sample_loop(apply, random_jam, x, d, text, mask,
                                                         settings, True))()
  np.testing.assert_allclose(out_x, ref_x, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out_d, ref_d, rtol=1e-4, atol=1e-4)


def test_inner_guidance_on_a_baseline_model_is_refused(tiny_base):
  with pytest.raises(sampler_lib.GuidanceError, match=r"Inner-Guidance needs a VideoJAM model.*guidance='cfg'"):
    Settings(guidance="inner").validate(jam=False)
  with pytest.raises(sampler_lib.GuidanceError, match="model.jam=False"):
    sampler_lib.Sampler(tiny_base.model, Settings(guidance="inner"))
  Settings(guidance="cfg").validate(jam=False)
  # A baseline sampler returns no motion.
  sample = sampler_lib.Sampler(tiny_base.model, Settings(guidance="cfg", num_steps=1))
  ids, mask = _prompts(tiny_base.config)
  video, motion = jax.eval_shape(sample.jitted, tiny_base.init_params, ids, mask, jax.random.key(0),
                                 jnp.float32(5.0), jnp.float32(0.0))
  assert video.shape == (2, 4, 16, 16, 3) and motion is None


@pytest.mark.parametrize("change, message", [
    (dict(guidance="classifier"), "guidance must be one of"),
    (dict(solver="rk4"), "solver must be one of"),
    (dict(num_steps=0), "num_steps must be >= 1"),
    (dict(time_shift=0.0), "time_shift must be > 0"),
])
def test_invalid_settings_are_refused(change, message):
  with pytest.raises(sampler_lib.GuidanceError, match=message):
    dataclasses.replace(Settings(), **change).validate(jam=True)


def test_settings_from_config_reads_the_sample_section(tiny_jam):
  settings = sampler_lib.settings_from_config(tiny_jam.config.sample, solver="heun")
  assert settings.num_steps == tiny_jam.config.sample.num_steps
  assert settings.text_scale == 5.0 and settings.motion_scale == 3.0
  assert settings.solver == "heun" and settings.guidance == "inner"
  incomplete = sampling.get_config()
  del incomplete["solver"]
  with pytest.raises(sampler_lib.GuidanceError, match=r"lack \['solver'\]"):
    sampler_lib.settings_from_config(incomplete)


@pytest.mark.parametrize("schedule,theirs", [("flow_match_euler", "euler"), ("unipc_flow", "unipc")])
@pytest.mark.parametrize("shift", [3.0, 5.0])
@pytest.mark.parametrize("steps", [10, 50])
def test_time_grid_matches_the_diffusers_schedulers(schedule, theirs, shift, steps):
  """Sigmas recorded from diffusers (tests/fixtures/wan/make_fixtures.py); ours run the
  other way (t = 1 - sigma)."""
  fixtures = np.load(pathlib.Path(__file__).parents[1] / "fixtures" / "wan" / "outputs.npz")
  sigmas = fixtures[f"sigmas_{theirs}_shift{shift:g}_steps{steps}"]
  times = sampler_lib.time_grid(steps, shift, schedule)
  assert times.shape == sigmas.shape == (steps + 1,)
  np.testing.assert_allclose(1.0 - times.astype(np.float64), sigmas, rtol=0, atol=2e-7)
