"""Wan-VideoJAM: the retrofit of a diffusers Wan checkpoint, and its 2C-channel export.

The base is the diffusers fixture transformer (tests/fixtures/wan/transformer, 16
latent channels); `runs.load_params` retrofits it (`train.init_from` does the same).
"""

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from videojam_jax.model import dit
from videojam_jax.model import functional
from videojam_jax.model import retrofit
from videojam_jax.model.wan import transformer as transformer_lib
from videojam_jax.model.wan import video_model
from videojam_jax.model.wan import weights
from videojam_jax.parallel import sharding
from videojam_jax.sampling import sampler as sampler_lib
from videojam_jax.training import runs

FIXTURE = pathlib.Path(__file__).parents[2] / "fixtures" / "wan" / "transformer"
SHAPE = dit.VideoShape(3, 8, 8, 16)


@pytest.fixture(scope="module")
def plan():
  return sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=-1)))


def wan_model(plan, jam):
  config = weights.read_transformer_config(FIXTURE)

  def create(rngs):
    return video_model.WanVideoModel(config, video_shape=SHAPE, text_encoder=None, jam=jam,
                                     rngs=rngs)
  graphdef, abstract = functional.abstract_split(lambda: create(nnx.Rngs(0)), plan)
  return functional.FunctionalModel(graphdef, abstract, SHAPE, jam, plan, create)


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  return dict(x=rng.standard_normal((2,) + SHAPE.dims).astype(np.float32),
              d=rng.standard_normal((2,) + SHAPE.dims).astype(np.float32),
              t=np.array([0.1, 0.7], np.float32),
              text=rng.standard_normal((2, 5, 32)).astype(np.float32),
              mask=np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool))


def forward(model, params, inputs, d=None):
  keep = jnp.ones((2,), bool)
  return jax.jit(lambda p, d: model.apply(p, inputs["x"], d, inputs["t"], inputs["text"],
                                          inputs["mask"], keep))(params, d)


def test_retrofit_keeps_the_base_video_output_bit_for_bit(plan, inputs):
  base_model, jam_model = wan_model(plan, False), wan_model(plan, True)
  base = runs.load_params(base_model, str(FIXTURE))
  jam = runs.load_params(jam_model, str(FIXTURE))
  assert retrofit.is_jam(jam) and not retrofit.is_jam(base)
  np.testing.assert_array_equal(jam["transformer"]["motion_patch_embedding"]["kernel"], 0)
  np.testing.assert_array_equal(jam["transformer"]["motion_proj_out"]["kernel"],
                                base["transformer"]["proj_out"]["kernel"])
  u_base, none = forward(base_model, base, inputs)
  u_jam, u_motion = forward(jam_model, jam, inputs, inputs["d"])
  assert none is None and u_motion.shape == u_base.shape
  np.testing.assert_array_equal(np.asarray(u_jam), np.asarray(u_base))   # exactly
  # Whatever the motion input: its rows are zero.
  u_jam2, _ = forward(jam_model, jam, inputs, 3 * inputs["d"] + 1)
  np.testing.assert_array_equal(np.asarray(u_jam2), np.asarray(u_base))


def test_export_is_a_2c_channel_wan_transformer_with_the_same_outputs(plan, inputs, tmp_path,
                                                                      perturb_params):
  jam_model = wan_model(plan, True)
  params = perturb_params(jax.device_get(runs.load_params(jam_model, str(FIXTURE))), seed=5)
  u_x, u_d = forward(jam_model, params, inputs, inputs["d"])
  config = weights.read_transformer_config(FIXTURE)
  weights.save_jam_transformer(tmp_path / "jam", config, params["transformer"])
  wide = weights.read_transformer_config(tmp_path / "jam")
  assert wide.in_channels == wide.out_channels == 32
  graphdef, abstract = functional.abstract_split(
      lambda: transformer_lib.WanTransformer(wide, rngs=nnx.Rngs(0)), plan)
  loaded = weights.load_transformer(tmp_path / "jam", wide, abstract)
  text = np.where(inputs["mask"][..., None], inputs["text"], 0)
  out = jax.jit(lambda p: nnx.merge(graphdef, p)(
      np.concatenate([inputs["x"], inputs["d"]], -1), 1000 * (1 - inputs["t"]), text))(loaded)
  # Our velocities are data - noise, diffusers' noise - data.
  np.testing.assert_allclose(-np.asarray(out[..., :16]), u_x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(-np.asarray(out[..., 16:]), u_d, rtol=1e-5, atol=1e-5)
  assert np.abs(u_d).max() > 1e-2


def test_inner_guidance_is_refused_for_a_base_wan_and_allowed_for_wan_videojam():
  settings = sampler_lib.SamplerSettings(num_steps=2, solver="euler", time_shift=3.0,
                                         schedule="uniform", guidance="inner", text_scale=4.0,
                                         motion_scale=2.0, inner_guidance_until=1.0, batched=True)
  with pytest.raises(sampler_lib.GuidanceError, match="Inner-Guidance needs a VideoJAM model"):
    settings.validate(jam=False)
  assert settings.validate(jam=True) is settings


def test_a_diffusers_wan_cannot_initialise_other_models(plan, make_tiny_config):
  config = make_tiny_config()
  model = functional.build(config.model, dit.VideoShape.from_data_config(config.data), plan)
  with pytest.raises(retrofit.RetrofitError, match="model.family='wan' models only"):
    runs.load_params(model, str(FIXTURE))
