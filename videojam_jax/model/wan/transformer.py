"""The Wan 2.1 text-to-video transformer (diffusers' `WanTransformer3DModel`) in Flax NNX.

Same computation as the reference, in our conventions:
- channels-last clips [B, F, H, W, C] (the reference is [B, C, F, H, W]);
- the Conv3d patch embedding (kernel = stride = patch) written as patchify + a
  Linear, which is the same product; the output is ordered (p_t, p_h, p_w, c) as
  the reference's `proj_out`;
- the blocks stacked on a leading 'layers' axis and run with `nnx.scan`
  (optionally `nnx.remat`), logical axis names on every weight;
- float32 master weights, compute in `dtype`; norms, modulation and the time
  embedding in float32 as the reference keeps them.

Time is the reference's: `timestep` in [0, 1000], 1000 = pure noise, and the
output is its velocity (noise - data). VideoJAM's wrapper (t = 0 noise, u = data -
noise) converts at its boundary, not here, so this module stays checkable
against diffusers number for number.

Image-to-video conditioning (`image_dim`, `added_kv_proj_dim`) is not built:
`WanTransformerConfig.from_diffusers` refuses such checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from videojam_jax.model import attention as attention_lib
from videojam_jax.model import dit
from videojam_jax.model import layers
from videojam_jax.model import lora as lora_lib
from videojam_jax.parallel import sharding

TOKENS = ("activation_batch", "activation_length", "activation_embed")
ROPE_THETA = 10000.0
TIMESTEP_PERIOD = 10000.0
SCALE_SHIFT_INIT_STDDEV_TIMES_SQRT_DIM = 1.0   # reference: randn(...) / dim**0.5


class WanConfigError(ValueError):
  """A Wan config (ours or a checkpoint's config.json) that this port cannot build."""


@dataclasses.dataclass(frozen=True)
class WanTransformerConfig:
  """The architecture, with the field names of diffusers' config.json.

  Defaults are Wan2.1-T2V-1.3B's published config.
  """
  patch_size: tuple[int, int, int] = (1, 2, 2)
  num_attention_heads: int = 12
  attention_head_dim: int = 128
  in_channels: int = 16
  out_channels: int = 16
  text_dim: int = 4096
  freq_dim: int = 256
  ffn_dim: int = 8960
  num_layers: int = 30
  cross_attn_norm: bool = True
  qk_norm: str = "rms_norm_across_heads"
  eps: float = 1e-6
  rope_max_seq_len: int = 1024

  def __post_init__(self):
    object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
    if self.qk_norm != "rms_norm_across_heads":
      raise WanConfigError(f"qk_norm={self.qk_norm!r}: only 'rms_norm_across_heads' (Wan 2.1) "
                           "is implemented")
    if self.attention_head_dim % 2 or self.attention_head_dim < 6:
      raise WanConfigError(f"attention_head_dim={self.attention_head_dim} must be even and >= 6 "
                           "(it is split over the t/h/w rotary axes)")

  @property
  def dim(self) -> int:
    return self.num_attention_heads * self.attention_head_dim

  @classmethod
  def from_diffusers(cls, config: dict[str, Any]) -> "WanTransformerConfig":
    """From a diffusers `WanTransformer3DModel` config.json (its dict)."""
    if config.get("image_dim") is not None or config.get("added_kv_proj_dim") is not None:
      raise WanConfigError("this is an image-to-video Wan checkpoint (image_dim / "
                           "added_kv_proj_dim set); only text-to-video is implemented")
    if config.get("pos_embed_seq_len") is not None:
      raise WanConfigError("pos_embed_seq_len is set (FLF2V); only text-to-video is implemented")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in config.items() if k in fields}
    if kwargs.get("out_channels") is None:
      kwargs["out_channels"] = kwargs.get("in_channels", cls.in_channels)
    return cls(**kwargs)

  def to_diffusers(self) -> dict[str, Any]:
    """The config.json dict diffusers builds the same model from."""
    out = dataclasses.asdict(self)
    out["patch_size"] = list(self.patch_size)
    out.update(_class_name="WanTransformer3DModel", image_dim=None, added_kv_proj_dim=None,
               pos_embed_seq_len=None)
    return out


# The published Wan 2.1 text-to-video architectures (the config.json of
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers and Wan-AI/Wan2.1-T2V-14B-Diffusers, transformer/).
PUBLISHED = {
    "1.3b": WanTransformerConfig(num_attention_heads=12, ffn_dim=8960, num_layers=30),
    "14b": WanTransformerConfig(num_attention_heads=40, ffn_dim=13824, num_layers=40),
}


def published_config(size: str) -> WanTransformerConfig:
  """Wan2.1-T2V-1.3B ("1.3b") or -14B ("14b")."""
  if size not in PUBLISHED:
    raise WanConfigError(f"unknown Wan 2.1 size {size!r}; choose one of {sorted(PUBLISHED)}")
  return PUBLISHED[size]


def rope_angles(grid: tuple[int, int, int], head_dim: int, max_seq_len: int,
                theta: float = ROPE_THETA) -> np.ndarray:
  """Rotary angles [F*H*W, head_dim // 2] for a (frames, height, width) token grid:
  layers.rope_angles (the reference's 44 / 42 / 42 split of 128), after checking the
  grid fits the reference's rope_max_seq_len."""
  if max(grid) > max_seq_len:
    raise WanConfigError(f"token grid {grid} exceeds rope_max_seq_len={max_seq_len}")
  return layers.rope_angles(grid, head_dim, theta)


apply_rope = layers.apply_rope


def timestep_features(timestep: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal features of timesteps [B] (reference: flip_sin_to_cos, no shift) -> [B, dim]."""
  half = dim // 2
  freqs = jnp.exp(-np.log(TIMESTEP_PERIOD) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = timestep.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class HeadsRMSNorm(nnx.Module):
  """RMSNorm over all heads together (the reference normalises the flat q / k), in float32."""

  def __init__(self, num_heads: int, head_dim: int, eps: float, *, rngs: nnx.Rngs):
    self.weight = nnx.Param(nnx.with_partitioning(nnx.initializers.ones_init(), ("heads", "kv"))(
        rngs.params(), (num_heads, head_dim), jnp.float32))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    rms = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=(-2, -1), keepdims=True) + self.eps)
    return (x32 * rms * self.weight[...]).astype(x.dtype)


class WanAttention(nnx.Module):
  """Self- or cross-attention with q / k RMSNorm across heads and optional rotary angles;
  with `lora`, an adapter beside each of the four projections (model/lora.py)."""

  def __init__(self, dim: int, num_heads: int, eps: float, *, dtype: Any,
               attention_impl: str, lora: lora_lib.LoraConfig | None = None, rngs: nnx.Rngs):
    head_dim = dim // num_heads

    def proj(in_axes, out_features, axis, kernel_axes, bias_axes):
      return nnx.LinearGeneral(
          in_axes, out_features, axis=axis, dtype=dtype, param_dtype=jnp.float32,
          kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(), kernel_axes),
          bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), bias_axes), rngs=rngs)

    qkv = lambda: proj(dim, (num_heads, head_dim), -1, ("embed", "heads", "kv"), ("heads", "kv"))
    self.to_q, self.to_k, self.to_v = qkv(), qkv(), qkv()
    self.to_out = proj((num_heads, head_dim), dim, (-2, -1), ("heads", "kv", "embed"), ("embed",))
    self.norm_q = HeadsRMSNorm(num_heads, head_dim, eps, rngs=rngs)
    self.norm_k = HeadsRMSNorm(num_heads, head_dim, eps, rngs=rngs)
    self.attention_impl = attention_impl
    self.lora = lora is not None
    if self.lora:
      adapter = lambda i, o, ia, oa: lora_lib.LowRankAdapter(i, o, lora, in_axes=ia, out_axes=oa,
                                                             dtype=dtype, rngs=rngs)
      qkv_lora = lambda: adapter((dim,), (num_heads, head_dim), ("embed",), ("heads", "kv"))
      self.to_q_lora, self.to_k_lora, self.to_v_lora = qkv_lora(), qkv_lora(), qkv_lora()
      self.to_out_lora = adapter((num_heads, head_dim), (dim,), ("heads", "kv"), ("embed",))

  def _project(self, name: str, x: jax.Array) -> jax.Array:
    out = getattr(self, name)(x)
    # The adapter's output is added: B = 0 adds exact zeros (a fresh LoRA model is its base).
    return out + getattr(self, name + lora_lib.ADAPTER_SUFFIX)(x) if self.lora else out

  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               rope: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    context = x if context is None else context
    q = self.norm_q(self._project("to_q", x))
    k = self.norm_k(self._project("to_k", context))
    v = self._project("to_v", context)
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    q = sharding.constrain(q, ("activation_batch", "activation_length", "activation_heads",
                               "activation_kv"))
    out = attention_lib.dot_product_attention(q, k, v, implementation=self.attention_impl)
    return self._project("to_out", out)


class FeedForward(nnx.Module):
  """Linear, GELU (tanh approximation), Linear; with `lora`, an adapter beside each."""

  def __init__(self, dim: int, hidden: int, *, dtype: Any,
               lora: lora_lib.LoraConfig | None = None, rngs: nnx.Rngs):
    self.proj_in = layers.linear(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.proj_out = layers.linear(hidden, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)
    self.lora = lora is not None
    if self.lora:
      self.proj_in_lora = lora_lib.LowRankAdapter((dim,), (hidden,), lora, in_axes=("embed",),
                                                  out_axes=("mlp",), dtype=dtype, rngs=rngs)
      self.proj_out_lora = lora_lib.LowRankAdapter((hidden,), (dim,), lora, in_axes=("mlp",),
                                                   out_axes=("embed",), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.proj_in(x)
    if self.lora:
      h = h + self.proj_in_lora(x)
    h = jax.nn.gelu(h, approximate=True)
    h = sharding.constrain(h, ("activation_batch", "activation_length", "activation_mlp"))
    return self.proj_out(h) + self.proj_out_lora(h) if self.lora else self.proj_out(h)


def _scale_shift_table(count: int, dim: int, rngs: nnx.Rngs) -> nnx.Param:
  init = nnx.initializers.normal(SCALE_SHIFT_INIT_STDDEV_TIMES_SQRT_DIM / dim ** 0.5)
  return nnx.Param(nnx.with_partitioning(init, (None, None, "embed"))(
      rngs.params(), (1, count, dim), jnp.float32))


class WanTransformerBlock(nnx.Module):
  """Modulated self-attention (rotary), cross-attention to the text, modulated FFN."""

  def __init__(self, config: WanTransformerConfig, *, dtype: Any, attention_impl: str,
               lora: lora_lib.LoraConfig | None = None, rngs: nnx.Rngs):
    dim, eps = config.dim, config.eps
    attn = lambda: WanAttention(dim, config.num_attention_heads, eps, dtype=dtype,
                                attention_impl=attention_impl, lora=lora, rngs=rngs)
    self.norm1 = layers.LayerNorm(dim, affine=False, epsilon=eps, rngs=rngs)
    self.attn1 = attn()
    self.norm2 = (layers.LayerNorm(dim, affine=True, epsilon=eps, rngs=rngs)
                  if config.cross_attn_norm else None)
    self.attn2 = attn()
    self.ffn = FeedForward(dim, config.ffn_dim, dtype=dtype, lora=lora, rngs=rngs)
    self.norm3 = layers.LayerNorm(dim, affine=False, epsilon=eps, rngs=rngs)
    self.scale_shift_table = _scale_shift_table(6, dim, rngs)

  def __call__(self, x: jax.Array, text: jax.Array, timestep_proj: jax.Array,
               rope: tuple[jax.Array, jax.Array]) -> jax.Array:
    mod = self.scale_shift_table[...] + timestep_proj            # [B, 6, D] float32
    shift1, scale1, gate1, shift2, scale2, gate2 = (mod[:, i:i + 1] for i in range(6))
    dtype = x.dtype
    h = (self.norm1(x) * (1 + scale1) + shift1).astype(dtype)
    x = (x.astype(jnp.float32) + self.attn1(h, rope=rope) * gate1).astype(dtype)
    h = x if self.norm2 is None else self.norm2(x).astype(dtype)
    x = x + self.attn2(h, text)
    h = (self.norm3(x) * (1 + scale2) + shift2).astype(dtype)
    x = (x.astype(jnp.float32) + self.ffn(h).astype(jnp.float32) * gate2).astype(dtype)
    return sharding.constrain(x, TOKENS)


class TimeEmbedder(nnx.Module):
  """Linear, SiLU, Linear (reference: `TimestepEmbedding`)."""

  def __init__(self, in_features: int, dim: int, *, rngs: nnx.Rngs):
    self.linear_1 = layers.linear(in_features, dim, (None, "embed"), dtype=jnp.float32, rngs=rngs)
    self.linear_2 = layers.linear(dim, dim, ("mlp", "embed"), dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear_2(jax.nn.silu(self.linear_1(x)))


class TextEmbedder(nnx.Module):
  """Linear, GELU (tanh), Linear (reference: `PixArtAlphaTextProjection`)."""

  def __init__(self, text_dim: int, dim: int, *, dtype: Any, rngs: nnx.Rngs):
    self.linear_1 = layers.linear(text_dim, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)
    self.linear_2 = layers.linear(dim, dim, ("embed", "mlp"), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear_2(jax.nn.gelu(self.linear_1(x), approximate=True))


class ConditionEmbedder(nnx.Module):
  """Timestep -> (temb, the 6-way block modulation) (`time`); text embeddings -> text
  tokens (`text_embedder`)."""

  def __init__(self, config: WanTransformerConfig, *, dtype: Any, rngs: nnx.Rngs):
    dim = config.dim
    self.freq_dim = config.freq_dim
    self.time_embedder = TimeEmbedder(config.freq_dim, dim, rngs=rngs)
    self.time_proj = layers.linear(dim, 6 * dim, ("embed", "mlp"), dtype=jnp.float32, rngs=rngs)
    self.text_embedder = TextEmbedder(config.text_dim, dim, dtype=dtype, rngs=rngs)

  def time(self, timestep: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(temb [B, D], the blocks' modulation [B, 6, D]) of timesteps [B], in float32."""
    temb = self.time_embedder(timestep_features(timestep, self.freq_dim))
    return temb, self.time_proj(jax.nn.silu(temb)).reshape(temb.shape[0], 6, -1)


class WanTransformer(nnx.Module):
  """Wan 2.1 T2V: noisy latents [B, F, H, W, in_channels] -> velocity [B, F, H, W, out_channels]."""

  def __init__(self, config: WanTransformerConfig, *, dtype: Any = jnp.float32,
               remat_policy: str = "none", attention_impl: str = "xla",
               motion_channels: int = 0, motion_input_init: str = "zeros",
               lora: lora_lib.LoraConfig | None = None, rngs: nnx.Rngs):
    """motion_channels > 0 adds VideoJAM's two projections (Wan-VideoJAM): the motion
    latents' patch embedding, added to the video's (zero-initialised, or Xavier with
    motion_input_init='xavier'), and a motion head beside `proj_out` (zero-initialised;
    a retrofit copies proj_out into it). `lora` adds low-rank adapters to every block's
    attention and FFN projections (model/lora.py)."""
    if remat_policy not in layers.REMAT_POLICIES:
      raise WanConfigError(f"remat_policy must be one of {sorted(layers.REMAT_POLICIES)}, "
                           f"got {remat_policy!r}")
    attention_lib.check_implementation(attention_impl)
    self.config, self.dtype, self.remat_policy = config, jnp.dtype(dtype), remat_policy
    dim, patch = config.dim, config.patch_size
    self.patch_embedding = layers.linear(int(np.prod(patch)) * config.in_channels, dim,
                                         ("patch", "embed"), dtype=self.dtype, rngs=rngs)
    self.condition_embedder = ConditionEmbedder(config, dtype=self.dtype, rngs=rngs)
    self.blocks = layers.stacked(
        lambda r: WanTransformerBlock(config, dtype=self.dtype, attention_impl=attention_impl,
                                      lora=lora, rngs=r), config.num_layers, rngs)
    self.norm_out = layers.LayerNorm(dim, affine=False, epsilon=config.eps, rngs=rngs)
    self.proj_out = layers.linear(dim, int(np.prod(patch)) * config.out_channels,
                                  ("embed", "patch"), dtype=self.dtype, rngs=rngs)
    self.scale_shift_table = _scale_shift_table(2, dim, rngs)
    self.motion_channels = int(motion_channels)
    if self.motion_channels:
      self.motion_patch_embedding = layers.linear(
          int(np.prod(patch)) * self.motion_channels, dim, ("patch", "embed"), dtype=self.dtype,
          use_bias=False, zero_init=motion_input_init == "zeros", rngs=rngs)
      self.motion_proj_out = layers.linear(dim, int(np.prod(patch)) * self.motion_channels,
                                           ("embed", "patch"), dtype=self.dtype, zero_init=True,
                                           rngs=rngs)

  def embed_text(self, text: jax.Array) -> jax.Array:
    """Text embeddings [B, L, text_dim] -> the tokens [B, L, dim] every block attends to
    (independent of the latents and the time: a sampler computes them once)."""
    return self.condition_embedder.text_embedder(text.astype(self.dtype))

  def __call__(self, latents: jax.Array, timestep: jax.Array, text: jax.Array | None = None,
               *, text_tokens: jax.Array | None = None, motion: jax.Array | None = None
               ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """latents [B, F, H, W, C]; timestep [B] in [0, 1000]; text [B, L, text_dim] (umT5
    embeddings, zero-padded past the caption as Wan's pipeline pads them: no mask), or
    `text_tokens`, the result of `embed_text`. With motion projections, also the noisy
    motion latents `motion` [B, F, H, W, motion_channels]; then returns (video velocity,
    motion velocity), else the velocity."""
    c = self.config
    b, f, h, w, channels = latents.shape
    if channels != c.in_channels:
      raise WanConfigError(f"latents have {channels} channels, the model takes {c.in_channels}")
    for name, size, p in zip(("frames", "height", "width"), (f, h, w), c.patch_size):
      if size % p:
        raise WanConfigError(f"latent {name}={size} is not divisible by patch_size {c.patch_size}")
    grid = tuple(s // p for s, p in zip((f, h, w), c.patch_size))
    angles = rope_angles(grid, c.attention_head_dim, c.rope_max_seq_len)
    rope = (jnp.asarray(np.cos(angles), jnp.float32), jnp.asarray(np.sin(angles), jnp.float32))

    x = self.patch_embedding(dit.patchify(latents.astype(self.dtype), c.patch_size))
    if self.motion_channels:
      if motion is None or motion.shape != latents.shape[:4] + (self.motion_channels,):
        raise WanConfigError(f"Wan-VideoJAM needs motion latents of shape "
                             f"{latents.shape[:4] + (self.motion_channels,)}, got "
                             f"{None if motion is None else motion.shape}")
      # A separate projection, added: with zero weights it adds exact zeros, so a
      # retrofitted model's video output is the base model's bit for bit.
      x = x + self.motion_patch_embedding(dit.patchify(motion.astype(self.dtype), c.patch_size))
    x = sharding.constrain(x, TOKENS)
    temb, timestep_proj = self.condition_embedder.time(timestep)
    if text_tokens is None:
      text_tokens = self.embed_text(text)
    text_tokens = text_tokens.astype(self.dtype)

    x = layers.run_stacked(self.blocks, x,
                           lambda block, x: block(x, text_tokens, timestep_proj, rope),
                           self.remat_policy)
    mod = self.scale_shift_table[...] + temb[:, None]                  # [B, 2, D]
    shift, scale = mod[:, :1], mod[:, 1:]
    x = (self.norm_out(x) * (1 + scale) + shift).astype(self.dtype)
    out = self.proj_out(x).astype(jnp.float32)
    velocity = dit.unpatchify(out, c.patch_size, (f, h, w, c.out_channels))
    if not self.motion_channels:
      return velocity
    motion_out = self.motion_proj_out(x).astype(jnp.float32)
    return velocity, dit.unpatchify(motion_out, c.patch_size, (f, h, w, self.motion_channels))
