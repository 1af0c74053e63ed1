"""Tests for turning a base DiT checkpoint into a VideoJAM one (videojam_jax/model/retrofit.py).

The promise of DESIGN.md §1: with W_in+ = [W_in ; 0] the retrofitted model
computes exactly what the base model computed, whatever the motion input.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import FAST_COMPILE
from tests.conftest import BackgroundCommand
from tests.conftest import start_early
from tests.conftest import started_command
from tests.conftest import tiny_config
from videojam_jax.model import dit
from videojam_jax.model import functional
from videojam_jax.model import retrofit
from videojam_jax.parallel import sharding
from videojam_jax.training import checkpoints
from videojam_jax.training import runs


def _args(inputs, **changes):
  merged = {**inputs, **changes}
  return [merged[k] for k in ("x_t", "d_t", "t", "text", "text_mask", "text_keep")]


@pytest.fixture(scope="module")
def trained_base(tiny_base, perturb_params):
  """Base (jam=False) parameters with every head and adaLN gate non-zero."""
  params = perturb_params(tiny_base.init_params, seed=11)
  assert np.any(params["video_head"]["kernel"])
  return params


def assert_same_video_output(tiny_base, tiny_jam, base_params, jam_params, inputs, seed=0):
  """The JAM model's u_x equals the base model's u_x, for several motion inputs."""
  rng = np.random.default_rng(seed)
  u_base, none = tiny_base.apply(base_params, *_args(inputs, d_t=None))
  assert none is None
  assert float(jnp.abs(u_base).max()) > 1e-2        # a non-trivial output to compare
  for d_scale in (0.0, 1.0, 10.0):
    d_t = jnp.asarray(d_scale * rng.standard_normal(inputs["x_t"].shape), jnp.float32)
    u_x, u_d = tiny_jam.apply(jam_params, *_args(inputs, d_t=d_t))
    # Exactly equal: the motion rows add exact zeros to the tokens and the rest of
    # the network is the same computation. (Should XLA ever fuse the two input
    # projections into one matmul, summation order could differ at ~1e-7.)
    np.testing.assert_array_equal(u_x, u_base)
    assert u_d.shape == u_x.shape
  return u_base


def test_retrofitted_model_computes_what_the_base_computed(tiny_base, tiny_jam, trained_base,
                                                           model_inputs):
  jam_params = retrofit.base_to_jam(trained_base, tiny_jam.init_params)
  assert retrofit.is_jam(jam_params) and not retrofit.is_jam(trained_base)
  np.testing.assert_array_equal(jam_params["motion_patch_embed"]["kernel"], 0)
  for inputs in (model_inputs,
                 dict(model_inputs, t=jnp.asarray([0.0, 1.0]), text_keep=jnp.asarray([False, True]))):
    assert_same_video_output(tiny_base, tiny_jam, trained_base, jam_params, inputs)


def test_motion_head_starts_as_a_copy_of_the_video_head(tiny_jam, trained_base, model_inputs):
  jam_params = retrofit.base_to_jam(trained_base, tiny_jam.init_params)
  for name in ("kernel", "bias"):
    np.testing.assert_array_equal(jam_params["motion_head"][name], trained_base["video_head"][name])
    # A copy, not an alias: training the motion head must not move the video head.
    assert not np.shares_memory(np.asarray(jam_params["motion_head"][name]),
                                trained_base["video_head"][name])
  u_x, u_d = tiny_jam.apply(jam_params, *_args(model_inputs))
  np.testing.assert_allclose(u_d, u_x, rtol=1e-6, atol=1e-6)
  # Everything the base model had is carried over unchanged.
  for name in trained_base:
    jax.tree.map(np.testing.assert_array_equal, jam_params[name], trained_base[name])


def test_motion_head_can_start_at_zero(tiny_base, tiny_jam, trained_base, model_inputs):
  jam_params = retrofit.base_to_jam(trained_base, tiny_jam.init_params, motion_head="zeros")
  for name in ("kernel", "bias"):
    np.testing.assert_array_equal(jam_params["motion_head"][name], 0)
  _, u_d = tiny_jam.apply(jam_params, *_args(model_inputs))
  np.testing.assert_array_equal(u_d, 0)   # no motion prediction until it learns one
  assert_same_video_output(tiny_base, tiny_jam, trained_base, jam_params, model_inputs)
  with pytest.raises(retrofit.RetrofitError, match="choose from"):
    retrofit.base_to_jam(trained_base, tiny_jam.init_params, motion_head="xavier")


def test_retrofit_check_can_fail(tiny_base, tiny_jam, trained_base, model_inputs):
  # The same comparison with non-zero motion rows must fail: the test has teeth.
  jam_params = retrofit.base_to_jam(trained_base, tiny_jam.init_params)
  kernel = jam_params["motion_patch_embed"]["kernel"]
  jam_params["motion_patch_embed"] = {"kernel": jnp.full(kernel.shape, 0.05, kernel.dtype)}
  with pytest.raises(AssertionError):
    assert_same_video_output(tiny_base, tiny_jam, trained_base, jam_params, model_inputs)


def test_already_jam_checkpoint_is_rejected(tiny_jam):
  with pytest.raises(retrofit.RetrofitError, match="already a VideoJAM model"):
    retrofit.base_to_jam(tiny_jam.init_params, tiny_jam.init_params)


def test_missing_and_unexpected_parameters_are_named(tiny_jam, trained_base):
  missing = {k: v for k, v in trained_base.items() if k != "text_proj"}
  with pytest.raises(retrofit.RetrofitError, match=r"missing \['text_proj'\]"):
    retrofit.base_to_jam(missing, tiny_jam.init_params)
  extra = dict(trained_base, lora={"kernel": np.zeros((2, 2))})
  with pytest.raises(retrofit.RetrofitError, match=r"unexpected \['lora'\]"):
    retrofit.base_to_jam(extra, tiny_jam.init_params)


# The base run goes through the real entry point in a subprocess that starts
# when collection ends (so it compiles while other tests run) and builds with
# cheap XLA backend options (the train step is by far the longest compile).
BASE_RUN_CONFIG = """
from tests.conftest import tiny_config

def get_config():
  config = tiny_config({dataset_dir!r}, jam=False)
  config.train.num_steps = 2
  config.train.checkpoint_every = 2
  # Move the zero-initialised heads well away from zero in two steps.
  config.optim.warmup_steps = 0
  config.optim.learning_rate = 0.05
  config.optim.ema_decay = 0.5
  config.sample.guidance = "none"
  return config
"""


@start_early("base_run")
def start_base_run(workdir):
  """`python -m videojam_jax.train` for 2 steps of a tiny baseline, on its own tiny dataset."""
  from data_pipelines import synthetic_dataset
  dataset_dir = str(workdir / "data")
  synthetic_dataset.build(tiny_config(dataset_dir, jam=False))
  config_path = workdir / "base_config.py"
  config_path.write_text(BASE_RUN_CONFIG.format(dataset_dir=dataset_dir))
  xla_flags = " ".join(f"--{k}={str(v).lower()}" for k, v in FAST_COMPILE.items())
  return BackgroundCommand(
      [sys.executable, "-m", "videojam_jax.train", f"--config={config_path}",
       f"--workdir={workdir / 'run'}"], workdir, env={"JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags})


@pytest.fixture(scope="module")
def base_run():
  return started_command("base_run")


def test_init_from_a_base_run_retrofits_its_weights(base_run, make_tiny_config, tiny_base,
                                                    tiny_jam, model_inputs):
  """A base run's checkpoint, loaded by a JAM model as train.init_from loads it (runs.load_params):
  restored straight into the JAM model's shardings, then retrofitted."""
  returncode, output = base_run.result()
  assert returncode == 0, output[-5000:]
  base_workdir = str(base_run.workdir / "run")
  assert sorted(os.listdir(os.path.join(base_workdir, "checkpoints"))) == ["2"]
  ema = checkpoints.load_weights(base_workdir, "ema")
  params = checkpoints.load_weights(os.path.join(base_workdir, "checkpoints"), "params")
  assert not retrofit.is_jam(ema)
  # Two steps moved the zero-initialised video head away from zero.
  assert np.any(ema["video_head"]["kernel"])
  assert not np.array_equal(ema["video_head"]["kernel"], params["video_head"]["kernel"])

  jam_model = tiny_jam.model
  start = runs.load_params(jam_model, base_workdir, "ema")
  jax.tree.map(lambda a, s: (np.testing.assert_equal(a.shape, s.shape),
                             np.testing.assert_equal(a.sharding, s.sharding)),
               start, jam_model.abstract_params)
  start = jax.device_get(start)
  expected = retrofit.base_to_jam(ema, tiny_jam.init_params)
  jax.tree.map(np.testing.assert_array_equal, start, expected)
  np.testing.assert_array_equal(start["motion_patch_embed"]["kernel"], 0)
  assert_same_video_output(tiny_base, tiny_jam, ema, start, model_inputs)

  # init_from_weights="params" picks the raw (non-EMA) weights.
  start_raw = jax.device_get(runs.load_params(jam_model, base_workdir, "params"))
  np.testing.assert_array_equal(start_raw["video_head"]["kernel"], params["video_head"]["kernel"])
  np.testing.assert_array_equal(start_raw["motion_head"]["kernel"], params["video_head"]["kernel"])
  # The base run loads into a baseline model as it is.
  base_again = jax.device_get(runs.load_params(tiny_base.model, base_workdir, "ema"))
  jax.tree.map(np.testing.assert_array_equal, base_again, ema)
  # A model of another size is a clear error naming the shapes.
  wider = make_tiny_config(jam=True)
  wider.model.width = 64
  wide_model = functional.build(wider.model, dit.VideoShape.from_data_config(wider.data),
                                sharding.ShardingPlan.from_config(wider.mesh))
  with pytest.raises(checkpoints.CheckpointMismatchError, match=r"patch_embed.*\(96, 32\).*|.*64"):
    runs.load_params(wide_model, base_workdir, "ema")


def test_jam_checkpoint_into_baseline_is_rejected(tmp_path, tiny_jam, tiny_base):
  """A VideoJAM run's checkpoint cannot start a baseline model."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "jam_run"
  with ocp.CheckpointManager(str(workdir / "checkpoints")) as manager:
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(
        {"params": tiny_jam.init_params, "ema_params": tiny_jam.init_params})))
    manager.wait_until_finished()
  with pytest.raises(retrofit.RetrofitError, match="cannot be loaded into a baseline model"):
    runs.load_params(tiny_base.model, str(workdir), "ema")


def test_init_from_a_missing_run_is_a_clear_error(tmp_path, tiny_jam):
  with pytest.raises(FileNotFoundError, match="no checkpoints folder"):
    runs.load_params(tiny_jam.model, str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match="'ema' or 'params'"):
    runs.load_params(tiny_jam.model, str(tmp_path), "best")
