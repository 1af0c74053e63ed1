r"""One process of a multi-process CPU training run, or its single-process reference.

Used by tests/test_multiprocess.py. Four modes:

  # builds the tiny synthetic dataset (a no-op when it is there)
  python tests/multiprocess_worker.py build --dataset_dir D

  # one of N processes, each with --devices fake CPU devices, the real trainer
  python tests/multiprocess_worker.py train --process_id 0 --num_processes 2 \
      --coordinator localhost:PORT --dataset_dir D --workdir W --out OUT_DIR

  # one process with all N * --devices devices, the same global batches, no trainer
  python tests/multiprocess_worker.py reference --num_processes 2 --dataset_dir D --out OUT_DIR

  # one of N processes stepping a tiny collective until preemption.StopRequest says stop
  python tests/multiprocess_worker.py stop_probe --process_id 0 --num_processes 2 \
      --coordinator localhost:PORT --out OUT_DIR

`train` runs `trainer.train_and_evaluate` exactly as `python -m videojam_jax.train`
does after `jax.distributed.initialize`: each process reads its own slice of the
records, the per-process batches become one global batch, process 0 writes
metrics and samples, all processes write the Orbax checkpoint. It then saves the
final parameters (gathered from all processes) as OUT_DIR/train_params.npz.

`reference` builds the dataset if needed, rebuilds the per-process input
pipelines in one process (by telling input_pipeline which process it is
building for) and concatenates the per-process batches in process order, which
is how `jax.make_array_from_process_local_data` lays them out on a mesh whose
devices are ordered by process (process p's rows are the p-th block of the
batch). It trains the same steps with the same jitted train step and saves
reference_params.npz and reference.json (losses, clips read), plus
swapped_params.npz from the batches concatenated in the opposite order (a
control: the comparison must be able to tell the two orders apart).

`train` takes --num_steps and --checkpoint_every (a long run that a signal
stops midway). `stop_probe` is the stop agreement without the trainer, as in
a run resumed at step --first_step: it logs "probe ready", pauses (a
first step's compile), then each step is one cross-process reduction and
`StopRequest.should_stop`; OUT_DIR/probe_{process}.json holds the step it
stopped at and what a `should_stop` call cost (median and slowest).
"""

from __future__ import annotations

import argparse
import os
import sys

# Before JAX is imported: CPU only (keeps libtpu, if installed, from loading) and
# cheap XLA optimisation for the tiny test model.
_DEVICES = int(os.environ.get("WORKER_DEVICES", "2"))
os.environ["XLA_FLAGS"] = " ".join([
    f"--xla_force_host_platform_device_count={_DEVICES}", "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true", "--xla_cpu_use_fusion_emitters=false",
    os.environ.get("XLA_FLAGS", "")])
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import contextlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import jax
import ml_collections
import numpy as np
from absl import logging

from configs import tiny
from videojam_jax.data import pipeline as input_pipeline
from videojam_jax.data import text as text_lib
from videojam_jax.training import experiment
from videojam_jax.training import state as state_lib
from videojam_jax.training import step as step_lib

NUM_STEPS = 3
CHECKPOINT_EVERY = 2
PROBE_MAX_STEPS = 2000       # stop_probe fails (no stop) after this many steps
PROBE_STEP_SECONDS = 0.01    # a pause per probe step
PROBE_SETUP_SECONDS = 3.0    # stands in for the first step's compile, when a signal arrives


def worker_config(dataset_dir: str, num_steps: int = NUM_STEPS,
                  checkpoint_every: int = CHECKPOINT_EVERY) -> ml_collections.ConfigDict:
  """configs/tiny.py for `num_steps` steps of a batch of 4 over all devices."""
  config = tiny.get_config()
  config.compilation_cache_dir = ""
  config.data.dataset_dir = dataset_dir
  config.data.read_threads = 1
  config.data.prefetch_buffer_size = 0
  config.train.batch_size = 4
  config.train.num_steps = num_steps
  config.train.log_every = 1
  config.train.checkpoint_every = checkpoint_every
  config.optim.schedule = "constant"
  config.optim.warmup_steps = 0
  config.sample.num_steps = 1
  # Samples at the last step: one prompt per batch shard, written by process 0.
  config.evals.samples.every_steps = num_steps
  config.evals.samples.num_prompts = 4
  config.evals.samples.batch_size = 4
  config.evals.samples.dis_preset = "ultrafast"
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
  return config


def flatten(params: Any) -> dict[str, np.ndarray]:
  """{'blocks/mlp/fc1/kernel': array, ...} of a host parameter tree."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v) for path, v in flat}


def train(args: argparse.Namespace) -> None:
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from videojam_jax.training import loop as trainer  # pylint: disable=g-import-not-at-top
  if cache_dir := os.environ.get("WORKER_COMPILATION_CACHE"):
    # Compile time dominates these runs: later runs of the same programs load
    # them from disk (JAX writes the entries from process 0).
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.distributed.initialize(coordinator_address=args.coordinator,
                             num_processes=args.num_processes, process_id=args.process_id)
  config = worker_config(args.dataset_dir, args.num_steps, args.checkpoint_every)
  state = trainer.train_and_evaluate(config, args.workdir)
  # Every process takes part in the gather; process 0 writes the result.
  params = multihost_utils.process_allgather(state.params, tiled=True)
  info = {"process_index": jax.process_index(), "process_count": jax.process_count(),
          "local_devices": jax.local_device_count(), "devices": jax.device_count(),
          "step": int(jax.device_get(state.step))}
  with open(os.path.join(args.out, f"process_{jax.process_index()}.json"), "w") as f:
    json.dump(info, f)
  if jax.process_index() == 0:
    np.savez(os.path.join(args.out, "train_params.npz"), **flatten(params))
  multihost_utils.sync_global_devices("worker done")


def stop_probe(args: argparse.Namespace) -> None:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from videojam_jax.training import preemption  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(coordinator_address=args.coordinator,
                             num_processes=args.num_processes, process_id=args.process_id)
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  x = jax.make_array_from_process_local_data(spec, np.ones((jax.local_device_count(),), np.float32))
  # A reduction over all processes' devices: a process that stopped alone would
  # leave its peer waiting here.
  step_fn = jax.jit(lambda a: a + jnp.sum(a) * 0.0, out_shardings=spec)
  check_seconds, step = [], args.first_step
  with preemption.StopRequest(args.first_step) as stop:
    logging.info("probe ready")
    time.sleep(PROBE_SETUP_SECONDS)
    while step < args.first_step + PROBE_MAX_STEPS:
      x = jax.block_until_ready(step_fn(x))
      step += 1
      start = time.perf_counter()
      stopping = stop.should_stop(step)
      check_seconds.append(time.perf_counter() - start)
      if stopping:
        break
      logging.info("probe step %d", step)
      time.sleep(PROBE_STEP_SECONDS)
  logging.info("probe stopped at step %d (mode %s)", step, stop.mode)
  with open(os.path.join(args.out, f"probe_{jax.process_index()}.json"), "w") as f:
    json.dump({"step": step, "mode": stop.mode, "received": stop.received,
               # The typical call, and the slowest (the one that waited for the protocol).
               "check_us_median": 1e6 * float(np.median(check_seconds)),
               "check_us_max": 1e6 * max(check_seconds)}, f)


@contextlib.contextmanager
def pretend_process(index: int, count: int) -> Iterator[None]:
  """Makes input_pipeline build the dataset of process `index` of `count`."""
  with mock.patch.object(input_pipeline.jax, "process_index", lambda: index), \
       mock.patch.object(input_pipeline.jax, "process_count", lambda: count):
    yield


def per_process_batches(config: ml_collections.ConfigDict, num_processes: int,
                        num_steps: int) -> list[list[dict[str, np.ndarray]]]:
  """batches[p][s]: what process p of `num_processes` reads at step s."""
  batches = []
  for p in range(num_processes):
    with pretend_process(p, num_processes):
      captions = text_lib.CaptionInputs(config.model.text)
      iterator = iter(input_pipeline.create_dataset(
          config.data, config.data.train_split, batch_size=config.train.batch_size,
          captions=captions))
      batches.append([next(iterator) for _ in range(num_steps)])
  return batches


def distinct_clips(batches: list[list[dict[str, np.ndarray]]]) -> tuple[int, int]:
  """(clips read by all processes over all steps, how many of them are distinct)."""
  clips = [clip.tobytes() for per_process in batches for batch in per_process for clip in batch["video"]]
  return len(clips), len(set(clips))


def build(args: argparse.Namespace) -> None:
  from data_pipelines import synthetic_dataset  # pylint: disable=g-import-not-at-top
  synthetic_dataset.build(worker_config(args.dataset_dir))   # no-op when the dataset is there


def reference(args: argparse.Namespace) -> None:
  build(args)
  config = worker_config(args.dataset_dir)
  batches = per_process_batches(config, args.num_processes, NUM_STEPS)
  exp = experiment.build(config)
  tx = state_lib.create_optimizer(config.optim, config.train.num_steps)
  shardings = state_lib.shardings(state_lib.abstract_state(exp.model, tx))
  step = step_lib.TrainStep(
      exp.model, tx, loss_config=config.loss, ema_decay=config.optim.ema_decay,
      grad_accum_steps=config.optim.grad_accum_steps, seed=config.seed,
      state_shardings=shardings,
      batch_spec=input_pipeline.batch_spec(exp.video_shape, exp.captions, config.train.batch_size))
  orders = {"reference": list(range(args.num_processes)),
            "swapped": list(reversed(range(args.num_processes)))}
  losses = {}
  for name, order in orders.items():
    state = state_lib.init_state(exp.model, tx, jax.random.key(config.seed))
    losses[name] = []
    for s in range(NUM_STEPS):
      local = {k: np.concatenate([batches[p][s][k] for p in order]) for k in batches[0][s]}
      state, metrics = step(state, input_pipeline.make_global_batch(local, step.batch_shardings))
      losses[name].append(float(metrics["loss"]))
    np.savez(os.path.join(args.out, f"{name}_params.npz"), **flatten(jax.device_get(state.params)))
  read, distinct = distinct_clips(batches)
  with open(os.path.join(args.out, "reference.json"), "w") as f:
    json.dump({"losses": losses, "clips_read": read, "distinct_clips": distinct}, f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("mode", choices=("build", "train", "reference", "stop_probe"))
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--coordinator", default="")
  parser.add_argument("--dataset_dir", default="", help="all modes but stop_probe")
  parser.add_argument("--workdir", default="")
  parser.add_argument("--out", default="", help="all modes but build")
  parser.add_argument("--num_steps", type=int, default=NUM_STEPS)
  parser.add_argument("--checkpoint_every", type=int, default=CHECKPOINT_EVERY)
  parser.add_argument("--first_step", type=int, default=0, help="stop_probe: the resumed step")
  args = parser.parse_args()
  if args.mode != "stop_probe" and not args.dataset_dir:
    parser.error(f"{args.mode} needs --dataset_dir")
  if args.mode != "build":
    if not args.out:
      parser.error(f"{args.mode} needs --out")
    os.makedirs(args.out, exist_ok=True)
  logging.set_verbosity(logging.INFO)   # the trainer's progress and metric lines, on stderr
  {"build": build, "train": train, "reference": reference, "stop_probe": stop_probe}[args.mode](args)


if __name__ == "__main__":
  main()
