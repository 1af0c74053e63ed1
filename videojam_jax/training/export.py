"""A trained run's weights -> a diffusers model directory PyTorch users can load.

Wan runs (model.family = "wan") export their transformer as a diffusers
`WanTransformer3DModel` folder (config.json + safetensors, sharded past 5 GB with
an index), through the same name/layout table the loader uses
(`model/wan/weights.py`); a LoRA run's adapters are folded into the weights first. Only the model is built (no data is read); the weights
are restored straight into the config's mesh, and on several hosts every process
must run the export (shards are gathered, process 0 writes).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from videojam_jax.model import dit
from videojam_jax.model import functional
from videojam_jax.model import lora as lora_lib
from videojam_jax.model import text_encoder as text_encoder_lib
from videojam_jax.model.wan import video_model
from videojam_jax.model.wan import weights as wan_weights
from videojam_jax.parallel import sharding
from videojam_jax.training import runs


class ExportError(ValueError):
  """A run that cannot be exported as asked."""


def export_run(workdir: str, out_dir: str | os.PathLike, *, which: str = "ema",
               dtype: Any = jnp.float32, step: int | None = None) -> list[str]:
  """Writes the `which` ('ema' | 'params') weights of the run in `workdir` (its latest
  checkpoint, or `step`) to `out_dir` as a diffusers WanTransformer3DModel; returns the
  files written."""
  model_config = runs.load_run_config(workdir).model      # checked before any weights are read
  family = model_config.get("family", "dit")
  if family != "wan":
    raise ExportError(f"{workdir}: a {family!r} run has no diffusers counterpart; only "
                      "model.family='wan' runs export (as WanTransformer3DModel)")
  if model_config.text.source == "builtin":
    raise ExportError(f"{workdir}: the run trained its own byte-level text encoder "
                      "(model.text.source='builtin'), which diffusers' Wan cannot run; train "
                      "on precomputed umT5 embeddings to export")
  info = runs.run_info("export", workdir)
  plan = sharding.ShardingPlan.from_config(info.config.mesh)
  model = functional.build(model_config, dit.VideoShape.from_data_config(info.config.data), plan)
  params = runs.load_params(model, info.workdir, which,
                            step=info.step if step is None else step)
  if model.lora is not None:   # LoRA: adapters folded into the kernels, W + (alpha/r) A B
    with model.plan.active():
      params = jax.jit(lambda p: lora_lib.fold(p, model.lora.scale))(params)
  config = video_model.transformer_config(model_config,
                                          text_encoder_lib.text_width(model_config.text))
  if model.jam:   # Wan-VideoJAM: a 2C-channel WanTransformer3DModel, channels C.. motion
    return wan_weights.save_jam_transformer(out_dir, config, params["transformer"], dtype=dtype)
  return wan_weights.save_transformer(out_dir, config, params["transformer"], dtype=dtype)
