r"""The Wan loader on 8 fake CPU devices: tensors land sharded, the forward still matches.

Run by tests/model/wan/test_weights.py in a subprocess (the device count must be
fixed before JAX starts):

  python tests/model/wan/sharded_load_check.py --out results.json

Loads the fixture transformer into a (data 2, fsdp 2, tensor 2) mesh, runs the
jitted forward on the sharded parameters and writes a JSON report (specs, shard
shapes, the error against the diffusers output) for the test to assert on.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = " ".join(["--xla_force_host_platform_device_count=8",
                                    os.environ.get("XLA_FLAGS", "")])
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))

import argparse  # pylint: disable=wrong-import-position
import json
import pathlib

import jax
import ml_collections
import numpy as np
from flax import nnx

from videojam_jax.model import functional
from videojam_jax.model.wan import transformer as transformer_lib
from videojam_jax.model.wan import weights
from videojam_jax.parallel import sharding

FIXTURES = pathlib.Path(__file__).parents[2] / "fixtures" / "wan"


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  plan = sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))
  config = weights.read_transformer_config(FIXTURES / "transformer")
  graphdef, abstract = functional.abstract_split(
      lambda: transformer_lib.WanTransformer(config, rngs=nnx.Rngs(0)), plan)
  params = weights.load_transformer(FIXTURES / "transformer", config, abstract)
  outputs = np.load(FIXTURES / "outputs.npz")
  # Batch 4 (the fixture's 2, twice) splits over data x fsdp.
  latents = np.tile(outputs["transformer_latents"].transpose(0, 2, 3, 4, 1), (2, 1, 1, 1, 1))
  timestep = np.tile(outputs["transformer_timestep"], 2)
  text = np.tile(outputs["transformer_text"], (2, 1, 1))
  expected = np.tile(outputs["transformer_output"], (2, 1, 1, 1, 1))

  @jax.jit
  def forward(params, latents, timestep, text):
    return nnx.merge(graphdef, params)(latents, timestep, text)

  batch = plan.batch_sharding(5)
  with plan.active():     # the mesh and rules the activation constraints look up
    out = forward(params, jax.device_put(latents, batch), timestep, text)
  kernel = params["blocks"]["ffn"]["proj_in"]["kernel"]
  q = params["blocks"]["attn1"]["to_q"]["kernel"]
  report = dict(
      devices=jax.device_count(),
      ffn_spec=[str(a) for a in kernel.sharding.spec],
      ffn_shard_shape=list(kernel.addressable_shards[0].data.shape),
      ffn_shape=list(kernel.shape),
      q_spec=[str(a) for a in q.sharding.spec],
      q_shard_shape=list(q.addressable_shards[0].data.shape),
      specs_match=all(
          p.sharding.spec == a.sharding.spec
          for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(abstract))),
      max_abs_error=float(np.abs(np.asarray(out).transpose(0, 4, 1, 2, 3)
                                 - expected).max()))
  pathlib.Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
