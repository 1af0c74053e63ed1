r"""Cost of each guidance mode per sampling step, after compilation.

  python -m benchmarks.guidance_cost [--config=configs/quickstart.py --batch=4 \
      --num_steps=10 --repeats=5]

Samples with a randomly initialised VideoJAM model of the config's size (the
cost does not depend on the weights) and prints, per mode, the median over
`repeats` runs of (seconds per sample call) / num_steps, the ratio to CFG, and
the range over the runs (modes are timed round-robin):

  none                   1 condition per step                 (u)
  cfg                    2 conditions, one batched forward    (u, u(null text))
  inner (batched)        3 conditions, one batched forward    (+ u(null motion))
  inner (3 calls)        3 conditions, three forward calls    (sampler batched=False)

A sample call includes drawing the noise, encoding the captions once and
clipping, which is small next to num_steps forward passes. Compile time is
printed separately, and so is the achieved model TFLOP/s (analytic forward
FLOPs, videojam_jax/model/flops.py, times conditions x batch per step).

Other sizes and precisions through the config, e.g. on a GPU:
  --config.model.dtype=bfloat16 --config.model.width=1024 --config.model.depth=8
"""

from __future__ import annotations

import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from videojam_jax.model import flops as flops_lib
from videojam_jax.sampling import sampler as sampler_lib
from videojam_jax.training import experiment

_CONFIG = config_flags.DEFINE_config_file("config", "configs/quickstart.py", "Model config file.")
_BATCH = flags.DEFINE_integer("batch", 4, "Clips per sample call.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 10, "Sampler steps per call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per mode (after one compile call).")

# (label, guidance, batched, conditions per step)
MODES = (("none", "none", True, 1), ("cfg", "cfg", True, 2),
         ("inner (batched)", "inner", True, 3), ("inner (3 calls)", "inner", False, 3))
REFERENCE = "cfg"


def random_params(exp: experiment.Experiment) -> dict:
  """Random weights for the experiment's model; the zero-initialised heads are perturbed
  too, so the clips are not trivially zero (the cost does not depend on the values)."""
  params = exp.model.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  noise = jax.tree.map(lambda a: (0.02 * rng.standard_normal(a.shape)).astype(a.dtype), params)
  return jax.tree.map(lambda a, n: a + jax.device_put(n, a.sharding), params, noise)


def compile_mode(exp: experiment.Experiment, params, ids, mask, guidance: str, batched: bool,
                 num_steps: int) -> tuple:
  """(sampler, seconds for its compile + first call)."""
  settings = sampler_lib.settings_from_config(exp.config.sample, num_steps=num_steps,
                                              guidance=guidance, batched=batched)
  sample = sampler_lib.Sampler(exp.model, settings)
  start = time.perf_counter()
  jax.block_until_ready(sample(params, ids, mask, jax.random.key(0)))
  return sample, time.perf_counter() - start


def time_modes(samplers: dict, params, ids, mask, repeats: int) -> dict[str, list[float]]:
  """Seconds per call of every sampler, round-robin: on a shared machine a load
  change then hits every mode alike instead of whichever ran at the time."""
  times: dict[str, list[float]] = {label: [] for label in samplers}
  for i in range(repeats):
    for label, sample in samplers.items():
      start = time.perf_counter()
      jax.block_until_ready(sample(params, ids, mask, jax.random.key(i + 1)))
      times[label].append(time.perf_counter() - start)
  return times


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  config.model.jam = True  # every mode, Inner-Guidance included, on the same model
  exp = experiment.build(config)
  params = random_params(exp)
  captions = [f"a red circle moving right, clip {i}" for i in range(_BATCH.value)]
  ids, mask = exp.captions(captions, trim=True)   # trimmed as evaluate and train sample them
  d, m = config.data, config.model
  print(f"model width {m.width} depth {m.depth} {m.dtype}, clips {d.num_frames}x{d.height}x{d.width}, "
        f"patch {tuple(m.patch_size)}, text {ids.shape[1]} of {m.text.max_length} tokens; batch {_BATCH.value}, "
        f"{_NUM_STEPS.value} steps x {_REPEATS.value} runs; {jax.device_count()} "
        f"{jax.default_backend()} device(s)")
  samplers, compile_seconds = {}, {}
  for label, guidance, batched, _ in MODES:
    samplers[label], compile_seconds[label] = compile_mode(
        exp, params, ids, mask, guidance, batched, _NUM_STEPS.value)
  times = time_modes(samplers, params, ids, mask, _REPEATS.value)
  per_step = {label: statistics.median(t) / _NUM_STEPS.value for label, t in times.items()}
  spread = {label: (min(t) / _NUM_STEPS.value, max(t) / _NUM_STEPS.value) for label, t in times.items()}
  reference = per_step[REFERENCE]
  forward = flops_lib.sampling_forward_flops(config, ids.shape[1]) * _BATCH.value
  print(f"{'mode':<18}{'s/step':>9}{'vs cfg':>8}{'min..max s/step':>19}{'TFLOP/s':>9}"
        f"{'compile+1st call s':>20}")
  for label, _, _, conditions in MODES:
    low, high = spread[label]
    tflops = conditions * forward / per_step[label] / 1e12
    print(f"{label:<18}{per_step[label]:>9.4f}{per_step[label] / reference:>8.2f}"
          f"{f'{low:.4f}..{high:.4f}':>19}{tflops:>9.3g}{compile_seconds[label]:>20.1f}")
  print(f"model forward: {forward / _BATCH.value:.4g} FLOPs per clip and condition")


if __name__ == "__main__":
  app.run(main)
