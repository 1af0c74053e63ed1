"""The Flax NNX DiT computes what the Linen DiT it replaced computed.

Linen weights (tests/model/linen_reference.py, the pre-NNX model frozen) are copied
into the NNX model through one explicit renaming; then both give the same
velocities and the same train-step loss and gradients on a fixed batch.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from tests.conftest import FAST_COMPILE, tiny_config
from tests.model import linen_reference
from videojam_jax.data import text as text_lib
from videojam_jax.model import dit
from videojam_jax.parallel import sharding
from videojam_jax.training import flow_matching

# The text encoder's unrolled Linen layers `<name>_<i>` are one stacked NNX layer.
_TEXT_LAYER = re.compile(r"^text_encoder/(attn|attn_norm|mlp|mlp_norm)_(\d+)/(.*)$")


def linen_to_nnx(linen_params: dict, depth: int) -> dict:
  """Linen parameter tree -> the NNX model's pure-dict state (same arrays)."""
  flat = traverse_util.flatten_dict(nn.unbox(linen_params), sep="/")
  out, stacks = {}, {}
  for path, value in flat.items():
    path = path.replace("/LayerNorm_0/", "/")      # Linen's wrapped nn.LayerNorm
    match = _TEXT_LAYER.match(path)
    if match:
      name, index, rest = match.groups()
      stacks.setdefault(f"text_encoder/layers/{name}/{rest}", {})[int(index)] = value
    else:
      out[path] = np.asarray(value)
  for path, by_index in stacks.items():
    assert sorted(by_index) == list(range(depth)), path
    out[path] = np.stack([by_index[i] for i in range(depth)])
  return traverse_util.unflatten_dict(out, sep="/")


def nnx_model(config):
  plan = sharding.ShardingPlan.from_config(config.mesh)
  shape = dit.VideoShape.from_data_config(config.data)
  with plan.active():
    abstract = nnx.eval_shape(lambda: dit.build_model(config.model, shape, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  return plan, graphdef, nnx.to_pure_dict(state)


def batch_for(config, seed=0):
  d = config.data
  rng = np.random.default_rng(seed)
  shape = (2, d.num_frames, d.height, d.width, 3)
  ids, mask = text_lib.tokenize(["a red ball bounces to the left", "a blue square falls"],
                                config.model.text.max_length)
  return {"video": jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32),
          "motion": jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32),
          "text": jnp.asarray(ids), "text_mask": jnp.asarray(mask)}


# Both model kinds and both text-stack depths (the stacked layer mapping), in two runs:
# each compiles two models' gradients, the slowest unit test there is.
@pytest.mark.parametrize("jam, text_depth", [(True, 2), (False, 1)])
def test_same_outputs_loss_and_gradients(jam, text_depth, perturb_params):
  config = tiny_config(jam=jam)
  config.model.text.depth = text_depth
  linen = linen_reference.build_model(config)
  inputs = linen_reference.dummy_inputs(config, batch=2)
  linen_params = nn.unbox(jax.jit(linen.init)(jax.random.key(1), **inputs)["params"])
  # Trained-looking weights: zero-initialised heads and gates would hide differences.
  linen_params = perturb_params(jax.device_get(linen_params), seed=3)
  plan, graphdef, like = nnx_model(config)
  params = linen_to_nnx(linen_params, text_depth)
  assert jax.tree.structure(params) == jax.tree.structure(like)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), params, like)

  batch = batch_for(config)
  rng = jax.random.key(7)
  loss_config = config.loss

  def linen_loss(p):
    return flow_matching.joint_loss(lambda p, *a: linen.apply({"params": p}, *a), p, batch, rng,
                                    loss_config, jam)

  def nnx_loss(p):
    return flow_matching.joint_loss(lambda p, *a: nnx.merge(graphdef, p)(*a), p, batch, rng,
                                    loss_config, jam)

  jit = lambda f: jax.jit(f, compiler_options=FAST_COMPILE)
  (want_loss, want_metrics), want_grads = jit(jax.value_and_grad(linen_loss, has_aux=True))(linen_params)
  with plan.active():
    (got_loss, got_metrics), got_grads = jit(jax.value_and_grad(nnx_loss, has_aux=True))(params)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  for k in want_metrics:
    np.testing.assert_allclose(got_metrics[k], want_metrics[k], rtol=1e-5, err_msg=k)
  flat_want = traverse_util.flatten_dict(linen_to_nnx(want_grads, text_depth), sep="/")
  flat_got = traverse_util.flatten_dict(got_grads, sep="/")
  assert flat_got.keys() == flat_want.keys()
  for k in flat_want:
    np.testing.assert_allclose(flat_got[k], flat_want[k], rtol=2e-4, atol=2e-6, err_msg=k)

  # The velocities themselves, at two times, with and without the caption.
  x_t, d_t = batch["video"], (batch["motion"] if jam else None)
  t = jnp.asarray([0.2, 0.9])
  keep = jnp.asarray([True, False])
  want = jit(lambda p: linen.apply({"params": p}, x_t, d_t, t, batch["text"], batch["text_mask"],
                                   keep))(linen_params)
  with plan.active():
    got = jit(lambda p: nnx.merge(graphdef, p)(x_t, d_t, t, batch["text"],
                                               batch["text_mask"], keep))(params)
  # Outputs reach ~6: float32 reassociation leaves ~1e-5 absolute differences.
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=5e-5)
  if jam:
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=5e-5)
    assert float(jnp.abs(want[1]).mean()) > 1e-2   # the check compares real outputs
  else:
    assert got[1] is None and want[1] is None


def test_a_linen_checkpoint_gets_a_clear_error(tmp_path, tiny_jam):
  """Old (Linen) checkpoints are not converted; loading one says so."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from videojam_jax.training import checkpoints, runs  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  linen = linen_reference.build_model(config)
  params = jax.device_get(nn.unbox(jax.eval_shape(
      linen.init, jax.random.key(0), **linen_reference.dummy_inputs(config))["params"]))
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params)
  with ocp.CheckpointManager(str(tmp_path / "checkpoints")) as manager:
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(
        {"params": params, "ema_params": params})))
    manager.wait_until_finished()
  with pytest.raises(checkpoints.CheckpointMismatchError, match="written by the Linen DiT"):
    runs.load_params(tiny_jam.model, str(tmp_path), "ema")
