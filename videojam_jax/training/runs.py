"""Loading a trained run (its config and weights) for sampling.

A training workdir holds `config.json`, the exact config of the run as the
trainer saved it, and `checkpoints/`. The config is read from there rather than
from the training config file: command-line overrides (`--config.model.jam=False`,
sizes, ...) are only recorded in the JSON. JSON has no tuples, so lists are read
back as tuples (config fields such as model.patch_size are tuples).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from videojam_jax.training import checkpoints
from videojam_jax.model import retrofit
from videojam_jax.parallel import sharding
from videojam_jax.training import state as train_state_lib

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


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run saved in `workdir/config.json`."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise RunNotFoundError(f"{workdir!r} has no {CONFIG_FILE}: is it a training workdir "
                           "(python -m videojam_jax.train --workdir ...)?")
  with open(path, encoding="utf-8") as f:
    return config_from_json(f.read())


def latest_step(workdir: str) -> int:
  """The step of the newest checkpoint in `workdir/checkpoints`."""
  directory = checkpoints.checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise RunNotFoundError(f"{workdir!r} has no checkpoints folder ({directory})")
  with ocp.CheckpointManager(directory, item_names=(checkpoints.STATE,
                                                    checkpoints.DATA_ITERATOR)) as manager:
    step = manager.latest_step()
  if step is None:
    raise RunNotFoundError(f"{directory} holds no finished checkpoint")
  return int(step)


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
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = with_mesh_config(load_run_config(workdir), mesh_config)
  return RunInfo(name, workdir, config, latest_step(workdir))


@dataclasses.dataclass
class LoadedModel:
  """A run's weights placed on `mesh`, ready for `sampler.make_sampler(info.config, mesh, ...)`."""
  info: RunInfo
  mesh: Mesh
  params: Any


def load_model(info: RunInfo, weights: str = "ema") -> LoadedModel:
  """Loads `weights` ('ema' or 'params') of `info`'s latest checkpoint onto its mesh.

  Raises if a newer checkpoint appeared since `info` was read, so a result is
  never labelled with a step other than the one that made it.
  """
  config = info.config
  mesh = sharding.create_mesh(config.mesh)
  tx = train_state_lib.create_optimizer(config)
  abstract, shardings = train_state_lib.abstract_state_and_shardings(config, mesh, tx)
  loaded = checkpoints.load_weights(info.workdir, weights)
  if latest_step(info.workdir) != info.step:
    raise RuntimeError(f"{info.workdir}: a new checkpoint appeared while loading step "
                       f"{info.step}; rerun when training has stopped or saved")
  params = retrofit.load_into(loaded, abstract.params, jam=info.jam)
  params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), params, shardings.params)
  return LoadedModel(info, mesh, params)
