"""Wan 2.1 weights in diffusers format: the name/layout tables, loading and export.

One explicit table per model: each row is our parameter path, the diffusers
tensor name ('{i}' = block index, stacked into our leading 'layers' axis), and
the layout change (`diffusers_format`: Linear kernels transposed, attention
projections split into (heads, head_dim), the patch Conv3d as a Linear on
patchified tokens, channels-last conv kernels).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from videojam_jax.model import diffusers_format as fmt
from videojam_jax.model.wan import transformer as transformer_lib
from videojam_jax.model.wan import umt5 as umt5_lib
from videojam_jax.model.wan import vae as vae_lib

E = fmt.Entry
TRANSFORMER_CLASS = "WanTransformer3DModel"
VAE_CLASS = "AutoencoderKLWan"
UMT5_CLASS = "UMT5EncoderModel"
# transformers ties the encoder's input embedding to `shared`; a checkpoint may hold both.
UMT5_IGNORED = ("encoder.embed_tokens.weight",)
# diffusers drops these when loading a Wan transformer (_keys_to_ignore_on_load_unexpected).
TRANSFORMER_IGNORED = ("norm_added_q",)
FLAT_HEADS = fmt.Reshape(lambda s: (s[0] * s[1],))        # (heads, head_dim) <-> (heads*head_dim,)


def _linear(ours: str, theirs: str, *, stacked: bool = False, in_ndim: int = 1,
            bias: fmt.Layout = fmt.IDENTITY) -> list[fmt.Entry]:
  return [E(f"{ours}/kernel", f"{theirs}.weight", fmt.LinearKernel(in_ndim), stacked),
          E(f"{ours}/bias", f"{theirs}.bias", bias, stacked)]


def transformer_table(config: transformer_lib.WanTransformerConfig) -> list[fmt.Entry]:
  """Our WanTransformer parameters <-> diffusers' WanTransformer3DModel tensors."""
  rows = [E("patch_embedding/kernel", "patch_embedding.weight", fmt.ConvAsLinear(config.patch_size)),
          E("patch_embedding/bias", "patch_embedding.bias")]
  for name in ("time_embedder.linear_1", "time_embedder.linear_2", "time_proj",
               "text_embedder.linear_1", "text_embedder.linear_2"):
    rows += _linear("condition_embedder/" + name.replace(".", "/"), "condition_embedder." + name)
  for attn in ("attn1", "attn2"):
    ours, theirs = f"blocks/{attn}", f"blocks.{{i}}.{attn}"
    for proj in ("to_q", "to_k", "to_v"):
      rows += _linear(f"{ours}/{proj}", f"{theirs}.{proj}", stacked=True, bias=FLAT_HEADS)
    rows += _linear(f"{ours}/to_out", f"{theirs}.to_out.0", stacked=True, in_ndim=2)
    for norm in ("norm_q", "norm_k"):
      rows.append(E(f"{ours}/{norm}/weight", f"{theirs}.{norm}.weight", FLAT_HEADS, True))
  if config.cross_attn_norm:
    rows += [E("blocks/norm2/scale", "blocks.{i}.norm2.weight", stacked=True),
             E("blocks/norm2/bias", "blocks.{i}.norm2.bias", stacked=True)]
  rows += _linear("blocks/ffn/proj_in", "blocks.{i}.ffn.net.0.proj", stacked=True)
  rows += _linear("blocks/ffn/proj_out", "blocks.{i}.ffn.net.2", stacked=True)
  rows.append(E("blocks/scale_shift_table", "blocks.{i}.scale_shift_table", stacked=True))
  rows += _linear("proj_out", "proj_out")
  rows.append(E("scale_shift_table", "scale_shift_table"))
  return rows


def _read_config(directory: str | os.PathLike, class_name: str, config_type: Any) -> Any:
  """config.json of a `class_name` directory as `config_type.from_diffusers` builds it."""
  config = fmt.read_config(directory, (class_name,))
  try:
    return config_type.from_diffusers(config)
  except (TypeError, transformer_lib.WanConfigError) as e:
    raise fmt.CheckpointError(f"{directory}: {e}") from e


def read_transformer_config(directory: str | os.PathLike) -> transformer_lib.WanTransformerConfig:
  """The architecture of a diffusers Wan transformer directory (its config.json)."""
  return _read_config(directory, TRANSFORMER_CLASS, transformer_lib.WanTransformerConfig)


def check_transformer_config(directory: str | os.PathLike,
                             config: transformer_lib.WanTransformerConfig) -> None:
  """Raises CheckpointError naming every field where the checkpoint's architecture
  differs from `config` (e.g. 14B weights with the 1.3B config)."""
  found = read_transformer_config(directory)
  diffs = [f"{k}: checkpoint {getattr(found, k)!r}, config {getattr(config, k)!r}"
           for k in found.__dataclass_fields__ if getattr(found, k) != getattr(config, k)]
  if diffs:
    raise fmt.CheckpointError(
        f"{directory} does not match the configured Wan transformer (dim {config.dim}, "
        f"{config.num_layers} layers); checkpoint dim {found.dim}, {found.num_layers} layers. "
        "Differences: " + "; ".join(diffs))


def load_transformer(directory: str | os.PathLike, config: transformer_lib.WanTransformerConfig,
                     abstract_params: dict[str, Any], *,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
  """A diffusers WanTransformer3DModel directory, read into `abstract_params`' shardings."""
  check_transformer_config(directory, config)
  return fmt.load(directory, transformer_table(config), abstract_params,
                  ignore=TRANSFORMER_IGNORED, progress=progress)


def save_transformer(directory: str | os.PathLike, config: transformer_lib.WanTransformerConfig,
                     params: dict[str, Any], *, dtype: Any = jnp.float32,
                     max_shard_size: int = fmt.DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """Exports our parameters as a diffusers WanTransformer3DModel directory."""
  return fmt.save(directory, transformer_table(config), params, config.to_diffusers(),
                  dtype=jnp.dtype(dtype), max_shard_size=max_shard_size)


# Our VAE module names follow diffusers' except where the reference wraps a layer:
# (ours, theirs) substitutions on the '/'-joined path, applied in order.
VAE_RENAMES = (
    ("/conv/kernel", "/weight"),            # CausalConv3d holds its nnx.Conv as .conv
    ("/conv/bias", "/bias"),
    ("/resample/kernel", "/resample/1/weight"),   # nn.Sequential(Upsample | ZeroPad2d, Conv2d)
    ("/resample/bias", "/resample/1/bias"),
    ("/upsampler/", "/upsamplers/0/"),      # a one-element ModuleList in the reference
    ("/kernel", "/weight"),                 # the attention blocks' 1x1 Conv2d
)


def vae_table(abstract_params: dict[str, Any]) -> list[fmt.Entry]:
  """Our WanVAE parameters <-> diffusers' AutoencoderKLWan tensors.

  Generated from our parameter paths by VAE_RENAMES (the VAE's layer list depends on
  the config); conv kernels go channels-last, RMSNorm gains drop their broadcast
  dimensions ((C, 1, 1, 1) in the 3D norms, (C, 1, 1) in the attention blocks).
  """
  rows = []
  for ours in fmt.flatten(abstract_params):
    theirs = "/" + ours
    for old, new in VAE_RENAMES:
      theirs = theirs.replace(old, new)
    theirs = theirs[1:].replace("/", ".")
    if theirs.endswith(".weight") and not ours.endswith("bias"):
      layout = fmt.ConvKernel()
    elif ours.endswith("/gamma"):
      ones = (1, 1) if "/attentions/" in ours else (1, 1, 1)
      layout = fmt.Reshape(lambda s, ones=ones: (s[0], *ones))
    else:
      layout = fmt.IDENTITY
    rows.append(E(ours, theirs, layout))
  return rows


def read_vae_config(directory: str | os.PathLike) -> vae_lib.WanVAEConfig:
  """The architecture of a diffusers AutoencoderKLWan directory (its config.json)."""
  return _read_config(directory, VAE_CLASS, vae_lib.WanVAEConfig)


def load_vae(directory: str | os.PathLike, abstract_params: dict[str, Any]) -> dict[str, Any]:
  """A diffusers AutoencoderKLWan directory, read into `abstract_params`' shardings."""
  return fmt.load(directory, vae_table(abstract_params), abstract_params)


def save_vae(directory: str | os.PathLike, config: vae_lib.WanVAEConfig,
             params: dict[str, Any]) -> list[str]:
  """Exports our VAE parameters as a diffusers AutoencoderKLWan directory."""
  return fmt.save(directory, vae_table(params), params, config.to_diffusers())


def umt5_table() -> list[fmt.Entry]:
  """Our UMT5Encoder parameters <-> transformers' UMT5EncoderModel tensors."""
  block = "encoder.block.{i}.layer"
  rows = [E("shared", "shared.weight"),
          E("final_layer_norm/weight", "encoder.final_layer_norm.weight")]
  for proj in ("q", "k", "v"):
    rows.append(E(f"layers/{proj}", f"{block}.0.SelfAttention.{proj}.weight", fmt.LinearKernel(), True))
  rows += [E("layers/o", f"{block}.0.SelfAttention.o.weight", fmt.LinearKernel(2), True),
           E("layers/relative_attention_bias",
             f"{block}.0.SelfAttention.relative_attention_bias.weight", stacked=True),
           E("layers/attention_norm/weight", f"{block}.0.layer_norm.weight", stacked=True),
           E("layers/ffn_norm/weight", f"{block}.1.layer_norm.weight", stacked=True)]
  for proj in ("wi_0", "wi_1", "wo"):
    rows.append(E(f"layers/{proj}", f"{block}.1.DenseReluDense.{proj}.weight", fmt.LinearKernel(), True))
  return rows


def read_umt5_config(directory: str | os.PathLike) -> umt5_lib.UMT5Config:
  """The architecture of a transformers UMT5EncoderModel directory (its config.json)."""
  config = fmt.read_config(directory, (UMT5_CLASS,))
  try:
    return umt5_lib.UMT5Config.from_transformers(config)
  except (TypeError, umt5_lib.UMT5ConfigError) as e:
    raise fmt.CheckpointError(f"{directory}: {e}") from e


def load_umt5(directory: str | os.PathLike, abstract_params: dict[str, Any], *,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
  """A transformers UMT5EncoderModel directory (a pipeline's text_encoder/), read into
  `abstract_params`' shardings."""
  return fmt.load(directory, umt5_table(), abstract_params, ignore=UMT5_IGNORED,
                  progress=progress)


def save_umt5(directory: str | os.PathLike, config: umt5_lib.UMT5Config,
              params: dict[str, Any], *, dtype: Any = jnp.float32) -> list[str]:
  """Exports our encoder parameters as a transformers UMT5EncoderModel directory."""
  return fmt.save(directory, umt5_table(), params, config.to_transformers(),
                  dtype=jnp.dtype(dtype), stem=fmt.TRANSFORMERS_STEM)


# --- Wan-VideoJAM as a standard 2C-channel WanTransformer3DModel. ------------------------------
# The export concatenates the motion projections onto the video ones along channels:
# diffusers' model then takes [video latents, motion latents] (channels 0..C-1, C..2C-1)
# and returns [video velocity, motion velocity] the same way. Both patch layouts order
# a token's features (p_t, p_h, p_w, c), so the channel concatenation is per patch position.

def jam_as_diffusers(config: transformer_lib.WanTransformerConfig,
                     params: dict[str, Any]) -> tuple[transformer_lib.WanTransformerConfig,
                                                      dict[str, Any]]:
  """(2C-channel config, its parameters) holding a Wan-VideoJAM transformer's weights."""
  import dataclasses
  import numpy as np
  p = int(np.prod(config.patch_size))
  out = {k: v for k, v in params.items() if k not in ("motion_patch_embedding", "motion_proj_out")}
  embed = np.asarray(params["patch_embedding"]["kernel"])                  # [P*C, D]
  motion_embed = np.asarray(params["motion_patch_embedding"]["kernel"])
  d = embed.shape[-1]
  out["patch_embedding"] = dict(params["patch_embedding"], kernel=np.concatenate(
      [embed.reshape(p, -1, d), motion_embed.reshape(p, -1, d)], axis=1).reshape(-1, d))
  head, motion_head = params["proj_out"], params["motion_proj_out"]
  kernel = np.concatenate([np.asarray(head["kernel"]).reshape(d, p, -1),
                           np.asarray(motion_head["kernel"]).reshape(d, p, -1)], axis=2)
  bias = np.concatenate([np.asarray(head["bias"]).reshape(p, -1),
                         np.asarray(motion_head["bias"]).reshape(p, -1)], axis=1)
  out["proj_out"] = dict(kernel=kernel.reshape(d, -1), bias=bias.reshape(-1))
  channels = 2 * config.in_channels
  return dataclasses.replace(config, in_channels=channels, out_channels=channels), out


def save_jam_transformer(directory: str | os.PathLike, config: transformer_lib.WanTransformerConfig,
                         params: dict[str, Any], *, dtype: Any = jnp.float32,
                         max_shard_size: int = fmt.DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """Exports a Wan-VideoJAM transformer as a diffusers WanTransformer3DModel with
  in_channels = out_channels = 2C (channels C..2C-1 are motion)."""
  wide_config, wide = jam_as_diffusers(config, params)
  return save_transformer(directory, wide_config, wide, dtype=dtype, max_shard_size=max_shard_size)


def transformer_dir(path: str | os.PathLike) -> str | None:
  """The WanTransformer3DModel folder `path` names (itself, or a pipeline's
  transformer/), or None when `path` is not a diffusers Wan checkpoint."""
  import json
  import pathlib
  path = pathlib.Path(path)
  for candidate in (path, path / "transformer"):
    config = candidate / fmt.CONFIG_NAME
    if config.exists():
      try:
        if json.loads(config.read_text()).get("_class_name") == TRANSFORMER_CLASS:
          return str(candidate)
      except (json.JSONDecodeError, OSError):
        return None
  return None


def load_base_transformer(directory: str | os.PathLike, abstract_params: dict[str, Any]
                          ) -> dict[str, Any]:
  """A diffusers Wan transformer folder into `abstract_params` (our WanTransformer's
  parameters without motion projections), its architecture checked against theirs
  by the loader's shape checks."""
  found = read_transformer_config(directory)
  return fmt.load(directory, transformer_table(found), abstract_params, ignore=TRANSFORMER_IGNORED)


def jam_from_diffusers(wide_config: transformer_lib.WanTransformerConfig,
                       wide_params: dict[str, Any], channels: int
                       ) -> tuple[transformer_lib.WanTransformerConfig, dict[str, Any]]:
  """The inverse of `jam_as_diffusers`: a 2C-channel WanTransformer3DModel's parameters
  (host arrays) as a Wan-VideoJAM transformer's (C channels + motion projections)."""
  import dataclasses
  import numpy as np
  if wide_config.in_channels != 2 * channels or wide_config.out_channels != 2 * channels:
    raise fmt.CheckpointError(
        f"a Wan-VideoJAM export has {2 * channels} channels in and out ({channels} video + "
        f"{channels} motion); this one has {wide_config.in_channels} in, "
        f"{wide_config.out_channels} out")
  p = int(np.prod(wide_config.patch_size))
  out = dict(wide_params)
  embed = np.asarray(wide_params["patch_embedding"]["kernel"])
  d = embed.shape[-1]
  embed = embed.reshape(p, 2 * channels, d)
  out["patch_embedding"] = dict(wide_params["patch_embedding"],
                                kernel=embed[:, :channels].reshape(-1, d))
  out["motion_patch_embedding"] = {"kernel": embed[:, channels:].reshape(-1, d)}
  kernel = np.asarray(wide_params["proj_out"]["kernel"]).reshape(d, p, 2 * channels)
  bias = np.asarray(wide_params["proj_out"]["bias"]).reshape(p, 2 * channels)
  out["proj_out"] = dict(kernel=kernel[..., :channels].reshape(d, -1),
                         bias=bias[:, :channels].reshape(-1))
  out["motion_proj_out"] = dict(kernel=kernel[..., channels:].reshape(d, -1),
                                bias=bias[:, channels:].reshape(-1))
  return dataclasses.replace(wide_config, in_channels=channels, out_channels=channels), out


HASH_CHUNK_BYTES = 1 << 24


def vae_directory(path: str | os.PathLike) -> str:
  """The AutoencoderKLWan folder `path` names: itself, or a pipeline's vae/."""
  import pathlib
  path = pathlib.Path(path)
  return str(path / "vae" if (path / "vae" / fmt.CONFIG_NAME).exists() else path)


def vae_sha256(path: str | os.PathLike) -> str:
  """A hash of a VAE folder's config.json and weight files (names and bytes): the
  identity of the autoencoder a latent dataset was made with."""
  import hashlib
  import pathlib
  directory = pathlib.Path(vae_directory(path))
  if not directory.is_dir():
    raise fmt.CheckpointError(f"{directory} is not a directory")
  files = sorted(p for p in directory.iterdir()
                 if p.suffix == ".safetensors" or p.name == fmt.CONFIG_NAME)
  if not any(p.suffix == ".safetensors" for p in files):
    raise fmt.CheckpointError(f"{directory} holds no VAE weights (.safetensors)")
  digest = hashlib.sha256()
  for file in files:
    digest.update(file.name.encode())
    with open(file, "rb") as f:
      while chunk := f.read(HASH_CHUNK_BYTES):
        digest.update(chunk)
  return digest.hexdigest()
