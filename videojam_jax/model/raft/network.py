"""RAFT optical flow (Teed & Deng, 2020) in Flax NNX, laid out as torchvision's.

`Raft(config)` is torchvision's `RAFT` for inference: its module names follow
torchvision's (so `weights.raft_table` maps one to one), it works channels-last
(NHWC) and takes a pair of images in [-1, 1] (torchvision's preprocessing: RGB
/ 255 * 2 - 1) whose sides are multiples of 8. `RAFT_LARGE` and `RAFT_SMALL`
are torchvision's `raft_large` / `raft_small`; smaller configs serve tests.

The pieces, as in the paper: a feature encoder (both frames) and a context
encoder (the first) at 1/8 resolution; the all-pairs correlation volume,
average-pooled into `corr_levels` levels; and `num_updates` iterations of a
GRU update block that looks up the correlation around the current flow
estimate (radius `corr_radius`) and predicts a flow change. The flow is
upsampled x8, by a learned convex combination (the mask predictor, large) or
bilinearly (small). BatchNorm layers use their running statistics
(torchvision's eval mode). The loop is a `jax.lax.fori_loop`, so the compiled
program does not grow with `num_updates`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

DOWNSAMPLE = 8                 # the encoders' stride: flow is estimated at 1/8 resolution
NORM_EPSILON = 1e-5            # torch's BatchNorm2d / InstanceNorm2d default
MASK_MULTIPLIER = 0.25         # torchvision's MaskPredictor scales its output by this
BLOCKS = ("residual", "bottleneck")
NORMS = ("instance", "batch", "none")


@dataclasses.dataclass(frozen=True)
class RaftConfig:
  """torchvision's `_raft(...)` arguments."""
  feature_layers: tuple[int, ...] = (64, 64, 96, 128, 256)
  feature_block: str = "residual"
  feature_norm: str = "instance"
  context_layers: tuple[int, ...] = (64, 64, 96, 128, 256)
  context_block: str = "residual"
  context_norm: str = "batch"
  corr_levels: int = 4
  corr_radius: int = 4
  motion_corr_layers: tuple[int, ...] = (256, 192)
  motion_flow_layers: tuple[int, ...] = (128, 64)
  motion_out: int = 128
  hidden: int = 128
  gru_kernels: tuple[tuple[int, int], ...] = ((1, 5), (5, 1))
  flow_head_hidden: int = 256
  mask_predictor: bool = True
  mask_hidden: int = 256

  def __post_init__(self):
    if len(self.feature_layers) != 5 or len(self.context_layers) != 5:
      raise ValueError("feature_layers and context_layers need 5 widths each")
    for block in (self.feature_block, self.context_block):
      if block not in BLOCKS:
        raise ValueError(f"block {block!r}: choose from {BLOCKS}")
    for norm in (self.feature_norm, self.context_norm):
      if norm not in NORMS:
        raise ValueError(f"norm {norm!r}: choose from {NORMS}")
    if self.context_layers[-1] <= self.hidden:
      raise ValueError(f"the context encoder's {self.context_layers[-1]} channels must exceed "
                       f"the hidden state's {self.hidden}")
    if len(self.motion_corr_layers) not in (1, 2) or len(self.motion_flow_layers) != 2:
      raise ValueError("motion_corr_layers needs 1 or 2 widths, motion_flow_layers 2")
    if len(self.gru_kernels) not in (1, 2):
      raise ValueError("gru_kernels: one or two (kh, kw) kernels")


RAFT_LARGE = RaftConfig()
RAFT_SMALL = RaftConfig(
    feature_layers=(32, 32, 64, 96, 128), feature_block="bottleneck", feature_norm="instance",
    context_layers=(32, 32, 64, 96, 160), context_block="bottleneck", context_norm="none",
    corr_levels=4, corr_radius=3, motion_corr_layers=(96,), motion_flow_layers=(64, 32),
    motion_out=82, hidden=96, gru_kernels=((3, 3),), flow_head_hidden=128,
    mask_predictor=False)
CONFIGS = {"raft_large": RAFT_LARGE, "raft_small": RAFT_SMALL}


def _conv(in_features: int, out_features: int, kernel: tuple[int, int], *, stride: int = 1,
          rngs: nnx.Rngs) -> nnx.Conv:
  """A torch-style Conv2d: 'same'-size padding of kernel // 2 on each side, with bias."""
  padding = tuple((k // 2, k // 2) for k in kernel)
  return nnx.Conv(in_features, out_features, kernel, strides=stride, padding=padding,
                  use_bias=True, rngs=rngs)


def instance_norm(x: jax.Array) -> jax.Array:
  """torch.nn.InstanceNorm2d (no affine, no running stats) on NHWC.

  Hand-written rather than jax.nn.standardize: that takes the variance as E[x^2] - E[x]^2,
  which raised the small fixture's largest difference to torchvision from 1.1e-5 to
  1.5e-5 px; this two-pass variance is what torch computes."""
  mean = x.mean(axis=(1, 2), keepdims=True)
  var = x.var(axis=(1, 2), keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + NORM_EPSILON)


class ConvNorm(nnx.Module):
  """torchvision's Conv2dNormActivation: conv, then the norm, then ReLU (if `relu`)."""

  def __init__(self, in_features: int, out_features: int, kernel: int, *, stride: int = 1,
               norm: str = "none", relu: bool = True, rngs: nnx.Rngs):
    self.conv = _conv(in_features, out_features, (kernel, kernel), stride=stride, rngs=rngs)
    self.norm_kind = norm
    if norm == "batch":
      self.norm = nnx.BatchNorm(out_features, use_running_average=True, epsilon=NORM_EPSILON,
                                rngs=rngs)
    self.relu = relu

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(x)
    if self.norm_kind == "batch":
      x = self.norm(x)
    elif self.norm_kind == "instance":
      x = instance_norm(x)
    return jax.nn.relu(x) if self.relu else x


class ResidualBlock(nnx.Module):
  def __init__(self, in_features: int, out_features: int, *, norm: str, stride: int,
               rngs: nnx.Rngs):
    self.convnormrelu1 = ConvNorm(in_features, out_features, 3, stride=stride, norm=norm,
                                  rngs=rngs)
    self.convnormrelu2 = ConvNorm(out_features, out_features, 3, norm=norm, rngs=rngs)
    self.downsample = (ConvNorm(in_features, out_features, 1, stride=stride, norm=norm,
                                relu=False, rngs=rngs) if stride != 1 else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.convnormrelu2(self.convnormrelu1(x))
    return jax.nn.relu((x if self.downsample is None else self.downsample(x)) + y)


class BottleneckBlock(nnx.Module):
  def __init__(self, in_features: int, out_features: int, *, norm: str, stride: int,
               rngs: nnx.Rngs):
    inner = out_features // 4
    self.convnormrelu1 = ConvNorm(in_features, inner, 1, norm=norm, rngs=rngs)
    self.convnormrelu2 = ConvNorm(inner, inner, 3, stride=stride, norm=norm, rngs=rngs)
    self.convnormrelu3 = ConvNorm(inner, out_features, 1, norm=norm, rngs=rngs)
    self.downsample = (ConvNorm(in_features, out_features, 1, stride=stride, norm=norm,
                                relu=False, rngs=rngs) if stride != 1 else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.convnormrelu3(self.convnormrelu2(self.convnormrelu1(x)))
    return jax.nn.relu((x if self.downsample is None else self.downsample(x)) + y)


class FeatureEncoder(nnx.Module):
  """Images -> features at 1/8 resolution (strides 2, 1, 2, 2)."""
  STRIDES = (2, 1, 2, 2)

  def __init__(self, layers: tuple[int, ...], block: str, norm: str, *, rngs: nnx.Rngs):
    block_cls = ResidualBlock if block == "residual" else BottleneckBlock
    self.convnormrelu = ConvNorm(3, layers[0], 7, stride=self.STRIDES[0], norm=norm, rngs=rngs)
    for i in range(3):
      setattr(self, f"layer{i + 1}", nnx.List([
          block_cls(layers[i], layers[i + 1], norm=norm, stride=self.STRIDES[i + 1], rngs=rngs),
          block_cls(layers[i + 1], layers[i + 1], norm=norm, stride=1, rngs=rngs)]))
    self.conv = _conv(layers[3], layers[4], (1, 1), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.convnormrelu(x)
    for layer in (self.layer1, self.layer2, self.layer3):
      for block in layer:
        x = block(x)
    return self.conv(x)


class MotionEncoder(nnx.Module):
  def __init__(self, config: RaftConfig, *, rngs: nnx.Rngs):
    corr_channels = config.corr_levels * (2 * config.corr_radius + 1) ** 2
    corr, flow = config.motion_corr_layers, config.motion_flow_layers
    self.convcorr1 = ConvNorm(corr_channels, corr[0], 1, rngs=rngs)
    self.convcorr2 = ConvNorm(corr[0], corr[1], 3, rngs=rngs) if len(corr) == 2 else None
    self.convflow1 = ConvNorm(2, flow[0], 7, rngs=rngs)
    self.convflow2 = ConvNorm(flow[0], flow[1], 3, rngs=rngs)
    self.conv = ConvNorm(corr[-1] + flow[-1], config.motion_out - 2, 3, rngs=rngs)

  def __call__(self, flow: jax.Array, corr_features: jax.Array) -> jax.Array:
    corr = self.convcorr1(corr_features)
    if self.convcorr2 is not None:
      corr = self.convcorr2(corr)
    encoded = self.convflow2(self.convflow1(flow))
    return jnp.concatenate([self.conv(jnp.concatenate([corr, encoded], -1)), flow], -1)


class ConvGRU(nnx.Module):
  def __init__(self, input_size: int, hidden: int, kernel: tuple[int, int], *, rngs: nnx.Rngs):
    self.convz = _conv(hidden + input_size, hidden, kernel, rngs=rngs)
    self.convr = _conv(hidden + input_size, hidden, kernel, rngs=rngs)
    self.convq = _conv(hidden + input_size, hidden, kernel, rngs=rngs)

  def __call__(self, h: jax.Array, x: jax.Array) -> jax.Array:
    hx = jnp.concatenate([h, x], -1)
    z = jax.nn.sigmoid(self.convz(hx))
    r = jax.nn.sigmoid(self.convr(hx))
    q = jnp.tanh(self.convq(jnp.concatenate([r * h, x], -1)))
    return (1 - z) * h + z * q


class RecurrentBlock(nnx.Module):
  def __init__(self, input_size: int, config: RaftConfig, *, rngs: nnx.Rngs):
    self.convgru1 = ConvGRU(input_size, config.hidden, config.gru_kernels[0], rngs=rngs)
    self.convgru2 = (ConvGRU(input_size, config.hidden, config.gru_kernels[1], rngs=rngs)
                     if len(config.gru_kernels) == 2 else None)

  def __call__(self, h: jax.Array, x: jax.Array) -> jax.Array:
    h = self.convgru1(h, x)
    return h if self.convgru2 is None else self.convgru2(h, x)


class FlowHead(nnx.Module):
  def __init__(self, hidden: int, head_hidden: int, *, rngs: nnx.Rngs):
    self.conv1 = _conv(hidden, head_hidden, (3, 3), rngs=rngs)
    self.conv2 = _conv(head_hidden, 2, (3, 3), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv2(jax.nn.relu(self.conv1(x)))


class UpdateBlock(nnx.Module):
  def __init__(self, config: RaftConfig, *, rngs: nnx.Rngs):
    context = config.context_layers[-1] - config.hidden
    self.motion_encoder = MotionEncoder(config, rngs=rngs)
    self.recurrent_block = RecurrentBlock(config.motion_out + context, config, rngs=rngs)
    self.flow_head = FlowHead(config.hidden, config.flow_head_hidden, rngs=rngs)

  def __call__(self, hidden: jax.Array, context: jax.Array, corr_features: jax.Array,
               flow: jax.Array) -> tuple[jax.Array, jax.Array]:
    motion = self.motion_encoder(flow, corr_features)
    hidden = self.recurrent_block(hidden, jnp.concatenate([context, motion], -1))
    return hidden, self.flow_head(hidden)


class MaskPredictor(nnx.Module):
  def __init__(self, hidden: int, mask_hidden: int, *, rngs: nnx.Rngs):
    self.convrelu = ConvNorm(hidden, mask_hidden, 3, rngs=rngs)
    self.conv = _conv(mask_hidden, DOWNSAMPLE * DOWNSAMPLE * 9, (1, 1), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return MASK_MULTIPLIER * self.conv(self.convrelu(x))


def correlation_pyramid(fmap1: jax.Array, fmap2: jax.Array, levels: int) -> list[jax.Array]:
  """All-pairs correlation [B*h*w, h_l, w_l] per level (2x2 average pooling, floor)."""
  b, h, w, c = fmap1.shape
  corr = jnp.einsum("bijc,bklc->bijkl", fmap1, fmap2,
                    precision=jax.lax.Precision.HIGHEST) / jnp.sqrt(float(c))
  volume = corr.reshape(b * h * w, h, w)
  pyramid = [volume]
  for _ in range(levels - 1):
    n, vh, vw = volume.shape
    volume = volume[:, :vh // 2 * 2, :vw // 2 * 2].reshape(n, vh // 2, 2, vw // 2, 2)
    volume = volume.mean(axis=(2, 4))
    pyramid.append(volume)
  return pyramid


def _bilinear_zeros(volume: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
  """volume [H, W] at absolute pixel coordinates (x, y) [P], bilinear; outside is zero
  (torch grid_sample, align_corners=True, padding_mode='zeros')."""
  return jax.scipy.ndimage.map_coordinates(volume, [y, x], order=1, mode="constant", cval=0.0)


def lookup(pyramid: list[jax.Array], coords: jax.Array, radius: int) -> jax.Array:
  """Correlation features [B, h, w, levels * (2r+1)^2] around `coords` [B, h, w, 2] (x, y).

  Channel order as torchvision's: level, then x offset, then y offset (-r..r each).
  """
  b, h, w, _ = coords.shape
  offsets = jnp.arange(-radius, radius + 1, dtype=coords.dtype)
  dx, dy = jnp.meshgrid(offsets, offsets, indexing="ij")   # [side, side]: x varies first
  dx, dy = dx.reshape(-1), dy.reshape(-1)
  centres = coords.reshape(b * h * w, 2)
  features = []
  for level, volume in enumerate(pyramid):
    scaled = centres / (2 ** level)
    xs = scaled[:, :1] + dx[None]
    ys = scaled[:, 1:] + dy[None]
    features.append(jax.vmap(_bilinear_zeros)(volume, xs, ys))   # [B*h*w, side^2]
  return jnp.concatenate(features, -1).reshape(b, h, w, -1)


def coords_grid(batch: int, h: int, w: int) -> jax.Array:
  """[B, h, w, 2] pixel coordinates (x, y)."""
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  return jnp.broadcast_to(jnp.stack([xs, ys], -1), (batch, h, w, 2))


def upsample_convex(flow: jax.Array, mask: jax.Array) -> jax.Array:
  """Flow [B, h, w, 2] at 1/8 -> [B, 8h, 8w, 2]: each fine pixel a softmax-weighted sum of
  the 3x3 coarse neighbours (torchvision's upsample_flow with a mask)."""
  b, h, w, _ = flow.shape
  f = DOWNSAMPLE
  mask = jax.nn.softmax(mask.reshape(b, h, w, 9, f, f), axis=3)
  padded = jnp.pad(f * flow, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.stack([padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], 3)
  up = jnp.einsum("bhwkyx,bhwkc->bhwyxc", mask, patches, precision=jax.lax.Precision.HIGHEST)
  return up.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * f, w * f, 2)


def upsample_bilinear(flow: jax.Array) -> jax.Array:
  """8 x bilinear resize with align_corners=True (torchvision's upsample_flow, no mask)."""
  b, h, w, _ = flow.shape
  f = DOWNSAMPLE
  rows = jnp.arange(h * f, dtype=jnp.float32) * ((h - 1) / max(h * f - 1, 1))
  cols = jnp.arange(w * f, dtype=jnp.float32) * ((w - 1) / max(w * f - 1, 1))
  r, c = jnp.meshgrid(rows, cols, indexing="ij")

  def resize(plane):
    return jax.scipy.ndimage.map_coordinates(plane, [r, c], order=1, mode="nearest")

  planes = flow.transpose(0, 3, 1, 2).reshape(b * 2, h, w)
  return f * jax.vmap(resize)(planes).reshape(b, 2, h * f, w * f).transpose(0, 2, 3, 1)


class Raft(nnx.Module):
  """RAFT for inference: (image1, image2) in [-1, 1], NHWC -> flow [B, H, W, 2] (dx, dy)."""

  def __init__(self, config: RaftConfig = RAFT_LARGE, *, rngs: nnx.Rngs):
    self.config = config
    self.feature_encoder = FeatureEncoder(config.feature_layers, config.feature_block,
                                          config.feature_norm, rngs=rngs)
    self.context_encoder = FeatureEncoder(config.context_layers, config.context_block,
                                          config.context_norm, rngs=rngs)
    self.update_block = UpdateBlock(config, rngs=rngs)
    self.mask_predictor = (MaskPredictor(config.hidden, config.mask_hidden, rngs=rngs)
                           if config.mask_predictor else None)

  def __call__(self, image1: jax.Array, image2: jax.Array, num_updates: int = 12) -> jax.Array:
    b, height, width, _ = image1.shape
    if image2.shape != image1.shape:
      raise ValueError(f"images differ in shape: {image1.shape} vs {image2.shape}")
    if height % DOWNSAMPLE or width % DOWNSAMPLE:
      raise ValueError(f"image sides must be multiples of {DOWNSAMPLE}, got {height}x{width}")
    c = self.config
    min_side = DOWNSAMPLE * 2 ** (c.corr_levels - 1)   # the coarsest level keeps >= 1 pixel
    if min(height, width) < min_side:
      raise ValueError(f"RAFT with {c.corr_levels} correlation levels needs sides of at least "
                       f"{min_side} px, got {height}x{width} (resize or pad the frames)")
    fmaps = self.feature_encoder(jnp.concatenate([image1, image2], 0))
    pyramid = correlation_pyramid(fmaps[:b], fmaps[b:], c.corr_levels)
    context_out = self.context_encoder(image1)
    hidden = jnp.tanh(context_out[..., :c.hidden])
    context = jax.nn.relu(context_out[..., c.hidden:])
    coords0 = coords_grid(b, height // DOWNSAMPLE, width // DOWNSAMPLE)

    def step(_, carry):
      hidden, coords1 = carry
      corr = lookup(pyramid, coords1, c.corr_radius)
      hidden, delta = self.update_block(hidden, context, corr, coords1 - coords0)
      return hidden, coords1 + delta

    hidden, coords1 = jax.lax.fori_loop(0, num_updates, step, (hidden, coords0))
    flow = coords1 - coords0
    if self.mask_predictor is None:
      return upsample_bilinear(flow)
    return upsample_convex(flow, self.mask_predictor(hidden))


def init(config: RaftConfig, seed: int = 0) -> Raft:
  """A randomly initialised RAFT (weights are loaded over it)."""
  return Raft(config, rngs=nnx.Rngs(seed))


def to_model_input(frames: Any) -> jax.Array:
  """uint8 RGB [..., H, W, 3] -> float32 in [-1, 1] (torchvision's RAFT preprocessing)."""
  return jnp.asarray(frames, jnp.float32) * (2.0 / 255.0) - 1.0
