"""Loading a trained run: its config, and its weights into a model's shardings.

A training workdir holds `config.json`, the exact config of the run as the
trainer saved it, and `checkpoints/`. The config is read from there rather than
from the training config file: command-line overrides (`--config.model.jam=False`,
sizes, ...) are only recorded in the JSON. JSON has no tuples, so lists are read
back as tuples (config fields such as model.patch_size are tuples).

`load_params` is the one way weights enter a model: `train.init_from` and
offline evaluation both use it. Weights are restored straight into the target
shardings (no host copy of the whole model), and a base model's weights are
retrofitted to VideoJAM on the way in.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import ml_collections
from etils import epath

from videojam_jax.model import functional
from videojam_jax.model import lora as lora_lib
from videojam_jax.model import retrofit
from videojam_jax.model.wan import weights as wan_weights
from videojam_jax.training import checkpoints
from videojam_jax.training import experiment as experiment_lib

CONFIG_FILE = "config.json"


class RunNotFoundError(FileNotFoundError):
  """The workdir is not a finished training run."""


def _tuples(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def config_from_json(text: str) -> ml_collections.ConfigDict:
  """A ConfigDict from `ConfigDict.to_json_best_effort()` output (lists -> tuples)."""
  return ml_collections.ConfigDict(_tuples(json.loads(text)))


def load_run_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
  """The config a training run saved in `workdir/config.json`."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise RunNotFoundError(f"{str(workdir)!r} has no {CONFIG_FILE}: is it a training workdir "
                           "(python -m videojam_jax.train --workdir ...)?")
  return config_from_json(path.read_text())


def latest_step(workdir: epath.PathLike) -> int:
  """The step of the newest finished checkpoint in `workdir/checkpoints`."""
  try:
    return checkpoints.latest_finished_step(workdir)
  except checkpoints.CheckpointNotFoundError as e:
    raise RunNotFoundError(str(e)) from e


def with_mesh_config(config: ml_collections.ConfigDict,
                     mesh_config: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  """A copy of a run's config whose mesh is `mesh_config` (evaluation runs on its own devices)."""
  config = ml_collections.ConfigDict(config.to_dict())
  if mesh_config is not None:
    config.mesh = ml_collections.ConfigDict(mesh_config.to_dict())
  return config


@dataclasses.dataclass
class RunInfo:
  """What is known about a run without loading its weights."""
  name: str
  workdir: str
  config: ml_collections.ConfigDict   # the run's config (mesh replaced by the caller's)
  step: int                           # latest checkpoint step

  @property
  def jam(self) -> bool:
    return bool(self.config.model.jam)


def run_info(name: str, workdir: str,
             mesh_config: ml_collections.ConfigDict | None = None) -> RunInfo:
  """The config and latest checkpoint step of the run in `workdir` (cheap)."""
  path = epath.Path(workdir).expanduser()
  workdir = str(path if "://" in str(path) else path.resolve())
  config = with_mesh_config(load_run_config(workdir), mesh_config)
  return RunInfo(name, workdir, config, latest_step(workdir))


def load_params(model: functional.FunctionalModel, path: str, which: str = "ema", *,
                step: int | None = None, adapter_key: jax.Array | None = None,
                motion_head: str = "copy") -> Any:
  """A run's `which` weights ('ema' | 'params') in `model`'s shardings.

  `path` is a run's workdir or its checkpoints/ folder, or (for a Wan model) a
  diffusers Wan transformer folder or pipeline folder, e.g. the downloaded
  Wan2.1-T2V-1.3B-Diffusers. A base checkpoint loaded into a VideoJAM model is
  retrofitted (`retrofit.base_to_jam`: zero motion input rows, the motion head a
  copy of the video head, or zeros with motion_head="zeros"); a VideoJAM checkpoint
  cannot go into a baseline model.
  A LoRA model (model.lora) loading weights without adapters gets fresh ones from
  `adapter_key` (default key 0): B = 0, so it starts as those weights.
  """
  target = model.abstract_params
  if model.lora is None or _has_adapters(path, which, step):
    return _load(model, target, path, which, step, motion_head)
  weights = _load(model, lora_lib.without_adapters(target), path, which, step, motion_head)
  key = jax.random.key(0) if adapter_key is None else adapter_key
  return lora_lib.merge(weights, model.init_adapters(key))


def _has_adapters(path: str, which: str, step: int | None) -> bool:
  if wan_weights.transformer_dir(path) is not None:
    return False
  return lora_lib.has_adapters(checkpoints.params_metadata(path, which, step=step))


def _load(model: functional.FunctionalModel, target: Any, path: str, which: str,
          step: int | None, motion_head: str = "copy") -> Any:
  """`path`'s weights as the tree `target` (the model's parameters, or part of them)."""
  out_shardings = jax.tree.map(lambda a: a.sharding, target)
  diffusers_dir = wan_weights.transformer_dir(path)
  if diffusers_dir is not None:
    return _load_diffusers_wan(model, target, diffusers_dir, motion_head)
  saved = checkpoints.params_metadata(path, which, step=step)
  if lora_lib.has_adapters(saved) and not lora_lib.has_adapters(target):
    raise lora_lib.LoraConfigError(
        f"{path}: a LoRA run's weights (adapters beside a frozen base) cannot be loaded into "
        "a model without adapters: set model.lora as that run did, or export the run "
        "(python -m videojam_jax.export folds the adapters into the weights)")
  if model.jam and not retrofit.is_jam(saved):
    base = checkpoints.load_params(path, which, retrofit.base_params_like(target), step=step)
    with model.plan.active():
      return jax.jit(lambda p: retrofit.base_to_jam(p, target, motion_head),
                     out_shardings=out_shardings)(base)
  if not model.jam and retrofit.is_jam(saved):
    raise retrofit.RetrofitError(
        f"{path}: a VideoJAM checkpoint cannot be loaded into a baseline model (model.jam=False)")
  return checkpoints.load_params(path, which, target, step=step)


def _load_diffusers_wan(model: functional.FunctionalModel, target: Any, directory: str,
                        motion_head: str = "copy") -> Any:
  if "transformer" not in target:
    raise retrofit.RetrofitError(f"{directory} is a diffusers Wan transformer; it initialises "
                                 "model.family='wan' models only")
  base_like = retrofit.base_params_like(target) if model.jam else target
  if set(base_like) != {"transformer"}:
    raise retrofit.RetrofitError(
        f"{directory}: a diffusers Wan transformer reads umT5 embeddings; this model also has "
        f"{sorted(set(base_like) - {'transformer'})} (set model.text.source='precomputed')")
  base = {"transformer": wan_weights.load_base_transformer(directory, base_like["transformer"])}
  if not model.jam:
    return base
  with model.plan.active():
    return jax.jit(lambda p: retrofit.base_to_jam(p, target, motion_head),
                   out_shardings=jax.tree.map(lambda a: a.sharding, target))(base)


@dataclasses.dataclass
class LoadedModel:
  """A run's weights placed on its experiment's mesh."""
  info: RunInfo
  experiment: experiment_lib.Experiment
  params: Any


def load_model(info: RunInfo, weights: str = "ema") -> LoadedModel:
  """Loads `weights` ('ema' or 'params') of `info`'s checkpoint at `info.step`."""
  experiment = experiment_lib.build(info.config)
  params = load_params(experiment.model, info.workdir, weights, step=info.step)
  return LoadedModel(info, experiment, params)
