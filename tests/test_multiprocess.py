"""Multi-host training, simulated: two CPU processes joined by jax.distributed.

Each process has 2 fake devices and runs the real trainer on its own slice of a
tiny synthetic dataset (tests/multiprocess_worker.py). The result must match a
single process that trains on the same global batches, and the run must leave
one Orbax checkpoint written by both processes, with samples and metric files
written by process 0 only.

A signal to one process must stop all of them after the same step, with one
checkpoint there that a rerun resumes from (a process that stops alone leaves
the others waiting in the next step's collectives: the job hangs).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import traverse_util

from videojam_jax.training import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "multiprocess_worker.py")
NUM_PROCESSES, DEVICES_PER_PROCESS, NUM_STEPS = 2, 2, 3
LOSS_LINE = re.compile(r"\[(\d+)\] train/.*train/loss=([0-9.eE+-]+)")
STEP_LINE = re.compile(r"\[(\d+)\] train/")
STOP_LINE = re.compile(r"stopping at step (\d+) after saving a checkpoint")
PROBE_READY = re.compile(r"probe (ready)")
PROBE_FIRST_STEP = 100   # the stop probe stands for a run resumed from this step
# The stop test: a run far longer than the test waits for, no interval
# checkpoints, and the signal once process 1 has logged this many steps.
LONG_RUN_STEPS, SIGNAL_AFTER_STEP = 400, 3
# Seconds: to reach SIGNAL_AFTER_STEP (start-up and compile), and to stop after
# the signal. A run that misses a stop would take minutes to train to the end.
START_TIMEOUT, STOP_TIMEOUT = 180, 60


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def worker_env(devices: int, compile_cache: str = "") -> dict[str, str]:
  return dict(os.environ, PYTHONPATH=REPO, WORKER_DEVICES=str(devices),
              WORKER_COMPILATION_CACHE=compile_cache)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> str:
  """A JAX compilation cache shared by this module's training runs (they compile the same programs)."""
  return str(tmp_path_factory.mktemp("compile_cache"))


def start_processes(mode_args: list[str], log_dir: str, name: str,
                    compile_cache: str = "") -> tuple[list, list[str]]:
  """Starts NUM_PROCESSES workers joined by one coordinator; (processes, their log paths)."""
  coordinator = f"localhost:{free_port()}"
  log_paths = [os.path.join(log_dir, f"{name}_{i}.log") for i in range(NUM_PROCESSES)]
  procs = []
  for i, path in enumerate(log_paths):
    # Output to files, not pipes: a process blocked on a full pipe would stall
    # its peer in the next collective.
    with open(path, "w") as log:
      procs.append(subprocess.Popen(
          [sys.executable, WORKER, *mode_args, "--process_id", str(i), "--coordinator", coordinator,
           "--num_processes", str(NUM_PROCESSES)],
          cwd=REPO, env=worker_env(DEVICES_PER_PROCESS, compile_cache), stdout=log,
          stderr=subprocess.STDOUT))
  return procs, log_paths


def wait_for_processes(procs: list, log_paths: list[str], deadline: float) -> list[str]:
  """Waits until `deadline` (time.time()) for all processes, killing any left; their logs."""
  try:
    for proc in procs:
      proc.wait(timeout=max(deadline - time.time(), 0))
  except subprocess.TimeoutExpired:
    pass
  finally:
    for proc in procs:   # a hung peer must not outlive the test
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  logs = [open(p).read() for p in log_paths]
  for i, (proc, log) in enumerate(zip(procs, logs)):
    assert proc.returncode == 0, f"process {i} exited with {proc.returncode}:\n{log[-5000:]}"
  return logs


def signal_after(procs: list, log_path: str, line: re.Pattern, step: int | None, signum: int,
                 target: int) -> None:
  """Sends `signum` to procs[target] once its log has a `line` (group 1: a step) at step >= `step`.

  With `step` None, the first `line` at all.
  """
  deadline = time.time() + START_TIMEOUT
  while time.time() < deadline and all(p.poll() is None for p in procs):
    with open(log_path) as f:
      found = line.findall(f.read())
      if found and (step is None or max(int(s) for s in found) >= step):
        procs[target].send_signal(signum)
        return
    time.sleep(0.1)
  for p in procs:
    p.kill()
  raise AssertionError(f"process {target} did not log step {step} in {START_TIMEOUT}s "
                       f"(exit codes {[p.poll() for p in procs]}):\n{open(log_path).read()[-5000:]}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
  """The tiny synthetic dataset of the worker's config, built once for the module."""
  data = str(tmp_path_factory.mktemp("data"))
  built = subprocess.run([sys.executable, WORKER, "build", "--dataset_dir", data], cwd=REPO,
                         env=worker_env(1), capture_output=True, text=True, timeout=300)
  assert built.returncode == 0, built.stderr[-5000:]
  return data


@pytest.fixture(scope="module")
def run(tmp_path_factory, dataset, compile_cache) -> dict:
  """Reference run, then the two-process run; their outputs."""
  root = tmp_path_factory.mktemp("multiprocess")
  data, workdir, out = dataset, root / "workdir", root / "out"
  common = ["--dataset_dir", str(data), "--out", str(out)]
  ref = subprocess.run([sys.executable, WORKER, "reference", "--num_processes", str(NUM_PROCESSES),
                        *common], cwd=REPO,
                       env=worker_env(NUM_PROCESSES * DEVICES_PER_PROCESS),
                       capture_output=True, text=True, timeout=600)
  assert ref.returncode == 0, ref.stderr[-5000:]

  procs, log_paths = start_processes(["train", "--workdir", str(workdir), *common], str(root),
                                     "process", compile_cache)
  logs = wait_for_processes(procs, log_paths, time.time() + 600)
  return {"workdir": str(workdir), "out": str(out), "logs": logs}


def _params(run, name):
  with np.load(os.path.join(run["out"], f"{name}_params.npz")) as f:
    return {k: f[k] for k in f.files}


def _max_diff(a, b):
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def test_processes_form_one_runtime(run):
  for i in range(NUM_PROCESSES):
    with open(os.path.join(run["out"], f"process_{i}.json")) as f:
      info = json.load(f)
    assert info == {"process_index": i, "process_count": NUM_PROCESSES,
                    "local_devices": DEVICES_PER_PROCESS,
                    "devices": NUM_PROCESSES * DEVICES_PER_PROCESS, "step": NUM_STEPS}


def test_processes_read_different_records(run):
  with open(os.path.join(run["out"], "reference.json")) as f:
    reference = json.load(f)
  assert reference["distinct_clips"] == reference["clips_read"] == 4 * NUM_STEPS


def test_two_processes_match_one_process_on_the_same_global_batches(run):
  trained, reference = _params(run, "train"), _params(run, "reference")
  assert _max_diff(trained, reference) < 1e-4
  # Control: the same batches assembled in the other process order train to
  # different weights, so the agreement above pins down the batch layout.
  assert _max_diff(trained, _params(run, "swapped")) > 1e-3


def test_logged_losses_match_reference(run):
  with open(os.path.join(run["out"], "reference.json")) as f:
    want = json.load(f)["losses"]["reference"]
  got = {int(step): float(loss) for step, loss in LOSS_LINE.findall(run["logs"][0])}
  assert sorted(got) == list(range(1, NUM_STEPS + 1))
  np.testing.assert_allclose([got[s] for s in sorted(got)], want, rtol=1e-5)


def test_only_process_0_writes_samples_and_metrics(run):
  workdir = run["workdir"]
  assert "wrote 4 samples" in run["logs"][0]
  assert "wrote" not in run["logs"][1].replace("Wrote ", "")   # Orbax's own lines are "Wrote ..."
  step_dir = os.path.join(workdir, "samples", f"step_{NUM_STEPS:06d}")
  assert sorted(os.listdir(step_dir)) == ["captions.txt", "grid.png"] + [f"sample_{i:02d}.mp4" for i in range(4)]
  events = [f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")]
  assert len(events) == 1
  assert os.path.exists(os.path.join(workdir, "config.json"))


def test_checkpoint_written_by_both_processes_restores(run):
  ckpt = os.path.join(run["workdir"], "checkpoints", str(NUM_STEPS))
  assert sorted(os.listdir(os.path.join(ckpt, "data_iterator"))) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  state_files = os.listdir(os.path.join(ckpt, "state"))
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(state_files)
  for i in range(NUM_PROCESSES):   # each process saved its own iterator position
    with open(os.path.join(ckpt, "data_iterator", f"process_{i}-of-2.json")) as f:
      assert json.load(f) == {"next_index": NUM_STEPS}
  # One process, no mesh: the parameters restore and equal the trained ones.
  restored = checkpoints.load_weights(run["workdir"], "params")
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(restored, sep="/").items()}
  assert _max_diff(flat, _params(run, "train")) == 0.0


@pytest.fixture(scope="module")
def stopped(dataset, tmp_path_factory, compile_cache) -> dict:
  """A long two-process run that SIGTERM to process 1 stops, then a rerun of it."""
  root = tmp_path_factory.mktemp("stopped")
  workdir, out = str(root / "workdir"), str(root / "out")
  common = ["train", "--dataset_dir", dataset, "--workdir", workdir, "--out", out,
            "--checkpoint_every", str(10 * LONG_RUN_STEPS)]
  procs, log_paths = start_processes([*common, "--num_steps", str(LONG_RUN_STEPS)], str(root), "stop",
                                     compile_cache)
  signal_after(procs, log_paths[1], STEP_LINE, SIGNAL_AFTER_STEP, signal.SIGTERM, target=1)
  logs = wait_for_processes(procs, log_paths, time.time() + STOP_TIMEOUT)
  steps = [int(json.load(open(os.path.join(out, f"process_{i}.json")))["step"])
           for i in range(NUM_PROCESSES)]
  checkpoints_after_stop = sorted(os.listdir(checkpoints.checkpoint_dir(workdir)))
  # The rerun trains one step past the stop: it must start from the checkpoint.
  stop_step = steps[0]
  procs, log_paths = start_processes([*common, "--num_steps", str(stop_step + 1)], str(root), "rerun",
                                     compile_cache)
  rerun_logs = wait_for_processes(procs, log_paths, time.time() + START_TIMEOUT)
  return {"workdir": workdir, "out": out, "logs": logs, "steps": steps,
          "checkpoints_after_stop": checkpoints_after_stop, "rerun_logs": rerun_logs}


def test_sigterm_to_one_process_stops_all_after_the_same_step(stopped):
  stop_steps = [[int(s) for s in STOP_LINE.findall(log)] for log in stopped["logs"]]
  assert len(stop_steps[0]) == 1 and stop_steps[0] == stop_steps[1], stop_steps
  stop_step = stop_steps[0][0]
  assert SIGNAL_AFTER_STEP <= stop_step < LONG_RUN_STEPS
  assert stopped["steps"] == [stop_step] * NUM_PROCESSES   # the trained state, per process
  for i, log in enumerate(stopped["logs"]):   # through JAX's sync protocol, on both
    assert f"process {i} reached the agreed stop step {stop_step}" in log


def test_stop_saves_one_checkpoint_that_both_processes_wrote(stopped):
  stop_step = stopped["steps"][0]
  assert stopped["checkpoints_after_stop"] == [str(stop_step)]
  ckpt = os.path.join(checkpoints.checkpoint_dir(stopped["workdir"]), str(stop_step))
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(os.path.join(ckpt, "state")))
  for i in range(NUM_PROCESSES):
    with open(os.path.join(ckpt, "data_iterator", f"process_{i}-of-2.json")) as f:
      assert json.load(f) == {"next_index": stop_step}


def test_rerun_resumes_from_the_stop_checkpoint(stopped):
  stop_step = stopped["steps"][0]
  for log in stopped["rerun_logs"]:
    assert f"resuming from checkpoint at step {stop_step}" in log
  # Process 0 logs only the one step trained after the restart.
  assert [int(s) for s, _ in LOSS_LINE.findall(stopped["rerun_logs"][0])] == [stop_step + 1]
  ckpt_dir = checkpoints.checkpoint_dir(stopped["workdir"])
  assert sorted(os.listdir(ckpt_dir), key=int) == [str(stop_step), str(stop_step + 1)]
  for i in range(NUM_PROCESSES):   # both data iterators went on from the saved position
    with open(os.path.join(ckpt_dir, str(stop_step + 1), "data_iterator",
                           f"process_{i}-of-2.json")) as f:
      assert json.load(f) == {"next_index": stop_step + 1}


def test_sigint_before_the_first_step_of_a_resumed_run_stops_both_after_it(tmp_path):
  """Ctrl-C (which JAX's notifier does not listen for) to process 0, during the first compile."""
  out = str(tmp_path / "out")
  procs, log_paths = start_processes(["stop_probe", "--out", out, "--first_step", str(PROBE_FIRST_STEP)], str(tmp_path), "probe")
  signal_after(procs, log_paths[0], PROBE_READY, None, signal.SIGINT, target=0)
  wait_for_processes(procs, log_paths, time.time() + STOP_TIMEOUT)
  probes = [json.load(open(os.path.join(out, f"probe_{i}.json"))) for i in range(NUM_PROCESSES)]
  assert [p["mode"] for p in probes] == ["sync"] * NUM_PROCESSES
  assert [p["received"] for p in probes] == [int(signal.SIGINT), None]
  # The protocol agrees on the step after the resumed one (had the resumed step
  # not been reported, it would agree on step 1, and nobody would ever stop).
  assert [p["step"] for p in probes] == [PROBE_FIRST_STEP + 1] * NUM_PROCESSES
