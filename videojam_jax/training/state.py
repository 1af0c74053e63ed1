"""Train state and optimiser, created directly in their sharded layout.

Parameters are float32 master weights (the compute dtype is config.model.dtype).
The state is a pytree of arrays (params as nested dicts, optax state, EMA): what
Orbax saves and the jitted step donates. Its shardings come from the model's
logical axis names (`FunctionalModel.shardings`); the optimiser's moments share
their parameter's sharding (`optax.tree_map_params`), scalars are replicated.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from videojam_jax.model import functional


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: optax.OptState


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
  """Global-norm clipping + AdamW on the warmup/decay schedule (config.optim)."""
  return optax.chain(
      optax.clip_by_global_norm(optim.grad_clip_norm),
      optax.adamw(learning_rate_schedule(optim, num_steps),
                  b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay))


def abstract_state(model: functional.FunctionalModel,
                   tx: optax.GradientTransformation) -> TrainState:
  """The state's shapes, dtypes and shardings (jax.ShapeDtypeStruct leaves), allocating nothing."""
  params = model.abstract_params
  replicated = model.plan.replicated()
  opt_state = jax.eval_shape(tx.init, params)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, opt_state, model.shardings,
      transform_non_params=lambda _: replicated)
  with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
  return TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), params=params,
      ema_params=params, opt_state=jax.tree.map(with_sharding, opt_state, opt_shardings))


def shardings(state: TrainState) -> TrainState:
  """The NamedSharding of every leaf of an (abstract or concrete) state."""
  return jax.tree.map(lambda a: a.sharding, state)


def init_state(model: functional.FunctionalModel, tx: optax.GradientTransformation,
               key: jax.Array, params: Any | None = None) -> TrainState:
  """A fresh state in its shardings: new parameters from `key`, or the given `params`
  (e.g. loaded from another run) with a fresh optimiser and EMA."""
  target = shardings(abstract_state(model, tx))
  if params is None:
    params = model.init(key)

  def create(params: Any) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))
  with model.plan.active():
    return jax.jit(create, out_shardings=target)(params)


def count_params(params: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
