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
import numpy as np
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
               dtype: Dtype = jnp.float32, attention_impl: str | None = None,
               qk_norm: bool = False, rngs: nnx.Rngs):
    """qk_norm: RMS-normalise queries and keys per head (learned scale), so attention
    logits start O(1) and stay bounded (as in SD3 / Wan)."""
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
    rms = lambda: nnx.RMSNorm(head_dim, epsilon=LAYER_NORM_EPSILON, dtype=jnp.float32,
                              param_dtype=jnp.float32,
                              scale_init=_partitioned(nnx.initializers.ones_init(), ("norm",)),
                              rngs=rngs)
    self.query_norm, self.key_norm = (rms(), rms()) if qk_norm else (None, None)

  def __call__(self, x: jax.Array, context: jax.Array,
               kv_mask: jax.Array | None = None,
               rope: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """rope: (cos, sin) [L, head_dim // 2] rotary angles applied to q and k (self-attention)."""
    q, k, v = self.query(x), self.key(context), self.value(context)
    if self.query_norm is not None:
      q = self.query_norm(q.astype(jnp.float32)).astype(v.dtype)
      k = self.key_norm(k.astype(jnp.float32)).astype(v.dtype)
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    q = sharding.constrain(q, ("activation_batch", "activation_length", "activation_heads",
                               "activation_kv"))
    out = attention_lib.dot_product_attention(q, k, v, kv_mask,
                                              implementation=self.attention_impl)
    return self.out(out)


def rope_angles(grid: tuple[int, int, int], head_dim: int, theta: float) -> np.ndarray:
  """3-D rotary angles [F*H*W, head_dim // 2] for a (frames, height, width) token grid.

  head_dim is split between t / h / w as Wan 2.1 splits it (128 -> 44 / 42 / 42);
  each axis rotates its channel pairs by position * theta^(-2i/d). float64 on the host.
  """
  h_dim = w_dim = 2 * (head_dim // 6)
  t_dim = head_dim - h_dim - w_dim
  parts = []
  for axis, (n, d) in enumerate(zip(grid, (t_dim, h_dim, w_dim))):
    freqs = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    angles = np.arange(n, dtype=np.float64)[:, None] * freqs[None]          # [n, d/2]
    shape = [1, 1, 1, d // 2]
    shape[axis] = n
    parts.append(np.broadcast_to(angles.reshape(shape), (*grid, d // 2)))
  return np.concatenate(parts, axis=-1).reshape(-1, head_dim // 2)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates interleaved channel pairs (x[2i], x[2i+1]) of x [B, N, H, D] by the angles
  whose cos / sin are [N, D/2] (in float32)."""
  pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  x1, x2 = pairs[..., 0], pairs[..., 1]
  cos, sin = cos[None, :, None], sin[None, :, None]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


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
