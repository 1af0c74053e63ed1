r"""The protocol's ablations: why VideoJAM does or does not beat its base at this scale.

  python -m videojam_jax.protocol --config configs/protocol_ablations.py \
      --workdir workdirs/protocol_quickstart

The same protocol as configs/protocol_quickstart.py (same data, base, fine-tuning steps and
evaluation), with more VideoJAM arms, each changing one thing. Run it on the workdir of a
finished protocol_quickstart run: the pretraining and the arms already trained and
evaluated are skipped, so only the new arms cost time.

Fine-tuning longer is an ablation of config.finetune.num_steps, which every arm shares:
run protocol_quickstart.py on a second workdir with --config.finetune.num_steps=2000 and
--config.pretrain.from_workdir=<the first workdir>/pretrain. Inner-Guidance limited to
early steps is a sampler setting: `python -m videojam_jax.evaluate` with
--config.sweep.inner_guidance_until on an arm's workdir (docs/evaluation.md has both).
"""

import ml_collections

from configs import protocol_quickstart

JAM = "model.jam=True"

# Arm name -> what it changes from the 'videojam' arm (lambda_m = 1, motion-input dropout
# 0.1, the motion head a copy of the video head, gradients clipped at global norm 1).
ABLATIONS = {
    "lm03": "loss.motion_weight=0.3",            # lambda_m
    "lm0": "loss.motion_weight=0.0",              # motion input, no motion loss
    "md05": "loss.motion_dropout=0.5",           # motion-input dropout rate
    "head0": "train.retrofit_motion_head='zeros'",  # motion head init: zeros, not a copy
    "noclip": "optim.grad_clip_norm=0.0",         # does clipping let the motion loss win?
}


def get_config() -> ml_collections.ConfigDict:
  config = protocol_quickstart.get_config()
  for name, change in ABLATIONS.items():
    config.arms[name] = f"{JAM}, {change}"
  return config
