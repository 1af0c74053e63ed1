"""videojam_jax/model/layers.py: attention masking as the cuDNN path passes it."""

import jax
import jax.numpy as jnp
import numpy as np


def test_lengths_give_the_same_attention_as_the_prefix_mask():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32)
             for shape in ((3, 5, 2, 8), (3, 7, 2, 8), (3, 7, 2, 8)))
  lengths = jnp.array([7, 3, 1], jnp.int32)
  mask = jnp.arange(7)[None] < lengths[:, None]
  by_mask = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :], implementation="xla")
  by_lengths = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                            implementation="xla")
  np.testing.assert_allclose(by_lengths, by_mask, rtol=1e-6, atol=1e-6)
  # With one valid key every query reads that key's value.
  np.testing.assert_allclose(by_mask[2], jnp.broadcast_to(v[2, :1], (5, 2, 8)), rtol=1e-6)


def test_rope_scores_depend_only_on_the_offset_between_positions():
  from videojam_jax.model import layers  # pylint: disable=g-import-not-at-top
  head_dim = 12
  angles = layers.rope_angles((6, 1, 1), head_dim, theta=100.0)
  cos, sin = jnp.asarray(np.cos(angles), jnp.float32), jnp.asarray(np.sin(angles), jnp.float32)
  rng = np.random.default_rng(0)
  q = jnp.asarray(np.broadcast_to(rng.standard_normal(head_dim), (1, 6, 1, head_dim)), jnp.float32)
  k = jnp.asarray(np.broadcast_to(rng.standard_normal(head_dim), (1, 6, 1, head_dim)), jnp.float32)
  rq, rk = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
  scores = np.asarray(jnp.einsum("bihd,bjhd->ij", rq, rk))
  # The same vectors at (i, j) and (i + s, j + s) score alike; rotations keep norms.
  np.testing.assert_allclose(scores[0, 2], scores[3, 5], rtol=1e-5)
  np.testing.assert_allclose(scores[1, 0], scores[5, 4], rtol=1e-5)
  assert abs(scores[0, 0] - scores[0, 3]) > 1e-3
  np.testing.assert_allclose(jnp.linalg.norm(rq, axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-5)
  # Only the time axis varies on this grid: its channels rotate, the h / w channels do not.
  assert np.all(angles[:, 2:] == 0) and np.any(angles[:, :2] != 0)


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from tests.conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from videojam_jax.model import layers  # pylint: disable=g-import-not-at-top
  from videojam_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 16)), jnp.float32)
  with sharding.ShardingPlan.from_config(tiny_config().mesh).active():
    for qk_norm, same in ((True, True), (False, False)):
      attention = layers.Attention(16, 2, qk_norm=qk_norm, rngs=nnx.Rngs(0))
      before = attention(x, x)
      for proj in (attention.query, attention.key):
        proj.kernel[...] = 10.0 * proj.kernel[...]
      after = attention(x, x)
      assert np.allclose(before, after, rtol=1e-4, atol=1e-5) == same, qk_norm
