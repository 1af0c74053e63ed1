"""The quickstart clips with a model big enough to draw them: for one GPU (about a minute).

  python -m data_pipelines.build_synthetic --config configs/quickstart_gpu.py
  python -m videojam_jax.train --config configs/quickstart_gpu.py --workdir workdirs/quickstart_gpu

The 2-core quickstart (configs/quickstart.py) shows the whole pipeline in minutes,
but 400 steps of a width-128 DiT give noise-like clips. Two changes make the
clips recognisable (docs/evaluation.md has the measurements):

- width 256: the token must hold a video patch and a motion patch (2 x 96
  values with patch (2, 4, 4)); at width 128 the motion input cost video loss;
- 4000 steps at batch 32 (about 50-60 s of training on one H200), with the
  motion input rows starting random ("xavier"): from scratch, zero rows and a
  zero motion head form a saddle the motion stream is slow to leave.

Same data as the quickstart (the dataset is shared when both are built).
"""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.model.width = 256
  config.model.motion_input_init = "xavier"
  config.train.batch_size = 32
  config.train.num_steps = 4000
  config.train.log_every = 100
  config.train.checkpoint_every = 1000
  config.evals.heldout.every_steps = 200
  config.evals.samples.every_steps = 1000
  return config
