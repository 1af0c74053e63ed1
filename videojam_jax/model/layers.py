"""Transformer building blocks with logical axis names on every weight.

Weights carry logical names (sharding.py maps them to mesh axes); activations
are constrained at block boundaries so XLA keeps the intended layout.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from videojam_jax.parallel import sharding

Dtype = jnp.dtype


def dense(features: int, logical_axes: tuple[str | None, str | None], *, dtype: Dtype,
          use_bias: bool = True, zero_init: bool = False, name: str | None = None) -> nn.Dense:
  """nn.Dense whose kernel is annotated with `logical_axes` (in, out)."""
  kernel_init = nn.initializers.zeros_init() if zero_init else nn.initializers.xavier_uniform()
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(kernel_init, logical_axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (logical_axes[1],)),
      name=name)


class LayerNorm(nn.Module):
  """LayerNorm computed in float32 (bf16 variance is too coarse), optional affine."""
  use_scale_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return nn.LayerNorm(
        epsilon=1e-6, use_scale=self.use_scale_bias, use_bias=self.use_scale_bias,
        dtype=jnp.float32, param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
    )(x.astype(jnp.float32)).astype(self.dtype)


class Attention(nn.Module):
  """Multi-head attention (self or cross) through jax.nn.dot_product_attention.

  `attention_impl` is passed to jax.nn.dot_product_attention ("xla", "cudnn" for
  the fused GPU kernel, or None to let JAX choose).
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, context: jnp.ndarray,
               kv_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads

    def proj(name: str, inputs: jnp.ndarray) -> jnp.ndarray:
      return nn.DenseGeneral(
          (self.num_heads, head_dim), dtype=self.dtype, param_dtype=jnp.float32,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.xavier_uniform(), ("embed", "heads", "kv")),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("heads", "kv")),
          name=name)(inputs)

    q, k, v = proj("query", x), proj("key", context), proj("value", context)
    q = sharding.constrain(q, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
    impl = None if self.attention_impl in (None, "auto") else self.attention_impl
    if kv_mask is None:
      out = jax.nn.dot_product_attention(q, k, v, implementation=impl)
    elif impl == "cudnn":
      # cuDNN takes padding as lengths, not a broadcast mask. Our caption masks
      # are prefixes (tokens first, padding after), so the count is the length.
      lengths = kv_mask.sum(axis=-1, dtype=jnp.int32)
      out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                         implementation=impl)
    else:
      out = jax.nn.dot_product_attention(q, k, v, mask=kv_mask[:, None, None, :],
                                         implementation=impl)
    return nn.DenseGeneral(
        width, axis=(-2, -1), dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.xavier_uniform(), ("heads", "kv", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        name="out")(out)


class Mlp(nn.Module):
  """Two-layer GELU MLP, hidden dimension sharded as 'mlp'."""
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    width = x.shape[-1]
    h = dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x)
    h = sharding.constrain(nn.gelu(h), ("activation_batch", "activation_length", "activation_mlp"))
    return dense(width, ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)
