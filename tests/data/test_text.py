"""videojam_jax/data/text.py: the one captions -> model-inputs path (training and sampling)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.conftest import tiny_config
from videojam_jax.data import text as text_lib


def test_tokens_are_bos_then_bytes_then_padding():
  ids, mask = text_lib.tokenize(["ab", ""], 5)
  np.testing.assert_array_equal(ids, [[1, ord("a") + 2, ord("b") + 2, 0, 0], [1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(mask, ids != 0)
  ids, _ = text_lib.tokenize(["x" * 10], 4)
  assert ids.shape == (1, 4) and (ids[0, 1:] == ord("x") + 2).all()   # truncated


def test_caption_masks_are_prefixes_so_lengths_describe_them():
  # The cuDNN attention path passes caption padding as lengths (mask.sum), which
  # is only the same mask when valid tokens come first.
  _, mask = text_lib.tokenize(["a red ball", "", "x" * 500], 16)
  lengths = mask.sum(axis=-1)
  np.testing.assert_array_equal(mask, np.arange(16)[None] < lengths[:, None])
  assert list(lengths) == [11, 1, 16]


def test_trim_drops_padding_past_the_longest_caption():
  captions = text_lib.CaptionInputs(tiny_config().model.text)   # max_length 32
  ids, mask = captions(["a red ball", "a cube"], trim=True)      # 11 tokens with BOS
  assert ids.shape == mask.shape == (2, 16)
  full_ids, full_mask = captions(["a red ball", "a cube"])
  assert full_ids.shape == (2, 32)
  np.testing.assert_array_equal(ids, full_ids[:, :16])
  assert not full_mask[:, 16:].any()           # only padding was dropped
  assert captions(["x" * 20], trim=True)[0].shape == (1, 32)    # 21 tokens -> 32
  assert captions(["x" * 100], trim=True)[0].shape == (1, 32)   # never longer than max_length


def test_trimmed_prompts_give_the_same_velocities(tiny_jam, perturb_params):
  params = perturb_params(tiny_jam.init_params, seed=5)
  captions = text_lib.CaptionInputs(tiny_jam.config.model.text)
  prompts = ["a red ball", "a cube falls"]
  ids, mask = captions(prompts, trim=True)
  full_ids, full_mask = captions(prompts)
  assert ids.shape[1] < full_ids.shape[1]
  x = jax.random.normal(jax.random.key(0), (2, 4, 16, 16, 3))
  t, keep = jnp.full((2,), 0.6), jnp.array([True, False])
  trimmed = tiny_jam.apply(params, x, x, t, ids, mask, keep)
  full = tiny_jam.apply(params, x, x, t, full_ids, full_mask, keep)
  for a, b in zip(trimmed, full):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def precomputed_config(path, max_length=8, dim=4) -> ml_collections.ConfigDict:
  config = tiny_config()
  config.model.text.source = "precomputed"
  config.model.text.max_length = max_length
  config.model.text.embedding_dim = dim
  config.data.text_embeddings = str(path)
  return config


def write_embeddings(path, captions, lengths, max_length=8, dim=4, seed=0):
  rng = np.random.default_rng(seed)
  masks = np.arange(max_length)[None] < np.asarray(lengths)[:, None]
  np.savez(path, captions=np.asarray(captions),
           embeddings=rng.standard_normal((len(captions), max_length, dim)).astype(np.float32),
           masks=masks)


def test_precomputed_embeddings_are_looked_up_and_trimmed(tmp_path):
  path = tmp_path / "emb.npz"
  write_embeddings(path, ["a ball", "a long caption about a cube"], [2, 6])
  config = precomputed_config(path)
  captions = text_lib.CaptionInputs(config.model.text, config.data.text_embeddings)
  text, mask = captions(["a long caption about a cube", "a ball"])
  assert text.shape == (2, 8, 4) and mask.shape == (2, 8)
  assert mask.sum(axis=1).tolist() == [6, 2]
  with np.load(path) as f:
    np.testing.assert_array_equal(text[1], f["embeddings"][0])
  # Sampling trims these exactly as it trims token ids.
  trimmed, trimmed_mask = captions(["a ball"], trim=True)
  assert trimmed.shape == (1, 8, 4) and trimmed_mask.sum() == 2
  with pytest.raises(KeyError, match="no precomputed text embedding for caption 'unseen'"):
    captions(["unseen"])
  spec_text, spec_mask = captions.spec(3)
  assert spec_text.shape == (3, 8, 4) and spec_mask.shape == (3, 8)


@pytest.mark.parametrize("problem, message", [
    ("missing", "not found"),
    ("not_prefix", "is not a prefix"),
    ("wrong_shape", r"embeddings are \(8, 5\), config wants \(8, 4\)"),
    ("no_masks", r"lacks \['masks'\]"),
])
def test_bad_embedding_files_are_clear_errors(tmp_path, problem, message):
  path = tmp_path / "emb.npz"
  if problem == "not_prefix":
    np.savez(path, captions=np.asarray(["a"]), embeddings=np.zeros((1, 8, 4), np.float32),
             masks=np.asarray([[0, 1, 1, 0, 0, 0, 0, 0]], bool))
  elif problem == "wrong_shape":
    write_embeddings(path, ["a"], [1], dim=5)
  elif problem == "no_masks":
    np.savez(path, captions=np.asarray(["a"]), embeddings=np.zeros((1, 8, 4), np.float32))
  config = precomputed_config(path)
  with pytest.raises((FileNotFoundError, ValueError), match=message):
    text_lib.CaptionInputs(config.model.text, config.data.text_embeddings)


def test_shapes_only_inputs_refuse_to_look_up(tmp_path):
  config = precomputed_config(tmp_path / "absent.npz")
  captions = text_lib.CaptionInputs(config.model.text, None)   # as ahead-of-time compiles build it
  assert captions.spec(2)[0].shape == (2, 8, 4)
  with pytest.raises(ValueError, match="were not loaded"):
    captions(["a"])
