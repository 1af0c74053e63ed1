"""The Linen video DiT as it was before the Flax NNX rewrite, frozen as a reference.

tests/model/test_nnx_vs_linen.py copies these weights into the NNX model
(videojam_jax/model/dit.py) and checks that both give the same velocities and the
same train-step loss. Nothing in the library imports this file. It is the code of
videojam_jax/{layers,text_encoder,model}.py at commit ff654b0, merged into one
module, with the activation sharding constraints (no-ops without a mesh) dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from videojam_jax.data.text import VOCAB_SIZE

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
    h = nn.gelu(h)
    return dense(width, ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)




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
      h = LayerNorm(name=f"attn_norm_{i}", dtype=self.dtype)(x)
      x = x + Attention(self.num_heads, dtype=self.dtype, attention_impl=self.attention_impl,
                               name=f"attn_{i}")(h, h, kv_mask=mask)
      h = LayerNorm(name=f"mlp_norm_{i}", dtype=self.dtype)(x)
      x = x + Mlp(4 * self.width, dtype=self.dtype, name=f"mlp_{i}")(h)
    return LayerNorm(name="final_norm", dtype=self.dtype)(x)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
TIMESTEP_SCALE = 1000.0     # t in [0, 1] is embedded as t * 1000, the DiT convention
TIMESTEP_FREQUENCIES = 256


def patchify(video: jnp.ndarray, patch: tuple[int, int, int]) -> jnp.ndarray:
  """[B, T, H, W, C] -> [B, N, pt*ph*pw*C] tokens, N = (T/pt)(H/ph)(W/pw)."""
  b, t, h, w, c = video.shape
  pt, ph, pw = patch
  x = video.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, (t // pt) * (h // ph) * (w // pw), pt * ph * pw * c)


def unpatchify(tokens: jnp.ndarray, patch: tuple[int, int, int],
               shape: tuple[int, int, int, int]) -> jnp.ndarray:
  """Inverse of `patchify`; `shape` is (T, H, W, C)."""
  t, h, w, c = shape
  pt, ph, pw = patch
  b = tokens.shape[0]
  x = tokens.reshape(b, t // pt, h // ph, w // pw, pt, ph, pw, c)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, t, h, w, c)


def sincos_embedding(positions: np.ndarray, dim: int) -> np.ndarray:
  """1-D sinusoidal embedding of `positions` [N] -> [N, dim]."""
  freqs = np.exp(-np.log(10000.0) * np.arange(dim // 2) / (dim // 2))
  angles = positions[:, None] * freqs[None]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def video_position_embedding(grid: tuple[int, int, int], width: int) -> np.ndarray:
  """Fixed 3-D sin-cos embedding [N, width] for a (t, h, w) token grid.

  Width is split between time (1/4) and the two spatial axes (3/8 each), each
  part an even number of channels.
  """
  dt = (width // 4) // 2 * 2
  dh = ((width - dt) // 2) // 2 * 2
  dw = width - dt - dh
  gt, gh, gw = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in grid], indexing="ij")
  emb = np.concatenate([sincos_embedding(gt.ravel(), dt), sincos_embedding(gh.ravel(), dh),
                        sincos_embedding(gw.ravel(), dw)], axis=1)
  return emb.astype(np.float32)


def timestep_embedding(t: jnp.ndarray, dim: int = TIMESTEP_FREQUENCIES) -> jnp.ndarray:
  """Sinusoidal features of flow-matching time t [B] in [0, 1] -> [B, dim]."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = (t.astype(jnp.float32) * TIMESTEP_SCALE)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def modulate(x: jnp.ndarray, shift: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
  return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
  """adaLN-Zero self-attention + text cross-attention + MLP; scan-compatible."""
  num_heads: int
  mlp_ratio: float
  dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, cond: tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]):
    c, text, text_mask = cond
    width = x.shape[-1]
    mod = dense(6 * width, ("embed", "mlp"), dtype=self.dtype, zero_init=True,
                       name="adaln")(nn.silu(c))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
    h = modulate(LayerNorm(False, self.dtype, name="norm1")(x), shift1, scale1)
    x = x + gate1[:, None] * Attention(
        self.num_heads, self.dtype, self.attention_impl, name="self_attn")(h, h)
    h = LayerNorm(name="norm_cross", dtype=self.dtype)(x)
    x = x + Attention(self.num_heads, self.dtype, self.attention_impl,
                             name="cross_attn")(h, text, kv_mask=text_mask)
    h = modulate(LayerNorm(False, self.dtype, name="norm2")(x), shift2, scale2)
    x = x + gate2[:, None] * Mlp(int(width * self.mlp_ratio), self.dtype, name="mlp")(h)
    x = x
    return x, None


@dataclasses.dataclass(frozen=True)
class VideoShape:
  """The clip shape the model is built for."""
  num_frames: int
  height: int
  width: int
  channels: int = 3


class VideoDiT(nn.Module):
  """Video DiT returning (u_x, u_d) velocities; u_d is None when `jam` is False."""
  config: ml_collections.ConfigDict        # config.model
  video_shape: VideoShape

  def setup_checks(self) -> tuple[int, int, int]:
    patch = tuple(int(p) for p in self.config.patch_size)
    dims = (self.video_shape.num_frames, self.video_shape.height, self.video_shape.width)
    for name, d, p in zip(("num_frames", "height", "width"), dims, patch):
      if d % p:
        raise ValueError(f"data.{name}={d} is not divisible by model.patch_size {patch}")
    return patch

  @nn.compact
  def __call__(self, x_t: jnp.ndarray, d_t: jnp.ndarray | None, t: jnp.ndarray,
               text: jnp.ndarray | None, text_mask: jnp.ndarray, text_keep: jnp.ndarray,
               *, encoded_text: jnp.ndarray | None = None,
               ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    """Velocities for noisy video x_t and motion d_t [B,T,H,W,C] at time t [B].

    text: token ids [B, L] (builtin encoder) or embeddings [B, L, D] (precomputed);
    text_mask: [B, L] valid tokens; text_keep: [B] bool, False = null text (the
    caption is replaced by a learned null token, for classifier-free guidance).
    encoded_text: instead of `text`, the caption tokens [B, L, width] from
    `encode_text` (a sampler encodes each caption once, not at every step).
    """
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    patch = self.setup_checks()
    width = cfg.width
    shape = (self.video_shape.num_frames, self.video_shape.height,
             self.video_shape.width, self.video_shape.channels)
    grid = tuple(s // p for s, p in zip(shape[:3], patch))

    # --- Tokens: W_in+ = [W_in ; W_in_m], the motion rows starting at zero.
    tokens = dense(width, ("patch", "embed"), dtype=dtype, name="patch_embed")(
        patchify(x_t.astype(dtype), patch))
    if cfg.jam:
      if d_t is None:
        raise ValueError("a VideoJAM model (model.jam=True) needs the motion input d_t")
      tokens = tokens + dense(
          width, ("patch", "embed"), dtype=dtype, use_bias=False,
          zero_init=motion_input_init(cfg) == "zeros",
          name="motion_patch_embed")(patchify(d_t.astype(dtype), patch))
    tokens = tokens + jnp.asarray(video_position_embedding(grid, width), dtype)[None]
    tokens = tokens

    # --- Conditioning: timestep -> adaLN vector; caption -> cross-attention tokens.
    c = dense(width, ("embed", "mlp"), dtype=dtype, name="time_mlp_in")(timestep_embedding(t))
    c = dense(width, ("mlp", "embed"), dtype=dtype, name="time_mlp_out")(nn.silu(c))
    if encoded_text is None:
      encoder, projection = caption_modules(cfg, dtype)
      text_tokens = projection(_encoder_output(cfg, encoder, text, text_mask, dtype))
    else:
      text_tokens = encoded_text.astype(dtype)
    null_text = self.param("null_text", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, "embed")), (1, width))
    keep = text_keep[:, None, None]
    text_tokens = jnp.where(keep, text_tokens, null_text.astype(dtype)[None])
    # The null caption is one valid token: the first position.
    first_only = jnp.arange(text_mask.shape[1])[None] == 0
    text_mask = jnp.where(text_keep[:, None], text_mask, first_only)

    # --- Blocks (scanned; parameters carry a leading 'layers' axis).
    block = DiTBlock
    policy = REMAT_POLICIES[cfg.remat_policy]
    if cfg.remat_policy != "none":
      block = nn.remat(block, policy=policy, prevent_cse=False)
    blocks = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                     in_axes=(nn.broadcast,), length=cfg.depth,
                     metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = blocks(cfg.num_heads, cfg.mlp_ratio, dtype, cfg.attention_impl, name="blocks")(
        tokens, (c, text_tokens, text_mask))

    # --- Output: W_out+ = [W_out, W_out_m] after the final adaLN.
    shift, scale = jnp.split(dense(2 * width, ("embed", "mlp"), dtype=dtype, zero_init=True,
                                          name="final_adaln")(nn.silu(c)), 2, axis=-1)
    x = modulate(LayerNorm(False, dtype, name="final_norm")(x), shift, scale)
    patch_dim = int(np.prod(patch)) * shape[3]
    u_x = dense(patch_dim, ("embed", "patch"), dtype=dtype, zero_init=True, name="video_head")(x)
    u_x = unpatchify(u_x.astype(jnp.float32), patch, shape)
    if not cfg.jam:
      return u_x, None
    u_d = dense(patch_dim, ("embed", "patch"), dtype=dtype, zero_init=True, name="motion_head")(x)
    return u_x, unpatchify(u_d.astype(jnp.float32), patch, shape)


def caption_modules(model_config: ml_collections.ConfigDict, dtype: Any,
                    ) -> tuple[nn.Module | None, nn.Module]:
  """(text encoder or None for precomputed embeddings, projection to the DiT width).

  Built inside VideoDiT's compact __call__ they are its submodules `text_encoder`
  and `text_proj`; built anywhere else they are unbound and `encode_text` applies
  them to those parameter subtrees.
  """
  cfg = model_config.text
  if cfg.source not in ("builtin", "precomputed"):
    raise ValueError(f"model.text.source must be 'builtin' or 'precomputed', got {cfg.source!r}")
  encoder = None
  if cfg.source == "builtin":
    encoder = ByteTextEncoder(
        cfg.max_length, cfg.width, cfg.depth, cfg.num_heads, dtype,
        model_config.attention_impl, name="text_encoder")
  projection = dense(model_config.width, (None, "embed"), dtype=dtype, name="text_proj")
  return encoder, projection


def _encoder_output(model_config: ml_collections.ConfigDict, encoder: nn.Module | None,
                    text: jnp.ndarray, text_mask: jnp.ndarray, dtype: Any) -> jnp.ndarray:
  """Checks the caption input's shape and runs the encoder (or passes embeddings on)."""
  cfg = model_config.text
  if encoder is not None:
    if text.ndim != 2:
      raise ValueError(f"builtin text encoder expects token ids [B, L], got {text.shape}")
    return encoder(text, text_mask)
  if text.ndim != 3 or text.shape[-1] != cfg.embedding_dim:
    raise ValueError(f"precomputed text embeddings must be [B, L, {cfg.embedding_dim}], "
                     f"got {text.shape}")
  return text.astype(dtype)


def encode_text(model_config: ml_collections.ConfigDict, params: Any, text: jnp.ndarray,
                text_mask: jnp.ndarray) -> jnp.ndarray:
  """The caption tokens [B, L, width] the blocks attend to, as VideoDiT computes them.

  Pass the result to VideoDiT as `encoded_text`: it does not depend on the noisy
  clip or the time, so a sampler computes it once instead of at every step.
  """
  dtype = jnp.dtype(model_config.dtype)
  encoder, projection = caption_modules(model_config, dtype)
  if encoder is not None:
    encoder = encoder.bind({"params": params["text_encoder"]})
  encoded = _encoder_output(model_config, encoder, text, text_mask, dtype)
  return projection.apply({"params": params["text_proj"]}, encoded)


MOTION_INPUT_INITS = ("zeros", "xavier")


def motion_input_init(model_config: ml_collections.ConfigDict) -> str:
  """How W_in_m (the motion input rows) starts: 'zeros' (the paper's: the JAM model
  computes what its base computes) or 'xavier' (from scratch: with the motion head
  also at zero, zero rows make a saddle the motion stream leaves only slowly).
  Run configs written before this option existed mean 'zeros'."""
  return str(model_config.get("motion_input_init", "zeros"))


def video_channels(config: ml_collections.ConfigDict) -> int:
  """Channels of the model's input clips: 3 for RGB pixels, more for autoencoder latents."""
  return int(config.data.get("channels", 3))


def build_model(config: ml_collections.ConfigDict) -> VideoDiT:
  """The model for a full run config (reads config.model and the clip size in config.data)."""
  return VideoDiT(config.model, VideoShape(config.data.num_frames, config.data.height,
                                           config.data.width, video_channels(config)))


def dummy_inputs(config: ml_collections.ConfigDict, batch: int = 1) -> dict[str, jnp.ndarray]:
  """Zero inputs of the right shapes, for init and ahead-of-time compilation."""
  d = config.data
  video = jnp.zeros((batch, d.num_frames, d.height, d.width, video_channels(config)), jnp.float32)
  length = config.model.text.max_length
  if config.model.text.source == "precomputed":
    text = jnp.zeros((batch, length, config.model.text.embedding_dim), jnp.float32)
  else:
    text = jnp.zeros((batch, length), jnp.int32)
  return dict(x_t=video, d_t=video if config.model.jam else None, t=jnp.zeros((batch,)),
              text=text, text_mask=jnp.ones((batch, length), bool),
              text_keep=jnp.ones((batch,), bool))
