"""Analytic FLOP counts of the Wan 2.1 transformer (the trainer's MFU, AOT step times).

Same accounting as videojam_jax/model/flops.py (forward + backward = 3x forward, no
rematerialisation): per video token 6 N + 12 D w (S + L), with N the weights
applied to every token (patch embedding, per block self-attention q/k/v/o,
cross-attention q/o and the FFN, proj_out), D blocks of width w, S video tokens
and L text tokens; per clip the time embedding / modulation and, per text token,
the text embedder and every block's cross-attention k/v.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from videojam_jax.model import text_encoder as text_encoder_lib
from videojam_jax.model.wan import video_model


def model_flops(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Training FLOPs of config.model (family 'wan') on config.data's clips."""
  m, d = config.model, config.data
  wan = video_model.transformer_config(m, text_encoder_lib.text_width(m.text))
  w, depth, ffn = wan.dim, wan.num_layers, wan.ffn_dim
  patch_dim = int(np.prod(wan.patch_size)) * wan.in_channels
  tokens = int(np.prod([n // p for n, p in zip((d.num_frames, d.height, d.width),
                                                wan.patch_size)]))
  length = int(m.text.max_length)
  n_token = depth * (6 * w * w + 2 * w * ffn) + 2 * patch_dim * w
  if m.jam:   # Wan-VideoJAM: the motion patch embedding and the motion head, per token
    n_token += 2 * patch_dim * w
  per_token = 6 * n_token + 12 * depth * w * (tokens + length)
  n_clip = wan.freq_dim * w + w * w + 6 * w * w            # time embedder + time_proj
  n_caption = wan.text_dim * w + w * w + depth * 2 * w * w   # text embedder + cross k/v
  per_clip = 6 * (n_clip + n_caption * length)
  batch = config.train.batch_size
  return {
      "tokens_per_clip": tokens,
      "tokens_per_step": tokens * batch,
      "params_per_token": n_token,
      "flops_per_token": per_token,
      "flops_per_step": per_token * tokens * batch + per_clip * batch,
  }
