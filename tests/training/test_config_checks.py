"""Tests for early config errors (videojam_jax/training/config_checks.py) and the train command's flags."""

import sys

import pytest

from tests.conftest import BackgroundCommand
from tests.conftest import start_early
from tests.conftest import started_command
from videojam_jax.training import config_checks
from videojam_jax.parallel import sharding


def test_tiny_and_quickstart_configs_are_valid(make_tiny_config):
  from configs import quickstart, quickstart_gpu
  config_checks.check_config(quickstart.defaults())
  for stage in quickstart.STAGES:
    config_checks.check_config(quickstart.get_config(stage))
  with pytest.raises(ValueError, match="stages"):
    quickstart.get_config("pretrain")
  config_checks.check_config(make_tiny_config())
  gpu = quickstart_gpu.get_config()
  config_checks.check_config(gpu)
  # The full scenes, in a dataset of their own (the quickstart's are smaller).
  assert gpu.data.synthetic.to_dict() == quickstart.defaults().data.synthetic.to_dict()
  assert gpu.data.dataset_dir != quickstart.get_config().data.dataset_dir
  assert gpu.model.width >= 2 * 2 * 4 * 4 * 3   # a video and a motion patch per token


@pytest.mark.parametrize("field, value, message", [
    ("data.height", 18, r"data.height=18 is not divisible by the patch size 4 \(model.patch_size=\(2, 4, 4\)\)"),
    ("data.num_frames", 5, r"data.num_frames=5 is not divisible by the patch size 2"),
    ("data.width", 10, r"data.width=10 is not divisible by the patch size 4"),
    ("model.num_heads", 3, r"model.width=32 is not divisible by model.num_heads=3"),
    ("model.text.num_heads", 5, r"model.text.width=32 is not divisible by model.text.num_heads"),
    ("model.remat_policy", "some", r"model.remat_policy='some'; choose from"),
    ("model.motion_input_init", "ones", r"model.motion_input_init='ones'; choose from"),
    ("mesh.tensor", 4, r"model.num_heads=2 is not divisible by mesh.tensor=4"),
    ("mesh.tensor", 3, r"model.width \* model.mlp_ratio=128 is not divisible by mesh.tensor=3"),
    ("model.dtype", "int8", r"model.dtype='int8'; choose float32, bfloat16 or float16"),
    ("model.text.source", "t5", r"model.text.source='t5'; choose 'builtin' or 'precomputed'"),
    ("train.batch_size", 0, r"train.batch_size and train.num_steps must be positive"),
    ("train.num_steps", 0, r"train.batch_size and train.num_steps must be positive"),
    ("optim.grad_accum_steps", 3, r"train.batch_size=4 is not divisible by optim.grad_accum_steps=3"),
    ("optim.grad_accum_steps", 0, r"optim.grad_accum_steps=0"),
    ("loss.text_dropout", 1.0, r"loss.text_dropout=1.0 must be in \[0, 1\)"),
    ("loss.motion_dropout", -0.1, r"loss.motion_dropout=-0.1 must be in \[0, 1\)"),
    ("loss.motion_weight", -1.0, r"loss.motion_weight=-1.0 must be >= 0"),
    ("optim.grad_clip_norm", -1.0, r"optim.grad_clip_norm=-1.0 must be >= 0 \(0: no clipping\)"),
    ("optim.ema_decay", 1.0, r"optim.ema_decay=1.0 must be in \[0, 1\)"),
    ("train.log_every", 0, r"train.log_every must be >= 1"),
    ("train.checkpoint_every", 0, r"train.checkpoint_every must be >= 1"),
    ("train.profile_steps", (0, 3), r"train.profile_steps=\(0, 3\) must lie in"),
    ("train.metric_writer", "tf", r"train.metric_writer=.tf.; choose from"),
    ("evals.samples.every_steps", -1, r"evals.samples.every_steps=-1 must be >= 0"),
])
def test_impossible_config_names_the_field(make_tiny_config, field, value, message):
  config = make_tiny_config()
  *parents, name = field.split(".")
  section = config
  for parent in parents:
    section = section[parent]
  section[name] = value
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.check_config(config)


def test_single_frame_clips_are_refused(make_tiny_config):
  config = make_tiny_config()
  config.data.num_frames = 1
  config.model.patch_size = (1, 4, 4)
  with pytest.raises(config_checks.ConfigError, match=r"data.num_frames must be >= 2 \(motion needs two frames\)"):
    config_checks.check_config(config)


def test_every_problem_is_reported_at_once(make_tiny_config):
  config = make_tiny_config()
  config.data.height = 18
  config.loss.text_dropout = 1.5
  with pytest.raises(config_checks.ConfigError) as error:
    config_checks.check_config(config)
  assert "data.height=18" in str(error.value) and "loss.text_dropout=1.5" in str(error.value)


# The train command, as a user runs it. Both commands fail before any data is read
# or anything is compiled; they start when collection ends and run beside other tests.
def train_command(workdir, override, env=None):
  return BackgroundCommand(
      [sys.executable, "-m", "videojam_jax.train", "--config", "configs/quickstart.py",
       f"--workdir={workdir / 'run'}", f"--config.data.dataset_dir={workdir / 'no_data'}",
       "--config.compilation_cache_dir=", override],
      workdir, env={"JAX_PLATFORMS": "cpu", **(env or {})})


@start_early("unknown_key_command")
def start_unknown_key_command(workdir):
  return train_command(workdir, "--config.model.nonexistent=1")


@start_early("batch_over_mesh_command")
def start_batch_over_mesh_command(workdir):
  return train_command(workdir, "--config.train.batch_size=3",
                       env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})


@pytest.fixture
def unknown_key_command():
  return started_command("unknown_key_command")


@pytest.fixture
def batch_over_mesh_command():
  return started_command("batch_over_mesh_command")


def test_unknown_config_key_is_named(unknown_key_command):
  returncode, output = unknown_key_command.result(timeout=300)
  assert returncode != 0
  assert ("FATAL Flags parsing error: --config.model.nonexistent: the config has no field "
          "'nonexistent'") in output, output[-3000:]
  assert "Traceback" not in output


def test_batch_not_divisible_over_the_mesh(batch_over_mesh_command):
  returncode, output = batch_over_mesh_command.result(timeout=300)
  assert returncode != 0
  assert sharding.MeshConfigError.__name__ in output, output[-3000:]
  assert ("train.batch_size=3 cannot be split over the 2 batch shards of mesh "
          "{'data': 2, 'fsdp': 1, 'tensor': 1}; use a multiple of 2") in output, output[-3000:]


def test_latent_clips_with_the_samples_evaluator_on_are_refused(make_tiny_config):
  config = make_tiny_config()
  config.data.channels = 16
  config_checks.check_config(config)           # samples evaluator off (tiny): fine
  config.evals.samples.every_steps = 10
  with pytest.raises(config_checks.ConfigError,
                     match=r"data.channels=16 \(latent clips\): the samples evaluator writes"):
    config_checks.check_config(config)
