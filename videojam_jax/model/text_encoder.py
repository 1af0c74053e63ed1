"""Caption conditioning: a small built-in byte-level text encoder, or precomputed embeddings.

The built-in encoder reads UTF-8 bytes (no vocabulary file to download) through
a few transformer layers and is trained with the DiT. Users with a real text
encoder (T5, CLIP, ...) precompute its token embeddings and set
`model.text.source = "precomputed"`; the model then only projects them.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from videojam_jax.model import layers

PAD_ID = 0
BOS_ID = 1
BYTE_OFFSET = 2          # byte b is token b + 2
VOCAB_SIZE = 256 + BYTE_OFFSET


def tokenize(captions: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """Captions -> (token ids int32 [B, L], mask bool [B, L]); BOS first, truncated at L."""
  ids = np.full((len(captions), max_length), PAD_ID, np.int32)
  for i, caption in enumerate(captions):
    data = caption.encode("utf-8")[: max_length - 1]
    ids[i, 0] = BOS_ID
    ids[i, 1:1 + len(data)] = np.frombuffer(data, np.uint8).astype(np.int32) + BYTE_OFFSET
  return ids, ids != PAD_ID


class ByteTextEncoder(nn.Module):
  """Byte embeddings + learned positions + pre-LN transformer layers -> [B, L, width]."""
  max_length: int
  width: int
  depth: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, token_ids: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    embed = self.param("token_embedding", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("vocab", "embed")), (VOCAB_SIZE, self.width))
    positions = self.param("position_embedding", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, "embed")), (self.max_length, self.width))
    x = (jnp.take(embed, token_ids, axis=0) + positions[: token_ids.shape[1]]).astype(self.dtype)
    for i in range(self.depth):
      h = layers.LayerNorm(name=f"attn_norm_{i}", dtype=self.dtype)(x)
      x = x + layers.Attention(self.num_heads, dtype=self.dtype, attention_impl=self.attention_impl,
                               name=f"attn_{i}")(h, h, kv_mask=mask)
      h = layers.LayerNorm(name=f"mlp_norm_{i}", dtype=self.dtype)(x)
      x = x + layers.Mlp(4 * self.width, dtype=self.dtype, name=f"mlp_{i}")(h)
    return layers.LayerNorm(name="final_norm", dtype=self.dtype)(x)
