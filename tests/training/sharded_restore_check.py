r"""checkpoints.load_params on 8 fake CPU devices: weights land in the requested shardings.

Run by tests/training/test_checkpoints.py in a subprocess, because the device
count must be fixed before JAX starts (pytest's own process has started it):

  python tests/training/sharded_restore_check.py --workdir DIR --out results.json

Saves a train state laid out over a 1-D fsdp mesh of 8 (as another run's
topology would), then loads its weights into a (2, 2, 2) data/fsdp/tensor mesh
with other layouts. Writes a JSON report of what came back (partition specs,
shard shapes, differences to the saved values, error messages); the test
asserts on it.
"""

from __future__ import annotations

import os
import sys

# Before JAX is imported: 8 host devices, CPU only.
os.environ["XLA_FLAGS"] = " ".join(["--xla_force_host_platform_device_count=8",
                                    os.environ.get("XLA_FLAGS", "")])
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
from typing import Any

import flax.struct
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from videojam_jax.training import checkpoints

SAVE_STEP = 5
# name -> (shape, partition spec written with (fsdp=8), spec requested on (data, fsdp, tensor)).
LAYOUT = {
    "blocks/kernel": ((4, 16, 24), P(None, "fsdp", None), P(None, "fsdp", "tensor")),
    "embed/kernel": ((16, 32), P("fsdp", None), P("tensor", "fsdp")),
    "head/bias": ((24,), P("fsdp"), P()),
    "motion_head/kernel": ((16, 8), P("fsdp", None), P(None, ("fsdp", "tensor"))),
}
# Left out of the subset load (as the motion entries are when a VideoJAM run loads a base run).
NOT_IN_SUBSET = "motion_head"


class TrainState(flax.struct.PyTreeNode):
  """The shape of the trainer's state: step, params, ema_params, opt_state."""
  step: jnp.ndarray
  params: Any
  ema_params: Any
  opt_state: Any


def nest(flat: dict[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for name, value in flat.items():
    outer, inner = name.split("/")
    out.setdefault(outer, {})[inner] = value
  return out


def flat(tree: dict[str, Any]) -> dict[str, Any]:
  return {f"{outer}/{inner}": v for outer, sub in tree.items() for inner, v in sub.items()}


def save_run(workdir: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Writes a checkpoint at SAVE_STEP from the fsdp=8 mesh; returns (params, ema) as numpy."""
  mesh = jax.make_mesh((8,), ("fsdp",))
  rng = np.random.default_rng(0)
  params = {k: rng.standard_normal(shape).astype(np.float32) for k, (shape, _, _) in LAYOUT.items()}
  ema = {k: (2 * v + 1).astype(np.float32) for k, v in params.items()}
  put = lambda tree: nest({k: jax.device_put(v, NamedSharding(mesh, LAYOUT[k][1]))
                           for k, v in tree.items()})
  tx = optax.adam(1e-3)
  state = TrainState(step=jnp.asarray(SAVE_STEP, jnp.int32), params=put(params),
                     ema_params=put(ema), opt_state=tx.init(put(params)))
  iterator = iter(grain.MapDataset.range(64).batch(2).to_iter_dataset())
  next(iterator)
  manager = checkpoints.create_manager(workdir, ml_collections.ConfigDict({"max_checkpoints_to_keep": 2}))
  checkpoints.save(manager, SAVE_STEP, state, iterator)
  manager.wait_until_finished()
  manager.close()
  return params, ema


def abstract(mesh: jax.sharding.Mesh, names: list[str]) -> dict[str, Any]:
  return nest({k: jax.ShapeDtypeStruct(LAYOUT[k][0], np.float32, sharding=NamedSharding(mesh, LAYOUT[k][2]))
               for k in names})


def describe(loaded: dict[str, Any], want: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """Per leaf: is it a jax.Array, its spec, whether it equals the requested sharding, its shards, |diff|."""
  report = {}
  for name, array in flat(loaded).items():
    requested = NamedSharding(mesh, LAYOUT[name][2])
    report[name] = {
        "is_jax_array": isinstance(array, jax.Array),
        "spec": [list(a) if isinstance(a, tuple) else a for a in array.sharding.spec],
        "same_mesh": array.sharding.mesh == mesh,
        "equivalent_to_requested": bool(array.sharding.is_equivalent_to(requested, array.ndim)),
        "num_shards": len(array.addressable_shards),
        "shard_shapes": sorted({tuple(s.data.shape) for s in array.addressable_shards}),
        "shape": list(array.shape),
        "max_abs_diff": float(np.max(np.abs(np.asarray(array) - want[name]))),
    }
  return report


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  params, ema = save_run(args.workdir)

  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
  everything = list(LAYOUT)
  subset = [k for k in LAYOUT if not k.startswith(NOT_IN_SUBSET)]
  results: dict[str, Any] = {"device_count": jax.device_count()}
  results["ema"] = describe(checkpoints.load_params(args.workdir, "ema", abstract(mesh, everything)),
                            ema, mesh)
  results["params"] = describe(checkpoints.load_params(
      os.path.join(args.workdir, "checkpoints"), "params", abstract(mesh, everything)), params, mesh)
  results["subset"] = describe(checkpoints.load_params(
      args.workdir, "ema", abstract(mesh, subset), allow_unused=True), ema, mesh)
  try:
    checkpoints.load_params(args.workdir, "ema", abstract(mesh, subset))
    results["subset_strict_error"] = None
  except checkpoints.CheckpointMismatchError as e:
    results["subset_strict_error"] = str(e)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
