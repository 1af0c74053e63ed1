"""videojam_jax/parallel/tpu_compile.py and `python -m videojam_jax.aot`: compile the real
train step for a TPU slice on this CPU machine."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from configs import tiny
from tests.conftest import REPO
from videojam_jax.parallel import tpu_compile as aot
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
# Width 256 (head dim 128): big enough that TPU tile padding of small arrays does
# not hide the sharding in the per-chip memory.
TINY_OVERRIDES = ["--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
                  "--config.model.dtype=bfloat16", "--config.model.remat_policy=full",
                  "--config.model.width=256"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
  """(stdout, JSON report) of `python -m videojam_jax.aot` for configs/tiny.py (width 256) on a v5p-8."""
  if not HAS_LIBTPU:
    pytest.skip("libtpu is not installed: no TPU compiler to compile with")
  out = tmp_path_factory.mktemp("aot") / "report.json"
  result = subprocess.run(
      [sys.executable, "-m", "videojam_jax.aot", "--config", "configs/tiny.py",
       "--topology", "v5p:2x2x1", *TINY_OVERRIDES, f"--json_out={out}"],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  return result.stdout, json.loads(out.read_text())


def test_printed_report(compiled):
  stdout, _ = compiled
  for text in ("topology v5p:2x2x1 (v5p-8, 4 chips, 1 hosts, TPU v5)",
               "mesh {'data': 1, 'fsdp': 2, 'tensor': 2}", "memory per chip:", "arguments",
               "outputs", "temporaries", "total", "of 95.00 GiB HBM", "XLA per chip per step",
               "model per token", "model per step", "step time at 100% MFU"):
    assert text in stdout
  assert stdout.strip().splitlines()[-1] == "FITS"
  # libtpu's warnings about missing TPU hosts are silenced in this entry point.
  assert "TPU_WORKER_HOSTNAMES" not in stdout


def test_json_report(compiled):
  _, report = compiled
  assert report["chips"] == 4 and report["device_kind"] == "TPU v5"
  assert report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
  assert report["hbm_per_chip_bytes"] == 95 * 2**30
  mem = report["memory_per_chip_bytes"]
  assert min(mem["arguments"], mem["outputs"], mem["temporaries"]) > 0
  assert mem["total"] == (mem["arguments"] + mem["outputs"] - mem["aliased"]
                          + mem["temporaries"] + mem["generated_code"])
  assert mem["aliased"] > 0                     # the donated state is updated in place
  assert report["fits"] is True and mem["total"] <= report["hbm_per_chip_bytes"]
  # Sharded 4 ways: each chip holds well under one full copy of the float32
  # state (params, EMA, two Adam moments: 16 bytes per parameter).
  assert mem["arguments"] < 0.6 * 16 * report["params"]
  assert report["xla_flops_per_chip"] > 0
  assert report["model"] == aot.model_flops(_tiny_with_overrides())


def _tiny_with_overrides():
  config = tiny.get_config()
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 2, 2
  config.model.dtype, config.model.remat_policy = "bfloat16", "full"
  config.model.width = 256
  return config


@pytest.mark.parametrize("name, chips, accelerator", [
    ("v5p:4x4x4", 64, "v5p-128"), ("v4:2x2x1", 4, "v4-8"), ("v5e:4x4", 16, "v5litepod-16"),
    ("v6e:2x4", 8, "v6e-8")])
def test_parse_topology(name, chips, accelerator):
  topology = aot.parse_topology(name)
  assert topology.num_chips == chips and topology.accelerator_type == accelerator


@pytest.mark.parametrize("name", ["v5p-128", "v3:2x2", "v5p:4", "tpu"])
def test_parse_topology_errors(name):
  with pytest.raises(ValueError, match="GENERATION:AxB"):
    aot.parse_topology(name)


def test_out_of_memory_compile_is_reported_as_does_not_fit(monkeypatch):
  def oom(*_):
    raise RuntimeError("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory "
                       "in memory space hbm. Used 120.5G of 95.74G hbm.")
  monkeypatch.setattr(aot, "topology_devices", lambda topology: [_FakeDevice()] * topology.num_chips)
  monkeypatch.setattr(aot, "compile_train_step", oom)
  report = aot.build_report(tiny.get_config(), aot.parse_topology("v5p:2x2x1"), 0.4)
  assert report["fits"] is False and "Ran out of memory" in report["compile_error"]
  text = aot.format_report(report)
  assert text.splitlines()[-1] == "DOES NOT FIT" and "compile failed" in text


class _FakeDevice:
  process_index = 0
  device_kind = "TPU v5"
