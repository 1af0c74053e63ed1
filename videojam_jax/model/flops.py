"""Analytic FLOP counts of the video DiT, for MFU and sampling-cost figures.

XLA's cost_analysis counts a scanned block once, not once per layer, so the
figures we report come from these formulas (checked against the layer shapes in
tests/test_flops.py).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from videojam_jax.model import dit as model_lib
from videojam_jax.model.wan import flops as wan_flops


def _shape(config: ml_collections.ConfigDict) -> dict[str, int]:
  m, d = config.model, config.data
  patch = tuple(int(p) for p in m.patch_size)
  channels = model_lib.VideoShape.from_data_config(d).channels
  w = m.width
  streams = 2 if m.jam else 1            # VideoJAM: motion input rows and motion head
  patch_dim = int(np.prod(patch)) * channels
  mlp = int(w * m.mlp_ratio)
  per_block = 4 * w * w + 2 * w * w + 2 * w * mlp
  return dict(
      w=w, depth=m.depth, length=m.text.max_length,
      tokens=(d.num_frames // patch[0]) * (d.height // patch[1]) * (d.width // patch[2]),
      # Weights applied to every video token: blocks (self-attention q/k/v/o,
      # cross-attention q/o, MLP) plus patch embeddings and output heads.
      n_token=m.depth * per_block + 2 * streams * patch_dim * w,
      # Once per clip: adaLN (6w^2 per block, 2w^2 final) and the timestep MLP.
      n_clip=m.depth * 6 * w * w + 2 * w * w + model_lib.TIMESTEP_FREQUENCIES * w + w * w,
      # Per caption token: cross-attention k/v in every block.
      n_caption_kv=m.depth * 2 * w * w)


def model_flops(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Analytic training FLOPs (forward + backward = 3x forward), no rematerialisation.

  Per video token: 6 N + 12 D w (S + L), where N counts the weights applied to
  every video token (patch embeddings, per block self-attention q/k/v/o,
  cross-attention q/o and the MLP, output heads), D blocks of width w, S video
  tokens per clip and L caption tokens (the attention scores and the weighted
  sum, self and cross). Work done once per clip (adaLN, cross-attention k/v of
  the caption, the text encoder) is added per step.
  """
  if config.model.get("family", "dit") == "wan":
    return wan_flops.model_flops(config)
  s, m = _shape(config), config.model
  w, depth, length, tokens = s["w"], s["depth"], s["length"], s["tokens"]
  per_token = 6 * s["n_token"] + 12 * depth * w * (tokens + length)

  # Once per clip: adaLN and timestep MLP, caption k/v in every block, and the
  # text encoder + projection over L caption tokens.
  n_caption = s["n_caption_kv"]
  if m.text.source == "builtin":
    tw, tdepth = m.text.width, m.text.depth
    n_caption += tdepth * 12 * tw * tw + tw * w
    caption_attention = 12 * tdepth * tw * length * length
  else:
    n_caption += m.text.embedding_dim * w
    caption_attention = 0
  per_clip = 6 * (s["n_clip"] + n_caption * length) + caption_attention
  batch = config.train.batch_size
  return {
      "tokens_per_clip": tokens,
      "tokens_per_step": tokens * batch,
      "params_per_token": s["n_token"],
      "flops_per_token": per_token,
      "flops_per_step": per_token * tokens * batch + per_clip * batch,
  }


def sampling_forward_flops(config: ml_collections.ConfigDict,
                           caption_length: int | None = None) -> float:
  """FLOPs of one forward pass for one clip and one guidance condition, as the
  sampler runs it: the caption is encoded once per sample (not counted), its
  k/v are projected in every block at every step (counted).

  2 per multiply-add over the token weights, 4 D w (S + L) per token for the
  attention scores and weighted sums, plus the per-clip adaLN and caption k/v.
  L is `caption_length` (sampling trims padding) or text.max_length.
  """
  s = _shape(config)
  length = s["length"] if caption_length is None else caption_length
  per_token = 2 * s["n_token"] + 4 * s["depth"] * s["w"] * (s["tokens"] + length)
  return float(per_token * s["tokens"] + 2 * s["n_clip"] + 2 * s["n_caption_kv"] * length)
