"""Unit tests of the Wan transformer's pieces (parity with diffusers: test_parity.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from videojam_jax.model import functional
from videojam_jax.model.wan import transformer as wan
from videojam_jax.parallel import sharding

TINY = wan.WanTransformerConfig(num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                out_channels=4, text_dim=8, freq_dim=16, ffn_dim=32,
                                num_layers=2, rope_max_seq_len=16)


def test_rope_splits_head_dim_44_42_42_and_rotates_by_position():
  angles = wan.rope_angles((3, 4, 5), 128, 1024)
  assert angles.shape == (3 * 4 * 5, 64)
  grid = angles.reshape(3, 4, 5, 64)
  # t: the first 22 pairs vary with the frame only; h: the next 21; w: the last 21.
  np.testing.assert_allclose(grid[1, 2, 3, :22], 1e4 ** (-np.arange(0, 44, 2) / 44))
  assert np.all(grid[:, :, :, 22:43][0] == grid[:, :, :, 22:43][2])
  np.testing.assert_allclose(grid[0, 3, 0, 22:43], 3 * 1e4 ** (-np.arange(0, 42, 2) / 42))
  np.testing.assert_allclose(grid[0, 0, 4, 43:], 4 * 1e4 ** (-np.arange(0, 42, 2) / 42))


def test_apply_rope_is_a_complex_rotation_of_interleaved_pairs():
  x = jax.random.normal(jax.random.key(0), (2, 6, 3, 8))
  angles = jax.random.uniform(jax.random.key(1), (6, 4)) * 6
  out = wan.apply_rope(x, jnp.cos(angles), jnp.sin(angles))
  z = (x[..., 0::2] + 1j * x[..., 1::2]) * jnp.exp(1j * angles)[None, :, None]
  np.testing.assert_allclose(out[..., 0::2], z.real, atol=1e-6)
  np.testing.assert_allclose(out[..., 1::2], z.imag, atol=1e-6)


def test_timestep_features_are_cos_then_sin():
  f = wan.timestep_features(jnp.array([0.0, 10.0]), 8)
  np.testing.assert_allclose(f[0], [1, 1, 1, 1, 0, 0, 0, 0], atol=1e-7)
  freqs = np.exp(-np.log(1e4) * np.arange(4) / 4)
  np.testing.assert_allclose(f[1], np.concatenate([np.cos(10 * freqs), np.sin(10 * freqs)]),
                             rtol=1e-5)


def test_config_round_trips_through_diffusers_json():
  for size in ("1.3b", "14b"):
    config = wan.published_config(size)
    assert wan.WanTransformerConfig.from_diffusers(config.to_diffusers()) == config
  assert wan.published_config("1.3b").dim == 1536 and wan.published_config("14b").dim == 5120


@pytest.mark.parametrize("change,message", [
    (dict(image_dim=1280), "image-to-video"),
    (dict(qk_norm="rms_norm"), "rms_norm_across_heads"),
])
def test_unsupported_variants_are_refused(change, message):
  with pytest.raises(wan.WanConfigError, match=message):
    wan.WanTransformerConfig.from_diffusers({**TINY.to_diffusers(), **change})


PLAN = sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=-1)))


def _model(**kwargs):
  """(params, jitted forward(params, latents, timestep, text)) of a tiny Wan."""
  create = lambda rngs: wan.WanTransformer(TINY, rngs=rngs, **kwargs)
  graphdef, abstract = functional.abstract_split(lambda: create(nnx.Rngs(0)), PLAN)
  params = functional.init_params(create, abstract, PLAN, jax.random.key(0))
  return params, jax.jit(lambda p, x, t, c: nnx.merge(graphdef, p)(x, t, c))


def test_inputs_that_do_not_fit_are_named():
  params, forward = _model()
  text = jnp.zeros((1, 3, 8))
  with pytest.raises(wan.WanConfigError, match="5 channels, the model takes 4"):
    forward(params, jnp.zeros((1, 1, 4, 4, 5)), jnp.zeros(1), text)
  with pytest.raises(wan.WanConfigError, match="height=5 is not divisible"):
    forward(params, jnp.zeros((1, 1, 5, 4, 4)), jnp.zeros(1), text)
  with pytest.raises(wan.WanConfigError, match="rope_max_seq_len=16"):
    forward(params, jnp.zeros((1, 17, 4, 4, 4)), jnp.zeros(1), text)
  with pytest.raises(wan.WanConfigError, match="remat_policy"):
    _model(remat_policy="some")
  with pytest.raises(ValueError, match="attention_impl"):
    _model(attention_impl="flash")


def test_every_weight_has_logical_axes_and_blocks_are_stacked():
  create = lambda: wan.WanTransformer(TINY, rngs=nnx.Rngs(0))
  _, abstract = functional.abstract_split(create, PLAN)
  with PLAN.active():
    state = nnx.state(nnx.eval_shape(create))
  for path, var in jax.tree_util.tree_leaves_with_path(
      state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
    axes = var.get_metadata().get("out_sharding") or var.get_metadata().get("sharding")
    assert axes is not None and len(axes) == var.value.ndim, path
  assert abstract["blocks"]["attn1"]["to_q"]["kernel"].shape == (2, 24, 2, 12)
  assert abstract["blocks"]["scale_shift_table"].shape == (2, 1, 6, 24)


def test_bfloat16_compute_keeps_float32_weights_and_stays_close():
  params32, forward32 = _model()
  params16, forward16 = _model(dtype=jnp.bfloat16)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params16))
  x = jax.random.normal(jax.random.key(0), (1, 2, 4, 4, 4))
  text = jax.random.normal(jax.random.key(1), (1, 3, 8))
  t = jnp.array([300.0])
  out32, out16 = forward32(params32, x, t, text), forward16(params32, x, t, text)
  assert out16.dtype == jnp.float32
  rel = float(jnp.abs(out32 - out16).max() / jnp.abs(out32).max())
  assert 0 < rel < 0.05, rel
