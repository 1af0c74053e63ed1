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

from configs import tiny
from data_pipelines import build_synthetic
from videojam_jax import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_LINE = re.compile(r"\[(\d+)\] train/.*train/loss=")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
  config = tiny.get_config()
  config.data.dataset_dir = str(tmp_path_factory.mktemp("data"))
  build_synthetic.build(config)
  return config.data.dataset_dir


def train_command(workdir, dataset_dir, *overrides):
  return [sys.executable, "-m", "videojam_jax.train", "--config", "configs/tiny.py",
          f"--workdir={workdir}", f"--config.data.dataset_dir={dataset_dir}", *overrides]


def env():
  e = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  e.pop("XLA_FLAGS", None)
  return e


def run_train(workdir, dataset_dir, *overrides):
  result = subprocess.run(train_command(workdir, dataset_dir, *overrides), cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stderr


def logged_losses(log):
  return {int(m.group(1)): float(re.search(r"train/loss=([0-9.e+-]+)", line).group(1))
          for line in log.splitlines() if (m := STEP_LINE.search(line))}


def test_quickstart_trains_writes_outputs_and_resumes(tmp_path, dataset_dir):
  workdir = tmp_path / "run"
  log = run_train(workdir, dataset_dir, "--config.train.num_steps=4", "--config.train.sample_every=4")
  losses = logged_losses(log)
  assert sorted(losses) == [1, 2, 3, 4]
  assert all(np.isfinite(list(losses.values())))
  assert re.search(r"train/motion_loss=", log) and re.search(r"train/video_loss=", log)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "4"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  samples = sorted(os.listdir(workdir / "samples" / "step_000004"))
  assert samples == ["captions.txt", "sample_00.mp4", "sample_01.mp4"]
  assert (workdir / "samples" / "step_000004" / "sample_00.mp4").stat().st_size > 1000

  # The same command again with more steps continues from step 4, not from 0.
  log = run_train(workdir, dataset_dir, "--config.train.num_steps=6", "--config.train.sample_every=100")
  assert "resuming from checkpoint at step 4" in log
  assert sorted(logged_losses(log)) == [5, 6]


def test_sigterm_then_restart_matches_uninterrupted_run(tmp_path, dataset_dir):
  steps = "--config.train.num_steps=10"
  reference = tmp_path / "reference"
  run_train(reference, dataset_dir, steps, "--config.train.checkpoint_every=100")

  interrupted = tmp_path / "interrupted"
  proc = subprocess.Popen(train_command(interrupted, dataset_dir, steps, "--config.train.checkpoint_every=100"),
                          cwd=REPO, env=env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  log = []
  deadline = time.time() + 240
  for line in proc.stderr:
    log.append(line)
    m = STEP_LINE.search(line)
    if m and int(m.group(1)) >= 3:
      proc.send_signal(signal.SIGTERM)
      break
    assert time.time() < deadline, "training did not reach step 3 in time"
  log.extend(proc.stderr)
  assert proc.wait(timeout=120) == 0, "".join(log)[-4000:]
  stopped_at = [int(s) for s in os.listdir(interrupted / "checkpoints") if s.isdigit()]
  assert len(stopped_at) == 1 and 3 <= stopped_at[0] < 10, stopped_at

  log = run_train(interrupted, dataset_dir, steps, "--config.train.checkpoint_every=100")
  assert f"resuming from checkpoint at step {stopped_at[0]}" in log
  for which in ("params", "ema"):
    want = checkpoints.load_weights(str(reference), which)
    got = checkpoints.load_weights(str(interrupted), which)
    flat_want, flat_got = _flatten(want), _flatten(got)
    assert flat_want.keys() == flat_got.keys()
    for k in flat_want:
      np.testing.assert_allclose(flat_got[k], flat_want[k], rtol=1e-6, atol=1e-7, err_msg=f"{which}:{k}")


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = np.asarray(v)
  return out
