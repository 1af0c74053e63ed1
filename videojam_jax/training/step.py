"""The one jitted train step: loss, gradients (with accumulation), AdamW, EMA.

Explicit in/out shardings, donated state, no host work inside. The step's
randomness is `fold_in(key(seed), step)`, so a resumed run draws exactly the
noise an uninterrupted run would have drawn. The model is rebuilt from its
parameters inside the loss (`FunctionalModel.apply`: nnx.merge at trace time).
For LoRA (`LoraTrainState`), the loss differentiates only the trainable part; the
frozen base is merged in there, so XLA never computes its weight gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding

from videojam_jax.model import functional
from videojam_jax.model import lora as lora_lib
from videojam_jax.parallel import sharding
from videojam_jax.training import flow_matching
from videojam_jax.training.state import LoraTrainState, TrainState

Batch = dict[str, jax.Array]
StepFn = Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]


def batch_shardings(plan: sharding.ShardingPlan,
                    batch_spec: Mapping[str, Any]) -> dict[str, NamedSharding]:
  """Every batch array is split on its leading (batch) axis."""
  return {k: plan.batch_sharding(len(v.shape)) for k, v in batch_spec.items()}


class TrainStep:
  """`step(state, batch) -> (state, metrics)`, jitted for one model, optimiser and batch layout.

  `jitted` is the bare jax.jit function (for ahead-of-time lowering); calling the
  object runs it with the plan's mesh and rules in scope (the model's activation
  constraints are resolved at trace time).
  """

  def __init__(self, model: functional.FunctionalModel, tx: optax.GradientTransformation, *,
               loss_config: ml_collections.ConfigDict, ema_decay: float, grad_accum_steps: int,
               seed: int, state_shardings: TrainState, batch_spec: Mapping[str, Any]):
    self.plan = model.plan
    self.batch_shardings = batch_shardings(self.plan, batch_spec)
    accum, jam = int(grad_accum_steps), model.jam

    def loss_and_grads(state, params, batch, rng):
      apply = model.apply
      if isinstance(state, LoraTrainState):
        apply = lambda p, *a, **k: model.apply(lora_lib.merge(p, state.frozen), *a, **k)
      grad_fn = jax.value_and_grad(flow_matching.joint_loss, argnums=1, has_aux=True)
      (_, metrics), grads = grad_fn(apply, params, batch, rng, loss_config, jam)
      return grads, metrics

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
      rng = jax.random.fold_in(jax.random.key(seed), state.step)
      if accum == 1:
        grads, metrics = loss_and_grads(state, state.params, batch, rng)
      else:
        # Micro-batches in a scan: one optimizer update per step, 1/accum the activations.
        micro = jax.tree.map(lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)
        # Each micro-batch laid out like a whole batch. Without this explicit layout
        # the Shardy partitioner (JAX 0.10.2, CPU) computed wrong activations for
        # float inputs with tensor parallelism (tests/parallel/test_sharding.py), and
        # the micro-batches would not be spread over all batch shards.
        micro = jax.tree.map(
            lambda x: sharding.constrain(x, (None, "activation_batch") + (None,) * (x.ndim - 2)),
            micro)

        def body(carry, xs):
          grads_sum, metrics_sum = carry
          mb, i = xs
          g, m = loss_and_grads(state, state.params, mb, jax.random.fold_in(rng, i))
          return (jax.tree.map(jnp.add, grads_sum, g), jax.tree.map(jnp.add, metrics_sum, m)), None

        zeros_g = jax.tree.map(jnp.zeros_like, state.params)
        first = jax.tree.map(lambda x: x[0], micro)
        zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                               jax.eval_shape(lambda: loss_and_grads(state, state.params, first,
                                                                     rng)[1]))
        (grads, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m), (micro, jnp.arange(accum)))
        grads = jax.tree.map(lambda g: g / accum, grads)
        metrics = jax.tree.map(lambda m: m / accum, metrics)

      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.ema_params, params)
      metrics["grad_norm"] = optax.global_norm(grads)
      return state.replace(step=state.step + 1, params=params, ema_params=ema,
                           opt_state=opt_state), metrics

    self.jitted = jax.jit(step, in_shardings=(state_shardings, self.batch_shardings),
                          out_shardings=(state_shardings, self.plan.replicated()),
                          donate_argnums=(0,))

  def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    with self.plan.active():
      return self.jitted(state, batch)

  def lower(self, state: Any, batch: Any) -> Any:
    """jax.jit(...).lower for abstract (ShapeDtypeStruct) state and batch (aot.py)."""
    with self.plan.active():
      return self.jitted.lower(state, batch)
