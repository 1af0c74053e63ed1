r"""RAFT throughput (frame pairs per second) of our JAX RAFT on whatever device JAX has.

  python -m benchmarks.raft_throughput [--variants=raft_small,raft_large] \
      [--sizes=256x256,480x832] [--batch=8] [--num_updates=12] [--iters=5]

Weights are random (speed does not depend on them); each (variant, size) is compiled
once, run --warmup times, then timed over --iters calls of --batch pairs, waiting for
the result each time. Prints one line per setting and a markdown table.
"""

import time

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from videojam_jax.model.raft import network

_VARIANTS = flags.DEFINE_list("variants", ["raft_small", "raft_large"], "Configs to time.")
_SIZES = flags.DEFINE_list("sizes", ["256x256", "480x832"], "HxW frame sizes (multiples of 8).")
_BATCH = flags.DEFINE_integer("batch", 8, "Frame pairs per call.")
_UPDATES = flags.DEFINE_integer("num_updates", 12, "GRU iterations (torchvision's default).")
_ITERS = flags.DEFINE_integer("iters", 5, "Timed calls per setting.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls after compiling.")


def time_setting(variant: str, height: int, width: int) -> dict:
  graph, state = nnx.split(network.init(network.CONFIGS[variant]))

  @jax.jit
  def flow(state, first, second):
    return nnx.merge(graph, state)(first, second, num_updates=_UPDATES.value)

  rng = np.random.default_rng(0)
  first = jnp.asarray(rng.uniform(-1, 1, (_BATCH.value, height, width, 3)), jnp.float32)
  second = jnp.roll(first, (2, -3), axis=(1, 2))
  start = time.perf_counter()
  flow(state, first, second).block_until_ready()
  compile_s = time.perf_counter() - start
  for _ in range(_WARMUP.value):
    flow(state, first, second).block_until_ready()
  start = time.perf_counter()
  for _ in range(_ITERS.value):
    flow(state, first, second).block_until_ready()
  seconds = (time.perf_counter() - start) / _ITERS.value
  return dict(variant=variant, size=f"{height}x{width}", batch=_BATCH.value,
              pairs_per_s=_BATCH.value / seconds, ms_per_call=1e3 * seconds,
              compile_s=compile_s)


def main(argv):
  del argv
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}), {jax.device_count()} device(s); "
        f"JAX {jax.__version__}; {_UPDATES.value} updates, float32, random weights")
  rows = []
  for variant in _VARIANTS.value:
    for size in _SIZES.value:
      height, width = (int(s) for s in size.split("x"))
      row = time_setting(variant, height, width)
      rows.append(row)
      print(f"{variant} {row['size']} batch {row['batch']}: {row['pairs_per_s']:.1f} pairs/s "
            f"({row['ms_per_call']:.1f} ms a call; compiled in {row['compile_s']:.1f} s)",
            flush=True)
  print("\n| variant | size | batch | frame pairs/s | ms per call |\n|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['variant']} | {r['size']} | {r['batch']} | {r['pairs_per_s']:.1f} | "
          f"{r['ms_per_call']:.1f} |")


if __name__ == "__main__":
  app.run(main)
