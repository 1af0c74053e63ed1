"""Text to video with a downloaded Wan 2.1 diffusers pipeline (python -m videojam_jax.generate).

  python -m videojam_jax.generate --config configs/wan21_generate.py --workdir out/ \
      --config.pipeline_dir=/path/to/Wan2.1-T2V-1.3B-Diffusers \
      --config.prompts='("A cat walks on the grass, realistic style.",)'

Defaults are the published pipelines': 832x480, 81 frames, 50 steps, guidance
scale 5, the scheduler's own flow shift and sigmas (scheduler/ in the folder),
the empty negative prompt. Writes out/sample_XXX.mp4 and out/samples.json (with each
video's motion metrics). Base Wan beside Wan-VideoJAM, same prompts and seeds:

  python -m videojam_jax.compare --out page/ --samples base=out_base/ --samples jam=out_jam/
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.pipeline_dir = ""             # a diffusers WanPipeline folder (model_index.json)
  config.prompts = ("A cat walks on the grass, realistic style.",)
  config.negative_prompt = ""          # diffusers' WanPipeline default
  config.num_frames = 81               # 1 + 4k
  config.height = 480                  # multiples of 16
  config.width = 832
  config.fps = 16                      # Wan 2.1's frame rate
  config.flow_sigma = 0.15             # the motion encoding's sigma (Wan-VideoJAM panels)
  config.seed = 0
  config.batch_size = 1                # prompts per sampler call
  config.max_sequence_length = 512     # umT5 tokens per prompt
  config.dtype = "bfloat16"            # compute dtype (weights are read into float32 masters)
  config.attention_impl = "xla"        # xla | cudnn | splash | auto (model/attention.py)
  config.compilation_cache_dir = ""
  # Motion metrics of every generated video (evaluation/motion_metrics.py: warping error,
  # smoothness, dynamics, flicker, and motion EPE for Wan-VideoJAM), into samples.json
  # for `python -m videojam_jax.compare`: a DIS optical-flow preset, or "" for none.
  config.metrics_preset = "fast"

  config.sample = ml_collections.ConfigDict()
  config.sample.num_steps = 50
  config.sample.solver = "euler"       # euler | heun (not UniPC's multistep solver)
  # auto: Inner-Guidance for a Wan-VideoJAM folder (our export of a jam run, 2x the VAE's
  # channels; the MP4s then show the video beside its decoded motion), else CFG.
  config.sample.guidance = "auto"      # auto | none | cfg | inner
  config.sample.guidance_scale = 5.0   # diffusers' g; our text_scale w1 = g - 1
  config.sample.motion_scale = 3.0     # w2 of Inner-Guidance (Wan-VideoJAM only)
  config.sample.inner_guidance_until = 1.0
  # "" / 0: what the pipeline's scheduler_config.json says (UniPC: unipc_flow, flow_shift 3
  # for 480p in the published 1.3B and 14B folders); else a sampler.time_grid schedule.
  config.sample.schedule = ""
  config.sample.flow_shift = 0.0
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return config
