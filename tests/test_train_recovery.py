"""End-to-end recovery: a damaged newest checkpoint, and `kill -9` in the middle of a run.

These run `python -m videojam_jax.train` in subprocesses, exactly as a user does
(helpers from tests/test_train_e2e.py). Each recovered run must finish with the
weights of one uninterrupted run of the same command.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

# common_args and compile_cache are fixtures: imported so that pytest finds them here.
from tests.test_train_e2e import (REPO, STEP_LINE, _flatten, common_args, compile_cache,  # pylint: disable=unused-import
                                  logged_losses, run_train, train_command)
from tests.conftest import subprocess_env
from videojam_jax.training import checkpoints

NUM_STEPS = 12           # configs/tiny.py: train.num_steps
CHECKPOINT_EVERY = 3     # configs/tiny.py: train.checkpoint_every (max_checkpoints_to_keep=2)
KILL_AFTER_STEP = 3
TMP_SUFFIX = ".orbax-checkpoint-tmp"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, common_args) -> pathlib.Path:
  """The workdir of one uninterrupted run of the tiny quickstart command."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  run_train(workdir, common_args)
  return workdir


def finished_steps(workdir: pathlib.Path) -> list[int]:
  return sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())


def unfinished_saves(workdir: pathlib.Path) -> list[str]:
  return sorted(p for p in os.listdir(workdir / "checkpoints") if TMP_SUFFIX in p)


def assert_same_weights(got: pathlib.Path, want: pathlib.Path) -> None:
  for which in ("params", "ema"):
    flat_want = _flatten(checkpoints.load_weights(str(want), which))
    flat_got = _flatten(checkpoints.load_weights(str(got), which))
    assert flat_want.keys() == flat_got.keys()
    for k in flat_want:
      np.testing.assert_allclose(flat_got[k], flat_want[k], rtol=1e-6, atol=1e-7, err_msg=f"{which}:{k}")


def test_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous(
    reference, tmp_path, common_args):
  # The reference run's folder, as a user finds it after its newest checkpoint got damaged.
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  assert finished_steps(workdir) == [NUM_STEPS - CHECKPOINT_EVERY, NUM_STEPS]
  newest = workdir / "checkpoints" / str(NUM_STEPS)
  data = sorted(p for p in (newest / checkpoints.STATE).rglob("*") if p.is_file() and p.parent.name == "d")
  assert len(data) >= 3, data
  for path in data:
    with open(path, "r+b") as f:
      f.truncate(path.stat().st_size // 2)
  sizes = {p.relative_to(newest): p.stat().st_size for p in newest.rglob("*") if p.is_file()}

  log = run_train(workdir, common_args)       # the same command again
  previous = NUM_STEPS - CHECKPOINT_EVERY
  assert f"checkpoint at step {NUM_STEPS} ({newest}) cannot be restored: " in log
  assert f"restored checkpoint {workdir / 'checkpoints' / str(previous)} (step {previous})" in log
  assert "Event loop is closed" not in log
  assert sorted(logged_losses(log)) == list(range(previous + 1, NUM_STEPS + 1))
  # The damaged checkpoint was kept, whole, out of the checkpoints folder.
  (moved,) = (workdir / checkpoints.CORRUPT_DIR).iterdir()
  assert moved.name.startswith(f"{NUM_STEPS}-")
  assert {p.relative_to(moved): p.stat().st_size for p in moved.rglob("*") if p.is_file()} == sizes
  assert finished_steps(workdir) == [previous, NUM_STEPS]
  assert_same_weights(workdir, reference)


def test_kill_9_mid_run_resumes_from_the_newest_complete_checkpoint(reference, tmp_path, common_args):
  workdir = tmp_path / "killed"
  # Saving every step keeps a save in flight most of the time.
  proc = subprocess.Popen(train_command(workdir, common_args, "--config.train.checkpoint_every=1"),
                          cwd=REPO, env=subprocess_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  log = []
  deadline = time.time() + 240
  try:
    for line in proc.stderr:
      log.append(line)
      m = STEP_LINE.search(line)
      if m and int(m.group(1)) >= KILL_AFTER_STEP:
        break
      assert time.time() < deadline, "training did not reach the kill step in time"
  finally:
    proc.send_signal(signal.SIGKILL)    # what `kill -9` sends: no handler, no final save
    proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, "".join(log)[-4000:]
  complete = finished_steps(workdir)
  assert complete and complete[-1] < NUM_STEPS, complete
  newest = complete[-1]
  if not unfinished_saves(workdir):
    # The kill did not land inside a save this time: leave what an interrupted
    # save of the next step leaves (Orbax writes a step under this name, then
    # renames it), so the restart is always checked against one.
    half_written = workdir / "checkpoints" / f"{newest + 1}{TMP_SUFFIX}"
    shutil.copytree(workdir / "checkpoints" / str(newest), half_written)
    for path in half_written.rglob("*"):
      if path.is_file():
        with open(path, "r+b") as f:
          f.truncate(path.stat().st_size // 2)
  assert unfinished_saves(workdir)

  log = run_train(workdir, common_args)
  assert f"restored checkpoint {workdir / 'checkpoints' / str(newest)} (step {newest})" in log
  assert "cannot be restored" not in log
  assert sorted(logged_losses(log)) == list(range(newest + 1, NUM_STEPS + 1))
  assert unfinished_saves(workdir) == []          # removed when the manager started
  assert not (workdir / checkpoints.CORRUPT_DIR).exists()
  assert_same_weights(workdir, reference)

