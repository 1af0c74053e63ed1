r"""The paper's protocol on 2 CPU cores: pretrain a base, fine-tune base vs VideoJAM, compare.

  python -m videojam_jax.protocol --config configs/protocol_quickstart.py \
      --workdir workdirs/protocol_quickstart

videojam_jax/experiments/protocol.py describes the stages and what the workdir
holds (protocol.md is the table). Rerunning skips finished stages. Ablations are
more arms, set in a config file that imports this one (configs/protocol_ablations.py;
the locked command line can only change an existing arm); --config.pretrain.from_workdir=<another protocol's pretrain/> reuses its base.

Scale: the quickstart's (configs/quickstart.py, `cpu_scale`): 16x16 clips of one
object on a smooth (mottled) background, the synthetic renderer's physics, colours
and caption grammar unchanged; a width-256 DiT with 8x8-pixel tokens, RoPE, qk-norm
and the caption's pooled token in adaLN. w1 = 1 in every arm (CFG at w1 = 5 paints
object colour over the frame at this scale).
"""

import ml_collections

from configs import eval_quickstart
from configs import quickstart


def train_config() -> ml_collections.ConfigDict:
  """What every arm trains: the quickstart's base (data, model, recipe); each arm's
  overrides go on top."""
  config = quickstart.get_config("base")
  config.data.dataset_dir = "data/protocol_quickstart"
  config.data.synthetic.num_train_clips = 1024
  config.data.synthetic.num_eval_clips = 128   # the evaluation's prompts and held-out clips
  config.train.checkpoint_every = 500
  config.evals.heldout.every_steps = 250
  config.evals.samples.every_steps = 0  # the protocol samples each arm once, at the end
  return config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.train = train_config()

  # --- Stage 1: the pixel-only base at a constant rate, chunk by chunk, until the held-out
  # video loss gains less than flat_tolerance (relative) over a chunk, or max_steps.
  config.pretrain = ml_collections.ConfigDict()
  config.pretrain.chunk_steps = 500
  config.pretrain.max_steps = 3000
  config.pretrain.flat_tolerance = 0.02
  config.pretrain.learning_rate = 1e-3
  config.pretrain.warmup_steps = 20
  # Another protocol workdir's pretrain/ to start from (ablations share one base); "" = ours.
  config.pretrain.from_workdir = ""

  # --- Stage 2: every arm from the pretrained EMA weights, the same steps, batch and data.
  config.finetune = ml_collections.ConfigDict()
  config.finetune.num_steps = 1000
  config.finetune.learning_rate = 5e-4
  config.finetune.schedule = "cosine"
  config.finetune.warmup_steps = 20
  # Arm name -> overrides of config.train ('field.path=literal, ...'); model.jam=True arms
  # are retrofitted from the base (train.retrofit_motion_head: copy | zeros).
  config.arms = ml_collections.ConfigDict()
  config.arms.base = "model.jam=False"
  config.arms.videojam = "model.jam=True"

  # --- Stage 3: the same prompts and seeds for every arm (configs/eval_quickstart.py fields).
  config.evaluation = eval_quickstart.get_config()
  e = config.evaluation
  e.models = ml_collections.ConfigDict()           # filled with the arms
  e.prompts.num_prompts = 128
  e.seeds = (0, 1)
  e.batch_size = 16
  e.sample.text_scale = 1.0
  e.sweep.guidance = ("cfg", "inner")
  e.sweep.motion_scale = (1.0, 3.0)
  e.heldout.num_clips = 128
  e.heldout.batch_size = 16
  e.caption_swap.num_clips = 128          # does each arm read colour / shape / direction words?
  e.caption_swap.batch_size = 16
  e.metrics.object_check = True
  e.metrics.fps = 8.0
  e.report.title = "Protocol: base vs VideoJAM, fine-tuned from one pretrained base"

  # --- The table: the metrics shown (all are in protocol.csv), and the arm the paired
  # differences are taken against (its first setting: CFG).
  config.report = ml_collections.ConfigDict()
  config.report.reference = "base"
  config.report.metrics = ("warping_error", "motion_smoothness", "temporal_flickering",
                           "dynamic_degree", "dynamic_magnitude", "objects_present",
                           "objects_moving", "clip_correct")
  return config
