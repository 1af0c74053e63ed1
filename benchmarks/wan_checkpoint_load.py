r"""Full-size Wan 2.1 transformer: export random weights in diffusers layout, load them back.

  python -m benchmarks.wan_checkpoint_load [--size=1.3b --workdir=/tmp/wan_load \
      --frames=2 --height=16 --width=16]

1. initialises the published architecture (`--size`: 1.3b | 14b) with random
   weights, straight into its shardings, and exports it with our diffusers
   writer (float32, 5 GB shards + index.json, as the Hub's files are laid out);
2. in a fresh process, loads that directory through the loader and runs one
   jitted forward pass on a small latent clip (frames x height x width latents,
   512 text tokens);
3. prints the export time, the load time, the forward time and the loading
   process's peak host memory beside the float32 model size: its own (anonymous)
   memory, sampled during the load, and ru_maxrss, which also counts the pages of
   the memory-mapped checkpoint (page cache the kernel can drop). On a CPU the
   loaded parameters themselves live in host memory, so the peak cannot be below
   one model; what it shows is how much loading adds on top.
"""

from __future__ import annotations

import json
import pathlib
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

_SIZE = flags.DEFINE_enum("size", "1.3b", ["1.3b", "14b"], "Published Wan 2.1 T2V size.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/wan_checkpoint_load", "Where to write the export.")
_FRAMES = flags.DEFINE_integer("frames", 2, "Latent frames of the test clip.")
_HEIGHT = flags.DEFINE_integer("height", 16, "Latent height of the test clip.")
_WIDTH = flags.DEFINE_integer("width", 16, "Latent width of the test clip.")
_STAGE = flags.DEFINE_enum("stage", "all", ["all", "export", "load"], "Internal: one stage.")

TEXT_TOKENS = 512


def _config(size: str):
  from videojam_jax.model.wan import transformer as transformer_lib
  return transformer_lib.published_config(size)


def _rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def _status_gib(field: str) -> float:
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1]) / 1024 ** 2
  return float("nan")


class AnonPeak:
  """Samples RssAnon (this process's own memory, not the page cache behind a memory-
  mapped file, which the kernel can drop) every 20 ms; `.peak` in GiB."""

  def __init__(self):
    import threading
    self.peak, self._stop = 0.0, threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, _status_gib("RssAnon"))
      time.sleep(0.02)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, _status_gib("RssAnon"))


def export(size: str, directory: pathlib.Path) -> dict:
  import jax
  import ml_collections
  from flax import nnx
  from videojam_jax.model import functional
  from videojam_jax.model.wan import transformer as transformer_lib
  from videojam_jax.model.wan import weights
  from videojam_jax.parallel import sharding
  config = _config(size)
  plan = sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=-1)))
  create = lambda: transformer_lib.WanTransformer(config, rngs=nnx.Rngs(0))
  graphdef, abstract = functional.abstract_split(create, plan)
  start = time.perf_counter()
  with plan.active():
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(create())),
                     out_shardings=jax.tree.map(lambda a: a.sharding, abstract))()
  jax.block_until_ready(params)
  init_s = time.perf_counter() - start
  start = time.perf_counter()
  files = weights.save_transformer(directory, config, params)
  count = sum(x.size for x in jax.tree.leaves(params))
  return dict(parameters=int(count), init_s=init_s, export_s=time.perf_counter() - start,
              files=files, peak_rss_gib=_rss_gib())


def load(size: str, directory: pathlib.Path, frames: int, height: int, width: int) -> dict:
  import jax
  import jax.numpy as jnp
  import ml_collections
  from flax import nnx
  from videojam_jax.model import functional
  from videojam_jax.model.wan import transformer as transformer_lib
  from videojam_jax.model.wan import weights
  from videojam_jax.parallel import sharding
  config = _config(size)
  plan = sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=-1)))
  graphdef, abstract = functional.abstract_split(
      lambda: transformer_lib.WanTransformer(config, rngs=nnx.Rngs(0)), plan)
  start = time.perf_counter()
  with AnonPeak() as anon:
    params = weights.load_transformer(directory, config, abstract)
    jax.block_until_ready(params)
  load_s = time.perf_counter() - start
  rss_after_load = _rss_gib()
  anon_after_load = _status_gib("RssAnon")
  latents = jax.random.normal(jax.random.key(0), (1, frames, height, width, config.in_channels))
  text = jax.random.normal(jax.random.key(1), (1, TEXT_TOKENS, config.text_dim))
  forward = jax.jit(lambda p, x, t, c: nnx.merge(graphdef, p)(x, t, c))
  start = time.perf_counter()
  out = jax.block_until_ready(forward(params, latents, jnp.array([500.0]), text))
  first_s = time.perf_counter() - start
  start = time.perf_counter()
  out = jax.block_until_ready(forward(params, latents, jnp.array([500.0]), text))
  return dict(load_s=load_s, peak_rss_after_load_gib=rss_after_load,
              peak_anon_during_load_gib=anon.peak, anon_after_load_gib=anon_after_load,
              forward_compile_and_run_s=first_s, forward_s=time.perf_counter() - start,
              output_shape=list(out.shape), output_finite=bool(jnp.isfinite(out).all()),
              output_std=float(out.std()), peak_rss_gib=_rss_gib())


def main(argv):
  del argv
  directory = pathlib.Path(_WORKDIR.value) / f"wan2.1-t2v-{_SIZE.value}" / "transformer"
  if _STAGE.value == "export":
    print(json.dumps(export(_SIZE.value, directory)))
    return
  if _STAGE.value == "load":
    print(json.dumps(load(_SIZE.value, directory, _FRAMES.value, _HEIGHT.value, _WIDTH.value)))
    return
  # Each stage in its own process, so the load's peak memory is the load's alone.
  results = {}
  for stage in ("export", "load"):
    out = subprocess.run([sys.executable, "-m", "benchmarks.wan_checkpoint_load",
                          f"--stage={stage}", *sys.argv[1:]], check=True,
                          capture_output=True, text=True).stdout
    results[stage] = json.loads(out.strip().splitlines()[-1])
  e, l = results["export"], results["load"]
  model_gib = e["parameters"] * 4 / 1024 ** 3
  print(f"Wan 2.1 T2V-{_SIZE.value}: {e['parameters']:,} parameters ({model_gib:.2f} GiB float32), "
        f"{len(e['files']) - 1} files")
  print(f"  random init {e['init_s']:.1f} s; export {e['export_s']:.1f} s")
  print(f"  load {l['load_s']:.1f} s; peak anonymous memory during the load "
        f"{l['peak_anon_during_load_gib']:.2f} GiB ({l['peak_anon_during_load_gib'] / model_gib:.2f}x "
        f"the float32 model), {l['anon_after_load_gib']:.2f} GiB after it")
  print(f"  peak RSS (ru_maxrss, counting the memory-mapped checkpoint's page cache) after "
        f"load {l['peak_rss_after_load_gib']:.2f} GiB")
  print(f"  forward on a {_FRAMES.value}x{_HEIGHT.value}x{_WIDTH.value} latent clip + "
        f"{TEXT_TOKENS} text tokens: {l['forward_compile_and_run_s']:.1f} s with compilation, "
        f"{l['forward_s']:.1f} s after; output {l['output_shape']}, finite={l['output_finite']}, "
        f"std {l['output_std']:.3f}")
  print(f"  peak RSS of the load process overall: {l['peak_rss_gib']:.2f} GiB")


if __name__ == "__main__":
  app.run(main)
