"""The Wan FLOP formula counts the weights the model really applies to each token."""

import ml_collections
import numpy as np
from flax import nnx

from configs import wan21_t2v_1_3b
from configs import wan_tiny
from videojam_jax.model import flops
from videojam_jax.model import functional
from videojam_jax.model.dit import VideoShape
from videojam_jax.model.diffusers_format import flatten
from videojam_jax.parallel import sharding

# Weights applied once per video token: everything in the blocks except the
# modulation table, norms and cross-attention k/v (per text token), plus the patch
# embedding and proj_out.
PER_TEXT_TOKEN = ("attn2/to_k", "attn2/to_v")


def per_token_weights(config):
  plan = sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=-1)))
  model = functional.build(config.model, VideoShape.from_data_config(config.data), plan)
  total = 0
  for path, leaf in flatten(model.abstract_params).items():
    path = path.removeprefix("transformer/")
    if not path.endswith("kernel"):
      continue
    if path.startswith("blocks/") and not any(s in path for s in PER_TEXT_TOKEN):
      total += int(np.prod(leaf.shape))
    elif path.startswith(("patch_embedding", "proj_out", "motion_patch_embedding",
                          "motion_proj_out")):
      total += int(np.prod(leaf.shape))
  return total


def test_params_per_token_match_the_model():
  config = wan_tiny.get_config()
  assert flops.model_flops(config)["params_per_token"] == per_token_weights(config)
  config.model.jam = True       # Wan-VideoJAM: two more per-token projections
  assert flops.model_flops(config)["params_per_token"] == per_token_weights(config)


def test_published_1_3b_at_480p():
  f = flops.model_flops(wan21_t2v_1_3b.get_config())
  assert f["tokens_per_clip"] == 21 * 30 * 52 == 32_760
  # 6N + 12 D w (S + L) per token.
  n, w, depth = f["params_per_token"], 1536, 30
  assert f["flops_per_token"] == 6 * n + 12 * depth * w * (32_760 + 512)
