"""Checkpoints: recovery from a damaged newest checkpoint, and loading weights into shardings.

Tiny pytrees with the trainer's shape (step, params, ema_params, opt_state) and a
real Grain iterator, written by the real CheckpointManager. The 8-device restore
runs tests/training/sharded_restore_check.py in a subprocess (the fake device
count must be set before JAX starts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import socket
import subprocess
import sys
from typing import Any

import flax.struct
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tests.conftest import REPO
from videojam_jax.training import checkpoints

CHECK = os.path.join(REPO, "tests", "training", "sharded_restore_check.py")
MULTIPROCESS_CHECK = os.path.join(REPO, "tests", "training", "multiprocess_restore_check.py")
STEPS = (1, 2, 3)
BATCH = 2


class TrainState(flax.struct.PyTreeNode):
  step: jnp.ndarray
  params: Any
  ema_params: Any
  opt_state: Any


TX = optax.adam(1e-3)


def make_state(step: int) -> TrainState:
  """A state whose every leaf depends on `step` (so restoring the wrong step shows)."""
  params = {"dense": {"kernel": jnp.full((4, 3), float(step)), "bias": jnp.arange(3.0) + step},
            "head": {"kernel": jnp.full((3, 2), -float(step))}}
  opt_state = jax.tree.map(lambda x: x + 0.5 * step, TX.init(params))
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                    ema_params=jax.tree.map(lambda x: 2 * x + 1, params), opt_state=opt_state)


def abstract_state() -> TrainState:
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                      jax.eval_shape(lambda: make_state(0)))


def new_iterator() -> grain.DatasetIterator:
  return iter(grain.MapDataset.range(1000).batch(BATCH).to_iter_dataset())


def train_config(keep: int = 5) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"max_checkpoints_to_keep": keep})


def write_run(workdir: pathlib.Path, steps=STEPS) -> None:
  """Checkpoints at `steps`; the iterator has yielded `step` batches at each."""
  manager = checkpoints.create_manager(str(workdir), train_config())
  iterator = new_iterator()
  done = 0
  for step in steps:
    while done < step:
      next(iterator)
      done += 1
    checkpoints.save(manager, step, make_state(step), iterator)
  manager.wait_until_finished()
  manager.close()


def data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  """The array data files (OCDBT `d/` folders) of a step's train state."""
  files = sorted(p for p in (step_dir / checkpoints.STATE).rglob("*") if p.is_file() and p.parent.name == "d")
  assert files, f"no data files under {step_dir}"
  return files


def truncate(files: list[pathlib.Path]) -> None:
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(path.stat().st_size // 2)


def digests(root: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def assert_trees_equal(got: Any, want: Any) -> None:
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.fixture
def unraisable(monkeypatch) -> list[BaseException]:
  """Exceptions raised where nobody can catch them (tensorstore callbacks on a closed loop)."""
  seen: list[BaseException] = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
  return seen


def damage_data(step_dir: pathlib.Path) -> None:
  truncate(data_files(step_dir))


def damage_iterator(step_dir: pathlib.Path) -> None:
  (position,) = (step_dir / checkpoints.DATA_ITERATOR).glob("process_*.json")
  position.write_text('{"truncated')


# --- restore_latest.

@pytest.mark.parametrize("damage", [damage_data, damage_iterator], ids=["truncated_data", "garbled_iterator"])
def test_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_restored(
    tmp_path, caplog, capfd, unraisable, damage):
  write_run(tmp_path)
  newest = tmp_path / "checkpoints" / "3"
  damage(newest)
  damaged = digests(newest)
  caplog.set_level(logging.INFO)

  manager = checkpoints.create_manager(str(tmp_path), train_config())
  iterator = new_iterator()
  state, step = checkpoints.restore_latest(manager, abstract_state(), iterator)

  assert step == 2
  assert_trees_equal(jax.device_get(state), jax.device_get(make_state(2)))
  np.testing.assert_array_equal(next(iterator), [4, 5])      # third batch: resumes after 2
  # The damaged checkpoint is out of Orbax's sight, moved whole, byte for byte.
  assert manager.all_steps() == [1, 2]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
  (moved,) = (tmp_path / checkpoints.CORRUPT_DIR).iterdir()
  assert moved.name.startswith("3-")
  assert digests(moved) == damaged
  # The log names the step and its path, in one line with the reason.
  errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
  assert len(errors) == 1
  assert f"checkpoint at step 3 ({newest})" in errors[0] and str(moved) in errors[0]
  assert "cannot be restored: " in errors[0] and "\n" not in errors[0]
  assert any(f"restored checkpoint {tmp_path / 'checkpoints' / '2'} (step 2)" in r.getMessage()
             for r in caplog.records)
  # No read of the failed restore was left behind on a closed event loop.
  assert "Event loop is closed" not in capfd.readouterr().err
  assert not unraisable

  # The manager keeps working: the next save lands beside the restored step.
  checkpoints.save(manager, 3, make_state(30), iterator)
  manager.wait_until_finished()
  assert manager.all_steps() == [1, 2, 3]
  manager.close()


def test_every_checkpoint_damaged_starts_from_scratch(tmp_path, caplog, unraisable):
  write_run(tmp_path, steps=(1, 2))
  for step in (1, 2):
    damage_data(tmp_path / "checkpoints" / str(step))
  caplog.set_level(logging.INFO)
  manager = checkpoints.create_manager(str(tmp_path), train_config())
  assert checkpoints.restore_latest(manager, abstract_state(), new_iterator()) == (None, None)
  assert manager.all_steps() == []
  moved = sorted(p.name.split("-")[0] for p in (tmp_path / checkpoints.CORRUPT_DIR).iterdir())
  assert moved == ["1", "2"]
  assert any("starting from scratch" in r.getMessage() for r in caplog.records)
  assert not unraisable
  manager.close()


def test_no_checkpoint_is_a_fresh_start(tmp_path):
  manager = checkpoints.create_manager(str(tmp_path), train_config())
  assert checkpoints.restore_latest(manager, abstract_state(), new_iterator()) == (None, None)
  assert not (tmp_path / checkpoints.CORRUPT_DIR).exists()
  manager.close()


def test_checkpoint_of_another_model_config_is_an_error_not_corruption(tmp_path):
  write_run(tmp_path, steps=(1,))
  other = abstract_state()
  wider = jax.ShapeDtypeStruct((4, 5), jnp.float32, sharding=other.params["dense"]["kernel"].sharding)
  extra = {"kernel": wider}
  other = other.replace(params={**other.params, "dense": {**other.params["dense"], "kernel": wider},
                                "extra": extra})
  manager = checkpoints.create_manager(str(tmp_path), train_config())
  with pytest.raises(checkpoints.CheckpointMismatchError) as error:
    checkpoints.restore_latest(manager, other, new_iterator())
  message = str(error.value)
  assert "step 1" in message
  assert "missing from the checkpoint: params/extra/kernel" in message
  assert "params/dense/kernel: checkpoint shape (4, 3) but expected (4, 5)" in message
  # Nothing was moved: the checkpoint is fine, the config is not.
  assert manager.all_steps() == [1]
  assert not (tmp_path / checkpoints.CORRUPT_DIR).exists()
  manager.close()


def test_storage_outage_is_raised_and_sets_nothing_aside(tmp_path, monkeypatch):
  write_run(tmp_path, steps=(1, 2))

  def unavailable(*args, **kwargs):
    raise ValueError("UNAVAILABLE: the bucket could not be reached")
  monkeypatch.setattr(checkpoints, "_restore_step", unavailable)
  manager = checkpoints.create_manager(str(tmp_path), train_config())
  with pytest.raises(ValueError, match="UNAVAILABLE"):
    checkpoints.restore_latest(manager, abstract_state(), new_iterator())
  assert manager.all_steps() == [1, 2]
  assert not (tmp_path / checkpoints.CORRUPT_DIR).exists()
  manager.close()


def test_unfinished_save_is_ignored_and_removed(tmp_path):
  """A run killed mid-save leaves `<step>.orbax-checkpoint-tmp*`: never resumed from, cleaned up."""
  write_run(tmp_path, steps=(1, 2))
  unfinished = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp"
  shutil.copytree(tmp_path / "checkpoints" / "2", unfinished)
  truncate(data_files(unfinished))
  manager = checkpoints.create_manager(str(tmp_path), train_config())
  state, step = checkpoints.restore_latest(manager, abstract_state(), new_iterator())
  assert step == 2
  assert_trees_equal(jax.device_get(state), jax.device_get(make_state(2)))
  manager.wait_until_finished()    # the clean-up runs beside the restore
  manager.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


# --- load_params / load_weights / params_metadata errors and subsets (one device).

def one_device_params(names=("dense", "head")) -> dict[str, Any]:
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params = jax.eval_shape(lambda: make_state(0).params)
  return {k: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), params[k])
          for k in names}


def test_load_params_restores_the_latest_weights(tmp_path):
  write_run(tmp_path)
  ema = checkpoints.load_params(str(tmp_path), "ema", one_device_params())
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(ema))
  assert_trees_equal(jax.device_get(ema), jax.device_get(make_state(3).ema_params))
  older = checkpoints.load_params(str(tmp_path / "checkpoints"), "params", one_device_params(), step=1)
  assert_trees_equal(jax.device_get(older), jax.device_get(make_state(1).params))
  # Host numpy (tests, small models) agrees.
  assert_trees_equal(checkpoints.load_weights(str(tmp_path), "ema"), jax.device_get(ema))


def test_load_params_of_a_subset(tmp_path):
  write_run(tmp_path, steps=(1,))
  with pytest.raises(checkpoints.CheckpointMismatchError, match=r"pass allow_unused=True.*not expected: head/kernel \(3, 2\)"):
    checkpoints.load_params(str(tmp_path), "ema", one_device_params(("dense",)))
  dense = checkpoints.load_params(str(tmp_path), "ema", one_device_params(("dense",)), allow_unused=True)
  assert_trees_equal(jax.device_get(dense), {"dense": jax.device_get(make_state(1).ema_params["dense"])})


def test_params_metadata_reads_shapes_only(tmp_path):
  write_run(tmp_path, steps=(1,))
  saved = checkpoints.params_metadata(str(tmp_path), "params")
  assert jax.tree.map(lambda s: (s.shape, str(s.dtype)), saved) == {
      "dense": {"kernel": ((4, 3), "float32"), "bias": ((3,), "float32")},
      "head": {"kernel": ((3, 2), "float32")}}


def test_load_params_mismatch_lists_the_differing_keys(tmp_path):
  write_run(tmp_path, steps=(1,))
  expected = one_device_params()
  sharding = expected["dense"]["kernel"].sharding
  expected["dense"]["kernel"] = jax.ShapeDtypeStruct((4, 7), jnp.float32, sharding=sharding)
  expected["motion_head"] = {"kernel": jax.ShapeDtypeStruct((3, 2), jnp.float32, sharding=sharding)}
  with pytest.raises(checkpoints.CheckpointMismatchError) as error:
    checkpoints.load_params(str(tmp_path), "params", expected)
  message = str(error.value)
  assert "differences (2)" in message
  assert "missing from the checkpoint: motion_head/kernel (3, 2)" in message
  assert "dense/kernel: checkpoint shape (4, 3) but expected (4, 7)" in message
  assert "allow_unused" not in message     # that would not help here


def test_latest_finished_step(tmp_path):
  write_run(tmp_path, steps=(1, 2))
  (tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp").mkdir()     # a save cut short
  assert checkpoints.latest_finished_step(str(tmp_path)) == 2
  assert checkpoints.latest_finished_step(str(tmp_path / "checkpoints")) == 2
  with pytest.raises(checkpoints.CheckpointNotFoundError, match="is not a training run"):
    checkpoints.latest_finished_step(str(tmp_path / "checkpoints" / "1"))


def test_load_params_errors(tmp_path):
  expected = one_device_params()
  with pytest.raises(checkpoints.CheckpointNotFoundError, match="does not exist: no checkpoints folder"):
    checkpoints.load_params(str(tmp_path / "nowhere"), "ema", expected)
  (tmp_path / "not_a_run").mkdir()
  with pytest.raises(checkpoints.CheckpointNotFoundError, match="is not a training run"):
    checkpoints.load_params(str(tmp_path / "not_a_run"), "ema", expected)
  unfinished = tmp_path / "killed" / "checkpoints" / "4.orbax-checkpoint-tmp"
  unfinished.mkdir(parents=True)
  with pytest.raises(checkpoints.CheckpointNotFoundError,
                     match=r"holds no finished checkpoint \(unfinished saves only: \['4.orbax"):
    checkpoints.load_params(str(tmp_path / "killed"), "ema", expected)
  with pytest.raises(ValueError, match="'ema' or 'params', got 'best'"):
    checkpoints.load_params(str(tmp_path), "best", expected)
  write_run(tmp_path / "run", steps=(1,))
  with pytest.raises(checkpoints.CheckpointNotFoundError, match=r"no finished checkpoint at step 7 \(steps: \[1\]\)"):
    checkpoints.load_params(str(tmp_path / "run"), "ema", expected, step=7)
  unsharded = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), expected)
  with pytest.raises(ValueError, match=r"sharding at every leaf.*\['dense'\]\['bias'\]"):
    checkpoints.load_params(str(tmp_path / "run"), "ema", unsharded)


def test_checkpoint_dir_keeps_uris():
  assert checkpoints.checkpoint_dir("gs://bucket/runs/a") == "gs://bucket/runs/a/checkpoints"
  assert checkpoints.corrupt_dir("gs://bucket/runs/a") == "gs://bucket/runs/a/checkpoints_corrupt"
  assert checkpoints.checkpoint_dir("relative/run") == os.path.join(os.getcwd(), "relative", "run", "checkpoints")


# --- 8 fake devices (subprocess).

@pytest.fixture(scope="module")
def sharded_report(tmp_path_factory) -> dict[str, Any]:
  out = tmp_path_factory.mktemp("sharded_restore")
  result = subprocess.run([sys.executable, CHECK, "--workdir", str(out / "run"), "--out", str(out / "report.json")],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-5000:]
  return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("which", ["ema", "params"])
def test_load_params_lands_in_the_requested_shardings(sharded_report, which):
  assert sharded_report["device_count"] == 8
  report = sharded_report[which]
  assert sorted(report) == ["blocks/kernel", "embed/kernel", "head/bias", "motion_head/kernel"]
  for name, leaf in report.items():
    assert leaf["is_jax_array"] and leaf["same_mesh"] and leaf["equivalent_to_requested"], name
    assert leaf["num_shards"] == 8, name
    assert leaf["max_abs_diff"] == 0.0, name
  # Saved over fsdp=8 on the first axis; loaded in (data, fsdp, tensor) = (2, 2, 2) layouts.
  assert report["blocks/kernel"]["spec"] == [None, "fsdp", "tensor"]
  assert report["blocks/kernel"]["shard_shapes"] == [[4, 8, 12]]
  assert report["embed/kernel"]["spec"] == ["tensor", "fsdp"]
  assert report["embed/kernel"]["shard_shapes"] == [[8, 16]]
  assert report["head/bias"]["shard_shapes"] == [[24]]                 # replicated
  assert report["motion_head/kernel"]["shard_shapes"] == [[16, 2]]     # over fsdp x tensor


def test_load_params_of_a_subset_into_shardings(sharded_report):
  subset = sharded_report["subset"]
  assert sorted(subset) == ["blocks/kernel", "embed/kernel", "head/bias"]
  assert all(leaf["equivalent_to_requested"] and leaf["max_abs_diff"] == 0.0 for leaf in subset.values())
  assert "not expected: motion_head/kernel (16, 8)" in sharded_report["subset_strict_error"]


# --- Two processes (jax.distributed on CPU): they agree on the step, process 0 moves the folder.

def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("damage", ["data", "iterator_of_process_1"])
def test_two_processes_agree_on_the_step_they_resume_from(tmp_path, damage):
  """'iterator_of_process_1' damages what only process 1 reads: process 0 alone would restore it."""
  coordinator = f"localhost:{free_port()}"
  logs = [open(tmp_path / f"process_{i}.log", "w") for i in range(2)]   # files: no pipe may fill up
  procs = [subprocess.Popen(
      [sys.executable, MULTIPROCESS_CHECK, "--process_id", str(i), "--coordinator", coordinator,
       "--workdir", str(tmp_path / "run"), "--damage", damage, "--out", str(tmp_path / f"report_{i}.json")],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=logs[i], stderr=subprocess.STDOUT)
      for i in range(2)]
  try:
    for i, proc in enumerate(procs):
      returncode = proc.wait(timeout=300)
      logs[i].close()
      assert returncode == 0, (tmp_path / f"process_{i}.log").read_text()[-5000:]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  reports = [json.loads((tmp_path / f"report_{i}.json").read_text()) for i in range(2)]
  output = [(tmp_path / f"process_{i}.log").read_text() for i in range(2)]
  for report in reports:
    assert report["step"] == 1 and report["manager_steps"] == [1]
    assert report["params"] == {"bias": [1.0, 2.0, 3.0, 4.0], "kernel": [[1.0] * 3] * 4}
  # Each process resumes its own records (0, 2, 4, ... and 1, 3, 5, ...) after one batch.
  assert [r["next_batch"] for r in reports] == [[4, 6], [5, 7]]
  (moved,) = reports[0]["corrupt"]
  assert reports[1]["corrupt"] == [moved] and moved.startswith("2-")
  for log in output:
    assert f"checkpoint at step 2 ({tmp_path / 'run' / 'checkpoints' / '2'}) cannot be restored" in log
    assert f"moved it to {tmp_path / 'run' / checkpoints.CORRUPT_DIR / moved}" in log
  if damage == "iterator_of_process_1":
    assert "it failed to restore on another process" in output[0]
    assert "JSONDecodeError" in output[1]
