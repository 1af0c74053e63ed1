"""End-to-end: the quickstart command at tiny size, resume, and SIGTERM + restart.

These run `python -m videojam_jax.train` in subprocesses, exactly as a user does.
"""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import traverse_util

from configs import tiny
from data_pipelines import synthetic_dataset
from videojam_jax.training import checkpoints

from tests.conftest import HIDE_TENSORFLOW
from tests.conftest import REPO
from tests.conftest import SUBPROCESS_XLA_CACHE
from tests.conftest import subprocess_env
STEP_LINE = re.compile(r"\[(\d+)\] train/.*train/loss=")


@pytest.fixture(scope="module")
def compile_cache():
  """The XLA cache of every test's subprocesses, given through the config here (the
  way a user sets it): the same programs are compiled only once."""
  return SUBPROCESS_XLA_CACHE


@pytest.fixture(scope="module")
def common_args(tmp_path_factory, compile_cache):
  """Overrides shared by every run here: a tiny synthetic dataset and the XLA cache."""
  config = tiny.get_config()
  config.data.dataset_dir = str(tmp_path_factory.mktemp("data"))
  synthetic_dataset.build(config)
  return [f"--config.data.dataset_dir={config.data.dataset_dir}",
          f"--config.compilation_cache_dir={compile_cache}"]


def train_command(workdir, common_args, *overrides, config="configs/tiny.py"):
  return [sys.executable, "-m", "videojam_jax.train", "--config", config,
          f"--workdir={workdir}", *common_args, *overrides]


def run_train(workdir, common_args, *overrides, config="configs/tiny.py"):
  result = subprocess.run(train_command(workdir, common_args, *overrides, config=config), cwd=REPO,
                          env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stderr


def logged_losses(log):
  return {int(m.group(1)): float(re.search(r"train/loss=([0-9.e+-]+)", line).group(1))
          for line in log.splitlines() if (m := STEP_LINE.search(line))}


def test_quickstart_trains_writes_outputs_and_resumes(tmp_path, common_args):
  workdir = tmp_path / "run"
  log = run_train(workdir, common_args, "--config.evals.samples.every_steps=12")
  losses = logged_losses(log)
  assert sorted(losses) == list(range(1, 13))
  assert all(np.isfinite(list(losses.values())))
  assert re.search(r"train/motion_loss=", log) and re.search(r"train/video_loss=", log)
  assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["9", "12"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  samples = sorted(os.listdir(workdir / "samples" / "step_000012"))
  assert samples == ["captions.txt", "grid.png", "sample_00.mp4", "sample_01.mp4"]
  assert (workdir / "samples" / "step_000012" / "sample_00.mp4").stat().st_size > 1000

  # The same command again resumes from the checkpoint instead of starting over.
  log = run_train(workdir, common_args)
  assert "resuming from checkpoint at step 12" in log
  assert "already trained to step 12" in log
  assert logged_losses(log) == {}


# The quickstart's model and recipe, shrunk to seconds (its 16x16 scenes are the tiny data's).
QUICKSTART_AT_TEST_SIZE = (
    "--config.data.num_frames=4", "--config.model.width=32", "--config.model.depth=1",
    "--config.model.num_heads=2", "--config.model.text.width=32",
    "--config.model.text.num_heads=2", "--config.train.batch_size=4",
    "--config.train.num_steps=2", "--config.train.checkpoint_every=2",
    "--config.evals.heldout.every_steps=0", "--config.evals.samples.every_steps=0")


def test_quickstart_stages_train_a_base_then_retrofit_videojam_onto_it(tmp_path, common_args):
  # README command 1's two training commands: configs/quickstart.py:base, then the
  # default stage, which reads the base's workdir (train.init_from).
  base, jam = tmp_path / "quickstart_base", tmp_path / "quickstart"
  run_train(base, common_args, *QUICKSTART_AT_TEST_SIZE, config="configs/quickstart.py:base")
  log = run_train(jam, common_args, *QUICKSTART_AT_TEST_SIZE, f"--config.train.init_from={base}",
                  config="configs/quickstart.py")
  assert f"initialised from {base}" in log
  assert re.search(r"train/motion_loss=", log)
  base_params = _flatten(checkpoints.load_weights(str(base), "ema"))
  jam_params = _flatten(checkpoints.load_weights(str(jam), "params"))
  assert not any(k.startswith("motion_") for k in base_params)
  assert {k for k in jam_params if k.startswith("motion_")}, sorted(jam_params)
  assert set(base_params) <= set(jam_params)


def test_sigterm_then_restart_matches_uninterrupted_run(tmp_path, common_args):
  reference = tmp_path / "reference"
  # Logging every 5th step also exercises the loop's non-logging steps.
  run_train(reference, common_args, "--config.train.log_every=5")

  # Saving every step keeps the run going long after the signal is sent.
  interrupted = tmp_path / "interrupted"
  every_step = "--config.train.checkpoint_every=1"
  proc = subprocess.Popen(train_command(interrupted, common_args, every_step),
                          cwd=REPO, env=subprocess_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  log = []
  deadline = time.time() + 240
  for line in proc.stderr:
    log.append(line)
    m = STEP_LINE.search(line)
    if m and int(m.group(1)) >= 2:
      proc.send_signal(signal.SIGTERM)
      break
    assert time.time() < deadline, "training did not reach step 2 in time"
  log.extend(proc.stderr)
  assert proc.wait(timeout=120) == 0, "".join(log)[-4000:]
  stopped_at = max(int(s) for s in os.listdir(interrupted / "checkpoints") if s.isdigit())
  assert 2 <= stopped_at < 12, stopped_at
  assert "stopping at step" in "".join(log)

  log = run_train(interrupted, common_args)
  assert f"resuming from checkpoint at step {stopped_at}" in log
  assert sorted(logged_losses(log)) == list(range(stopped_at + 1, 13))
  for which in ("params", "ema"):
    want = checkpoints.load_weights(str(reference), which)
    got = checkpoints.load_weights(str(interrupted), which)
    flat_want, flat_got = _flatten(want), _flatten(got)
    assert flat_want.keys() == flat_got.keys()
    for k in flat_want:
      np.testing.assert_allclose(flat_got[k], flat_want[k], rtol=1e-6, atol=1e-7, err_msg=f"{which}:{k}")


def _flatten(tree):
  """{'blocks/mlp/fc1/kernel': array, ...}"""
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


# Runs a module as `python -m` would, with TensorFlow impossible to import (the
# finder reports no spec for it: TFDS and etils then take their TensorFlow-free paths).
WITHOUT_TENSORFLOW = HIDE_TENSORFLOW + """
import atexit, runpy
atexit.register(lambda: print("TENSORFLOW_MODULES",
                              [m for m in sys.modules if m.partition(".")[0] == "tensorflow"]))
sys.argv = [sys.argv[0]] + sys.argv[1:]
runpy.run_module("videojam_jax.train", run_name="__main__", alter_sys=True)
"""


def test_trains_and_writes_tensorboard_events_without_tensorflow(tmp_path, common_args):
  from tensorboard.backend.event_processing import plugin_event_accumulator  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  argv = train_command(workdir, common_args, "--config.train.num_steps=3",
                       "--config.evals.samples.every_steps=3")[3:]   # drop python -m module
  result = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, *argv], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]
  assert "TENSORFLOW_MODULES []" in result.stdout
  assert "TensorFlow is not available" in result.stderr and "tensorboardX" in result.stderr
  (events,) = [f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")]
  acc = plugin_event_accumulator.EventAccumulator(str(workdir / events))
  acc.Reload()
  tags = set(acc.Tags()["tensors"])
  assert {"train/loss", "train/motion_loss", "samples/warping_error"} <= tags
  assert [e.step for e in acc.Tensors("train/loss")] == [1, 2, 3]
  assert sorted(os.listdir(workdir / "samples" / "step_000003"))[0] == "captions.txt"
