"""The one jitted train step: loss, gradients (with accumulation), AdamW, EMA.

Explicit in/out shardings, donated state, no host work inside. The step's
randomness is `fold_in(key(seed), step)`, so a resumed run draws exactly the
noise an uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding

from videojam_jax.training import flow_matching
from videojam_jax.model import dit as model_lib
from videojam_jax.parallel import sharding
from videojam_jax.training.state import TrainState

Batch = dict[str, jnp.ndarray]


def batch_shardings(mesh: Mesh, rules: sharding.LogicalRules, batch_spec: dict[str, Any]) -> dict[str, NamedSharding]:
  """Every batch array is split on its leading (batch) axis."""
  return {k: sharding.logical_sharding(mesh, rules, "activation_batch", *([None] * (len(v.shape) - 1)))
          for k, v in batch_spec.items()}


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh,
                    tx: optax.GradientTransformation, state_shardings: TrainState,
                    batch_spec: dict[str, Any]) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """Builds the jitted `step(state, batch) -> (state, metrics)` for this mesh."""
  model = model_lib.build_model(config)
  rules = sharding.get_rules(config.mesh.rules)
  accum = int(config.optim.grad_accum_steps)
  jam = bool(config.model.jam)

  def apply_fn(params, *args):
    return model.apply({"params": params}, *args)

  def loss_and_grads(params, batch, rng):
    grad_fn = jax.value_and_grad(flow_matching.joint_loss, argnums=1, has_aux=True)
    (_, metrics), grads = grad_fn(apply_fn, params, batch, rng, config.loss, jam)
    return grads, metrics

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
    if accum == 1:
      grads, metrics = loss_and_grads(state.params, batch, rng)
    else:
      # Micro-batches in a scan: one optimizer update per step, 1/accum the activations.
      micro = jax.tree.map(lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)
      # Each micro-batch laid out like a whole batch. Without this explicit layout
      # the Shardy partitioner (JAX 0.10.2, CPU) computed wrong activations for
      # float inputs with tensor parallelism (tests/test_sharding.py), and the
      # micro-batches would not be spread over all batch shards.
      micro = jax.tree.map(
          lambda x: sharding.constrain(x, (None, "activation_batch") + (None,) * (x.ndim - 2)), micro)

      def body(carry, xs):
        grads_sum, metrics_sum = carry
        mb, i = xs
        g, m = loss_and_grads(state.params, mb, jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, grads_sum, g), jax.tree.map(jnp.add, metrics_sum, m)), None

      zeros_g = jax.tree.map(jnp.zeros_like, state.params)
      first_m = jax.eval_shape(lambda: loss_and_grads(state.params, jax.tree.map(lambda x: x[0], micro), rng)[1])
      zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first_m)
      (grads, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m), (micro, jnp.arange(accum)))
      grads = jax.tree.map(lambda g: g / accum, grads)
      metrics = jax.tree.map(lambda m: m / accum, metrics)

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = config.optim.ema_decay
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
    metrics["grad_norm"] = optax.global_norm(grads)
    return state.replace(step=state.step + 1, params=params, ema_params=ema,
                         opt_state=opt_state), metrics

  in_batch = batch_shardings(mesh, rules, batch_spec)
  jitted = jax.jit(step, in_shardings=(state_shardings, in_batch),
                   out_shardings=(state_shardings, sharding.replicated(mesh)),
                   donate_argnums=(0,))

  def run(state: TrainState, batch: Batch):
    # Tracing needs the mesh and rules for the logical activation constraints.
    with sharding.mesh_context(mesh, rules):
      return jitted(state, batch)

  run.jitted = jitted          # for ahead-of-time lowering (aot.py)
  run.in_batch_shardings = in_batch
  return run
