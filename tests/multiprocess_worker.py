r"""One process of a multi-process CPU training run, or its single-process reference.

Used by tests/test_multiprocess.py. Two modes:

  # one of N processes, each with --devices fake CPU devices, the real trainer
  python tests/multiprocess_worker.py train --process_id 0 --num_processes 2 \
      --coordinator localhost:PORT --dataset_dir D --workdir W --out OUT_DIR

  # one process with all N * --devices devices, the same global batches, no trainer
  python tests/multiprocess_worker.py reference --num_processes 2 --dataset_dir D --out OUT_DIR

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
from collections.abc import Iterator
from typing import Any
from unittest import mock

import jax
import ml_collections
import numpy as np
from absl import logging

from configs import tiny
from videojam_jax.data import pipeline as input_pipeline
from videojam_jax.parallel import sharding
from videojam_jax.training import state as train_state
from videojam_jax.training import step as train_step

NUM_STEPS = 3


def worker_config(dataset_dir: str) -> ml_collections.ConfigDict:
  """configs/tiny.py for NUM_STEPS steps of a batch of 4 over all devices."""
  config = tiny.get_config()
  config.compilation_cache_dir = ""
  config.data.dataset_dir = dataset_dir
  config.data.read_threads = 1
  config.data.prefetch_buffer_size = 0
  config.train.batch_size = 4
  config.train.num_steps = NUM_STEPS
  config.train.log_every = 1
  config.train.checkpoint_every = 2
  config.optim.schedule = "constant"
  config.optim.warmup_steps = 0
  config.sample.num_samples = 4          # one prompt per batch shard
  config.sample.num_steps = 1
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
  return config


def flatten(params: Any) -> dict[str, np.ndarray]:
  """{'blocks/mlp/fc1/kernel': array, ...} of a host parameter tree."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v) for path, v in flat}


def train(args: argparse.Namespace) -> None:
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from videojam_jax.training import loop as trainer  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(coordinator_address=args.coordinator,
                             num_processes=args.num_processes, process_id=args.process_id)
  config = worker_config(args.dataset_dir)
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
      iterator = iter(input_pipeline.create_dataset(config, config.data.train_split))
      batches.append([next(iterator) for _ in range(num_steps)])
  return batches


def distinct_clips(batches: list[list[dict[str, np.ndarray]]]) -> tuple[int, int]:
  """(clips read by all processes over all steps, how many of them are distinct)."""
  clips = [clip.tobytes() for per_process in batches for batch in per_process for clip in batch["video"]]
  return len(clips), len(set(clips))


def reference(args: argparse.Namespace) -> None:
  from data_pipelines import build_synthetic  # pylint: disable=g-import-not-at-top
  config = worker_config(args.dataset_dir)
  build_synthetic.build(config)   # no-op when the dataset is there
  batches = per_process_batches(config, args.num_processes, NUM_STEPS)
  mesh = sharding.create_mesh(config.mesh)
  tx = train_state.create_optimizer(config)
  _, shardings = train_state.abstract_state_and_shardings(config, mesh, tx)
  step = train_step.make_train_step(config, mesh, tx, shardings, input_pipeline.batch_spec(config))
  orders = {"reference": list(range(args.num_processes)),
            "swapped": list(reversed(range(args.num_processes)))}
  losses = {}
  for name, order in orders.items():
    state, _ = train_state.create_train_state(config, mesh, tx)
    losses[name] = []
    for s in range(NUM_STEPS):
      local = {k: np.concatenate([batches[p][s][k] for p in order]) for k in batches[0][s]}
      state, metrics = step(state, input_pipeline.make_global_batch(local, step.in_batch_shardings))
      losses[name].append(float(metrics["loss"]))
    np.savez(os.path.join(args.out, f"{name}_params.npz"), **flatten(jax.device_get(state.params)))
  read, distinct = distinct_clips(batches)
  with open(os.path.join(args.out, "reference.json"), "w") as f:
    json.dump({"losses": losses, "clips_read": read, "distinct_clips": distinct}, f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("mode", choices=("train", "reference"))
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--coordinator", default="")
  parser.add_argument("--dataset_dir", required=True)
  parser.add_argument("--workdir", default="")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  logging.set_verbosity(logging.INFO)   # the trainer's progress and metric lines, on stderr
  train(args) if args.mode == "train" else reference(args)


if __name__ == "__main__":
  main()
