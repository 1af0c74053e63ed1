"""videojam_jax.samples: prompt batches for sampling."""

import jax
import jax.numpy as jnp
import numpy as np

from tests.conftest import tiny_config
from videojam_jax.sampling import samples
from videojam_jax.model import text_encoder


def test_prompt_batch_trims_padding_to_the_longest_caption():
  config = tiny_config()                       # text.max_length 32
  ids, mask = samples.prompt_batch(config, ["a red ball", "a cube"])   # 11 tokens with BOS
  assert ids.shape == mask.shape == (2, 16)
  full_ids, full_mask = text_encoder.tokenize(["a red ball", "a cube"], 32)
  np.testing.assert_array_equal(ids, full_ids[:, :16])
  assert not full_mask[:, 16:].any()           # only padding was dropped
  ids, _ = samples.prompt_batch(config, ["x" * 20])
  assert ids.shape == (1, 32)                  # 21 tokens -> 32
  ids, _ = samples.prompt_batch(config, ["x" * 100])
  assert ids.shape == (1, 32)                  # never longer than max_length


def test_trimmed_prompts_give_the_same_velocities(tiny_jam, perturb_params):
  params = perturb_params(tiny_jam.init_params, seed=5)
  captions = ["a red ball", "a cube falls"]
  ids, mask = samples.prompt_batch(tiny_jam.config, captions)
  full_ids, full_mask = text_encoder.tokenize(captions, tiny_jam.config.model.text.max_length)
  assert ids.shape[1] < full_ids.shape[1]
  x = jax.random.normal(jax.random.key(0), (2, 4, 16, 16, 3))
  t, keep = jnp.full((2,), 0.6), jnp.array([True, False])
  trimmed = tiny_jam.apply(params, x, x, t, ids, mask, keep)
  full = tiny_jam.apply(params, x, x, t, full_ids, full_mask, keep)
  for a, b in zip(trimmed, full):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
