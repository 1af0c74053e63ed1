"""Offline evaluation of the quickstart models: baseline vs VideoJAM, CFG vs Inner-Guidance.

  python -m videojam_jax.train --config configs/quickstart.py:base --workdir workdirs/quickstart_base
  python -m videojam_jax.train --config configs/quickstart.py --workdir workdirs/quickstart
  python -m videojam_jax.train --config configs/quickstart.py --workdir workdirs/quickstart_baseline \
      --config.model.jam=False
  python -m videojam_jax.evaluate --config configs/eval_quickstart.py --workdir workdirs/eval_quickstart

The baseline continues the base for the same steps as the VideoJAM fine-tune (both
start from workdirs/quickstart_base), so the two differ only in VideoJAM.
Each model's architecture and data shape come from its workdir's config.json.
Open DIR/index.html to compare the clips; DIR/metrics.csv|json hold the table.
Running again with the same workdir skips the settings it already finished.
"""

import ml_collections

from configs import sampling


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Name -> training workdir. "" leaves a model out (e.g. --config.models.baseline=).
  # Columns show baselines (model.jam=False) first, then VideoJAM models, by name.
  config.models = ml_collections.ConfigDict()
  config.models.baseline = "workdirs/quickstart_baseline"
  config.models.videojam = "workdirs/quickstart"
  config.weights = "ema"                 # ema | params

  # --- Prompts: an explicit list, or the first captions of a dataset split.
  config.prompts = ml_collections.ConfigDict()
  config.prompts.captions = ()           # non-empty: use these captions
  config.prompts.split = "validation"
  config.prompts.num_prompts = 4
  config.prompts.dataset_dir = ""        # "" = the first model's data.dataset_dir
  config.seeds = (0, 1)                  # every prompt is sampled once per seed
  config.batch_size = 8                  # clips per sampler call (a multiple of the batch shards)

  # --- Sampler settings not swept (configs/sampling.py: sampler.SamplerSettings fields).
  config.sample = sampling.get_config()

  # --- The sweep: field -> values; every combination is sampled for every model.
  # An empty tuple keeps config.sample's value. Settings a model cannot use
  # (Inner-Guidance on a baseline) are skipped with a note; CFG ignores
  # motion_scale, so its points collapse into one (shown as w2=0).
  config.sweep = ml_collections.ConfigDict()
  config.sweep.guidance = ("cfg", "inner")
  config.sweep.text_scale = ()
  config.sweep.motion_scale = (1.0, 3.0, 5.0)
  config.sweep.num_steps = ()
  config.sweep.solver = ()
  config.sweep.time_shift = ()
  config.sweep.inner_guidance_until = ()

  # --- Each model's held-out flow-matching loss at fixed times (the trainer's heldout_loss
  # evaluator, videojam_jax/evaluation/evaluators/heldout_loss.py); num_clips=0 skips it.
  config.heldout = ml_collections.ConfigDict(dict(
      split="validation", num_clips=32, batch_size=8, times=(0.1, 0.3, 0.5, 0.7, 0.9), seed=0))

  # --- Does each model read each kind of caption word? The held-out loss with every
  # colour / shape / direction word swapped over the true caption's (1 = ignored;
  # evaluation/evaluators/caption_swap.py; columns caption_swap/*). Synthetic captions,
  # built-in text encoder only; num_clips=0 skips it.
  config.caption_swap = ml_collections.ConfigDict(dict(
      split="validation", num_clips=0, batch_size=8, times=(0.05, 0.3, 0.7), seed=0,
      swaps=("colour", "shape", "direction")))

  # --- Metrics (videojam_jax/evaluation/motion_metrics.py) and the page.
  config.metrics = ml_collections.ConfigDict()
  config.metrics.dis_preset = "medium"   # OpenCV DIS flow preset: ultrafast | fast | medium
  # Synthetic scenes only: per clip, are the captioned objects there and moving as
  # captioned (evaluation/object_check.py: objects_present, objects_moving, clip_correct)?
  config.metrics.object_check = False
  config.metrics.fps = 0.0               # frame rate for dynamic_degree and videos; 0 = the run's evals.samples.fps
  config.report = ml_collections.ConfigDict()
  config.report.title = "VideoJAM quickstart: baseline vs VideoJAM, CFG vs Inner-Guidance"
  config.report.min_side = 128           # clips are upscaled (nearest) to at least this many pixels
  # mp4 (H.264 through imageio-ffmpeg) | gif (Pillow: for a machine without imageio-ffmpeg).
  config.report.video_format = "mp4"

  # --- Devices: the mesh sampling runs on (replaces the training run's mesh).
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  config.mesh.rules = "default"
  # XLA's persistent compilation cache ("" turns it off).
  config.compilation_cache_dir = "~/.cache/videojam_jax/xla"
  return config
