"""What a run builds once and hands down: the sharding plan, the model, the caption inputs.

Every entry point (train, evaluate, aot) turns a config into an `Experiment`
first; the train step, the sampler, the evaluators and checkpoint restores then
take the parts they need, instead of each re-deriving the mesh, the rules or the
model from the whole config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import ml_collections

from videojam_jax.data import text as text_lib
from videojam_jax.model import dit
from videojam_jax.model import functional
from videojam_jax.parallel import sharding


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A run's config and the objects built from it, once."""
  config: ml_collections.ConfigDict     # the full run config (saved as config.json)
  plan: sharding.ShardingPlan           # mesh + logical-axis rules
  model: functional.FunctionalModel     # graph definition + abstract sharded params
  captions: text_lib.CaptionInputs      # captions -> model text inputs (train and sample)

  @property
  def video_shape(self) -> dit.VideoShape:
    return self.model.video_shape


def build(config: ml_collections.ConfigDict, *,
          devices: Sequence[jax.Device] | None = None,
          load_captions: bool = True) -> Experiment:
  """The experiment of a run config on `devices` (default: all).

  load_captions=False skips reading precomputed caption embeddings (ahead-of-time
  compiles need only their shapes).
  """
  plan = sharding.ShardingPlan.from_config(config.mesh, devices)
  video_shape = dit.VideoShape.from_data_config(config.data)
  model = functional.build(config.model, video_shape, plan)
  embeddings = config.data.get("text_embeddings", "") if load_captions else None
  captions = text_lib.CaptionInputs(config.model.text, embeddings)
  return Experiment(config, plan, model, captions)
