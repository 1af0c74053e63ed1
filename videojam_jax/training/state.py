"""Train state and optimiser, created directly in their sharded layout.

Parameters are float32 master weights (the compute dtype is config.model.dtype).
The state is a pytree of arrays (params as nested dicts, optax state, EMA): what
Orbax saves and the jitted step donates. Its shardings come from the model's
logical axis names (`FunctionalModel.shardings`); the optimiser's moments share
their parameter's sharding (`optax.tree_map_params`), scalars are replicated.

LoRA runs (model.lora) hold a `LoraTrainState`: `params`, `ema_params` and the
optimiser cover only the trainable part (adapters, VideoJAM's motion projections);
`frozen` is the rest of the model, stored once in model.lora.frozen_dtype.
`model_params` gives the whole tree either way.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from videojam_jax.model import functional
from videojam_jax.model import lora as lora_lib


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: optax.OptState


class LoraTrainState(TrainState):
  """A LoRA run's state: the trained part as in TrainState, and the frozen base."""
  frozen: Any


def model_params(state: TrainState, which: str = "params") -> Any:
  """The whole model's parameters of a state: its `params` or `ema` weights (with the
  frozen base merged in, for LoRA)."""
  if which not in ("params", "ema"):
    raise ValueError(f"which must be 'params' or 'ema', got {which!r}")
  params = state.ema_params if which == "ema" else state.params
  return lora_lib.merge(params, state.frozen) if isinstance(state, LoraTrainState) else params


def _frozen_abstract(model: functional.FunctionalModel, frozen: Any) -> Any:
  dtype = jnp.dtype(model.lora.frozen_dtype)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(
      a.shape, dtype if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype,
      sharding=a.sharding), frozen)


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warmup, then constant or cosine decay to end_learning_rate_factor * lr."""
  lr, warmup = optim.learning_rate, int(optim.warmup_steps)
  if optim.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [warmup])
  if optim.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, max(warmup, 1), max(num_steps, warmup + 1), lr * optim.end_learning_rate_factor)
  raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {optim.schedule!r}")


def create_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """Global-norm clipping (off at grad_clip_norm=0) + AdamW on the warmup/decay schedule."""
  # clip_by_global_norm(0) would scale every gradient to zero; 0 means "no clipping".
  clip = (optax.clip_by_global_norm(optim.grad_clip_norm) if optim.grad_clip_norm > 0
          else optax.identity())
  return optax.chain(
      clip,
      optax.adamw(learning_rate_schedule(optim, num_steps),
                  b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay))


def abstract_state(model: functional.FunctionalModel,
                   tx: optax.GradientTransformation) -> TrainState:
  """The state's shapes, dtypes and shardings (jax.ShapeDtypeStruct leaves), allocating nothing."""
  params, frozen = model.abstract_params, None
  if model.lora is not None:
    params, frozen = lora_lib.split(params)
  replicated = model.plan.replicated()
  opt_state = jax.eval_shape(tx.init, params)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, opt_state, jax.tree.map(lambda a: a.sharding, params),
      transform_non_params=lambda _: replicated)
  with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
  fields = dict(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), params=params,
                ema_params=params,
                opt_state=jax.tree.map(with_sharding, opt_state, opt_shardings))
  if frozen is None:
    return TrainState(**fields)
  return LoraTrainState(**fields, frozen=_frozen_abstract(model, frozen))


def shardings(state: TrainState) -> TrainState:
  """The NamedSharding of every leaf of an (abstract or concrete) state."""
  return jax.tree.map(lambda a: a.sharding, state)


def init_state(model: functional.FunctionalModel, tx: optax.GradientTransformation,
               key: jax.Array, params: Any | None = None) -> TrainState:
  """A fresh state in its shardings: new parameters from `key`, or the given `params`
  (e.g. loaded from another run; the whole model's tree) with a fresh optimiser and EMA."""
  abstract = abstract_state(model, tx)
  target = shardings(abstract)
  if params is None:
    params = model.init(key)

  def create(params: Any) -> TrainState:
    frozen = None
    if isinstance(abstract, LoraTrainState):
      params, frozen = lora_lib.split(params)
      frozen = jax.tree.map(lambda x, a: x.astype(a.dtype), frozen, abstract.frozen)
    fields = dict(step=jnp.zeros((), jnp.int32), params=params,
                  ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))
    return TrainState(**fields) if frozen is None else LoraTrainState(**fields, frozen=frozen)
  with model.plan.active():
    return jax.jit(create, out_shardings=target)(params)


def count_params(params: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
