"""Sharding: mesh errors, and sharded train steps equal to the single-device step.

The 8-device checks run tests/multidevice_check.py in two subprocesses (side by
side: compiling dominates and each uses one core), because the fake device count
must be set before JAX starts, and pytest's process has started it already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import AbstractMesh

from videojam_jax.parallel import sharding

from tests.conftest import REPO
CHECK = os.path.join(REPO, "tests", "multidevice_check.py")
LEARNING_RATE = 1e-3    # configs/tiny.py: Adam's first step moves every weight by about this
PARAM_TOL = 1e-5        # 1% of a step; float32 reductions in another order differ by ~1e-7


def mesh_config(data=1, fsdp=1, tensor=1) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


# --- mesh_shape and check_batch_divisible (in-process, no devices needed).

def test_mesh_shape_fills_the_free_axis():
  assert sharding.mesh_shape(mesh_config(data=-1, tensor=2), 8) == {"data": 4, "fsdp": 1, "tensor": 2}
  assert sharding.mesh_shape(mesh_config(2, 2, 2), 8) == {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.mark.parametrize("config, devices, message", [
    (mesh_config(data=-1, fsdp=-1), 8, "at most one mesh axis may be -1"),
    (mesh_config(data=0), 8, "positive or -1"),
    (mesh_config(data=-2), 8, "positive or -1"),
    (mesh_config(data=-1, tensor=3), 8, "not divisible by 3"),
    (mesh_config(data=2, fsdp=2), 8, "needs 4 devices, but 8 are available"),
    (mesh_config(data=4, fsdp=4), 8, "needs 16 devices"),
])
def test_mesh_shape_errors(config, devices, message):
  with pytest.raises(sharding.MeshConfigError, match=message):
    sharding.mesh_shape(config, devices)


def test_unknown_rules_name():
  with pytest.raises(sharding.MeshConfigError, match="unknown mesh.rules"):
    sharding.get_rules("nope")


ABSTRACT_2x2x2 = AbstractMesh((2, 2, 2), sharding.MESH_AXES)


PLAN_2x2x2 = sharding.ShardingPlan(ABSTRACT_2x2x2, sharding.DEFAULT_RULES)


def test_batch_is_split_over_data_and_fsdp():
  assert PLAN_2x2x2.batch_ways == 4
  PLAN_2x2x2.check_batch_divisible(8)
  sequence_parallel = sharding.ShardingPlan(ABSTRACT_2x2x2, sharding.SEQUENCE_PARALLEL_RULES)
  assert sequence_parallel.batch_ways == 4


def test_batch_not_divisible_by_batch_shards():
  with pytest.raises(sharding.MeshConfigError, match=r"batch_size=6 .* 4 batch shards.* multiple of 4"):
    PLAN_2x2x2.check_batch_divisible(6)


def test_batch_not_divisible_by_processes(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  plan = sharding.ShardingPlan(AbstractMesh((1, 1, 1), sharding.MESH_AXES), sharding.DEFAULT_RULES)
  with pytest.raises(sharding.MeshConfigError, match="not divisible by the 3 processes"):
    plan.check_batch_divisible(4)


def test_logical_names_map_through_the_rules_table():
  rules = sharding.DEFAULT_RULES
  assert sharding.logical_to_spec(("activation_batch", None, "mlp"), rules) == \
      jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor")
  with pytest.raises(sharding.MeshConfigError, match=r"logical axes \['embd'\] have no rule"):
    sharding.logical_to_spec(("embd",), rules)


def test_constrain_is_a_no_op_without_a_mesh_and_lays_out_inside_one():
  x = jax.numpy.ones((4, 8))
  assert sharding.constrain(x, ("activation_batch", None)) is x
  plan = sharding.ShardingPlan.from_config(mesh_config())
  with plan.active():
    hlo = jax.jit(lambda a: sharding.constrain(a * 2, ("activation_batch", "activation_mlp"))
                  ).lower(x).as_text()
  assert "sharding" in hlo


# --- 8 fake devices (subprocesses).

@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict:
  """Runs the mesh checks and the accumulation + bf16 checks side by side."""
  out = tmp_path_factory.mktemp("multidevice")
  env = dict(os.environ, PYTHONPATH=REPO)
  jobs = {}
  for name in ("meshes", "grad_accum,bf16"):
    stem = out / name.replace(",", "_")
    log = open(f"{stem}.log", "w")   # a file, not a pipe: neither process may block on output
    jobs[name] = (stem, log, subprocess.Popen(
        [sys.executable, CHECK, "--out", f"{stem}.json", "--only", name],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  merged = {}
  for name, (stem, log, proc) in jobs.items():
    proc.wait(timeout=600)
    log.close()
    with open(f"{stem}.log") as f:
      assert proc.returncode == 0, f"{name}:\n{f.read()[-5000:]}"
    with open(f"{stem}.json") as f:
      merged.update(json.load(f))
  return merged


@pytest.mark.parametrize("mesh", ["data8", "fsdp8", "fsdp2_tensor2"])
def test_sharded_step_equals_single_device_step(reports, mesh):
  ref, got = reports["meshes"]["reference"], reports["meshes"][mesh]
  assert ref["param_change"] == pytest.approx(LEARNING_RATE, rel=1e-3)   # the step did move
  assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
  assert got["grad_norm_diff"] < 1e-6
  assert got["params_diff"] < PARAM_TOL
  assert got["ema_diff"] < PARAM_TOL
  assert got["opt_state_diff"] < 1e-6


def _spec(layout, name):
  return [tuple(a) if isinstance(a, list) else a for a in layout[name]["spec"]]


def test_fsdp_tensor_mesh_shards_weights(reports):
  layout = reports["meshes"]["fsdp2_tensor2"]["layout"]
  # Stacked blocks: (layers, in, out); embed dims over fsdp, mlp / heads over tensor.
  assert _spec(layout, "mlp_fc1_kernel") == [None, "fsdp", "tensor"]
  assert _spec(layout, "mlp_fc2_kernel") == [None, "tensor", "fsdp"]
  assert _spec(layout, "attn_query_kernel") == [None, "fsdp", "tensor", None]
  assert _spec(layout, "attn_out_kernel") == [None, "tensor", None, "fsdp"]
  fc1 = layout["mlp_fc1_kernel"]
  assert fc1["num_shards"] == 8
  assert fc1["shard_shapes"] == [[fc1["shape"][0], fc1["shape"][1] // 2, fc1["shape"][2] // 2]]
  query = layout["attn_query_kernel"]
  assert query["shard_shapes"] == [[query["shape"][0], query["shape"][1] // 2,
                                    query["shape"][2] // 2, query["shape"][3]]]


def test_fsdp_mesh_shards_weights_8_ways(reports):
  layout = reports["meshes"]["fsdp8"]["layout"]
  for name in ("mlp_fc1_kernel", "attn_query_kernel", "patch_embed_kernel"):
    entry = layout[name]
    embed_axis = _spec(layout, name).index("fsdp")
    (shard,) = entry["shard_shapes"]
    assert shard[embed_axis] == entry["shape"][embed_axis] // 8
    assert np.prod(shard) * 8 == np.prod(entry["shape"])


def test_data_parallel_mesh_replicates_weights(reports):
  for entry in reports["meshes"]["data8"]["layout"].values():
    assert entry["shard_shapes"] == [entry["shape"]]


def test_grad_accumulation_equals_one_big_batch(reports):
  accum = reports["grad_accum"]
  assert accum["param_change"] == pytest.approx(LEARNING_RATE, rel=1e-3)
  assert accum["loss"] == pytest.approx(accum["reference_loss"], rel=1e-6)
  assert accum["grad_norm_diff"] < 1e-6
  assert accum["params_diff"] < PARAM_TOL


def test_bfloat16_compute_keeps_float32_master_weights(reports):
  bf16 = reports["bf16"]
  assert bf16["param_dtypes"] == ["float32"]
  assert bf16["ema_dtypes"] == ["float32"]
  assert bf16["opt_state_float_dtypes"] == ["float32"]
  assert bf16["bf16_dots"] > 0 and bf16["f32_dots"] == 0
  assert np.isfinite(bf16["loss"])
  # At init the output heads are zero (loss independent of dtype); gradients are
  # computed through bf16 matmuls, so they agree only to bf16 precision.
  assert bf16["loss"] == pytest.approx(bf16["float32_loss"], rel=1e-2)
  assert bf16["grad_norm"] == pytest.approx(bf16["float32_grad_norm"], rel=2e-2)
  assert bf16["param_change"] == pytest.approx(LEARNING_RATE, rel=1e-2)
