"""umT5's encoder (transformers' `UMT5EncoderModel`), Wan 2.1's text encoder, in Flax NNX.

T5 v1.1 with one difference: every layer has its own relative position bias
(T5 shares layer 0's). Per layer: RMSNorm (no mean, no bias, float32 variance),
self-attention with that bias added to unscaled q.k scores, then RMSNorm and a
gated-GELU (tanh) FFN; a final RMSNorm. Logical axis names on every weight,
layers stacked and scanned like the transformer's. The published encoder
(google/umt5-xxl, in every Wan 2.1 pipeline) is `PUBLISHED["umt5-xxl"]`;
`videojam_jax.model.wan.text` puts the tokenizer in front and does Wan's
trimming of the outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from videojam_jax.model import layers
from videojam_jax.parallel import sharding


class UMT5ConfigError(ValueError):
  """A umT5 config this implementation does not describe."""


@dataclasses.dataclass(frozen=True)
class UMT5Config:
  """The encoder's architecture, with transformers' config.json field names."""
  vocab_size: int
  d_model: int
  d_kv: int
  num_heads: int
  d_ff: int
  num_layers: int
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6

  @classmethod
  def from_transformers(cls, config: dict[str, Any]) -> "UMT5Config":
    """From a transformers config.json (model_type 'umt5', gated-GELU FFN)."""
    if config.get("model_type") != "umt5":
      raise UMT5ConfigError(f"model_type is {config.get('model_type')!r}, not 'umt5'")
    act = config.get("feed_forward_proj", "gated-gelu")
    if act != "gated-gelu":
      raise UMT5ConfigError(f"feed_forward_proj={act!r}: only umT5's 'gated-gelu' is built")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names[:6] if n not in config]
    if missing:
      raise UMT5ConfigError(f"config.json lacks {missing}")
    return cls(**{n: config[n] for n in names if n in config})

  def to_transformers(self) -> dict[str, Any]:
    """A config.json transformers' UMT5EncoderModel.from_pretrained reads."""
    return dict(dataclasses.asdict(self), architectures=["UMT5EncoderModel"], model_type="umt5",
                feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
                dropout_rate=0.0, pad_token_id=0, eos_token_id=1, tie_word_embeddings=True,
                is_encoder_decoder=True, decoder_start_token_id=0)


# google/umt5-xxl, the text encoder of Wan2.1-T2V-1.3B and -14B (text_encoder/config.json).
PUBLISHED = {"umt5-xxl": UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, num_heads=64,
                                    d_ff=10240, num_layers=24)}


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """T5's bidirectional bucket [q, k] of each relative position k - q (host numpy).

  Half the buckets per direction; within one, the first half exact, then
  logarithmic up to max_distance. Computed in float32 as the reference does, so
  positions on a bucket boundary (16, 32, 64 with 32 buckets) fall the same way.
  """
  relative = np.arange(length)[None, :] - np.arange(length)[:, None]
  num_buckets //= 2
  buckets = (relative > 0).astype(np.int32) * num_buckets
  distance = np.abs(relative)
  max_exact = num_buckets // 2
  with np.errstate(divide="ignore"):
    scaled = (np.log(distance.astype(np.float32) / np.float32(max_exact))
              / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact))
  large = np.minimum(max_exact + np.where(distance < max_exact, 0, scaled).astype(np.int32),
                     num_buckets - 1)
  return buckets + np.where(distance < max_exact, distance, large).astype(np.int32)


class RMSNorm(nnx.Module):
  """T5's LayerNorm: x / rms(x) (float32) times a gain, no mean and no bias."""

  def __init__(self, features: int, epsilon: float, *, dtype: Any, rngs: nnx.Rngs):
    self.weight = nnx.Param(nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",))(
        rngs.params(), (features,), jnp.float32))
    self.epsilon, self.dtype = epsilon, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
    return (self.weight[...] * x32).astype(self.dtype)


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...],
           stddev: float) -> nnx.Param:
  init = nnx.with_partitioning(nnx.initializers.normal(stddev), axes)
  return nnx.Param(init(rngs.params(), shape, jnp.float32))


class UMT5Layer(nnx.Module):
  """Self-attention with this layer's relative position bias, then the gated-GELU FFN."""

  def __init__(self, config: UMT5Config, *, dtype: Any, rngs: nnx.Rngs):
    d, h, k, f = config.d_model, config.num_heads, config.d_kv, config.d_ff
    # Random init only matters for tests; real weights come from a checkpoint.
    self.q = _param(rngs, (d, h, k), ("embed", "heads", "kv"), (d * k) ** -0.5)
    self.k = _param(rngs, (d, h, k), ("embed", "heads", "kv"), d ** -0.5)
    self.v = _param(rngs, (d, h, k), ("embed", "heads", "kv"), d ** -0.5)
    self.o = _param(rngs, (h, k, d), ("heads", "kv", "embed"), (h * k) ** -0.5)
    self.relative_attention_bias = _param(rngs, (config.relative_attention_num_buckets, h),
                                          (None, "heads"), 1.0)
    self.wi_0 = _param(rngs, (d, f), ("embed", "mlp"), d ** -0.5)
    self.wi_1 = _param(rngs, (d, f), ("embed", "mlp"), d ** -0.5)
    self.wo = _param(rngs, (f, d), ("mlp", "embed"), f ** -0.5)
    self.attention_norm = RMSNorm(d, config.layer_norm_epsilon, dtype=dtype, rngs=rngs)
    self.ffn_norm = RMSNorm(d, config.layer_norm_epsilon, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x: jax.Array, buckets: jax.Array, mask: jax.Array) -> jax.Array:
    cast = lambda p: p[...].astype(self.dtype)
    h = self.attention_norm(x)
    q, k, v = (jnp.einsum("bld,dhk->blhk", h, cast(w)) for w in (self.q, self.k, self.v))
    q = sharding.constrain(q, ("activation_batch", "activation_length", "activation_heads",
                               "activation_kv"))
    # [1, heads, q, k]: T5 adds the bias to unscaled scores (scale=1).
    bias = jnp.take(self.relative_attention_bias[...], buckets, axis=0).transpose(2, 0, 1)[None]
    out = jax.nn.dot_product_attention(q, k, v, bias=bias.astype(self.dtype),
                                       mask=mask[:, None, None, :], scale=1.0)
    x = x + jnp.einsum("blhk,hkd->bld", out, cast(self.o))
    h = self.ffn_norm(x)
    gated = jax.nn.gelu(h @ cast(self.wi_0), approximate=True) * (h @ cast(self.wi_1))
    gated = sharding.constrain(gated, ("activation_batch", "activation_length", "activation_mlp"))
    return x + gated @ cast(self.wo)


class UMT5Encoder(nnx.Module):
  """Token ids [B, L] (+ mask) -> last hidden states [B, L, d_model], as transformers'
  UMT5EncoderModel(...).last_hidden_state (float32 master weights, `dtype` compute)."""

  def __init__(self, config: UMT5Config, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.config, self.dtype = config, jnp.dtype(dtype)
    self.shared = _param(rngs, (config.vocab_size, config.d_model), ("vocab", "embed"), 1.0)
    self.layers = layers.stacked(lambda r: UMT5Layer(config, dtype=self.dtype, rngs=r),
                                 config.num_layers, rngs)
    self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon, dtype=self.dtype,
                                   rngs=rngs)

  def __call__(self, token_ids: jax.Array, mask: jax.Array) -> jax.Array:
    buckets = jnp.asarray(_buckets(token_ids.shape[1], self.config.relative_attention_num_buckets,
                                   self.config.relative_attention_max_distance))
    x = jnp.take(self.shared[...], token_ids, axis=0).astype(self.dtype)
    x = layers.run_stacked(self.layers, x, lambda layer, h: layer(h, buckets, mask.astype(bool)))
    return self.final_layer_norm(x)


@functools.lru_cache(maxsize=16)
def _buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  return relative_position_buckets(length, num_buckets, max_distance)
