r"""DiT-4B-scale VideoJAM (paper: width 3072, 32 blocks, 256x256, batch 32) for TPU.

Input space (an assumption, stated because this repo has no video autoencoder
yet): the model runs on latents of a Movie Gen-style temporal autoencoder that
compresses 8x in time, height and width into 16 channels. A 128-frame 256x256
clip (about 5 s at 24 fps) becomes 16 x 32 x 32 x 16 latents; patches of
(1, 2, 2) give 16 * 16 * 16 = 4096 tokens per clip. The motion (flow) video goes
through the same autoencoder (DESIGN.md §1), so it has the same shape.

Our block has per-block adaLN-Zero (6 w^2) and text cross-attention (4 w^2) on top
of self-attention and the MLP, so this width and depth count ~6.6B parameters
(the paper's "4B" names the width/depth family, not our exact count).

Until an autoencoder exists, this config is for capacity planning:
  python -m videojam_jax.aot --config configs/dit_4b.py --topology v5p:2x2x4
(training rejects data.channels != 3; see docs/scaling.md for the numbers).
"""

import ml_collections

from configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.defaults()   # every field; scale overrides below

  # Latent clips (see the module docstring): 16 x 32 x 32 x 16 per clip.
  config.data.num_frames = 16
  config.data.height = 32
  config.data.width = 32
  config.data.channels = 16
  config.data.dataset_dir = "gs://YOUR_BUCKET/videojam/latents"   # not built by this repo yet
  config.data.worker_count = 4

  config.model.width = 3072
  config.model.depth = 32
  config.model.num_heads = 24           # head dim 128
  config.model.mlp_ratio = 4.0
  config.model.patch_size = (1, 2, 2)
  config.model.dtype = "bfloat16"       # compute; float32 master weights and optimizer
  config.model.remat_policy = "full"    # keep only each block's input for the backward pass
  config.model.attention_impl = "xla"
  # A large frozen text encoder (T5-XXL-like) runs offline; the DiT reads its embeddings.
  config.model.text.source = "precomputed"
  config.model.text.max_length = 128
  config.model.text.embedding_dim = 4096

  # Paper: VideoJAM fine-tuning at a constant 5e-6.
  config.optim.learning_rate = 5e-6
  config.optim.schedule = "constant"
  config.optim.warmup_steps = 0
  config.optim.ema_decay = 0.9999

  # 16 chips (v5p-32): every parameter, gradient and optimizer slot sharded 16 ways.
  config.mesh.data = 1
  config.mesh.fsdp = -1
  config.mesh.tensor = 1

  config.train.batch_size = 32
  config.train.num_steps = 50_000
  config.train.log_every = 100
  config.train.checkpoint_every = 1000
  config.evals.heldout.every_steps = 1000
  config.evals.samples.every_steps = 5000
  return config
