"""Scaled dot-product attention through one switch (`model.attention_impl`).

  "xla"     jax.nn.dot_product_attention's XLA path: materialises the score matrix;
            runs everywhere, fine for short sequences.
  "cudnn"   cuDNN's fused flash attention (GPU only; bf16 / fp16 inputs).
  "splash"  Pallas Splash attention, the fused flash kernel for TPUs (as MaxDiffusion
            uses): scores are computed block by block and never stored, so a 480p
            81-frame Wan clip (32,760 tokens) fits. Lengths are padded to the block
            size with segment ids keeping the padding out; under a mesh it runs per
            shard (shard_map: batch over the batch axes, heads over 'tensor').
  "splash_interpret"  the same kernel in Pallas' interpreter: any backend, slow
            (tests on CPU).
  "auto"    let JAX choose.

Inputs are [B, L, heads, head_dim], as jax.nn.dot_product_attention takes them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from videojam_jax.parallel import sharding

IMPLEMENTATIONS = ("xla", "cudnn", "splash", "splash_interpret", "auto")
SPLASH_BLOCK = 512          # q / kv block of the Splash kernel (MaxDiffusion's default)
SPLASH_MIN_BLOCK = 128      # TPU lane width: blocks (and padded lengths) are multiples


def check_implementation(name: str | None) -> None:
  """Raises ValueError for an attention implementation this module does not know."""
  if name not in IMPLEMENTATIONS and name is not None:
    raise ValueError(f"attention_impl must be one of {IMPLEMENTATIONS}, got {name!r}")


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          kv_mask: jax.Array | None = None, *,
                          implementation: str | None = "xla") -> jax.Array:
  """softmax(q k^T / sqrt(d)) v, with the chosen implementation.

  kv_mask: [B, Lk] bool, the keys each example may attend to (captions: a prefix of
  valid tokens, padding after); every row needs at least one.
  """
  check_implementation(implementation)
  if implementation in ("splash", "splash_interpret"):
    return splash_attention(q, k, v, kv_mask, interpret=implementation == "splash_interpret")
  impl = None if implementation in (None, "auto") else implementation
  if kv_mask is None:
    return jax.nn.dot_product_attention(q, k, v, implementation=impl)
  if impl == "cudnn":
    # cuDNN takes padding as lengths, not a broadcast mask. Caption masks are
    # prefixes (tokens first, padding after), so the count is the length.
    lengths = kv_mask.sum(axis=-1, dtype=jnp.int32)
    return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                        implementation=impl)
  return jax.nn.dot_product_attention(q, k, v, mask=kv_mask[:, None, None, :],
                                      implementation=impl)


def _block(length: int) -> int:
  return min(SPLASH_BLOCK, -(-length // SPLASH_MIN_BLOCK) * SPLASH_MIN_BLOCK)


def _padded(length: int, block: int) -> int:
  return -(-length // block) * block


def _splash_local(q: jax.Array, k: jax.Array, v: jax.Array, kv_mask: jax.Array | None, *,
                  interpret: bool) -> jax.Array:
  """Splash attention on unsharded [B, L, H, D] inputs."""
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=import-outside-toplevel
      splash_attention_kernel as kernel_lib, splash_attention_mask as mask_lib)
  _, lq, heads, dim = q.shape
  lk = k.shape[1]
  bq, bk = _block(lq), _block(lk)
  pq, pk = _padded(lq, bq), _padded(lk, bk)
  mask = mask_lib.MultiHeadMask([mask_lib.FullMask((pq, pk)) for _ in range(heads)])
  kernel = kernel_lib.make_splash_mha(
      mask, head_shards=1, q_seq_shards=1, interpret=interpret,
      block_sizes=kernel_lib.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk,
                                        block_q_dkv=bq, block_kv_dkv=bk, block_kv_dkv_compute=bk,
                                        block_q_dq=bq, block_kv_dq=bk))
  # Real queries and valid keys are segment 0, the rest segment 1: real queries never
  # see padding or masked keys (and padded queries see only padding: no empty row).
  q_segments = jnp.asarray(np.arange(pq) >= lq, jnp.int32)
  valid = jnp.ones((q.shape[0], lk), bool) if kv_mask is None else kv_mask.astype(bool)
  kv_segments = jnp.pad(jnp.where(valid, 0, 1).astype(jnp.int32), ((0, 0), (0, pk - lk)),
                        constant_values=1)

  def heads_first(x, length):
    x = jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))
    return jnp.swapaxes(x, 1, 2)                                   # [B, H, L, D]
  scale = jnp.asarray(1.0 / np.sqrt(dim), q.dtype)                 # the kernel does not scale
  out = jax.vmap(lambda q1, k1, v1, kv1: kernel(
      q1, k1, v1, segment_ids=kernel_lib.SegmentIds(q=q_segments, kv=kv1)))(
          heads_first(q * scale, pq), heads_first(k, pk), heads_first(v, pk), kv_segments)
  return jnp.swapaxes(out, 1, 2)[:, :lq].astype(q.dtype)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     kv_mask: jax.Array | None = None, *, interpret: bool = False) -> jax.Array:
  """Splash attention; under an active mesh, per shard (a Pallas kernel is not
  partitioned by GSPMD): batch split as 'activation_batch', heads as 'activation_heads'."""
  local = functools.partial(_splash_local, interpret=interpret)
  spec = sharding.current_spec(("activation_batch", None, "activation_heads", None))
  if spec is None:
    return local(q, k, v, kv_mask)
  mesh = jax.sharding.get_abstract_mesh()
  if kv_mask is None:
    return jax.shard_map(lambda q, k, v: local(q, k, v, None), mesh=mesh,
                         in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)
  mask_spec = jax.sharding.PartitionSpec(spec[0], None)
  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, mask_spec), out_specs=spec,
                       check_vma=False)(q, k, v, kv_mask)
