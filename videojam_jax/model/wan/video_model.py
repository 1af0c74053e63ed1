"""Wan 2.1 behind the model interface the trainer, sampler and evaluators use.

`WanVideoModel(x_t, d_t, t, text, text_mask, text_keep)` returns velocities in
our flow-matching convention, like `dit.VideoDiT`: t = 0 is noise, t = 1 data, and
u = data - noise. Wan's transformer (diffusers' convention) takes
sigma = 1 - t as timestep 1000 sigma and returns noise - data, so u = -v.

Text: Wan attends to umT5 embeddings zero-padded past the caption, without a mask.
Here the caption inputs are either precomputed embeddings (`model.text.source =
"precomputed"`, text_dim = their width: umT5's 4096 for the published models) or
the built-in byte-level encoder (small runs, tests), and the padded positions are
zeroed as Wan's pipeline does. The null caption of classifier-free guidance is
all-zero embeddings (an empty, fully padded caption).

With `jam` (Wan-VideoJAM), the transformer carries VideoJAM's two projections: the
noisy motion latents' patch embedding added to the video's, and a motion head beside
`proj_out` (videojam_jax/model/retrofit.py turns a base Wan into one; export writes a
32-channel WanTransformer3DModel, `weights.save_jam_transformer`). Image-to-video is
not built.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from videojam_jax.model import lora as lora_lib
from videojam_jax.model import text_encoder as text_encoder_lib
from videojam_jax.model.wan import transformer as transformer_lib

TIMESTEP_SCALE = 1000.0     # Wan's timestep = 1000 * sigma


class WanVideoModel(nnx.Module):
  """Wan 2.1 T2V (or Wan-VideoJAM with `jam`) with our time / velocity conventions."""

  def __init__(self, config: transformer_lib.WanTransformerConfig, *, video_shape: Any,
               text_encoder: text_encoder_lib.ByteTextEncoder | None, dtype: Any = jnp.float32,
               remat_policy: str = "none", attention_impl: str = "xla", jam: bool = False,
               motion_input_init: str = "zeros", lora: lora_lib.LoraConfig | None = None,
               rngs: nnx.Rngs):
    if video_shape.channels != config.in_channels or config.out_channels != config.in_channels:
      raise transformer_lib.WanConfigError(
          f"the clips have {video_shape.channels} channels; the Wan config takes "
          f"in_channels={config.in_channels}, out_channels={config.out_channels}")
    self.video_shape, self.jam, self.dtype = video_shape, bool(jam), jnp.dtype(dtype)
    self.text_encoder = text_encoder
    self.transformer = transformer_lib.WanTransformer(
        config, dtype=dtype, remat_policy=remat_policy, attention_impl=attention_impl,
        motion_channels=video_shape.channels if jam else 0,
        motion_input_init=motion_input_init, lora=lora, rngs=rngs)

  def encode_text(self, text: jax.Array, text_mask: jax.Array) -> jax.Array:
    """The text tokens [B, L, dim] the blocks attend to, from token ids [B, L] (built-in
    encoder) or embeddings [B, L, text_dim] (precomputed); padding zeroed first."""
    text_dim = self.transformer.config.text_dim
    if self.text_encoder is not None:
      if text.ndim != 2:
        raise ValueError(f"the built-in text encoder takes token ids [B, L], got {text.shape}")
      embeddings = self.text_encoder(text, text_mask)
    else:
      if text.ndim != 3 or text.shape[-1] != text_dim:
        raise ValueError(f"precomputed text embeddings must be [B, L, {text_dim}], got {text.shape}")
      embeddings = text
    embeddings = jnp.where(text_mask[..., None], embeddings.astype(self.dtype), 0)
    return self.transformer.embed_text(embeddings)

  def null_text_tokens(self, length: int) -> jax.Array:
    """The tokens of the null caption: all-zero embeddings."""
    zeros = jnp.zeros((1, length, self.transformer.config.text_dim), self.dtype)
    return self.transformer.embed_text(zeros)

  def __call__(self, x_t: jax.Array, d_t: jax.Array | None, t: jax.Array,
               text: jax.Array | None, text_mask: jax.Array, text_keep: jax.Array, *,
               encoded_text: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    """(u_x, u_d) for noisy clips x_t (and motion d_t) [B, T, H, W, C] at our time t [B];
    u_d is None without `jam`."""
    tokens = self.encode_text(text, text_mask) if encoded_text is None else encoded_text
    tokens = jnp.where(text_keep[:, None, None], tokens.astype(self.dtype),
                       self.null_text_tokens(tokens.shape[1]))
    timestep = TIMESTEP_SCALE * (1.0 - t.astype(jnp.float32))
    if not self.jam:
      return -self.transformer(x_t, timestep, text_tokens=tokens), None
    velocity, motion_velocity = self.transformer(x_t, timestep, text_tokens=tokens, motion=d_t)
    return -velocity, -motion_velocity


def transformer_config(model_config: ml_collections.ConfigDict,
                       text_dim: int) -> transformer_lib.WanTransformerConfig:
  """The architecture of config.model.wan (field names as in diffusers' config.json)."""
  fields = dict(model_config.wan)
  fields.setdefault("text_dim", text_dim)
  if fields["text_dim"] != text_dim:
    raise transformer_lib.WanConfigError(
        f"model.wan.text_dim={fields['text_dim']} but the text inputs are {text_dim} wide")
  return transformer_lib.WanTransformerConfig(**fields)


def build_model(model_config: ml_collections.ConfigDict, video_shape: Any, *,
                rngs: nnx.Rngs) -> WanVideoModel:
  """The Wan model config.model describes (family "wan": architecture in model.wan)."""
  text = model_config.text
  dtype = jnp.dtype(model_config.dtype)
  encoder = text_encoder_lib.from_config(text, dtype=dtype,
                                         attention_impl=model_config.attention_impl, rngs=rngs)
  config = transformer_config(model_config, text_encoder_lib.text_width(text))
  return WanVideoModel(config, video_shape=video_shape, text_encoder=encoder, dtype=dtype,
                       remat_policy=model_config.remat_policy,
                       attention_impl=model_config.attention_impl, jam=bool(model_config.jam),
                       motion_input_init=str(model_config.get("motion_input_init", "zeros")),
                       lora=lora_lib.LoraConfig.from_model_config(model_config), rngs=rngs)
