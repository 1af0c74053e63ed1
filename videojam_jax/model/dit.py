"""The video DiT, with VideoJAM's joint appearance-motion projections (Flax NNX).

Tokens: the clip [B, T, H, W, C] is cut into (pt, ph, pw) patches. With
`jam=True` the model also reads the noisy motion video d_t, and the input
projection is W_in+ = [W_in ; W_in_m] applied to concat(patch(x_t), patch(d_t)),
written here as `patch_embed(x) + motion_patch_embed(d)`. The motion rows start at
zero by default (`motion_input_init`), so a JAM model computes exactly what its
base computes. The output projection gains a motion head, W_out+ = [W_out, W_out_m],
and the model returns two velocities (u_x, u_d). With `jam=False` the same code is
the pixel-only baseline. Nothing else differs (DESIGN.md §1).

Blocks: adaLN-Zero timestep modulation, spatio-temporal self-attention over all
video tokens, cross-attention to the caption tokens, MLP. The blocks are stacked
(`nnx.vmap` at construction: every block parameter has a leading 'layers' axis)
and run with `nnx.scan`, optionally rematerialised with `nnx.remat` (the idiom of
the Flax NNX guides and MaxDiffusion's Wan): one compiled block whatever the depth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from videojam_jax.model import layers
from videojam_jax.model import text_encoder as text_encoder_lib
from videojam_jax.parallel import sharding

REMAT_POLICIES = layers.REMAT_POLICIES
MOTION_INPUT_INITS = ("zeros", "xavier")
TEXT_SOURCES = ("builtin", "precomputed")
TIMESTEP_SCALE = 1000.0     # t in [0, 1] is embedded as t * 1000, the DiT convention
TIMESTEP_FREQUENCIES = 256
POSITION_PERIOD = 10000.0   # sin-cos embeddings, as in the Transformer / DiT
NULL_TEXT_INIT_STDDEV = 0.02
TOKENS = ("activation_batch", "activation_length", "activation_embed")


@dataclasses.dataclass(frozen=True)
class VideoShape:
  """The clip shape the model is built for: frames, height, width, channels."""
  num_frames: int
  height: int
  width: int
  channels: int = 3

  @classmethod
  def from_data_config(cls, data_config: ml_collections.ConfigDict) -> "VideoShape":
    """The shape of config.data's clips (channels: 3 for RGB pixels, more for latents)."""
    return cls(int(data_config.num_frames), int(data_config.height), int(data_config.width),
               int(data_config.get("channels", 3)))

  @property
  def dims(self) -> tuple[int, int, int, int]:
    return (self.num_frames, self.height, self.width, self.channels)


def patchify(video: jax.Array, patch: tuple[int, int, int]) -> jax.Array:
  """[B, T, H, W, C] -> [B, N, pt*ph*pw*C] tokens, N = (T/pt)(H/ph)(W/pw)."""
  b, t, h, w, c = video.shape
  pt, ph, pw = patch
  x = video.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, (t // pt) * (h // ph) * (w // pw), pt * ph * pw * c)


def unpatchify(tokens: jax.Array, patch: tuple[int, int, int],
               shape: tuple[int, int, int, int]) -> jax.Array:
  """Inverse of `patchify`; `shape` is (T, H, W, C)."""
  t, h, w, c = shape
  pt, ph, pw = patch
  b = tokens.shape[0]
  x = tokens.reshape(b, t // pt, h // ph, w // pw, pt, ph, pw, c)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, t, h, w, c)


def sincos_embedding(positions: np.ndarray, dim: int) -> np.ndarray:
  """1-D sinusoidal embedding of `positions` [N] -> [N, dim]."""
  freqs = np.exp(-np.log(POSITION_PERIOD) * np.arange(dim // 2) / (dim // 2))
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


def timestep_embedding(t: jax.Array, dim: int = TIMESTEP_FREQUENCIES) -> jax.Array:
  """Sinusoidal features of flow-matching time t [B] in [0, 1] -> [B, dim]."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(POSITION_PERIOD) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = (t.astype(jnp.float32) * TIMESTEP_SCALE)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1 + scale[:, None]) + shift[:, None]


# (adaLN vector, caption tokens, caption mask, self-attention rotary (cos, sin) or None)
Conditioning = tuple[jax.Array, jax.Array, jax.Array, tuple[jax.Array, jax.Array] | None]


class DiTBlock(nnx.Module):
  """adaLN-Zero self-attention + text cross-attention + MLP."""

  def __init__(self, width: int, num_heads: int, mlp_ratio: float, *, dtype: jnp.dtype,
               attention_impl: str | None, qk_norm: bool = False, rngs: nnx.Rngs):
    self.adaln = layers.linear(width, 6 * width, ("embed", "mlp"), dtype=dtype, zero_init=True,
                               rngs=rngs)
    self.norm1 = layers.LayerNorm(width, affine=False, dtype=dtype, rngs=rngs)
    self.self_attn = layers.Attention(width, num_heads, dtype=dtype, qk_norm=qk_norm,
                                      attention_impl=attention_impl, rngs=rngs)
    self.norm_cross = layers.LayerNorm(width, dtype=dtype, rngs=rngs)
    self.cross_attn = layers.Attention(width, num_heads, dtype=dtype, qk_norm=qk_norm,
                                       attention_impl=attention_impl, rngs=rngs)
    self.norm2 = layers.LayerNorm(width, affine=False, dtype=dtype, rngs=rngs)
    self.mlp = layers.Mlp(width, int(width * mlp_ratio), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, cond: Conditioning) -> jax.Array:
    c, text, text_mask, rope = cond
    mod = self.adaln(jax.nn.silu(c))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
    h = modulate(self.norm1(x), shift1, scale1)
    x = x + gate1[:, None] * self.self_attn(h, h, rope=rope)
    h = self.norm_cross(x)
    x = x + self.cross_attn(h, text, kv_mask=text_mask)
    h = modulate(self.norm2(x), shift2, scale2)
    x = x + gate2[:, None] * self.mlp(h)
    return sharding.constrain(x, TOKENS)


class VideoDiT(nnx.Module):
  """Video DiT returning (u_x, u_d) velocities; u_d is None when `jam` is False."""

  def __init__(self, *, video_shape: VideoShape, width: int, depth: int, num_heads: int,
               mlp_ratio: float, patch_size: tuple[int, int, int], jam: bool,
               text_encoder: text_encoder_lib.ByteTextEncoder | None, text_width: int,
               motion_input_init: str = "zeros", dtype: Any = jnp.float32,
               remat_policy: str = "none", attention_impl: str | None = None,
               qk_norm: bool = False, pooled_text: bool = False, rope_theta: float = 0.0,
               rngs: nnx.Rngs):
    """text_encoder: the built-in caption encoder, or None for precomputed embeddings
    (then `text_width` is their dimension; else the encoder's width).
    qk_norm: RMS-normalised queries and keys in every attention.
    pooled_text: also add the caption's mean token (projected) to the adaLN vector,
    so every block is modulated by the caption (SD3 / Imagen add a pooled text
    embedding the same way), not only through cross-attention.
    rope_theta > 0: 3-D rotary position embedding in self-attention (as Wan), on top
    of the additive sin-cos embedding."""
    patch = tuple(int(p) for p in patch_size)
    for name, size, p in zip(("num_frames", "height", "width"), video_shape.dims[:3], patch):
      if size % p:
        raise ValueError(f"data.{name}={size} is not divisible by model.patch_size {patch}")
    if motion_input_init not in MOTION_INPUT_INITS:
      raise ValueError(f"motion_input_init must be one of {MOTION_INPUT_INITS}, "
                       f"got {motion_input_init!r}")
    if remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy must be one of {sorted(REMAT_POLICIES)}, got {remat_policy!r}")
    self.video_shape, self.patch, self.jam = video_shape, patch, bool(jam)
    self.dtype, self.remat_policy = jnp.dtype(dtype), remat_policy
    self.width, self.text_width = width, text_width
    self.num_heads, self.rope_theta = num_heads, float(rope_theta)
    patch_dim = int(np.prod(patch)) * video_shape.channels
    linear = lambda *args, **kw: layers.linear(*args, dtype=self.dtype, rngs=rngs, **kw)

    # --- Tokens: W_in+ = [W_in ; W_in_m].
    self.patch_embed = linear(patch_dim, width, ("patch", "embed"))
    self.motion_patch_embed = (
        linear(patch_dim, width, ("patch", "embed"), use_bias=False,
               zero_init=motion_input_init == "zeros") if self.jam else None)
    # --- Conditioning: timestep -> adaLN vector; caption -> cross-attention tokens.
    self.time_mlp_in = linear(TIMESTEP_FREQUENCIES, width, ("embed", "mlp"))
    self.time_mlp_out = linear(width, width, ("mlp", "embed"))
    self.text_encoder = text_encoder
    self.text_proj = linear(text_width, width, (None, "embed"))
    self.text_pool = linear(width, width, ("embed", "mlp")) if pooled_text else None
    self.null_text = nnx.Param(nnx.with_partitioning(
        nnx.initializers.normal(NULL_TEXT_INIT_STDDEV), (None, "embed"))(rngs.params(), (1, width)))
    # --- Blocks, stacked for nnx.scan.
    self.blocks = layers.stacked(lambda r: DiTBlock(width, num_heads, mlp_ratio, dtype=self.dtype,
                                             attention_impl=attention_impl, qk_norm=qk_norm, rngs=r),
                                 depth, rngs)
    # --- Output: W_out+ = [W_out, W_out_m] after the final adaLN.
    self.final_adaln = linear(width, 2 * width, ("embed", "mlp"), zero_init=True)
    self.final_norm = layers.LayerNorm(width, affine=False, dtype=self.dtype, rngs=rngs)
    self.video_head = linear(width, patch_dim, ("embed", "patch"), zero_init=True)
    self.motion_head = (linear(width, patch_dim, ("embed", "patch"), zero_init=True)
                        if self.jam else None)

  def encode_text(self, text: jax.Array, text_mask: jax.Array) -> jax.Array:
    """The caption tokens [B, L, width] the blocks attend to.

    text: token ids [B, L] (built-in encoder) or embeddings [B, L, D] (precomputed).
    Independent of the noisy clip and the time, so a sampler computes it once per
    call and passes it to `__call__` as `encoded_text`.
    """
    if self.text_encoder is not None:
      if text.ndim != 2:
        raise ValueError(f"the built-in text encoder takes token ids [B, L], got {text.shape}")
      encoded = self.text_encoder(text, text_mask)
    else:
      if text.ndim != 3 or text.shape[-1] != self.text_width:
        raise ValueError(f"precomputed text embeddings must be [B, L, {self.text_width}], "
                         f"got {text.shape}")
      encoded = text.astype(self.dtype)
    return self.text_proj(encoded)

  def __call__(self, x_t: jax.Array, d_t: jax.Array | None, t: jax.Array,
               text: jax.Array | None, text_mask: jax.Array, text_keep: jax.Array, *,
               encoded_text: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    """Velocities for noisy video x_t and motion d_t [B,T,H,W,C] at time t [B].

    text_mask: [B, L] valid caption tokens; text_keep: [B] bool, False = null text
    (the caption is replaced by a learned null token, for classifier-free guidance).
    Pass either `text` (see `encode_text`) or `encoded_text` (its result).
    """
    dtype, patch, shape = self.dtype, self.patch, self.video_shape.dims
    grid = tuple(s // p for s, p in zip(shape[:3], patch))

    tokens = self.patch_embed(patchify(x_t.astype(dtype), patch))
    if self.jam:
      if d_t is None:
        raise ValueError("a VideoJAM model (model.jam=True) needs the motion input d_t")
      tokens = tokens + self.motion_patch_embed(patchify(d_t.astype(dtype), patch))
    tokens = tokens + jnp.asarray(video_position_embedding(grid, self.width), dtype)[None]
    tokens = sharding.constrain(tokens, TOKENS)

    c = self.time_mlp_out(jax.nn.silu(self.time_mlp_in(timestep_embedding(t))))
    text_tokens = (self.encode_text(text, text_mask) if encoded_text is None
                   else encoded_text.astype(dtype))
    keep = text_keep[:, None, None]
    text_tokens = jnp.where(keep, text_tokens, self.null_text[...].astype(dtype)[None])
    # The null caption is one valid token: the first position.
    first_only = jnp.arange(text_mask.shape[1])[None] == 0
    text_mask = jnp.where(text_keep[:, None], text_mask, first_only)
    if self.text_pool is not None:
      weights = text_mask.astype(dtype)[..., None]
      pooled = (text_tokens * weights).sum(1) / weights.sum(1)
      c = c + self.text_pool(pooled)

    rope = None
    if self.rope_theta > 0:
      angles = layers.rope_angles(grid, self.width // self.num_heads, self.rope_theta)
      rope = (jnp.asarray(np.cos(angles), jnp.float32), jnp.asarray(np.sin(angles), jnp.float32))
    cond = (c, text_tokens, text_mask, rope)
    x = layers.run_stacked(self.blocks, tokens, lambda block, h: block(h, cond), self.remat_policy)

    shift, scale = jnp.split(self.final_adaln(jax.nn.silu(c)), 2, axis=-1)
    x = modulate(self.final_norm(x), shift, scale)
    u_x = unpatchify(self.video_head(x).astype(jnp.float32), patch, shape)
    if not self.jam:
      return u_x, None
    return u_x, unpatchify(self.motion_head(x).astype(jnp.float32), patch, shape)


def build_model(model_config: ml_collections.ConfigDict, video_shape: VideoShape, *,
                rngs: nnx.Rngs) -> VideoDiT:
  """The DiT that `model_config` (config.model) describes, for clips of `video_shape`.

  Parameters carry logical axis names: build it inside `ShardingPlan.active()`
  (jax.set_mesh + the logical-axis rules), where NNX places each parameter.
  """
  m, text = model_config, model_config.text
  if text.source not in TEXT_SOURCES:
    raise ValueError(f"model.text.source must be one of {TEXT_SOURCES}, got {text.source!r}")
  dtype = jnp.dtype(m.dtype)
  encoder = text_encoder_lib.from_config(text, dtype=dtype, attention_impl=m.attention_impl,
                                         rngs=rngs)
  return VideoDiT(
      video_shape=video_shape, width=m.width, depth=m.depth, num_heads=m.num_heads,
      mlp_ratio=m.mlp_ratio, patch_size=tuple(m.patch_size), jam=bool(m.jam),
      text_encoder=encoder, text_width=text_encoder_lib.text_width(text),
      motion_input_init=str(m.get("motion_input_init", "zeros")), dtype=dtype,
      remat_policy=m.remat_policy, attention_impl=m.attention_impl,
      qk_norm=bool(m.get("qk_norm", False)), pooled_text=bool(text.get("pooled", False)),
      rope_theta=float(m.get("rope_theta", 0.0)),
      rngs=rngs)
