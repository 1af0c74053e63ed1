r"""Where a training step's time goes: steps/s, achieved GFLOP/s, and the costliest ops.

  python -m benchmarks.train_step_cost [--config=configs/quickstart.py --steps=20 \
      --trace_steps=5] [--config.model.width=...]

Runs the real jitted train step (training/step.py) of the config on batches of its
dataset, after compilation, and prints:

- the median step time over `steps` steps and the model FLOPs per step
  (model/flops.py: the DiT's and the text encoder's matmuls, x3 for fwd + bwd), so
  the achieved GFLOP/s;
- from a jax.profiler trace of `trace_steps` steps (Perfetto JSON), the device time
  per XLA op summed over those steps, largest first, and the share of the step in
  matmul-like ops (dot / convolution fusions) against everything else.

On the 2-core CPU VM the trace's op times are those of XLA:CPU's thunks.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import statistics
import tempfile
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from videojam_jax.data import pipeline
from videojam_jax.model import flops as flops_lib
from videojam_jax.training import experiment
from videojam_jax.training import state as state_lib
from videojam_jax.training import step as step_lib

_CONFIG = config_flags.DEFINE_config_file("config", "configs/quickstart.py", "Training config.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after one compiling step).")
_TRACE_STEPS = flags.DEFINE_integer("trace_steps", 5, "Profiled steps (0: no trace).")
_TOP = flags.DEFINE_integer("top", 15, "Ops to list.")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?\b([a-z][\w\-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def op_kinds(hlo_text: str) -> dict[str, str]:
  """Op name -> what it computes, from compiled HLO text: "dot" for an op (or a fusion)
  with a dot or convolution inside, else the ops inside a fusion, else its opcode."""
  computations: dict[str, list[str]] = {}
  calls: dict[str, str] = {}
  opcode: dict[str, str] = {}
  current = None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header:
      current = header.group(1)
      computations[current] = []
      continue
    match = _INSTRUCTION.match(line)
    if not match or current is None:
      continue
    name, code = match.groups()
    computations[current].append(code)
    opcode[name] = code
    called = _CALLS.search(line)
    if called:
      calls[name] = called.group(1)

  kinds = {}
  for name, code in opcode.items():
    # A fusion is named by what its fused computation contains (one level is enough on CPU).
    codes = set(computations.get(calls[name], [])) if name in calls else {code}
    if codes & {"dot", "convolution"}:
      kinds[name] = "dot"
    else:
      kinds[name] = "+".join(sorted(codes - {"parameter", "bitcast", "constant", "tuple",
                                             "get-tuple-element"}))[:60] or code
  return kinds


def _trace_ops(logdir: str) -> collections.Counter:
  """Summed duration (us) per op name of the Perfetto trace jax.profiler wrote."""
  (path,) = glob.glob(os.path.join(logdir, "**", "*.trace.json.gz"), recursive=True)
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  totals: collections.Counter = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and "dur" in e and e.get("args", {}).get("hlo_op") is not None:
      totals[e["name"]] += e["dur"]
  if not totals:  # older traces name ops without hlo_op args: take every complete event
    for e in events:
      if e.get("ph") == "X" and "dur" in e and not e["name"].startswith(("$", "Thunk")):
        totals[e["name"]] += e["dur"]
  return totals


def main(argv):
  del argv
  config = _CONFIG.value
  exp = experiment.build(config)
  train = config.train
  tx = state_lib.create_optimizer(config.optim, train.num_steps)
  abstract = state_lib.abstract_state(exp.model, tx)
  state = state_lib.init_state(exp.model, tx, jax.random.key(config.seed))
  step_fn = step_lib.TrainStep(
      exp.model, tx, loss_config=config.loss, ema_decay=config.optim.ema_decay,
      grad_accum_steps=config.optim.grad_accum_steps, seed=config.seed,
      state_shardings=state_lib.shardings(abstract),
      batch_spec=pipeline.batch_spec(exp.video_shape, exp.captions, train.batch_size))
  data = iter(pipeline.create_dataset(config.data, config.data.train_split,
                                      batch_size=train.batch_size, captions=exp.captions))
  batches = [pipeline.make_global_batch(next(data), step_fn.batch_shardings) for _ in range(4)]

  start = time.perf_counter()
  state, metrics = step_fn(state, batches[0])
  jax.block_until_ready(metrics)
  print(f"compile + first step: {time.perf_counter() - start:.1f} s")
  times = []
  for i in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = step_fn(state, batches[i % len(batches)])
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  flops = flops_lib.model_flops(config)["flops_per_step"]
  print(f"step: median {median * 1e3:.1f} ms over {len(times)} "
        f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}): {1 / median:.2f} steps/s; "
        f"{flops / 1e9:.2f} GFLOP per step -> {flops / median / 1e9:.1f} GFLOP/s")

  if _TRACE_STEPS.value:
    with tempfile.TemporaryDirectory() as logdir:
      jax.profiler.start_trace(logdir, create_perfetto_trace=True)
      for i in range(_TRACE_STEPS.value):
        state, metrics = step_fn(state, batches[i % len(batches)])
        jax.block_until_ready(metrics)
      jax.profiler.stop_trace()
      totals = _trace_ops(logdir)
    total = sum(totals.values())
    if not total:
      print("the trace holds no op events")
      return
    kinds = op_kinds(step_fn.lower(abstract, batches[0]).compile().as_text())
    by_kind: collections.Counter = collections.Counter()
    for name, value in totals.items():
      by_kind[kinds.get(name, "?")] += value
    n = _TRACE_STEPS.value
    print(f"traced ops: {total / n / 1e3:.1f} ms per step; by what they compute:")
    for kind, value in by_kind.most_common(_TOP.value):
      print(f"  {value / n / 1e3:8.2f} ms  {100 * value / total:5.1f}%  {kind}")
    print("costliest ops:")
    for name, value in totals.most_common(_TOP.value):
      print(f"  {value / n / 1e3:8.2f} ms  {100 * value / total:5.1f}%  {name}  "
            f"[{kinds.get(name, '?')}]")


if __name__ == "__main__":
  app.run(main)
