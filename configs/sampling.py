"""Sampler settings (videojam_jax/sampling/sampler.py): the one place their defaults live.

Training configs use it as `config.sample` (for the samples evaluator), evaluation
configs as the settings a sweep starts from.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  sample = ml_collections.ConfigDict()
  sample.num_steps = 25
  sample.solver = "euler"              # euler | heun
  sample.time_shift = 1.0              # >1 spends more steps near noise
  # Where the steps' times lie: uniform | flow_match_euler | unipc_flow (the last two
  # are diffusers' schedulers' sigmas, for Wan; sampler.time_grid).
  sample.schedule = "uniform"
  sample.guidance = "inner"            # none | cfg | inner (a baseline falls back to cfg)
  sample.text_scale = 5.0              # w1
  sample.motion_scale = 3.0            # w2
  sample.inner_guidance_until = 1.0    # apply Inner-Guidance for t < this; CFG after
  sample.batched = True                # False: one forward per condition (benchmarks only)
  return sample
