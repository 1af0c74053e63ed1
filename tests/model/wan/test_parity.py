"""Parity with the PyTorch reference (diffusers), on the committed fixtures.

tests/fixtures/wan/make_fixtures.py built tiny random Wan models with diffusers
(versions in versions.json), saved them with save_pretrained (the transformer
sharded) and recorded float32 inputs and outputs. Here they go through our
loader and our modules. Tolerances sit just above the float32 noise floor of
these shapes; the errors reached are printed (pytest -s) for the parity table.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videojam_jax.model import functional
from videojam_jax.model.wan import transformer as transformer_lib
from videojam_jax.model.wan import vae as vae_lib
from videojam_jax.model.wan import weights
from videojam_jax.parallel import sharding

FIXTURES = pathlib.Path(__file__).parents[2] / "fixtures" / "wan"


@pytest.fixture(scope="module")
def outputs():
  return dict(np.load(FIXTURES / "outputs.npz"))


@pytest.fixture(scope="module")
def plan():
  import ml_collections
  return sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=-1)))


def _report(name, ours, theirs):
  err = np.abs(np.asarray(ours, np.float64) - theirs)
  rel = err.max() / np.abs(theirs).max()
  print(f"\n{name}: max abs {err.max():.3g}, max abs / max |ref| {rel:.3g}, "
        f"|ref| max {np.abs(theirs).max():.3g}")
  return err.max(), rel


def load_transformer(plan, **kwargs):
  config = weights.read_transformer_config(FIXTURES / "transformer")
  graphdef, abstract = functional.abstract_split(
      lambda: transformer_lib.WanTransformer(config, rngs=nnx.Rngs(0), **kwargs), plan)
  params = weights.load_transformer(FIXTURES / "transformer", config, abstract)
  return config, graphdef, params


def test_transformer_matches_diffusers(outputs, plan):
  config, graphdef, params = load_transformer(plan)
  assert config.num_layers == 2 and config.dim == 24

  @jax.jit
  def forward(params, latents, timestep, text):
    return nnx.merge(graphdef, params)(latents, timestep, text)

  latents = outputs["transformer_latents"].transpose(0, 2, 3, 4, 1)       # -> channels-last
  out = forward(params, latents, outputs["transformer_timestep"], outputs["transformer_text"])
  ours = np.asarray(out).transpose(0, 4, 1, 2, 3)
  abs_err, rel = _report("transformer", ours, outputs["transformer_output"])
  assert rel < 1e-5, (abs_err, rel)


def test_transformer_remat_and_scan_do_not_change_the_output(outputs, plan):
  _, graphdef, params = load_transformer(plan, remat_policy="full")
  latents = outputs["transformer_latents"].transpose(0, 2, 3, 4, 1)
  out = jax.jit(lambda p: nnx.merge(graphdef, p)(latents, outputs["transformer_timestep"],
                                                   outputs["transformer_text"]))(params)
  np.testing.assert_allclose(np.asarray(out).transpose(0, 4, 1, 2, 3),
                             outputs["transformer_output"], rtol=0, atol=1e-5)


def load_vae(plan):
  config = weights.read_vae_config(FIXTURES / "vae")
  graphdef, abstract = functional.abstract_split(
      lambda: vae_lib.WanVAE(config, rngs=nnx.Rngs(0)), plan)
  return config, graphdef, weights.load_vae(FIXTURES / "vae", abstract)


def test_vae_encode_matches_diffusers(outputs, plan):
  config, graphdef, params = load_vae(plan)
  assert config.z_dim == 4 and config.temporal_compression == 4
  video = outputs["vae_video"].transpose(0, 2, 3, 4, 1)
  mean, logvar = jax.jit(lambda p, v: nnx.merge(graphdef, p).encode(v))(params, video)
  abs_err, rel = _report("vae encode (mean)", np.asarray(mean).transpose(0, 4, 1, 2, 3),
                         outputs["vae_latent_mean"])
  assert rel < 1e-5, (abs_err, rel)
  _report("vae encode (logvar)", np.asarray(logvar).transpose(0, 4, 1, 2, 3),
          outputs["vae_latent_logvar"])
  np.testing.assert_allclose(np.asarray(logvar).transpose(0, 4, 1, 2, 3),
                             outputs["vae_latent_logvar"], rtol=0,
                             atol=1e-5 * np.abs(outputs["vae_latent_logvar"]).max())


def test_vae_decode_matches_diffusers(outputs, plan):
  _, graphdef, params = load_vae(plan)
  z = outputs["vae_z"].transpose(0, 2, 3, 4, 1)
  video = jax.jit(lambda p, z: nnx.merge(graphdef, p).decode(z))(params, z)
  assert video.shape == (2, 13, 16, 24, 3)
  abs_err, rel = _report("vae decode", np.asarray(video).transpose(0, 4, 1, 2, 3),
                         outputs["vae_decoded"])
  # float32 through the decoder's ~30 convolutions: 1.05e-5 with today's jax wheels.
  assert rel < 2e-5, (abs_err, rel)
