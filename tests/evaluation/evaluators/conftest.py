"""Shared by the evaluator tests: a tiny VideoJAM experiment on the tiny dataset, with
perturbed (non-zero-head) params. A test module may define its own `setup`."""

import jax
import pytest

from videojam_jax.training import experiment


@pytest.fixture(scope="module")
def setup(synthetic_data, make_tiny_config, perturb_params):
  config = make_tiny_config(synthetic_data[0])
  exp = experiment.build(config)
  params = perturb_params(jax.device_get(exp.model.init(jax.random.key(0))), seed=9)
  return exp, params
