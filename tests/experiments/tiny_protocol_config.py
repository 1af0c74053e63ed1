"""configs/protocol_quickstart.py at test size: the tiny DiT, 2-step chunks, 2 prompts.

Used by tests/experiments/test_protocol.py as --config=tests/experiments/tiny_protocol_config.py
(set --config.train.data.dataset_dir).
"""

from configs import protocol_quickstart
from tests.conftest import tiny_config


def get_config():
  config = protocol_quickstart.get_config()
  config.train = tiny_config()
  config.train.checkpoint_every = 2
  config.pretrain.chunk_steps = 2
  config.pretrain.max_steps = 6
  # Any chunk after the first counts as flat: the base stops after two chunks (4 steps).
  config.pretrain.flat_tolerance = 10.0
  config.pretrain.learning_rate = 0.05   # big steps move the zero-initialised heads
  config.pretrain.warmup_steps = 0
  config.finetune.num_steps = 2
  config.finetune.warmup_steps = 0
  config.finetune.learning_rate = 0.05
  config.arms.videojam_zero_head = "model.jam=True, train.retrofit_motion_head='zeros'"
  e = config.evaluation
  e.weights = "params"
  e.prompts.num_prompts = 2
  e.seeds = (0, 1)
  e.batch_size = 2
  e.sample.num_steps = 2
  e.sweep.motion_scale = (1.0, 3.0)
  e.heldout.num_clips = 4
  e.heldout.batch_size = 2
  e.heldout.times = (0.3, 0.7)
  e.caption_swap.num_clips = 4
  e.caption_swap.batch_size = 2
  e.caption_swap.times = (0.05,)
  e.caption_swap.swaps = ("colour", "direction")
  e.metrics.dis_preset = "ultrafast"
  e.metrics.object_check = True
  e.report.min_side = 32
  e.report.video_format = "gif"   # the GPU machine's path; test_protocol rewrites them as MP4
  e.compilation_cache_dir = ""
  return config
