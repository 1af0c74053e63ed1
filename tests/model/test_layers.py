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
