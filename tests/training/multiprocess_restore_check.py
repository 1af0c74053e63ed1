r"""One of two CPU processes (jax.distributed) recovering from a damaged newest checkpoint.

Run by tests/training/test_checkpoints.py, both processes side by side:

  python tests/training/multiprocess_restore_check.py --process_id I --coordinator localhost:PORT \
      --workdir DIR --damage data|iterator_of_process_1 --out report_I.json

Both processes save a state sharded over their two devices (one each) at steps
1 and 2. Process 0 then damages step 2: its array data (every process fails), or
only process 1's data-iterator file (process 0 alone would restore it). Both
then call restore_latest and report what they got; the test asserts that they
agree on step 1 and that the damaged step was moved once, by process 0.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = " ".join(["--xla_force_host_platform_device_count=1",
                                    os.environ.get("XLA_FLAGS", "")])
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
import pathlib
from typing import Any

import flax.struct
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from videojam_jax.training import checkpoints

NUM_PROCESSES = 2
STEPS = (1, 2)
DAMAGES = ("data", "iterator_of_process_1")


class TrainState(flax.struct.PyTreeNode):
  step: jnp.ndarray
  params: Any
  ema_params: Any
  opt_state: Any


def host_state(step: int) -> dict[str, np.ndarray]:
  return {"kernel": np.full((4, 3), float(step), np.float32),
          "bias": (np.arange(4) + step).astype(np.float32)}


def sharded(tree: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  # First axis over the two processes' devices: each process holds half of each leaf.
  sharding = NamedSharding(mesh, P("fsdp"))
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
          for k, v in tree.items()}


def make_state(step: int, mesh: jax.sharding.Mesh) -> TrainState:
  params = sharded(host_state(step), mesh)
  ema = sharded({k: 2 * v for k, v in host_state(step).items()}, mesh)
  step_array = jax.make_array_from_callback((), NamedSharding(mesh, P()),
                                            lambda idx: np.asarray(step, np.int32))
  return TrainState(step=step_array, params=params, ema_params=ema, opt_state=())


def iterator() -> grain.DatasetIterator:
  # Each process reads its own records, as the trainer's pipeline does.
  ds = grain.MapDataset.range(100)[jax.process_index()::NUM_PROCESSES].batch(2)
  return iter(ds.to_iter_dataset())


def damage(workdir: pathlib.Path, how: str) -> None:
  step_dir = workdir / "checkpoints" / str(STEPS[-1])
  if how == "data":
    for path in (step_dir / checkpoints.STATE).rglob("*"):
      if path.is_file() and path.parent.name == "d":
        with open(path, "r+b") as f:
          f.truncate(path.stat().st_size // 2)
  else:
    (step_dir / checkpoints.DATA_ITERATOR / f"process_1-of-{NUM_PROCESSES}.json").write_text("{")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--coordinator", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--damage", choices=DAMAGES, required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  jax.distributed.initialize(args.coordinator, NUM_PROCESSES, args.process_id)
  mesh = jax.make_mesh((NUM_PROCESSES,), ("fsdp",))
  workdir = pathlib.Path(args.workdir)
  config = ml_collections.ConfigDict({"max_checkpoints_to_keep": 5})

  manager = checkpoints.create_manager(str(workdir), config)
  it = iterator()
  for step in STEPS:
    next(it)
    checkpoints.save(manager, step, make_state(step, mesh), it)
  manager.wait_until_finished()
  manager.close()
  multihost_utils.sync_global_devices("saved")
  if jax.process_index() == 0:
    damage(workdir, args.damage)
  multihost_utils.sync_global_devices("damaged")

  manager = checkpoints.create_manager(str(workdir), config)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          make_state(0, mesh))
  it = iterator()
  state, step = checkpoints.restore_latest(manager, abstract, it)
  report = {
      "process": jax.process_index(),
      "step": step,
      "manager_steps": list(manager.all_steps()),
      "params": jax.tree.map(lambda x: x.tolist(),
                             multihost_utils.process_allgather(state.params, tiled=True)),
      "next_batch": np.asarray(next(it)).tolist(),
      "corrupt": sorted(p.name for p in (workdir / checkpoints.CORRUPT_DIR).iterdir()),
  }
  manager.close()
  with open(args.out, "w") as f:
    json.dump(report, f)
  multihost_utils.sync_global_devices("reported")


if __name__ == "__main__":
  main()
