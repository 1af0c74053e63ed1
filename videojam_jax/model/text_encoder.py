"""Caption conditioning: a small built-in byte-level text encoder (Flax NNX).

The built-in encoder reads UTF-8 bytes (no vocabulary file to download; tokens
come from `videojam_jax.data.text`) through a few pre-LN transformer layers and is
trained with the DiT. Users with a real text encoder (T5, CLIP, ...) precompute its
token embeddings and set `model.text.source = "precomputed"`; the DiT then only
projects them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from videojam_jax.data import text as text_lib
from videojam_jax.model import layers

EMBEDDING_INIT_STDDEV = 0.02


class TextLayer(nnx.Module):
  """One pre-LN transformer layer: masked self-attention, then an MLP."""

  def __init__(self, width: int, num_heads: int, *, dtype: jnp.dtype,
               attention_impl: str | None, rngs: nnx.Rngs):
    self.attn_norm = layers.LayerNorm(width, dtype=dtype, rngs=rngs)
    self.attn = layers.Attention(width, num_heads, dtype=dtype, attention_impl=attention_impl,
                                 rngs=rngs)
    self.mlp_norm = layers.LayerNorm(width, dtype=dtype, rngs=rngs)
    self.mlp = layers.Mlp(width, 4 * width, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    h = self.attn_norm(x)
    x = x + self.attn(h, h, kv_mask=mask)
    return x + self.mlp(self.mlp_norm(x))


class ByteTextEncoder(nnx.Module):
  """Byte embeddings + learned positions + pre-LN transformer layers -> [B, L, width]."""

  def __init__(self, *, max_length: int, width: int, depth: int, num_heads: int,
               dtype: jnp.dtype = jnp.float32, attention_impl: str | None = None,
               rngs: nnx.Rngs):
    init = nnx.initializers.normal(EMBEDDING_INIT_STDDEV)
    self.token_embedding = nnx.Param(
        nnx.with_partitioning(init, ("vocab", "embed"))(rngs.params(), (text_lib.VOCAB_SIZE, width)))
    self.position_embedding = nnx.Param(
        nnx.with_partitioning(init, (None, "embed"))(rngs.params(), (max_length, width)))
    # Stacked like the DiT blocks (one compiled layer; no integer keys in checkpoints).
    self.layers = layers.stacked(
        lambda r: TextLayer(width, num_heads, dtype=dtype, attention_impl=attention_impl, rngs=r),
        depth, rngs)
    self.final_norm = layers.LayerNorm(width, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, token_ids: jax.Array, mask: jax.Array) -> jax.Array:
    positions = self.position_embedding[...][: token_ids.shape[1]]
    x = (jnp.take(self.token_embedding[...], token_ids, axis=0) + positions).astype(self.dtype)
    x = layers.run_stacked(self.layers, x, lambda layer, h: layer(h, mask))
    return self.final_norm(x)


def from_config(text_config, *, dtype: jnp.dtype, attention_impl: str | None,
                rngs: nnx.Rngs) -> "ByteTextEncoder | None":
  """The built-in encoder config.model.text describes, or None for precomputed embeddings."""
  if text_config.source != "builtin":
    return None
  return ByteTextEncoder(max_length=text_config.max_length, width=text_config.width,
                         depth=text_config.depth, num_heads=text_config.num_heads, dtype=dtype,
                         attention_impl=attention_impl, rngs=rngs)


def text_width(text_config) -> int:
  """The width of the caption inputs the model projects: the built-in encoder's, or the
  precomputed embeddings'."""
  return int(text_config.width if text_config.source == "builtin" else text_config.embedding_dim)
