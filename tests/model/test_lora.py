"""LoRA (videojam_jax/model/lora.py): a fresh LoRA model is its base bit for bit, folding
gives the same outputs, and a train step moves only the trainable part."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import wan_tiny
from videojam_jax.model import dit
from videojam_jax.model import functional
from videojam_jax.model import lora as lora_lib
from videojam_jax.parallel import sharding
from videojam_jax.training import config_checks
from videojam_jax.training import state as state_lib
from videojam_jax.training import step as step_lib

SHAPE = dit.VideoShape(2, 8, 8, 3)


def model_config(rank=0, jam=True, frozen_dtype="float32"):
  config = wan_tiny.get_config()
  config.model.jam = jam
  config.model.lora.rank = rank
  config.model.lora.alpha = 2.0 * max(rank, 1)
  config.model.lora.frozen_dtype = frozen_dtype
  return config


@pytest.fixture(scope="module")
def plan():
  return sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=-1)))


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 200, (2, 8)).astype(np.int32)
  return dict(x=rng.standard_normal((2,) + SHAPE.dims).astype(np.float32),
              d=rng.standard_normal((2,) + SHAPE.dims).astype(np.float32),
              t=np.array([0.2, 0.8], np.float32), text=ids, mask=np.ones((2, 8), bool))


def forward(model, params, inputs):
  keep = jnp.ones((2,), bool)
  return jax.jit(lambda p: model.apply(p, inputs["x"], inputs["d"], inputs["t"], inputs["text"],
                                       inputs["mask"], keep))(params)


def test_adapters_sit_beside_every_attention_and_ffn_projection(plan):
  model = functional.build(model_config(rank=4).model, SHAPE, plan)
  trainable, frozen = lora_lib.split(model.abstract_params)
  blocks = model.abstract_params["transformer"]["blocks"]
  for attn in ("attn1", "attn2"):
    for proj in ("to_q", "to_k", "to_v", "to_out"):
      assert set(blocks[attn][proj + "_lora"]) == {"lora_a", "lora_b"}
  assert blocks["attn1"]["to_q_lora"]["lora_a"].shape == (2, 24, 4)       # [layers, in, rank]
  assert blocks["attn1"]["to_q_lora"]["lora_b"].shape == (2, 4, 2, 12)    # [layers, rank, heads, d]
  assert blocks["attn1"]["to_out_lora"]["lora_a"].shape == (2, 2, 12, 4)
  assert blocks["ffn"]["proj_in_lora"]["lora_b"].shape == (2, 4, 48)
  # Trained: the adapters and VideoJAM's two new projections; everything else frozen.
  assert set(trainable["transformer"]) == {"blocks", "motion_patch_embedding", "motion_proj_out"}
  assert "patch_embedding" in frozen["transformer"] and "proj_out" in frozen["transformer"]
  assert not lora_lib.has_adapters(frozen)
  assert lora_lib.merge(trainable, frozen).keys() == model.abstract_params.keys()
  base = functional.build(model_config(rank=0).model, SHAPE, plan)
  assert jax.tree.structure(lora_lib.without_adapters(model.abstract_params)) == \
      jax.tree.structure(base.abstract_params)


def test_a_fresh_lora_model_is_its_base_bit_for_bit_and_folding_keeps_its_outputs(plan, inputs):
  base = functional.build(model_config(rank=0).model, SHAPE, plan)
  model = functional.build(model_config(rank=4).model, SHAPE, plan)
  base_params = base.init(jax.random.key(1))
  params = lora_lib.merge(base_params, model.init_adapters(jax.random.key(2)))
  for ours, theirs in zip(forward(model, params, inputs), forward(base, base_params, inputs)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  # Trained adapters (random B) change the outputs; folded into the kernels, the plain
  # model gives the same outputs again.
  keys = iter(jax.random.split(jax.random.key(3), 64))
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: (0.3 * jax.random.normal(next(keys), x.shape)
                       if jax.tree_util.keystr(path).endswith("['lora_b']") else x), params)
  adapted = forward(model, params, inputs)
  assert np.abs(np.asarray(adapted[0]) - np.asarray(forward(base, base_params, inputs)[0])).max() > 1e-2
  folded = lora_lib.fold(params, model.lora.scale)
  assert jax.tree.structure(folded) == jax.tree.structure(base_params)
  for ours, theirs in zip(forward(base, folded, inputs), adapted):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=2e-5, rtol=1e-5)


def batch(inputs):
  return dict(video=inputs["x"], motion=inputs["d"], text=inputs["text"],
              text_mask=inputs["mask"])


def test_a_lora_train_step_moves_only_the_trainable_part(plan, inputs):
  config = model_config(rank=4, frozen_dtype="bfloat16")
  model = functional.build(config.model, SHAPE, plan)
  tx = optax.adamw(1e-2)
  state = state_lib.init_state(model, tx, jax.random.key(0))
  assert isinstance(state, state_lib.LoraTrainState)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.frozen))
  # The optimiser's moments cover the trained part only.
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
  assert sum(x.size for x in moments) == 2 * state_lib.count_params(state.params)
  assert state_lib.count_params(state.params) < state_lib.count_params(state.frozen) / 4
  frozen_before = jax.device_get(state.frozen)
  trained_before = jax.device_get(state.params)
  b = batch(inputs)
  spec = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in b.items()}
  step = step_lib.TrainStep(model, tx, loss_config=config.loss, ema_decay=0.5,
                            grad_accum_steps=1, seed=0,
                            state_shardings=state_lib.shardings(state_lib.abstract_state(model, tx)),
                            batch_spec=spec)
  for _ in range(2):
    state, metrics = step(state, b)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.frozen), frozen_before)
  after = jax.device_get(state.params)
  moved = lambda path: np.abs(traverse_util.flatten_dict(after)[path]
                              - traverse_util.flatten_dict(trained_before)[path]).max()
  assert moved(("transformer", "blocks", "attn1", "to_q_lora", "lora_b")) > 0
  assert moved(("transformer", "motion_proj_out", "kernel")) > 0
  whole = state_lib.model_params(state, "ema")
  assert jax.tree.structure(whole) == jax.tree.structure(model.abstract_params)


def test_lora_is_refused_for_the_dit_and_for_impossible_settings():
  from configs import tiny
  config = tiny.get_config()
  config.model.lora.rank = 8
  with pytest.raises(config_checks.ConfigError, match="LoRA is built for model.family='wan'"):
    config_checks.check_config(config)
  config = model_config(rank=4, frozen_dtype="float16")
  with pytest.raises(config_checks.ConfigError, match="frozen_dtype"):
    config_checks.check_config(config)
  with pytest.raises(lora_lib.LoraConfigError, match="family='wan' only"):
    dit_config = tiny.get_config().model
    dit_config.lora.rank = 8
    functional.build(dit_config, SHAPE, sharding.ShardingPlan.from_config(
        ml_collections.ConfigDict(dict(data=-1))))
