"""The quickstart at test size: seconds per run on one CPU core (used by the tests)."""

import ml_collections

from configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.defaults()
  config.data.dataset_dir = "data/tiny"
  config.data.num_frames = 4
  config.data.height = 16
  config.data.width = 16
  config.data.synthetic.num_train_clips = 24
  config.data.synthetic.num_eval_clips = 4
  config.model.width = 32
  config.model.depth = 2
  config.model.num_heads = 2
  config.model.patch_size = (2, 4, 4)
  config.model.text.width = 32
  config.model.text.depth = 1
  config.model.text.num_heads = 2
  config.model.text.max_length = 32
  config.train.batch_size = 4
  config.train.num_steps = 12
  config.train.log_every = 1
  config.train.checkpoint_every = 3
  config.optim.warmup_steps = 2
  config.sample.num_steps = 2
  # Evaluators off by default at this size (tests turn them on with every_steps=N).
  config.evals.heldout.every_steps = 0
  config.evals.heldout.num_clips = 4
  config.evals.heldout.batch_size = 4
  config.evals.heldout.times = (0.3, 0.7)
  config.evals.samples.every_steps = 0
  config.evals.samples.num_prompts = 2
  config.evals.samples.batch_size = 2
  return config
