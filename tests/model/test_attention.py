"""The attention switch: Splash (in Pallas' interpreter on CPU) equals the XLA path."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from videojam_jax.model import attention
from videojam_jax.parallel import sharding


def _qkv(lq, lk, heads=2, dim=16, batch=2):
  ks = jax.random.split(jax.random.key(0), 3)
  return (jax.random.normal(ks[0], (batch, lq, heads, dim)),
          jax.random.normal(ks[1], (batch, lk, heads, dim)),
          jax.random.normal(ks[2], (batch, lk, heads, dim)))


@pytest.mark.parametrize("lq,lk", [(200, 7), (128, 128), (300, 300)])
def test_splash_matches_xla_with_padding(lq, lk):
  q, k, v = _qkv(lq, lk)
  ref = attention.dot_product_attention(q, k, v, implementation="xla")
  out = jax.jit(lambda q, k, v: attention.dot_product_attention(
      q, k, v, implementation="splash_interpret"))(q, k, v)
  np.testing.assert_allclose(out, ref, atol=5e-6)


def test_splash_gradients_match_xla():
  q, k, v = _qkv(160, 160, batch=1)
  loss = lambda impl: lambda q, k, v: (attention.dot_product_attention(
      q, k, v, implementation=impl) ** 2).sum()
  ref = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  out = jax.jit(jax.grad(loss("splash_interpret"), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(out, ref):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_splash_runs_per_shard_under_a_mesh():
  """With a mesh in scope the kernel runs inside shard_map (a 1-device mesh here)."""
  plan = sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=-1)))
  q, k, v = _qkv(130, 130)
  with plan.active():
    out = jax.jit(lambda q, k, v: attention.dot_product_attention(
        q, k, v, implementation="splash_interpret"))(q, k, v)
  np.testing.assert_allclose(out, attention.dot_product_attention(q, k, v), atol=5e-6)


def test_unknown_implementation_is_named():
  with pytest.raises(ValueError, match="attention_impl must be one of"):
    attention.dot_product_attention(*_qkv(4, 4), implementation="flash")


def test_splash_masks_keys_like_xla():
  q, k, v = _qkv(140, 24)
  kv_mask = jnp.arange(24)[None] < jnp.array([[5], [24]])      # caption prefixes
  ref = attention.dot_product_attention(q, k, v, kv_mask, implementation="xla")
  out = jax.jit(lambda q, k, v, m: attention.dot_product_attention(
      q, k, v, m, implementation="splash_interpret"))(q, k, v, kv_mask)
  np.testing.assert_allclose(out, ref, atol=5e-6)
