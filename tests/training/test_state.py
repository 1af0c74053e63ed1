"""The optimiser that training/state.py builds from config.optim."""

import jax.numpy as jnp
import ml_collections

from configs import quickstart
from videojam_jax.training import state as state_lib


def _updates(grad_clip_norm: float, grads: list[dict]) -> list:
  """The optimiser's update for each of a sequence of gradients."""
  optim = ml_collections.ConfigDict(quickstart.defaults().optim.to_dict())
  optim.grad_clip_norm = grad_clip_norm
  optim.warmup_steps = 0
  optim.weight_decay = 0.0
  tx = state_lib.create_optimizer(optim, num_steps=10)
  params = {"w": jnp.zeros((3,))}
  opt_state, out = tx.init(params), []
  for g in grads:
    updates, opt_state = tx.update(g, opt_state, params)
    out.append(updates["w"])
  return out


# A huge gradient then a small one: clipping the first changes Adam's moments, so the second
# update depends on whether (and where) the norm was clipped.
GRADS = [{"w": jnp.array([3000.0, -4000.0, 0.0])}, {"w": jnp.array([0.003, 0.004, 0.001])}]


def test_grad_clip_norm_zero_means_no_clipping():
  # clip_by_global_norm(0) would scale every gradient to zero and silently stop training.
  none = _updates(0.0, GRADS)
  assert jnp.abs(none[-1][:2]).min() > 0   # (the first step has learning rate 0)
  unbounded = _updates(1e12, GRADS)
  for a, b in zip(none, unbounded):
    assert jnp.allclose(a, b, rtol=1e-6)


def test_grad_clip_norm_clips():
  clipped, none = _updates(1.0, GRADS), _updates(0.0, GRADS)
  assert not jnp.allclose(clipped[1], none[1], rtol=1e-3)
