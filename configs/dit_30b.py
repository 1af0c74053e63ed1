r"""DiT-30B-scale VideoJAM (paper: width 6144, 48 blocks, 256x256, batch 256) for TPU.

Same input space as configs/dit_4b.py (autoencoder latents, 4096 tokens per
clip; an assumption, see there). With our block (per-block adaLN-Zero and text
cross-attention) this width and depth count ~40B parameters.

  python -m videojam_jax.aot --config configs/dit_30b.py --topology v5p:4x4x4
(numbers in docs/scaling.md). On a v5p-32 it fits only with accumulation:
  --topology v5p:2x2x4 --config.mesh.fsdp=4 --config.optim.grad_accum_steps=8
"""

import ml_collections

from configs import dit_4b


def get_config() -> ml_collections.ConfigDict:
  config = dit_4b.get_config()

  config.model.width = 6144
  config.model.depth = 48
  config.model.num_heads = 48           # head dim 128

  # 64 chips (v5p-128): parameters sharded 16 ways on their embed dimension and
  # 4 ways Megatron-style on heads / MLP; the batch splits over the 16 fsdp groups.
  config.mesh.data = 1
  config.mesh.fsdp = 16
  config.mesh.tensor = 4

  config.train.batch_size = 256
  config.train.num_steps = 35_000
  return config
