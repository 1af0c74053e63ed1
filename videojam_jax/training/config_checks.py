"""Early, clear errors for configs that cannot work (before anything is compiled)."""

from __future__ import annotations

import ml_collections

from videojam_jax.evaluation import evaluators
from videojam_jax.model import dit as model_lib
from videojam_jax.model import retrofit
from videojam_jax.training import metric_writer


class ConfigError(ValueError):
  """The config asks for something impossible."""


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the offending field(s)."""
  m, d, t = config.model, config.data, config.train
  problems = []
  dims = {"data.num_frames": d.num_frames, "data.height": d.height, "data.width": d.width}
  family = m.get("family", "dit")
  tensor = int(config.mesh.get("tensor", 1))
  if family == "wan":
    problems += _wan_problems(m, d, dims, tensor)
  elif family == "dit":
    problems += _dit_problems(m, dims, tensor)
  else:
    problems.append(f"model.family={family!r}; choose 'dit' or 'wan'")
  if tensor > 1 and m.text.source == "builtin" and m.text.num_heads % tensor:
    problems.append(f"model.text.num_heads={m.text.num_heads} is not divisible by mesh.tensor={tensor}")
  if m.text.source == "builtin" and m.text.width % m.text.num_heads:
    problems.append(f"model.text.width={m.text.width} is not divisible by model.text.num_heads")
  if m.remat_policy not in model_lib.REMAT_POLICIES:
    problems.append(f"model.remat_policy={m.remat_policy!r}; choose from {sorted(model_lib.REMAT_POLICIES)}")
  if m.get("motion_input_init", "zeros") not in model_lib.MOTION_INPUT_INITS:
    problems.append(f"model.motion_input_init={m.motion_input_init!r}; choose from "
                    f"{model_lib.MOTION_INPUT_INITS}")
  if t.retrofit_motion_head not in retrofit.MOTION_HEAD_INITS:
    problems.append(f"train.retrofit_motion_head={t.retrofit_motion_head!r}; choose from "
                    f"{retrofit.MOTION_HEAD_INITS}")
  lora = m.get("lora")
  if lora is not None and int(lora.get("rank", 0)):
    if family != "wan":
      problems.append(f"model.lora.rank={lora.rank}: LoRA is built for model.family='wan' only, "
                      f"not {family!r}; set model.lora.rank=0 to train every weight")
    if int(lora.rank) < 0 or float(lora.get("alpha", lora.rank)) <= 0:
      problems.append(f"model.lora.rank={lora.rank} / alpha={lora.get('alpha')} must be positive")
    if lora.get("frozen_dtype", "float32") not in ("float32", "bfloat16"):
      problems.append(f"model.lora.frozen_dtype={lora.frozen_dtype!r}; choose float32 or bfloat16")
  if m.dtype not in ("float32", "bfloat16", "float16"):
    problems.append(f"model.dtype={m.dtype!r}; choose float32, bfloat16 or float16")
  if m.text.source not in ("builtin", "precomputed"):
    problems.append(f"model.text.source={m.text.source!r}; choose 'builtin' or 'precomputed'")
  if int(d.get("channels", 3)) != 3 and config.evals.samples.every_steps:
    problems.append(f"data.channels={d.channels} (latent clips): the samples evaluator writes "
                    "pixel videos and decoding latent samples with the VAE in the trainer is "
                    "not built; set evals.samples.every_steps=0 (sample with "
                    "`python -m videojam_jax.generate` after export)")
  if d.num_frames < 2:
    problems.append("data.num_frames must be >= 2 (motion needs two frames)")
  if t.batch_size < 1 or t.num_steps < 1:
    problems.append("train.batch_size and train.num_steps must be positive")
  accum = config.optim.grad_accum_steps
  if accum < 1:
    problems.append(f"optim.grad_accum_steps={accum} must be >= 1")
  elif t.batch_size % accum:
    problems.append(f"train.batch_size={t.batch_size} is not divisible by optim.grad_accum_steps={accum}")
  for name in ("text_dropout", "motion_dropout"):
    if not 0.0 <= config.loss[name] < 1.0:
      problems.append(f"loss.{name}={config.loss[name]} must be in [0, 1)")
  if not config.loss.motion_weight >= 0.0:
    problems.append(f"loss.motion_weight={config.loss.motion_weight} must be >= 0")
  if not config.optim.grad_clip_norm >= 0.0:
    problems.append(f"optim.grad_clip_norm={config.optim.grad_clip_norm} must be >= 0 (0: no "
                    "clipping)")
  if not 0.0 <= config.optim.ema_decay < 1.0:
    problems.append(f"optim.ema_decay={config.optim.ema_decay} must be in [0, 1)")
  for name in ("log_every", "checkpoint_every"):
    if t[name] < 1:
      problems.append(f"train.{name} must be >= 1")
  if t.metric_writer not in metric_writer.BACKENDS:
    problems.append(f"train.metric_writer={t.metric_writer!r}; choose from {metric_writer.BACKENDS}")
  steps = tuple(t.profile_steps)
  if steps and (min(steps) < 1 or max(steps) > t.num_steps):
    problems.append(f"train.profile_steps={steps} must lie in [1, train.num_steps={t.num_steps}]")
  for name, block in config.get("evals", {}).items():
    if "type" not in block:
      problems.append(f"evals.{name} needs a 'type'")
      continue
    if int(block.get("every_steps", 0)) < 0:
      problems.append(f"evals.{name}.every_steps={block.every_steps} must be >= 0 (0: off)")
    if block.get("weights", "ema") not in evaluators.WEIGHTS:
      problems.append(f"evals.{name}.weights={block.weights!r}; choose from {evaluators.WEIGHTS}")
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def _dit_problems(m: ml_collections.ConfigDict, dims: dict[str, int], tensor: int) -> list[str]:
  problems = []
  for (name, size), p in zip(dims.items(), m.patch_size):
    if size % p:
      problems.append(f"{name}={size} is not divisible by the patch size {p} (model.patch_size={tuple(m.patch_size)})")
  if m.width % m.num_heads:
    problems.append(f"model.width={m.width} is not divisible by model.num_heads={m.num_heads}")
  if tensor > 1:
    # Tensor parallelism splits attention heads and MLP units over the 'tensor' axis.
    for name, size in (("model.num_heads", m.num_heads), ("model.width * model.mlp_ratio",
                                                           int(m.width * m.mlp_ratio))):
      if size % tensor:
        problems.append(f"{name}={size} is not divisible by mesh.tensor={tensor}")
  return problems


def _wan_problems(m: ml_collections.ConfigDict, d: ml_collections.ConfigDict,
                  dims: dict[str, int], tensor: int) -> list[str]:
  problems = []
  w = m.get("wan")
  if w is None:
    return ["model.family='wan' needs a model.wan block (the transformer's architecture)"]
  patch = tuple(w.get("patch_size", (1, 2, 2)))
  for (name, size), p in zip(dims.items(), patch):
    if size % p:
      problems.append(f"{name}={size} is not divisible by the patch size {p} (model.wan.patch_size={patch})")
  channels = int(d.get("channels", 3))
  for name in ("in_channels", "out_channels"):
    if int(w.get(name, 16)) != channels:
      problems.append(f"model.wan.{name}={w.get(name, 16)} but the clips have data.channels={channels}")
  if tensor > 1:
    for name in ("num_attention_heads", "ffn_dim"):
      if int(w[name]) % tensor:
        problems.append(f"model.wan.{name}={w[name]} is not divisible by mesh.tensor={tensor}")
  return problems
