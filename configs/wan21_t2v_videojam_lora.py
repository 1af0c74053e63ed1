r"""Wan2.1-T2V (1.3B, or "14b") fine-tuned with VideoJAM in LoRA mode.

configs/wan21_t2v_1_3b_videojam.py with the base weights frozen (stored in bfloat16)
and rank-32 adapters on every attention (q, k, v, out; self and cross) and FFN
projection; VideoJAM's motion input rows and motion head are trained in full. Only
the trained part has AdamW moments and an EMA, so Wan-14B fits a v5p-8
(docs/scaling.md). The learning rate is LoRA's usual 1e-4 (adapters start at zero and
need a larger step than the paper's full fine-tune at 5e-6).

  python -m videojam_jax.train --config configs/wan21_t2v_videojam_lora.py:14b --workdir W \
      --config.train.init_from=/path/to/Wan2.1-T2V-14B-Diffusers
  python -m videojam_jax.export --workdir W --out W/export    # adapters folded in

Ahead of time: python -m videojam_jax.aot --config configs/wan21_t2v_videojam_lora.py:14b \
    --topology v5p:2x2x1 --config.model.attention_impl=splash --config.train.batch_size=4
"""

import ml_collections

from configs import wan21_t2v_1_3b
from configs import wan21_t2v_1_3b_videojam


def get_config(size: str = wan21_t2v_1_3b.SIZE) -> ml_collections.ConfigDict:
  config = wan21_t2v_1_3b_videojam.get_config(size)
  config.model.lora.rank = 32
  config.model.lora.alpha = 32.0
  config.model.lora.frozen_dtype = "bfloat16"
  config.optim.learning_rate = 1e-4
  return config
