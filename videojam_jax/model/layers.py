"""Transformer building blocks in Flax NNX, with logical axis names on every weight.

Every parameter carries logical axis names (`out_sharding` metadata, e.g.
("embed", "mlp")); `videojam_jax.parallel.sharding` maps them to mesh axes with one
rules table. Activations are constrained at block boundaries by logical names, so
XLA keeps the intended layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from videojam_jax.model import attention as attention_lib
from videojam_jax.parallel import sharding

Dtype = jnp.dtype
LAYER_NORM_EPSILON = 1e-6
# Rematerialisation of stacked blocks (config.model.remat_policy).
REMAT_POLICIES: dict[str, Callable[..., Any] | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _partitioned(init: nnx.Initializer, axes: Sequence[str | None]) -> nnx.Initializer:
  return nnx.with_partitioning(init, tuple(axes))


def linear(in_features: int, out_features: int, axes: tuple[str | None, str | None], *,
           dtype: Dtype, rngs: nnx.Rngs, use_bias: bool = True,
           zero_init: bool = False) -> nnx.Linear:
  """nnx.Linear with float32 master weights, its kernel annotated with `axes` (in, out).

  Kernels start Xavier-uniform (or zero: adaLN gates, output heads), biases at zero.
  """
  kernel_init = nnx.initializers.zeros_init() if zero_init else nnx.initializers.xavier_uniform()
  return nnx.Linear(
      in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
      kernel_init=_partitioned(kernel_init, axes),
      bias_init=_partitioned(nnx.initializers.zeros_init(), (axes[1],)), rngs=rngs)


class LayerNorm(nnx.LayerNorm):
  """LayerNorm computed in float32 (bf16 variance is too coarse), optional affine;
  the output is cast back to the compute dtype."""

  def __init__(self, features: int, *, affine: bool = True, dtype: Dtype = jnp.float32,
               epsilon: float = LAYER_NORM_EPSILON, rngs: nnx.Rngs):
    super().__init__(
        features, epsilon=epsilon, use_scale=affine, use_bias=affine,
        dtype=jnp.float32, param_dtype=jnp.float32,
        scale_init=_partitioned(nnx.initializers.ones_init(), ("norm",)),
        bias_init=_partitioned(nnx.initializers.zeros_init(), ("norm",)), rngs=rngs)
    self.output_dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    return super().__call__(x.astype(jnp.float32)).astype(self.output_dtype)


class Attention(nnx.Module):
  """Multi-head attention (self or cross) through the attention switch
  (videojam_jax/model/attention.py: "xla", "cudnn", "splash", "auto")."""

  def __init__(self, width: int, num_heads: int, *, context_width: int | None = None,
               dtype: Dtype = jnp.float32, attention_impl: str | None = None, rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
    head_dim = width // num_heads
    context_width = width if context_width is None else context_width

    def proj(in_features: int) -> nnx.LinearGeneral:
      return nnx.LinearGeneral(
          in_features, (num_heads, head_dim), dtype=dtype, param_dtype=jnp.float32,
          kernel_init=_partitioned(nnx.initializers.xavier_uniform(), ("embed", "heads", "kv")),
          bias_init=_partitioned(nnx.initializers.zeros_init(), ("heads", "kv")), rngs=rngs)

    self.query, self.key, self.value = proj(width), proj(context_width), proj(context_width)
    self.out = nnx.LinearGeneral(
        (num_heads, head_dim), width, axis=(-2, -1), dtype=dtype, param_dtype=jnp.float32,
        kernel_init=_partitioned(nnx.initializers.xavier_uniform(), ("heads", "kv", "embed")),
        bias_init=_partitioned(nnx.initializers.zeros_init(), ("embed",)), rngs=rngs)
    attention_lib.check_implementation(attention_impl)
    self.attention_impl = attention_impl

  def __call__(self, x: jax.Array, context: jax.Array,
               kv_mask: jax.Array | None = None) -> jax.Array:
    q, k, v = self.query(x), self.key(context), self.value(context)
    q = sharding.constrain(q, ("activation_batch", "activation_length", "activation_heads",
                               "activation_kv"))
    out = attention_lib.dot_product_attention(q, k, v, kv_mask,
                                              implementation=self.attention_impl)
    return self.out(out)


class Mlp(nnx.Module):
  """Two-layer GELU MLP, hidden dimension sharded as 'mlp'."""

  def __init__(self, width: int, hidden: int, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.fc1 = linear(width, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = linear(hidden, width, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = sharding.constrain(jax.nn.gelu(self.fc1(x)),
                           ("activation_batch", "activation_length", "activation_mlp"))
    return self.fc2(h)


def stacked(make: Callable[[nnx.Rngs], nnx.Module], count: int, rngs: nnx.Rngs) -> nnx.Module:
  """`count` modules made by `make`, their parameters stacked on a leading 'layers' axis.

  nnx.vmap over split rngs: each copy has its own initialisation, and the
  logical-axis metadata of every parameter gains 'layers' in front.
  """
  @nnx.split_rngs(splits=count)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def create(rngs: nnx.Rngs) -> nnx.Module:
    return make(rngs)
  return create(rngs)


def run_stacked(blocks: nnx.Module, x: jax.Array, apply: Callable[[nnx.Module, jax.Array], jax.Array],
                remat_policy: str = "none") -> jax.Array:
  """x through every stacked block in order (nnx.scan), rematerialised per `remat_policy`."""
  def body(carry: jax.Array, block: nnx.Module) -> tuple[jax.Array, None]:
    return apply(block, carry), None
  if remat_policy != "none":
    body = nnx.remat(body, policy=REMAT_POLICIES[remat_policy], prevent_cse=False)
  x, _ = nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))(x, blocks)
  return x
