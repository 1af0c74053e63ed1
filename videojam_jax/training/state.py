"""Train state, optimiser and sharded initialisation.

Parameters are float32 master weights (compute dtype is config.model.dtype).
The state is created directly in its sharded layout: `jax.eval_shape` gives the
abstract tree with logical names, sharding.py maps them to mesh axes, and the
init function is jitted with those out_shardings, so no host ever holds the
whole model.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from videojam_jax.model import dit as model_lib
from videojam_jax.parallel import sharding


class TrainState(flax.struct.PyTreeNode):
  step: jnp.ndarray
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


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Global-norm clipping + AdamW on the warmup/decay schedule."""
  optim = config.optim
  return optax.chain(
      optax.clip_by_global_norm(optim.grad_clip_norm),
      optax.adamw(learning_rate_schedule(optim, config.train.num_steps),
                  b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay))


def _init_fn(config: ml_collections.ConfigDict, tx: optax.GradientTransformation):
  model = model_lib.build_model(config)

  def init(rng: jax.Array) -> TrainState:
    variables = model.init(rng, **model_lib.dummy_inputs(config))
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=params, opt_state=tx.init(params))
  return init


def abstract_state_and_shardings(config: ml_collections.ConfigDict, mesh: Mesh,
                                 tx: optax.GradientTransformation) -> tuple[TrainState, TrainState]:
  """(abstract unboxed state, its NamedShardings) without allocating anything."""
  rules = sharding.get_rules(config.mesh.rules)
  boxed = jax.eval_shape(_init_fn(config, tx), jax.random.key(0))
  shardings = sharding.tree_shardings(mesh, rules, boxed)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nn.unbox(boxed), shardings)
  return abstract, shardings


def create_train_state(config: ml_collections.ConfigDict, mesh: Mesh,
                       tx: optax.GradientTransformation) -> tuple[TrainState, TrainState]:
  """A freshly initialised, sharded train state and its shardings."""
  rules = sharding.get_rules(config.mesh.rules)
  _, shardings = abstract_state_and_shardings(config, mesh, tx)
  init = _init_fn(config, tx)
  # out_shardings places the state; no mesh in scope here because Flax would also
  # constrain each scanned block's params inside nn.scan, where the 'layers' axis
  # is already sliced off.
  with nn.logical_axis_rules(rules):
    state = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(
        jax.random.key(config.seed))
  return state, shardings


def count_params(params: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
