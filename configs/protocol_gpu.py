r"""The paper's protocol at the quickstart_gpu scale, sized for a few minutes of one GPU.

  python -m videojam_jax.protocol --config configs/protocol_gpu.py --workdir workdirs/protocol_gpu

The same stages as configs/protocol_quickstart.py (which documents every field), on
configs/quickstart_gpu.py's scenes and model: 32x32 clips of up to three objects on
three kinds of background, a width-256 DiT with (2, 4, 4) patches, batch 32. The
pixel-only base pretrains until its held-out loss is flat (or max_steps), then three
arms fine-tune from it for the same steps, batch and data:

- base:     the pixel-only model, continued;
- videojam: retrofitted with a zero motion head (the quickstart's recipe: stop 22's
            CPU ablations found that a copied head is what damages the video).

Sampling: 128 validation prompts x 2 seeds, 25 Euler steps, w1 = 5 in every arm
(the quickstart_gpu probe's setting, which drew objects at this scale); VideoJAM
arms also with Inner-Guidance at w2 in {1, 3}.

`benchmarks/protocol_gpu.sh` runs it on a GPU machine that lacks imageio-ffmpeg
(clips as GIF: --config.evaluation.report.video_format=gif) and packs the results.
"""

import ml_collections

from configs import protocol_quickstart
from configs import quickstart_gpu


def get_config() -> ml_collections.ConfigDict:
  config = protocol_quickstart.get_config()
  train = quickstart_gpu.get_config()
  train.model.jam = False
  train.data.dataset_dir = "data/protocol_gpu"
  train.data.synthetic.num_train_clips = 4096
  train.data.synthetic.num_eval_clips = 128   # the evaluation's prompts and held-out clips
  train.train.checkpoint_every = 1000
  train.train.log_every = 250
  train.evals.heldout.every_steps = 500
  train.evals.samples.every_steps = 0         # the protocol samples each arm once, at the end
  config.train = train

  config.pretrain.chunk_steps = 1000
  config.pretrain.max_steps = 5000
  config.pretrain.learning_rate = 1e-3

  config.finetune.num_steps = 2000
  config.finetune.learning_rate = 5e-4

  config.arms = ml_collections.ConfigDict()
  config.arms.base = "model.jam=False"
  config.arms.videojam = "model.jam=True, train.retrofit_motion_head='zeros'"

  e = config.evaluation
  e.batch_size = 128
  e.sample.text_scale = 5.0
  e.heldout.batch_size = 64
  e.caption_swap.batch_size = 64
  e.report.title = "Protocol on one GPU: base vs VideoJAM, fine-tuned from one pretrained base"
  return config
