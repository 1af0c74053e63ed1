r"""Wan2.1-T2V-1.3B fine-tuned with VideoJAM: the paper's recipe on the published weights.

configs/wan21_t2v_1_3b.py (480p x 81 frames, umT5 text, bf16, FSDP) with the motion
projections on (model.jam), started from the diffusers weights and retrofitted
(video output unchanged at step 0), and the paper's optimiser: AdamW at a constant
5e-6. Sampled with Inner-Guidance. For the 14B model: get_config("14b").

  python -m videojam_jax.train --config configs/wan21_t2v_1_3b_videojam.py --workdir W \
      --config.train.init_from=/path/to/Wan2.1-T2V-1.3B-Diffusers

Data as in configs/wan21_t2v_1_3b.py (build_latents, embed_captions). Ahead of time:
  python -m videojam_jax.aot --config configs/wan21_t2v_1_3b_videojam.py --topology v5p:2x2x2
"""

import ml_collections

from configs import wan21_t2v_1_3b


def get_config(size: str = wan21_t2v_1_3b.SIZE) -> ml_collections.ConfigDict:
  config = wan21_t2v_1_3b.get_config(size)
  config.model.jam = True
  config.model.motion_input_init = "zeros"    # retrofit: the motion rows start at zero
  config.train.init_from = ""                 # a diffusers Wan folder (pipeline or transformer/)
  config.train.init_from_weights = "params"
  config.optim.learning_rate = 5e-6           # the paper: constant LR, AdamW
  config.optim.schedule = "constant"
  config.optim.warmup_steps = 0
  config.loss.text_dropout = 0.1
  config.loss.motion_dropout = 0.1            # motion-input dropout (DESIGN.md §1)
  config.sample.guidance = "inner"
  return config
