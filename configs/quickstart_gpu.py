"""The full synthetic scenes with a model big enough to draw them: for one GPU (about a minute).

  python -m data_pipelines.build_synthetic --config configs/quickstart_gpu.py
  python -m videojam_jax.train --config configs/quickstart_gpu.py --workdir workdirs/quickstart_gpu

The scenes are quickstart.defaults()'s: 32x32, up to three objects, three
backgrounds (the 2-core quickstart uses smaller ones). 400 CPU steps of its
width-128 DiT give noise-like clips; two changes make them recognisable
(docs/evaluation.md has the measurements):

- width 256: the token must hold a video patch and a motion patch (2 x 96
  values with patch (2, 4, 4)); at width 128 the motion input cost video loss;
- 4000 steps at batch 32 (about 50-60 s of training on one H200), with the
  motion input rows starting random ("xavier"): from scratch, zero rows and a
  zero motion head form a saddle the motion stream is slow to leave.
"""

from configs import quickstart


def get_config():
  config = quickstart.defaults()
  config.data.dataset_dir = "data/quickstart_gpu"
  config.model.width = 256
  config.model.motion_input_init = "xavier"
  config.train.batch_size = 32
  config.train.num_steps = 4000
  config.train.log_every = 100
  config.train.checkpoint_every = 1000
  config.evals.heldout.every_steps = 200
  config.evals.samples.every_steps = 1000
  return config
