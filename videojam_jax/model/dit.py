"""The video DiT, with VideoJAM's joint appearance-motion projections.

Tokens: the clip [B, T, H, W, C] is cut into (pt, ph, pw) patches. With
`jam=True` the model also reads the noisy motion video d_t and the input
projection is W_in+ = [W_in ; W_in_m] applied to concat(patch(x_t), patch(d_t)),
written here as `patch_embed(x) + motion_patch_embed(d)` with the motion kernel
initialised to zero by default (so the JAM model computes exactly what its base
computes; `model.motion_input_init`). The output projection gains a motion head, W_out+ = [W_out, W_out_m],
and the model returns two velocities (u_x, u_d). With `jam=False` the same code
is the pixel-only baseline. Nothing else differs (DESIGN.md §1).

Blocks: adaLN-Zero timestep modulation, spatio-temporal self-attention over all
video tokens, cross-attention to the caption tokens, MLP. Blocks are scanned
(one compiled block, parameters stacked on a leading 'layers' axis) and
optionally rematerialised.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from videojam_jax.parallel import sharding
from videojam_jax.model import layers
from videojam_jax.model import text_encoder

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
    mod = layers.dense(6 * width, ("embed", "mlp"), dtype=self.dtype, zero_init=True,
                       name="adaln")(nn.silu(c))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
    h = modulate(layers.LayerNorm(False, self.dtype, name="norm1")(x), shift1, scale1)
    x = x + gate1[:, None] * layers.Attention(
        self.num_heads, self.dtype, self.attention_impl, name="self_attn")(h, h)
    h = layers.LayerNorm(name="norm_cross", dtype=self.dtype)(x)
    x = x + layers.Attention(self.num_heads, self.dtype, self.attention_impl,
                             name="cross_attn")(h, text, kv_mask=text_mask)
    h = modulate(layers.LayerNorm(False, self.dtype, name="norm2")(x), shift2, scale2)
    x = x + gate2[:, None] * layers.Mlp(int(width * self.mlp_ratio), self.dtype, name="mlp")(h)
    x = sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
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
    tokens = layers.dense(width, ("patch", "embed"), dtype=dtype, name="patch_embed")(
        patchify(x_t.astype(dtype), patch))
    if cfg.jam:
      if d_t is None:
        raise ValueError("a VideoJAM model (model.jam=True) needs the motion input d_t")
      tokens = tokens + layers.dense(
          width, ("patch", "embed"), dtype=dtype, use_bias=False,
          zero_init=motion_input_init(cfg) == "zeros",
          name="motion_patch_embed")(patchify(d_t.astype(dtype), patch))
    tokens = tokens + jnp.asarray(video_position_embedding(grid, width), dtype)[None]
    tokens = sharding.constrain(
        tokens, ("activation_batch", "activation_length", "activation_embed"))

    # --- Conditioning: timestep -> adaLN vector; caption -> cross-attention tokens.
    c = layers.dense(width, ("embed", "mlp"), dtype=dtype, name="time_mlp_in")(timestep_embedding(t))
    c = layers.dense(width, ("mlp", "embed"), dtype=dtype, name="time_mlp_out")(nn.silu(c))
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
    shift, scale = jnp.split(layers.dense(2 * width, ("embed", "mlp"), dtype=dtype, zero_init=True,
                                          name="final_adaln")(nn.silu(c)), 2, axis=-1)
    x = modulate(layers.LayerNorm(False, dtype, name="final_norm")(x), shift, scale)
    patch_dim = int(np.prod(patch)) * shape[3]
    u_x = layers.dense(patch_dim, ("embed", "patch"), dtype=dtype, zero_init=True, name="video_head")(x)
    u_x = unpatchify(u_x.astype(jnp.float32), patch, shape)
    if not cfg.jam:
      return u_x, None
    u_d = layers.dense(patch_dim, ("embed", "patch"), dtype=dtype, zero_init=True, name="motion_head")(x)
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
    encoder = text_encoder.ByteTextEncoder(
        cfg.max_length, cfg.width, cfg.depth, cfg.num_heads, dtype,
        model_config.attention_impl, name="text_encoder")
  projection = layers.dense(model_config.width, (None, "embed"), dtype=dtype, name="text_proj")
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
