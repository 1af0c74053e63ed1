"""Quickstart: VideoJAM retrofitted onto a pixel-only base DiT, both trained here on 2 CPU cores.

  python -m data_pipelines.build_synthetic --config configs/quickstart.py
  python -m videojam_jax.train --config configs/quickstart.py:base --workdir workdirs/quickstart_base
  python -m videojam_jax.train --config configs/quickstart.py --workdir workdirs/quickstart

The paper's recipe in miniature: the base learns to draw the clips (stage `base`), then
VideoJAM's motion input rows and motion head are added to its weights and the joint
model is fine-tuned (stage `videojam`, the default, reading train.init_from).

The scenes are the synthetic renderer's, with its physics, colours and caption grammar,
at the size 2 cores learn in minutes: 16x16 clips of one object on a smooth (mottled)
background, and a width-256 DiT with 8x8-pixel tokens (docs/evaluation.md has the runs
that led here). `defaults()` (configs/quickstart.py:defaults) is every field at its
default: the full scenes (32x32, up to three objects, three backgrounds) and a width-128
VideoJAM DiT from scratch, which 400 CPU steps leave noise-like; configs/quickstart_gpu.py
trains those scenes on a GPU.
"""

import ml_collections

from configs import sampling

# config.py:<stage>. "defaults" is defaults(): the full scenes, VideoJAM from scratch.
STAGES = ("base", "videojam", "defaults")


def defaults() -> ml_collections.ConfigDict:
  """Every field at its default: a width-128 VideoJAM DiT trained from scratch on the full
  synthetic scenes. Other configs start here and change what they need."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # XLA's persistent compilation cache: a resumed or repeated run skips compiling.
  # "" turns it off.
  config.compilation_cache_dir = "~/.cache/videojam_jax/xla"

  # --- Data: clips as built by data_pipelines/ (see videojam_jax/data/clip_records.py).
  config.data = ml_collections.ConfigDict()
  # A directory holding one clip dataset (the version folder with dataset_info.json,
  # or any folder above it that holds exactly one).
  config.data.dataset_dir = "data/quickstart"
  config.data.num_frames = 8
  config.data.height = 32
  config.data.width = 32
  config.data.channels = 3               # 3 = RGB pixels (latent configs use more; see docs/scaling.md)
  config.data.flow_sigma = 0.15
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.shuffle_seed = 0
  config.data.worker_count = 0          # Grain worker processes (0: in-process)
  config.data.prefetch_buffer_size = 2
  config.data.read_threads = 2
  # Largest shard the dataset builders write, in MiB of serialized records before
  # ArrayRecord's compression (TFDS's default bound). Every
  # shard read is an open file in each reading process; data/open_files.py raises the
  # limit as needed.
  config.data.max_shard_mb = 1024.0
  # .npz of precomputed caption embeddings (captions, embeddings, masks), used when
  # model.text.source == "precomputed".
  config.data.text_embeddings = ""
  # A diffusers Wan 2.1 pipeline folder whose umT5 (tokenizer/, text_encoder/) writes
  # data.text_embeddings: python -m data_pipelines.embed_captions --config ...
  config.data.text_encoder = ""
  # Latent clips (python -m data_pipelines.build_latents): the pixel clip dataset to
  # encode, the Wan VAE folder (or pipeline) to encode it with (also checked against
  # a latent dataset's metadata when training), clips per VAE call.
  config.data.latents = ml_collections.ConfigDict(dict(source_dir="", vae="", batch_size=8))
  # The build resumes by chunks of this many clips (a multiple of batch_size; each
  # process of a multi-host job encodes every process_count-th chunk), kept in
  # work_dir ("" = <dataset_dir>/wan_latent_clips_encoding/<name>) until written.
  config.data.latents.chunk_clips = 32
  config.data.latents.work_dir = ""
  # A Wan pipeline folder: the records also carry each caption's umT5 embedding (then
  # data.text_embeddings is not needed); "": captions only.
  config.data.latents.text_encoder = ""
  # torchvision RAFT weights (raft_large / raft_small .pth): the motion videos are then
  # made from RAFT flow of the source frames, on the same devices as the VAE, in the
  # same pass; "": the source dataset's motion videos as they are.
  config.data.latents.flow_weights = ""
  config.data.latents.flow_updates = 12
  # The synthetic physics clips that build_synthetic writes into data.dataset_dir.
  config.data.synthetic = ml_collections.ConfigDict()
  config.data.synthetic.num_train_clips = 1024
  config.data.synthetic.num_eval_clips = 32
  config.data.synthetic.seed = 0
  config.data.synthetic.max_objects = 3
  config.data.synthetic.fps = 8.0
  # Backgrounds drawn from (a subset of checkered, striped, mottled).
  config.data.synthetic.background_kinds = ("checkered", "striped", "mottled")
  # Motions drawn from, uniformly (a subset of linear, bouncing, falling, rotating).
  config.data.synthetic.motion_kinds = ("linear", "bouncing", "falling", "rotating")

  # --- Model: a video DiT; jam=True adds VideoJAM's motion input rows and motion head.
  config.model = ml_collections.ConfigDict()
  config.model.family = "dit"           # dit (ours) | wan (Wan 2.1: configs/wan_tiny.py, docs/wan.md)
  config.model.jam = True
  config.model.width = 128
  config.model.depth = 4
  config.model.num_heads = 4
  config.model.mlp_ratio = 4.0
  config.model.patch_size = (2, 4, 4)   # (frames, height, width)
  config.model.dtype = "float32"        # compute dtype; params stay float32
  config.model.remat_policy = "none"    # none | full | dots_saveable
  config.model.attention_impl = "xla"   # jax.nn.dot_product_attention implementation
  config.model.qk_norm = False          # RMS-normalised queries and keys
  config.model.rope_theta = 0.0         # > 0: 3-D rotary positions in self-attention
  # W_in_m, the motion input rows: "zeros" (the paper's retrofit init) | "xavier".
  config.model.motion_input_init = "zeros"
  # LoRA fine-tuning (model.family="wan" only): rank > 0 freezes the base weights and
  # trains low-rank adapters on every attention and FFN projection, plus VideoJAM's
  # motion input rows and motion head in full. Output scale alpha / rank; the frozen
  # base is stored in frozen_dtype during training (bfloat16 halves it).
  config.model.lora = ml_collections.ConfigDict()
  config.model.lora.rank = 0            # 0: full fine-tuning
  config.model.lora.alpha = 16.0
  config.model.lora.frozen_dtype = "float32"
  # Text conditioning: the built-in byte-level encoder, or precomputed embeddings.
  config.model.text = ml_collections.ConfigDict()
  config.model.text.source = "builtin"  # builtin | precomputed
  # Tokens (bytes) per caption: 160 holds 95% of the synthetic captions in full
  # (median 103, max 199); the rest lose the end of their last clause.
  config.model.text.max_length = 160
  config.model.text.width = 64
  config.model.text.depth = 1
  config.model.text.num_heads = 4
  config.model.text.embedding_dim = 128  # dim of precomputed embeddings, if used
  # Also modulate every block by the caption's mean token (added to the adaLN vector).
  config.model.text.pooled = False

  # --- Flow matching and VideoJAM training objective (DESIGN.md §1).
  config.loss = ml_collections.ConfigDict()
  config.loss.motion_weight = 1.0       # lambda_m
  config.loss.text_dropout = 0.1
  config.loss.motion_dropout = 0.1
  config.loss.time_sampling = "logit_normal"  # uniform | logit_normal | shifted
  config.loss.time_shift = 1.0                # for "shifted" (Wan recipes: 5.0)
  config.loss.logit_normal_mean = 0.0
  config.loss.logit_normal_std = 1.0

  # --- Optimiser (optax AdamW).
  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-3
  config.optim.schedule = "cosine"      # constant | cosine
  config.optim.warmup_steps = 50
  config.optim.end_learning_rate_factor = 0.1
  config.optim.b1 = 0.9
  config.optim.b2 = 0.99
  config.optim.weight_decay = 0.01
  config.optim.grad_clip_norm = 1.0     # global-norm clipping; 0 = none
  config.optim.ema_decay = 0.99
  config.optim.grad_accum_steps = 1

  # --- Mesh: axis sizes; -1 takes the remaining devices.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  config.mesh.rules = "default"         # name of a logical-axis rules table (sharding.py)

  # --- Training loop.
  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 8           # global
  config.train.num_steps = 400          # video loss is flat after ~400 (0.239 at 400, 0.233 at 600)
  config.train.log_every = 25
  config.train.checkpoint_every = 200
  config.train.max_checkpoints_to_keep = 2
  # TensorBoard writer: "auto" (clu's TensorFlow writer when TensorFlow is installed,
  # else tensorboardX) | "clu" | "tensorboardx".
  config.train.metric_writer = "auto"
  # jax.profiler trace of these steps (first to last), in workdir/profile; () = off.
  config.train.profile_steps = ()
  # A workdir (or its checkpoints/ folder) of a base (non-JAM) or JAM run to start
  # from; a base checkpoint is retrofitted to VideoJAM (retrofit.py).
  config.train.init_from = ""
  config.train.init_from_weights = "ema"  # ema | params
  # A base checkpoint's new motion head: "copy" of the video head | "zeros".
  config.train.retrofit_motion_head = "copy"

  # --- Sampler settings (configs/sampling.py), used by the samples evaluator.
  config.sample = sampling.get_config()

  # --- Evaluators run by the trainer (videojam_jax/evaluation/evaluators/): one block
  # each, `type` picks the evaluator; every_steps > 0 runs it at its multiples and at
  # the end (0: off); weights: "ema" | "params". Results go to TensorBoard as <block>/<name>.
  config.evals = ml_collections.ConfigDict()
  # Flow-matching loss of the first num_clips eval clips at fixed times, with fixed
  # noise per clip: comparable across steps and runs.
  config.evals.heldout = ml_collections.ConfigDict(dict(
      type="heldout_loss", every_steps=50, weights="ema", split="validation",
      num_clips=32, batch_size=8, times=(0.1, 0.3, 0.5, 0.7, 0.9), seed=0))
  # Clips for the first num_prompts eval captions (once per seed), written as MP4s
  # (video | the model's motion) to workdir/samples/step_*/ with a grid.png of their
  # frames, scored by motion metrics and (synthetic scenes) by object_check: are the
  # captioned objects there, moving as captioned (evaluation/object_check.py)?
  config.evals.samples = ml_collections.ConfigDict(dict(
      type="samples", every_steps=400, weights="ema", split="validation", num_prompts=4,
      seeds=(0,), batch_size=8, write_videos=True, metrics=True, dis_preset="medium",
      fps=8.0, min_side=128, object_check=True))
  # Does the model read each kind of caption word? The held-out loss with every colour /
  # shape / direction word swapped, over the loss with the true caption (1 = the word is
  # ignored; evaluation/evaluators/caption_swap.py). Synthetic captions only.
  config.evals.caption_swap = ml_collections.ConfigDict(dict(
      type="caption_swap", every_steps=0, weights="ema", split="validation", num_clips=32,
      batch_size=8, times=(0.05, 0.3, 0.7), seed=0, swaps=("colour", "shape", "direction")))
  return config


def cpu_scale(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The scenes and model that 2 CPU cores train to a drawing model in minutes
  (shared with configs/protocol_quickstart.py)."""
  d, m = config.data, config.model
  d.height = d.width = 16
  d.synthetic.max_objects = 1
  d.synthetic.background_kinds = ("mottled",)
  m.width = 256
  m.patch_size = (1, 8, 8)
  m.qk_norm = True
  m.rope_theta = 100.0
  m.text.pooled = True
  m.text.max_length = 96                # holds every one-object caption in full
  return config


def get_config(stage: str = "videojam") -> ml_collections.ConfigDict:
  """The quickstart's `base` stage (pixel-only, from scratch) or its `videojam` stage
  (retrofitted from the base's workdir and fine-tuned); `defaults` is defaults().
  Select with config.py:<stage>."""
  if stage not in STAGES:
    raise ValueError(f"configs/quickstart.py has the stages {STAGES}, got {stage!r}")
  if stage == "defaults":
    return defaults()
  config = cpu_scale(defaults())
  config.optim.warmup_steps = 20
  config.train.log_every = 100
  config.evals.heldout.every_steps = 200
  config.evals.samples.num_prompts = 8
  config.sample.text_scale = 1.0        # w1 = 5 paints the object's colour over the frame here
  config.sample.motion_scale = 1.0      # w2 = 3 costs coherence at this scale (docs/evaluation.md)
  if stage == "base":
    config.model.jam = False
    config.train.num_steps = 1200
    config.train.checkpoint_every = 600
  else:
    config.train.init_from = "workdirs/quickstart_base"
    # A zero motion head keeps the base's video at conversion and through fine-tuning;
    # a copy of the video head damages it (docs/evaluation.md, the protocol's ablations).
    config.train.retrofit_motion_head = "zeros"
    config.train.num_steps = 300
    config.train.checkpoint_every = 300
    config.optim.learning_rate = 5e-4
    config.evals.heldout.every_steps = 100
  config.evals.samples.every_steps = config.train.num_steps   # the final step's samples
  config.evals.caption_swap.every_steps = config.train.num_steps
  return config
