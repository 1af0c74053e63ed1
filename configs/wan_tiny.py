"""A tiny Wan 2.1 transformer trained on the synthetic clips in pixel space (tests, CPU).

The architecture of Wan 2.1 (videojam_jax/model/wan/, docs/wan.md) at test size, in
the same trainer, sampler and evaluators as the DiT. Pixels stand in for VAE
latents here (3 channels, no autoencoder), and the built-in byte-level encoder for
umT5, so it runs from a fresh clone with nothing downloaded:

  python -m data_pipelines.build_synthetic --config configs/wan_tiny.py
  python -m videojam_jax.train --config configs/wan_tiny.py --workdir workdirs/wan_tiny
"""

import ml_collections

from configs import tiny


def get_config() -> ml_collections.ConfigDict:
  config = tiny.get_config()
  config.model.family = "wan"
  # The base Wan; --config.model.jam=True (with train.init_from a base run or a diffusers
  # Wan folder) is Wan-VideoJAM, sampled with --config.sample.guidance=inner.
  config.model.jam = False
  # The transformer's architecture, with diffusers' config.json field names;
  # text_dim follows the text inputs (model.text: builtin width or embedding_dim).
  config.model.wan = ml_collections.ConfigDict(dict(
      patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=3,
      out_channels=3, freq_dim=64, ffn_dim=48, num_layers=2, cross_attn_norm=True,
      eps=1e-6, rope_max_seq_len=64))
  config.sample.guidance = "cfg"  # text CFG, as Wan samples (a base has no motion to guide with)
  config.sample.time_shift = 3.0  # Wan's flow shift at 480p
  return config
