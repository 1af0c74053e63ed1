"""The Wan 2.1 video VAE (diffusers' `AutoencoderKLWan`) in Flax NNX, channels-last.

Causal 3D convolutions, 8x spatial and 4x temporal compression: a clip of
1 + 4k frames has 1 + k latent frames. Encoding and decoding run over time in
chunks, as the reference does (encode: the first frame, then 4-frame chunks;
decode: one latent frame at a time), carrying each causal convolution's last
input frames from chunk to chunk. Here that carry is an explicit pytree (the
feature cache, one entry per causal layer in call order) and the chunks after
the first go through `jax.lax.scan`, so a long 480p clip never holds more than
one chunk's activations, and one compiled chunk serves any length.

The cache is always 2 frames (zeros before the first chunk, which is exactly
the reference's zero padding), so every scan step has static shapes. The first
chunk is special in the temporal resamplers, as in the reference: it passes
through them without their time convolution.

Latent normalisation (`normalize` / `denormalize`) is the per-channel
`latents_mean` / `latents_std` of the checkpoint's config, as Wan's pipelines
apply it around the transformer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from videojam_jax.model.wan.transformer import WanConfigError

CACHE_FRAMES = 2            # the reference's CACHE_T: every causal conv has a 3-frame kernel
NORMALIZE_EPSILON = 1e-12   # F.normalize's eps
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps the log-variance
# Wan 2.1's published per-channel latent statistics (diffusers' defaults).
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
  """The architecture, with the field names of diffusers' config.json (Wan 2.1 defaults)."""
  base_dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_scales: tuple[float, ...] = ()
  temperal_downsample: tuple[bool, ...] = (False, True, True)
  latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
  latents_std: tuple[float, ...] = WAN21_LATENTS_STD
  in_channels: int = 3
  out_channels: int = 3

  def __post_init__(self):
    for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
      raise WanConfigError(f"latents_mean / latents_std need z_dim={self.z_dim} entries")
    if len(self.temperal_downsample) != len(self.dim_mult) - 1:
      raise WanConfigError("temperal_downsample needs one entry per downsampling stage")

  @property
  def temporal_compression(self) -> int:
    return 2 ** sum(self.temperal_downsample)

  @property
  def spatial_compression(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)

  @classmethod
  def from_diffusers(cls, config: dict[str, Any]) -> "WanVAEConfig":
    """From a diffusers `AutoencoderKLWan` config.json (its dict); Wan 2.1 layouts only."""
    if config.get("is_residual") or config.get("patch_size") not in (None, 1):
      raise WanConfigError("this is a Wan 2.2 VAE (is_residual / patch_size); only the Wan 2.1 "
                           "VAE is implemented")
    if config.get("decoder_base_dim") not in (None, config.get("base_dim", cls.base_dim)):
      raise WanConfigError("decoder_base_dim differs from base_dim (Wan 2.2); not implemented")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in fields})

  def to_diffusers(self) -> dict[str, Any]:
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
    out.update(_class_name="AutoencoderKLWan", dropout=0.0, is_residual=False, patch_size=None,
               decoder_base_dim=None, scale_factor_temporal=self.temporal_compression,
               scale_factor_spatial=self.spatial_compression)
    return out


class FeatureCache:
  """The causal layers' carried frames for one chunk: read in call order from
  `previous` (None before the first chunk: zeros), written in the same order to
  `updated`, which the next chunk reads."""

  def __init__(self, previous: list[jax.Array] | None = None):
    self.previous, self.updated = previous, []

  def swap(self, new: jax.Array, like: jax.Array) -> jax.Array:
    """Stores `new` for the next chunk; returns what the previous chunk stored here
    (zeros shaped like `like` on the first chunk)."""
    old = jnp.zeros_like(like) if self.previous is None else self.previous[len(self.updated)]
    self.updated.append(new)
    return old

  def with_past(self, x: jax.Array) -> jax.Array:
    """x [B, T, ...] preceded by the last CACHE_FRAMES frames of the stream so far
    (zeros at its start: the reference's causal zero padding)."""
    past = self.swap(None, x[:, :1].repeat(CACHE_FRAMES, axis=1))
    full = jnp.concatenate([past, x], axis=1)
    self.updated[-1] = full[:, -CACHE_FRAMES:]
    return full


def _conv(in_features: int, out_features: int, kernel: tuple[int, ...], *, strides: Any = 1,
          padding: Any = "VALID", rngs: nnx.Rngs) -> nnx.Conv:
  return nnx.Conv(in_features, out_features, kernel, strides=strides, padding=padding,
                  kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                                    (None,) * (len(kernel) + 1) + ("conv",)),
                  bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv",)),
                  rngs=rngs)


class CausalConv3d(nnx.Module):
  """A 3D conv padded only on the past side of time (by the cache), symmetrically in space.

  pad_past=False: no time padding at all (the temporal downsampler's strided conv,
  whose past frame its caller supplies).
  """

  def __init__(self, in_features: int, out_features: int, kernel: int | tuple[int, int, int],
               *, strides: tuple[int, int, int] = (1, 1, 1), pad_past: bool = True,
               rngs: nnx.Rngs):
    kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
    if pad_past and kernel[0] not in (1, CACHE_FRAMES + 1):
      raise WanConfigError(f"causal kernels span 1 or {CACHE_FRAMES + 1} frames, got {kernel}")
    self.pad_past = pad_past and kernel[0] > 1
    self.conv = _conv(in_features, out_features, kernel, strides=strides,
                      padding=((0, 0), (kernel[1] // 2,) * 2, (kernel[2] // 2,) * 2), rngs=rngs)

  def __call__(self, x: jax.Array, cache: FeatureCache | None = None) -> jax.Array:
    if self.pad_past:
      x = cache.with_past(x)
    return self.conv(x)


class RMSNorm(nnx.Module):
  """x / ||x|| * sqrt(C) * gamma over channels (the reference's F.normalize form)."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.gamma = nnx.Param(nnx.with_partitioning(nnx.initializers.ones_init(), ("conv",))(
        rngs.params(), (channels,), jnp.float32))
    self.scale = channels ** 0.5

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
    return (x32 / jnp.maximum(norm, NORMALIZE_EPSILON) * self.scale
            * self.gamma[...]).astype(x.dtype)


def _per_frame(fn, x: jax.Array) -> jax.Array:
  """Applies a 2D op to every frame of x [B, T, H, W, C]."""
  b, t = x.shape[:2]
  y = fn(x.reshape(b * t, *x.shape[2:]))
  return y.reshape(b, t, *y.shape[1:])


class ResidualBlock(nnx.Module):
  """RMSNorm, SiLU, causal conv, twice, plus a (1x1x1 conv) shortcut."""

  def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
    self.norm1 = RMSNorm(in_dim, rngs=rngs)
    self.conv1 = CausalConv3d(in_dim, out_dim, 3, rngs=rngs)
    self.norm2 = RMSNorm(out_dim, rngs=rngs)
    self.conv2 = CausalConv3d(out_dim, out_dim, 3, rngs=rngs)
    self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1, rngs=rngs) if in_dim != out_dim else None

  def __call__(self, x: jax.Array, cache: FeatureCache, first: bool = False) -> jax.Array:
    shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
    h = self.conv1(jax.nn.silu(self.norm1(x)), cache)
    h = self.conv2(jax.nn.silu(self.norm2(h)), cache)
    return h + shortcut


class AttentionBlock(nnx.Module):
  """Single-head self-attention within each frame (no mixing over time)."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.norm = RMSNorm(dim, rngs=rngs)
    self.to_qkv = _conv(dim, 3 * dim, (1, 1), rngs=rngs)
    self.proj = _conv(dim, dim, (1, 1), rngs=rngs)

  def __call__(self, x: jax.Array, cache: FeatureCache | None = None,
               first: bool = False) -> jax.Array:
    def attend(frames: jax.Array) -> jax.Array:
      n, h, w, c = frames.shape
      q, k, v = jnp.split(self.to_qkv(self.norm(frames)).reshape(n, h * w, 1, 3 * c), 3, axis=-1)
      out = jax.nn.dot_product_attention(q, k, v).reshape(n, h, w, c)
      return self.proj(out)
    return x + _per_frame(attend, x)


class Resample(nnx.Module):
  """Spatial 2x down / up sampling per frame, with a temporal 2x step ('3d' modes).

  The first chunk skips the temporal convolution, as in the reference: frame 0 of a
  clip is its own latent frame.
  """

  def __init__(self, dim: int, mode: str, *, rngs: nnx.Rngs):
    self.mode = mode
    if mode.startswith("upsample"):
      self.resample = _conv(dim, dim // 2, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
    elif mode.startswith("downsample"):
      self.resample = _conv(dim, dim, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)), rngs=rngs)
    else:
      raise WanConfigError(f"unknown resample mode {mode!r}")
    time_conv = None
    if mode == "upsample3d":
      # Over [the cached frames, this chunk]; the first chunk skips it (see __call__).
      time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), pad_past=False, rngs=rngs)
    elif mode == "downsample3d":
      # Stride 2 over [the previous chunk's last frame, this chunk].
      time_conv = CausalConv3d(dim, dim, (3, 1, 1), strides=(2, 1, 1), pad_past=False, rngs=rngs)
    self.time_conv = time_conv

  def __call__(self, x: jax.Array, cache: FeatureCache, first: bool = False) -> jax.Array:
    if self.mode == "upsample3d":
      # Each frame becomes two: the time conv's 2C channels are (frame 2j, frame 2j+1).
      held = cache.swap(None, x[:, :1].repeat(CACHE_FRAMES, axis=1))
      if first:
        cache.updated[-1] = held                      # zeros: frame 0 starts no history
      else:
        full = jnp.concatenate([held, x], axis=1)
        cache.updated[-1] = full[:, -CACHE_FRAMES:]
        y = self.time_conv(full)
        b, t, h, w, c2 = y.shape
        x = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5).reshape(
            b, 2 * t, h, w, c2 // 2)
    if self.mode.startswith("upsample"):
      x = x.repeat(2, axis=2).repeat(2, axis=3)       # nearest-exact at an integer scale
    x = _per_frame(self.resample, x)
    if self.mode == "downsample3d":
      last = cache.swap(x[:, -1:], x[:, -1:])
      if not first:
        x = self.time_conv(jnp.concatenate([last, x], axis=1))
    return x


class MidBlock(nnx.Module):
  """Residual block, attention, residual block."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResidualBlock(dim, dim, rngs=rngs), ResidualBlock(dim, dim, rngs=rngs)])
    self.attentions = nnx.List([AttentionBlock(dim, rngs=rngs)])

  def __call__(self, x: jax.Array, cache: FeatureCache, first: bool = False) -> jax.Array:
    x = self.resnets[0](x, cache)
    return self.resnets[1](self.attentions[0](x), cache)


class Encoder(nnx.Module):
  """Video chunk [B, T, H, W, 3] -> [B, T', H/8, W/8, 2 z_dim] (mean, log-variance)."""

  def __init__(self, config: WanVAEConfig, *, rngs: nnx.Rngs):
    dims = [config.base_dim * m for m in (1, *config.dim_mult)]
    self.conv_in = CausalConv3d(config.in_channels, dims[0], 3, rngs=rngs)
    blocks, scale = [], 1.0
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
      for _ in range(config.num_res_blocks):
        blocks.append(ResidualBlock(in_dim, out_dim, rngs=rngs))
        if scale in config.attn_scales:
          blocks.append(AttentionBlock(out_dim, rngs=rngs))
        in_dim = out_dim
      if i != len(config.dim_mult) - 1:
        mode = "downsample3d" if config.temperal_downsample[i] else "downsample2d"
        blocks.append(Resample(out_dim, mode, rngs=rngs))
        scale /= 2.0
    self.down_blocks = nnx.List(blocks)
    self.mid_block = MidBlock(dims[-1], rngs=rngs)
    self.norm_out = RMSNorm(dims[-1], rngs=rngs)
    self.conv_out = CausalConv3d(dims[-1], 2 * config.z_dim, 3, rngs=rngs)

  def __call__(self, x: jax.Array, cache: FeatureCache, first: bool) -> jax.Array:
    x = self.conv_in(x, cache)
    for block in self.down_blocks:
      x = block(x, cache, first)
    x = self.mid_block(x, cache)
    return self.conv_out(jax.nn.silu(self.norm_out(x)), cache)


class UpBlock(nnx.Module):
  """num_res_blocks + 1 residual blocks, then an optional upsampler."""

  def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, mode: str | None, *,
               rngs: nnx.Rngs):
    self.resnets = nnx.List([ResidualBlock(in_dim if j == 0 else out_dim, out_dim, rngs=rngs)
                             for j in range(num_res_blocks + 1)])
    self.upsampler = Resample(out_dim, mode, rngs=rngs) if mode else None

  def __call__(self, x: jax.Array, cache: FeatureCache, first: bool) -> jax.Array:
    for resnet in self.resnets:
      x = resnet(x, cache)
    return x if self.upsampler is None else self.upsampler(x, cache, first)


class Decoder(nnx.Module):
  """Latent chunk [B, T', h, w, z_dim] -> video [B, T, 8h, 8w, 3]."""

  def __init__(self, config: WanVAEConfig, *, rngs: nnx.Rngs):
    mult = config.dim_mult
    dims = [config.base_dim * m for m in (mult[-1], *mult[::-1])]
    upsample = config.temperal_downsample[::-1]
    self.conv_in = CausalConv3d(config.z_dim, dims[0], 3, rngs=rngs)
    self.mid_block = MidBlock(dims[0], rngs=rngs)
    blocks = []
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
      if i > 0:
        in_dim //= 2            # the previous upsampler halved the channels
      mode = None
      if i != len(mult) - 1:
        mode = "upsample3d" if upsample[i] else "upsample2d"
      blocks.append(UpBlock(in_dim, out_dim, config.num_res_blocks, mode, rngs=rngs))
    self.up_blocks = nnx.List(blocks)
    self.norm_out = RMSNorm(dims[-1], rngs=rngs)
    self.conv_out = CausalConv3d(dims[-1], config.out_channels, 3, rngs=rngs)

  def __call__(self, z: jax.Array, cache: FeatureCache, first: bool) -> jax.Array:
    x = self.conv_in(z, cache)
    x = self.mid_block(x, cache)
    for block in self.up_blocks:
      x = block(x, cache, first)
    return self.conv_out(jax.nn.silu(self.norm_out(x)), cache)


def _chunked(step, first_chunk: jax.Array, rest: jax.Array | None) -> jax.Array:
  """Runs step(chunk, previous cache, first) -> (out, cache) over the first chunk, then
  (lax.scan) over rest [N, B, ...] with the cache as the carry; outputs joined in time."""
  out, cache = step(first_chunk, None, True)
  if rest is None or rest.shape[0] == 0:
    return out

  def body(cache, chunk):
    out, cache = step(chunk, cache, False)
    return cache, out
  _, outs = jax.lax.scan(body, cache, rest)                  # [N, B, t, ...]
  outs = jnp.moveaxis(outs, 0, 1)
  outs = outs.reshape(outs.shape[0], -1, *outs.shape[3:])
  return jnp.concatenate([out, outs], axis=1)


class WanVAE(nnx.Module):
  """Encode a clip [B, 1 + 4k, H, W, 3] in [-1, 1] to latent statistics, decode latents."""

  def __init__(self, config: WanVAEConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.encoder = Encoder(config, rngs=rngs)
    self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1, rngs=rngs)
    self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, 1, rngs=rngs)
    self.decoder = Decoder(config, rngs=rngs)

  def encode(self, video: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, log-variance) [B, 1 + k, H/8, W/8, z_dim] of video [B, 1 + 4k, H, W, C]."""
    b, t, h, w, c = video.shape
    ct, cs = self.config.temporal_compression, self.config.spatial_compression
    if (t - 1) % ct or h % cs or w % cs:
      raise WanConfigError(f"the Wan VAE encodes 1 + {ct}k frames of a multiple of {cs} pixels "
                           f"square; got {t} frames of {h}x{w}")

    def step(chunk, previous, first):
      cache = FeatureCache(previous)
      return self.encoder(chunk, cache, first), cache.updated
    rest = video[:, 1:].reshape(b, (t - 1) // ct, ct, h, w, c).swapaxes(0, 1)
    moments = self.quant_conv(_chunked(step, video[:, :1], rest))
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, latents: jax.Array) -> jax.Array:
    """Video [B, 1 + 4(T'-1), 8h, 8w, C] in [-1, 1] of (unnormalised) latents [B, T', h, w, z]."""
    x = self.post_quant_conv(latents)
    b, t = x.shape[:2]

    def step(chunk, previous, first):
      cache = FeatureCache(previous)
      return self.decoder(chunk, cache, first), cache.updated
    rest = x[:, 1:].reshape(b, t - 1, 1, *x.shape[2:]).swapaxes(0, 1)
    return jnp.clip(_chunked(step, x[:, :1], rest).astype(jnp.float32), -1.0, 1.0)

  def normalize(self, mean: jax.Array) -> jax.Array:
    """Latents as Wan's transformer sees them: (mean - latents_mean) / latents_std."""
    return (mean - jnp.asarray(self.config.latents_mean)) / jnp.asarray(self.config.latents_std)

  def denormalize(self, latents: jax.Array) -> jax.Array:
    """Inverse of `normalize`: what `decode` takes."""
    return latents * jnp.asarray(self.config.latents_std) + jnp.asarray(self.config.latents_mean)
