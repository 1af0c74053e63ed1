"""videojam_jax.flops: analytic FLOP counts of the video DiT."""

from configs import tiny
from videojam_jax.model import flops as flops_lib


def test_model_flops_formula():
  config = tiny.get_config()   # 4x16x16 clips, patch (2,4,4): 2*4*4 = 32 tokens
  flops = flops_lib.model_flops(config)
  w, depth, mlp, length = 32, 2, 128, config.model.text.max_length
  patch_dim = 2 * 4 * 4 * 3
  n = depth * (6 * w * w + 2 * w * mlp) + 2 * 2 * patch_dim * w   # jam: 2 streams
  assert flops["tokens_per_clip"] == 32
  assert flops["params_per_token"] == n
  assert flops["flops_per_token"] == 6 * n + 12 * depth * w * (32 + length)
  assert flops["flops_per_step"] > flops["flops_per_token"] * flops["tokens_per_step"]


def test_sampling_forward_flops_formula():
  config = tiny.get_config()
  w, depth, mlp, length, tokens = 32, 2, 128, config.model.text.max_length, 32
  patch_dim = 2 * 4 * 4 * 3
  n = depth * (6 * w * w + 2 * w * mlp) + 2 * 2 * patch_dim * w
  n_clip = depth * 6 * w * w + 2 * w * w + 256 * w + w * w
  expected = (2 * n + 4 * depth * w * (tokens + length)) * tokens + 2 * n_clip + 4 * depth * w * w * length
  assert flops_lib.sampling_forward_flops(config) == expected
  shorter = flops_lib.sampling_forward_flops(config, caption_length=length // 2)
  assert expected - shorter == (4 * depth * w * tokens + 4 * depth * w * w) * (length - length // 2)
  # Training is three forward passes over the token weights and attention.
  train = flops_lib.model_flops(config)
  assert train["flops_per_token"] * tokens == 3 * (2 * n + 4 * depth * w * (tokens + length)) * tokens
