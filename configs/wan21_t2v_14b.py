r"""Wan2.1-T2V-14B, full fine-tune at 480p x 81 frames (see configs/wan21_t2v_1_3b.py).

  python -m videojam_jax.aot --config configs/wan21_t2v_14b.py --topology v5p:4x4x4
"""

import ml_collections

from configs import wan21_t2v_1_3b


def get_config() -> ml_collections.ConfigDict:
  config = wan21_t2v_1_3b.get_config("14b")
  config.train.batch_size = 32
  return config
