r"""Sharded train steps on 8 fake CPU devices, compared with the single-device step.

Run by tests/test_sharding.py in a subprocess, because the device count must be
fixed before JAX starts (and pytest's own process has already started it):

  python tests/multidevice_check.py --out results.json

Writes a JSON report of measured quantities (differences to the reference,
partition specs, shard shapes, dtypes); the test asserts on it. The model is
configs/tiny.py with a batch of 8 and a constant learning rate (no warmup, so
the first step really moves the parameters).
"""

from __future__ import annotations

import os
import sys

# Before JAX is imported: 8 host devices, CPU only (also keeps libtpu, if
# installed, from loading), and cheap XLA optimisation for tiny programs.
os.environ["XLA_FLAGS"] = " ".join([
    "--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true", "--xla_cpu_use_fusion_emitters=false",
    os.environ.get("XLA_FLAGS", "")])
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import tiny
from videojam_jax.data import pipeline
from videojam_jax.data import text as text_lib
from videojam_jax.model import dit
from videojam_jax.training import experiment
from videojam_jax.training import flow_matching
from videojam_jax.training import state as state_lib
from videojam_jax.training import step as step_lib

MESHES = {"data8": (8, 1, 1), "fsdp8": (1, 8, 1), "fsdp2_tensor2": (2, 2, 2)}


def check_config(mesh: tuple[int, int, int] = (1, 1, 1), **overrides: Any) -> ml_collections.ConfigDict:
  """configs/tiny.py with batch 8, constant learning rate, and the given mesh."""
  config = tiny.get_config()
  config.compilation_cache_dir = ""
  config.train.batch_size = 8
  config.optim.schedule = "constant"
  config.optim.warmup_steps = 0
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
  # Precomputed caption embeddings: the byte-level text encoder is built from the
  # same sharded layers and would only add compile time.
  config.model.text.source = "precomputed"
  config.model.text.max_length = 8
  config.model.text.embedding_dim = 32
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def random_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
  """A global batch of random clips in [-1, 1] and random byte captions."""
  rng = np.random.default_rng(seed)
  spec = pipeline.batch_spec(dit.VideoShape.from_data_config(config.data),
                             text_lib.CaptionInputs(config.model.text, None),
                             config.train.batch_size)
  batch = {k: rng.uniform(-1, 1, v.shape).astype(v.dtype) for k, v in spec.items()
           if k in ("video", "motion")}
  if config.model.text.source == "precomputed":
    batch["text"] = rng.standard_normal(spec["text"].shape).astype(np.float32)
  else:
    batch["text"] = rng.integers(2, 200, spec["text"].shape).astype(np.int32)
  lengths = rng.integers(1, spec["text"].shape[1] + 1, (spec["text"].shape[0], 1))
  batch["text_mask"] = np.arange(spec["text"].shape[1])[None] < lengths
  return batch


def devices_for(mesh: tuple[int, int, int]) -> list[jax.Device]:
  return jax.devices()[: int(np.prod(mesh))]


def build(config: ml_collections.ConfigDict):
  """(experiment on config.mesh's devices, optimiser, abstract state)."""
  mesh_shape = (config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  exp = experiment.build(config, devices=devices_for(mesh_shape), load_captions=False)
  exp.plan.check_batch_divisible(config.train.batch_size)
  tx = state_lib.create_optimizer(config.optim, config.train.num_steps)
  return exp, tx, state_lib.abstract_state(exp.model, tx)


def one_step(config: ml_collections.ConfigDict, batch: dict[str, np.ndarray], initial: Any = None):
  """One train step on config.mesh: (initial state on host, new state, metrics, StableHLO text).

  `initial` (a host copy of a state) is placed with this mesh's shardings; without
  it the state is created by `state.init_state` on the mesh.
  """
  exp, tx, abstract = build(config)
  shardings = state_lib.shardings(abstract)
  if initial is None:
    state = state_lib.init_state(exp.model, tx, jax.random.key(config.seed))
    initial = jax.device_get(state)
  else:
    state = jax.device_put(initial, shardings)
  step = step_lib.TrainStep(
      exp.model, tx, loss_config=config.loss, ema_decay=config.optim.ema_decay,
      grad_accum_steps=config.optim.grad_accum_steps, seed=config.seed, state_shardings=shardings,
      batch_spec=pipeline.batch_spec(exp.video_shape, exp.captions, config.train.batch_size))
  global_batch = pipeline.make_global_batch(batch, step.batch_shardings)
  # Lower once and run exactly what was compiled.
  lowered = step.lower(state, global_batch)
  new_state, metrics = lowered.compile()(state, global_batch)
  return initial, new_state, jax.device_get(metrics), lowered.as_text()


def max_abs_diff(a: Any, b: Any) -> float:
  diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
                       jax.device_get(a), jax.device_get(b))
  return max(jax.tree.leaves(diffs))


def layout(params: Any) -> dict[str, dict[str, Any]]:
  """Partition spec, global and per-device shard shape of a few representative weights."""
  picks = {
      "mlp_fc1_kernel": params["blocks"]["mlp"]["fc1"]["kernel"],
      "mlp_fc2_kernel": params["blocks"]["mlp"]["fc2"]["kernel"],
      "attn_query_kernel": params["blocks"]["self_attn"]["query"]["kernel"],
      "attn_out_kernel": params["blocks"]["self_attn"]["out"]["kernel"],
      "patch_embed_kernel": params["patch_embed"]["kernel"],
  }
  return {name: {"spec": [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec],
                 "shape": list(x.shape),
                 "shard_shapes": sorted({tuple(s.data.shape) for s in x.addressable_shards}),
                 "num_shards": len(x.addressable_shards)}
          for name, x in picks.items()}


def check_meshes(batch: dict[str, np.ndarray]) -> dict[str, Any]:
  """One step on each mesh vs one step on a single device: loss, params, EMA, Adam moments."""
  initial, ref_state, ref_metrics, _ = one_step(check_config(), batch)
  # Every mesh starts from the reference's initial state.
  out = {"reference": {"loss": float(ref_metrics["loss"]), "grad_norm": float(ref_metrics["grad_norm"]),
                       "param_change": max_abs_diff(ref_state.params, initial.params)}}
  for name, mesh in MESHES.items():
    _, state, metrics, _ = one_step(check_config(mesh), batch, initial)
    out[name] = {
        "loss": float(metrics["loss"]),
        "grad_norm_diff": abs(float(metrics["grad_norm"]) - float(ref_metrics["grad_norm"])),
        "params_diff": max_abs_diff(state.params, ref_state.params),
        "ema_diff": max_abs_diff(state.ema_params, ref_state.ema_params),
        "opt_state_diff": max_abs_diff(state.opt_state, ref_state.opt_state),
        "layout": layout(state.params),
    }
  return out


def check_grad_accum(batch: dict[str, np.ndarray]) -> tuple[dict[str, Any], Any]:
  """grad_accum_steps=2 on the 2x2x2 mesh vs one gradient of the whole batch.

  The step draws each micro-batch's noise from fold_in(rng, i), so the big-batch
  reference is the gradient, in one backward pass, of the mean of the two
  micro-batch losses with exactly that noise: the same objective over all 8
  clips, with no accumulation loop. Also returns the initial state (host copy).
  """
  config = check_config((2, 2, 2), **{"optim.grad_accum_steps": 2})
  initial, state, metrics, _ = one_step(config, batch)

  exp, tx, _ = build(config)
  apply_fn = exp.model.apply
  rng = jax.random.fold_in(jax.random.key(config.seed), 0)
  half = config.train.batch_size // 2
  micro = [jax.tree.map(lambda x: x[i * half:(i + 1) * half], batch) for i in range(2)]

  def big_batch_loss(params):
    losses = [flow_matching.joint_loss(apply_fn, params, micro[i], jax.random.fold_in(rng, i),
                                       config.loss, True)[0] for i in range(2)]
    return jnp.mean(jnp.stack(losses))

  with exp.plan.active():
    loss, grads = jax.jit(jax.value_and_grad(big_batch_loss))(initial.params)
  updates, _ = tx.update(grads, initial.opt_state, initial.params)
  ref_params = jax.tree.map(jnp.add, initial.params, updates)
  return {"loss": float(metrics["loss"]), "reference_loss": float(loss),
          "params_diff": max_abs_diff(state.params, ref_params),
          "param_change": max_abs_diff(ref_params, initial.params),
          "grad_norm_diff": abs(float(metrics["grad_norm"]) - float(optax_global_norm(grads)))}, initial


def optax_global_norm(tree: Any) -> float:
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))


def check_bf16(batch: dict[str, np.ndarray], float32_metrics: dict[str, float],
               initial: Any = None) -> dict[str, Any]:
  """model.dtype=bfloat16 on the 2x2x2 mesh: bf16 matmuls, float32 master weights.

  At initialisation the output heads are zero, so the loss does not depend on the
  compute dtype; the gradient norm does, slightly.
  """
  config = check_config((2, 2, 2), **{"model.dtype": "bfloat16"})
  initial, state, metrics, hlo = one_step(config, batch, initial)
  dtypes = lambda tree: sorted({str(x.dtype) for x in jax.tree.leaves(tree)})
  return {"loss": float(metrics["loss"]), "float32_loss": float32_metrics["loss"],
          "grad_norm": float(metrics["grad_norm"]), "float32_grad_norm": float32_metrics["grad_norm"],
          "param_change": max_abs_diff(state.params, initial.params),
          "param_dtypes": dtypes(state.params), "ema_dtypes": dtypes(state.ema_params),
          "opt_state_float_dtypes": sorted(set(dtypes(state.opt_state)) - {"int32"}),
          "bf16_dots": sum(1 for line in hlo.splitlines() if "dot_general" in line and "bf16" in line),
          "f32_dots": sum(1 for line in hlo.splitlines() if "dot_general" in line and "bf16" not in line)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--only", default="meshes,grad_accum,bf16")
  args = parser.parse_args()
  assert jax.device_count() == 8, jax.devices()
  batch = random_batch(check_config())
  report: dict[str, Any] = {"device_count": jax.device_count()}
  start = time.time()
  only = args.only.split(",")
  if "meshes" in only:
    report["meshes"] = check_meshes(batch)
  initial = None   # share one initial state: creating it compiles an init function
  if "grad_accum" in only:
    report["grad_accum"], initial = check_grad_accum(batch)
  if "bf16" in only:
    if "meshes" in report:
      float32 = report["meshes"]["reference"]
    else:
      initial, _, metrics, _ = one_step(check_config(), batch, initial)
      float32 = {"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"])}
    report["bf16"] = check_bf16(batch, float32, initial)
  report["seconds"] = round(time.time() - start, 1)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
  main()
