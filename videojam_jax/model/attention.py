"""Scaled dot-product attention through one switch (`model.attention_impl`).

  "xla"    jax.nn.dot_product_attention's XLA path: materialises the score matrix;
           runs everywhere, fine for short sequences.
  "cudnn"  cuDNN's fused flash attention (GPU only; bf16 / fp16 inputs).
  "auto"   let JAX choose.

Inputs are [B, L, heads, head_dim], as jax.nn.dot_product_attention takes them.
"""

from __future__ import annotations

import jax

IMPLEMENTATIONS = ("xla", "cudnn", "auto")


def check_implementation(name: str | None) -> None:
  """Raises ValueError for an attention implementation this module does not know."""
  if name not in IMPLEMENTATIONS and name is not None:
    raise ValueError(f"attention_impl must be one of {IMPLEMENTATIONS}, got {name!r}")


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          implementation: str | None = "xla") -> jax.Array:
  """softmax(q k^T / sqrt(d)) v, with the chosen implementation."""
  check_implementation(implementation)
  impl = None if implementation in (None, "auto") else implementation
  return jax.nn.dot_product_attention(q, k, v, implementation=impl)
