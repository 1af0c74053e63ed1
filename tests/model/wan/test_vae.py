"""Unit tests of the Wan VAE (parity with diffusers: test_parity.py)."""

import pathlib

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videojam_jax.model import functional
from videojam_jax.model.wan import transformer as transformer_lib
from videojam_jax.model.wan import vae as vae_lib
from videojam_jax.model.wan import weights
from videojam_jax.parallel import sharding

TINY = vae_lib.WanVAEConfig(base_dim=4, z_dim=4, latents_mean=(-0.5, 0.25, 1.0, -1.5),
                            latents_std=(2.0, 0.5, 1.25, 3.0))


FIXTURE = pathlib.Path(__file__).parents[2] / "fixtures" / "wan" / "vae"


class Jitted:
  """encode / decode / normalize of a WanVAE as jitted functions of its parameters.

  The weights are the tiny reference VAE's (tests/fixtures/wan): loading them is
  quicker than compiling a random init of ~200 tensors on a CPU, and a Wan VAE is
  always used from a checkpoint.
  """

  def __init__(self, config):
    plan = sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=-1)))
    self.graphdef, abstract = functional.abstract_split(
        lambda: vae_lib.WanVAE(config, rngs=nnx.Rngs(0)), plan)
    self.params = weights.load_vae(FIXTURE, abstract)
    for name in ("encode", "decode", "normalize", "denormalize"):
      fn = jax.jit(lambda p, x, name=name: getattr(nnx.merge(self.graphdef, p), name)(x))
      setattr(self, name, lambda x, fn=fn: fn(self.params, x))


@pytest.fixture(scope="module")
def vae():
  return Jitted(TINY)


def test_compression_and_shapes(vae):
  assert TINY.temporal_compression == 4 and TINY.spatial_compression == 8
  video = jax.random.uniform(jax.random.key(0), (1, 9, 16, 8, 3), minval=-1, maxval=1)
  mean, logvar = vae.encode(video)
  assert mean.shape == logvar.shape == (1, 3, 2, 1, 4)
  decoded = vae.decode(mean)
  assert decoded.shape == (1, 9, 16, 8, 3)
  assert float(jnp.abs(decoded).max()) <= 1.0


def test_encoding_is_causal_in_time(vae):
  """Latent frame k sees only frames up to 4k: changing later frames leaves it alone."""
  video = jax.random.uniform(jax.random.key(0), (1, 9, 8, 8, 3), minval=-1, maxval=1)
  changed = video.at[:, 5:].set(0.0)
  a, _ = vae.encode(video)
  b, _ = vae.encode(changed)
  np.testing.assert_array_equal(a[:, :2], b[:, :2])
  assert float(jnp.abs(a[:, 2] - b[:, 2]).max()) > 0
  # And a shorter clip gives the same leading latents.
  c, _ = vae.encode(video[:, :5])
  np.testing.assert_allclose(a[:, :2], c, atol=1e-6)


def test_decoding_is_causal_in_time(vae):
  z = jax.random.normal(jax.random.key(1), (1, 3, 1, 1, 4))
  full = vae.decode(z)
  short = vae.decode(z[:, :2])
  np.testing.assert_allclose(full[:, :5], short, atol=1e-5)


def test_normalization_round_trips(vae):
  mean = jax.random.normal(jax.random.key(2), (1, 2, 1, 1, 4))
  np.testing.assert_allclose(vae.denormalize(vae.normalize(mean)), mean, atol=1e-6)
  np.testing.assert_allclose(vae.normalize(jnp.asarray(TINY.latents_mean)[None]), 0, atol=1e-7)


def test_clips_that_do_not_fit_are_named(vae):  # raised while tracing
  with pytest.raises(transformer_lib.WanConfigError, match="1 \\+ 4k frames"):
    vae.encode(jnp.zeros((1, 8, 8, 8, 3)))
  with pytest.raises(transformer_lib.WanConfigError, match="multiple of 8"):
    vae.encode(jnp.zeros((1, 5, 12, 8, 3)))


def test_wan22_vaes_are_refused():
  with pytest.raises(transformer_lib.WanConfigError, match="Wan 2.2"):
    vae_lib.WanVAEConfig.from_diffusers({"is_residual": True, "patch_size": 2})


def test_config_round_trips_through_diffusers_json():
  assert vae_lib.WanVAEConfig.from_diffusers(TINY.to_diffusers()) == TINY
  assert weights.read_vae_config(FIXTURE) == TINY
  assert vae_lib.WanVAEConfig().z_dim == 16
