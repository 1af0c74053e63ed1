r"""Wan2.1-T2V-1.3B, full fine-tune at 480p (832 x 480) x 81 frames, for TPU slices and GPUs.

The published architecture (videojam_jax/model/wan/transformer.py PUBLISHED, the
config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers) on the latents of Wan's VAE:
81 frames -> 21 latent frames, 480 x 832 -> 60 x 104, 16 channels; patches of
(1, 2, 2) give 21 x 30 x 52 = 32,760 tokens per clip. Text: umT5-XXL embeddings
(4096 wide, 512 tokens) computed offline.

Data: latent clips (python -m data_pipelines.build_latents, Wan's VAE on pixel clips
of 81 x 480 x 832) and umT5 caption embeddings (python -m data_pipelines.embed_captions).
Ahead-of-time compile for a TPU slice:
  python -m videojam_jax.aot --config configs/wan21_t2v_1_3b.py --topology v5p:2x2x2
"""

import dataclasses

import ml_collections

from configs import quickstart
from videojam_jax.model.wan import transformer as wan_transformer

SIZE = "1.3b"


def get_config(size: str = SIZE) -> ml_collections.ConfigDict:
  config = quickstart.defaults()
  config.data.num_frames = 21
  config.data.height = 60
  config.data.width = 104
  config.data.channels = 16
  config.data.dataset_dir = "gs://YOUR_BUCKET/wan/latents"   # data_pipelines.build_latents
  config.data.worker_count = 4

  config.model.family = "wan"
  config.model.jam = False
  config.model.wan = ml_collections.ConfigDict(
      dataclasses.asdict(wan_transformer.published_config(size)))
  config.model.dtype = "bfloat16"        # compute; float32 master weights and optimizer
  config.model.remat_policy = "full"
  config.model.attention_impl = "xla"    # "cudnn" on GPUs
  config.model.text.source = "precomputed"
  config.model.text.max_length = 512
  config.model.text.embedding_dim = 4096

  config.optim.learning_rate = 1e-5
  config.optim.schedule = "constant"
  config.optim.warmup_steps = 0

  config.mesh.data = 1
  config.mesh.fsdp = -1
  config.mesh.tensor = 1
  config.train.batch_size = 8
  config.sample.guidance = "cfg"
  config.sample.time_shift = 3.0          # Wan's flow shift at 480p
  config.evals.heldout.every_steps = 1000
  # Latent samples are not decoded in the trainer: sample with `generate` after `export`.
  config.evals.samples.every_steps = 0
  return config
