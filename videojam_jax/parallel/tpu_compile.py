"""Ahead-of-time compiles of the real train step for TPU slices that are not attached.

With `libtpu` installed, `jax.experimental.topologies` describes the devices of a
slice; the train step (training/step.py) is lowered with abstract (shape +
sharding only) state and batch and compiled by the TPU compiler for those
devices. Nothing is allocated, so a 40B-parameter config compiles on a laptop.
`build_report` gathers per-chip memory (arguments, outputs, temporaries, total
vs the chip's HBM), XLA's FLOP count and analytic model FLOPs; the entry point
`python -m videojam_jax.aot` prints it.

libtpu on a machine without TPUs: it tries to find its TPU hosts and prints
warnings, and it takes a lockfile that another JAX process on the machine may
hold. When no TPU is attached `configure_compile_only_host` sets
TPU_WORKER_HOSTNAMES, TPU_ACCELERATOR_TYPE, TPU_SKIP_MDS_QUERY and
ALLOW_MULTIPLE_LIBTPU_LOAD before libtpu loads, and keeps JAX's own runtime on
CPU; none of this is needed to compile, only to keep the output clean
(docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from videojam_jax.data import pipeline
from videojam_jax.model.flops import model_flops
from videojam_jax.parallel import sharding
from videojam_jax.training import experiment
from videojam_jax.training import state as state_lib
from videojam_jax.training import step as step_lib

GIB = 1024 ** 3
GOOGLE_PCI_VENDOR = "0x1ae0"   # TPU chips show up as PCI devices of this vendor


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  """What one TPU chip offers; `chip_config` is libtpu's per-chip device layout."""
  hbm_gib: float
  peak_bf16_tflops: float
  chip_config: str            # "megacore": the chip's two TensorCores are one device
  accelerator_type: str       # Cloud TPU name pattern; {n} = count it is named by
  cores_per_chip: int         # TensorCores counted in the accelerator type name


# HBM and peak bf16 matmul throughput per chip, from the Cloud TPU system
# architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e):
# v4 32 GiB, 275 TFLOP/s; v5e 16 GiB, 197 TFLOP/s; v5p 95 GiB, 459 TFLOP/s;
# v6e (Trillium) 32 GiB, 918 TFLOP/s. v4 and v5p names count TensorCores (v5p-128
# is 64 chips), v5e and v6e names count chips.
TPU_CHIPS: dict[str, ChipSpec] = {
    "v4": ChipSpec(32, 275, "megacore", "v4-{n}", 2),
    "v5e": ChipSpec(16, 197, "default", "v5litepod-{n}", 1),
    "v5p": ChipSpec(95, 459, "megacore", "v5p-{n}", 2),
    "v6e": ChipSpec(32, 918, "default", "v6e-{n}", 1),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice by name, e.g. v5p:4x4x4 (64 chips, the slice called v5p-128)."""
  name: str
  generation: str
  dims: tuple[int, ...]

  @property
  def chip(self) -> ChipSpec:
    return TPU_CHIPS[self.generation]

  @property
  def num_chips(self) -> int:
    return int(np.prod(self.dims))

  @property
  def accelerator_type(self) -> str:
    return self.chip.accelerator_type.format(n=self.num_chips * self.chip.cores_per_chip)


def parse_topology(name: str) -> Topology:
  """'v5p:4x4x4' -> Topology; raises ValueError naming the accepted forms."""
  match = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+){1,2})", name.strip())
  if not match or match.group(1) not in TPU_CHIPS:
    raise ValueError(f"--topology={name!r}: expected GENERATION:AxB[xC] with generation one "
                     f"of {sorted(TPU_CHIPS)}, e.g. v5p:4x4x4 or v6e:4x4")
  return Topology(name.strip(), match.group(1), tuple(int(d) for d in match.group(2).split("x")))


def tpu_attached() -> bool:
  """Whether this machine has TPU chips on its PCI bus."""
  for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(path) as f:
        if f.read().strip() == GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def configure_compile_only_host(topology: Topology) -> None:
  """Quietens libtpu on a machine without TPUs (before it loads); no-op on a TPU VM.

  Without these libtpu looks for TPU worker hosts and prints warnings, and it
  refuses to load while another process on the machine holds its lockfile.
  """
  if tpu_attached():
    return
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.accelerator_type)
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")   # no chips to share here
  jax.config.update("jax_platforms", "cpu")   # host-side work (eval_shape) runs on CPU


def topology_devices(topology: Topology) -> list[jax.Device]:
  """Compile-only devices of the slice: one per chip."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  devices = topologies.get_topology_desc(
      platform="tpu", topology_name=topology.name,
      chip_config_name=topology.chip.chip_config).devices
  if len(devices) != topology.num_chips:
    raise RuntimeError(f"{topology.name}: libtpu gave {len(devices)} devices for "
                       f"{topology.num_chips} chips")
  return list(devices)


def compile_train_step(config: ml_collections.ConfigDict, devices: Sequence[jax.Device]):
  """Lowers and compiles the real train step for `devices`; returns (compiled, mesh, state).

  The state and batch are abstract (jax.ShapeDtypeStruct with their shardings);
  `state` is the abstract train state, for counting parameters.
  """
  exp = experiment.build(config, devices=devices, load_captions=False)
  exp.plan.check_batch_divisible(config.train.batch_size)
  hosts = len({d.process_index for d in devices})
  if config.train.batch_size % hosts:
    raise sharding.MeshConfigError(
        f"train.batch_size={config.train.batch_size} is not divisible by the {hosts} hosts "
        "of the slice (each host feeds an equal share)")
  tx = state_lib.create_optimizer(config.optim, config.train.num_steps)
  abstract_state = state_lib.abstract_state(exp.model, tx)
  spec = pipeline.batch_spec(exp.video_shape, exp.captions, config.train.batch_size)
  step = step_lib.TrainStep(
      exp.model, tx, loss_config=config.loss, ema_decay=config.optim.ema_decay,
      grad_accum_steps=config.optim.grad_accum_steps, seed=config.seed,
      state_shardings=state_lib.shardings(abstract_state), batch_spec=spec)
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=step.batch_shardings[k])
                    for k, v in spec.items()}
  return step.lower(abstract_state, abstract_batch).compile(), exp.plan.mesh, abstract_state


def memory_usage(compiled: Any) -> dict[str, int]:
  """Per-device bytes of one step: arguments, outputs, temporaries, total.

  The state is donated, so outputs that reuse argument buffers (alias) count once:
  total = arguments + outputs - aliased + temporaries + generated code.
  """
  m = compiled.memory_analysis()
  usage = {
      "arguments": int(m.argument_size_in_bytes),
      "outputs": int(m.output_size_in_bytes),
      "aliased": int(m.alias_size_in_bytes),
      "temporaries": int(m.temp_size_in_bytes),
      "generated_code": int(m.generated_code_size_in_bytes),
  }
  usage["total"] = (usage["arguments"] + usage["outputs"] - usage["aliased"]
                    + usage["temporaries"] + usage["generated_code"])
  return usage


def xla_flops(compiled: Any) -> float | None:
  """FLOPs of one step on one device as XLA's cost analysis counts them.

  XLA counts the body of a loop once, so with scanned blocks this is roughly one
  block's work plus everything outside the scan: a lower bound, not the step's
  FLOPs (use `model_flops` for those).
  """
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):   # older JAX: one dict per computation
    cost = cost[0] if cost else {}
  flops = (cost or {}).get("flops")
  return None if flops is None else float(flops)


def build_report(config: ml_collections.ConfigDict, topology: Topology,
                 assumed_mfu: float) -> dict[str, Any]:
  """Compiles for `topology` and gathers everything that gets printed."""
  devices = topology_devices(topology)
  start = time.time()
  report: dict[str, Any] = {
      "topology": topology.name, "accelerator_type": topology.accelerator_type,
      "chips": topology.num_chips, "hosts": len({d.process_index for d in devices}),
      "device_kind": devices[0].device_kind, "hbm_per_chip_bytes": int(topology.chip.hbm_gib * GIB),
      "batch_size": int(config.train.batch_size), "dtype": config.model.dtype,
      "remat_policy": config.model.remat_policy,
      "grad_accum_steps": int(config.optim.grad_accum_steps),
      "mesh": sharding.mesh_shape(config.mesh, len(devices)),
  }
  try:
    compiled, mesh, abstract_state = compile_train_step(config, devices)
  except Exception as e:  # the TPU compiler reports out-of-memory as a compile error
    if "RESOURCE_EXHAUSTED" not in str(e) and "Ran out of memory" not in str(e):
      raise
    report.update(fits=False, compile_error=str(e).splitlines()[0][:2000],
                  compile_seconds=round(time.time() - start, 1))
    return report
  report["compile_seconds"] = round(time.time() - start, 1)
  assert report["mesh"] == {k: int(v) for k, v in mesh.shape.items()}
  report["params"] = state_lib.count_params(state_lib.model_params(abstract_state))
  report["trained_params"] = state_lib.count_params(abstract_state.params)   # < params: LoRA
  report["memory_per_chip_bytes"] = memory_usage(compiled)
  report["fits"] = report["memory_per_chip_bytes"]["total"] <= report["hbm_per_chip_bytes"]
  report["xla_flops_per_chip"] = xla_flops(compiled)
  report["model"] = model_flops(config)
  ideal = report["model"]["flops_per_step"] / (topology.num_chips * topology.chip.peak_bf16_tflops * 1e12)
  report["step_seconds_at_100pct_mfu"] = ideal
  report["assumed_mfu"] = assumed_mfu
  report["step_seconds_at_assumed_mfu"] = ideal / assumed_mfu
  return report


def _gib(n: float) -> str:
  """Bytes as GiB, or MiB below 1 GiB (small test configs)."""
  return f"{n / GIB:8.2f} GiB" if n >= GIB else f"{n / 2**20:8.2f} MiB"


def format_report(report: dict[str, Any]) -> str:
  """The human-readable form of `build_report`'s result."""
  lines = [f"topology {report['topology']} ({report['accelerator_type']}, {report['chips']} chips, "
           f"{report['hosts']} hosts, {report['device_kind']})",
           f"batch {report['batch_size']}, dtype {report['dtype']}, remat {report['remat_policy']}, "
           f"grad_accum_steps {report['grad_accum_steps']}"]
  hbm = report["hbm_per_chip_bytes"]
  if "compile_error" in report:
    lines += [f"mesh {report['mesh']}", f"compile failed: {report['compile_error']}",
              f"HBM per chip {_gib(hbm)}", "DOES NOT FIT"]
    return "\n".join(lines)
  mem, model = report["memory_per_chip_bytes"], report["model"]
  lines += [
      f"mesh {report['mesh']}, {report['params']:,} parameters"
      + (f" ({report['trained_params']:,} trained, the rest frozen: LoRA)"
         if report.get("trained_params", report["params"]) < report["params"] else "")
      + f", compiled in {report['compile_seconds']}s",
      "memory per chip:",
      f"  arguments    {_gib(mem['arguments'])}",
      f"  outputs      {_gib(mem['outputs'])}  (aliased with arguments: {_gib(mem['aliased']).strip()})",
      f"  temporaries  {_gib(mem['temporaries'])}",
      f"  total        {_gib(mem['total'])}  of {_gib(hbm).strip()} HBM "
      f"({100 * mem['total'] / hbm:.0f}%)",
  ]
  xla = report["xla_flops_per_chip"]
  lines += [
      "FLOPs:",
      (f"  XLA per chip per step   {xla:.4g}  (scanned blocks counted once: XLA's cost "
       "analysis does not multiply a loop body by its trip count)") if xla is not None
      else "  XLA per chip per step   n/a",
      f"  model per token         {model['flops_per_token']:.4g}  (6N + attention, "
      f"N = {model['params_per_token']:,} weights per token)",
      f"  model per step          {model['flops_per_step']:.4g}  ({model['tokens_per_step']:,} tokens)",
      f"  step time at 100% MFU   {report['step_seconds_at_100pct_mfu']:.4g} s; at "
      f"{100 * report['assumed_mfu']:.0f}% MFU {report['step_seconds_at_assumed_mfu']:.4g} s",
      "FITS" if report["fits"] else "DOES NOT FIT",
  ]
  return "\n".join(lines)
