r"""Short training runs on the quickstart clips held in memory: losses, samples, metrics.

For a machine without the data pipeline's packages (grain, TFDS), e.g. a lent
GPU: the clips travel as one .npz, and each run uses the real train step
(train_step.make_train_step), optimizer, loss, sampler and motion metrics. The
only difference from `train` is that clips are drawn uniformly at random rather
than in Grain's shuffled epochs.

  # Where the quickstart dataset is built (reads it through TFDS):
  python -m benchmarks.train_probe --export=clips.npz
  # Anywhere with jax, flax, optax, ml_collections and OpenCV:
  python -m benchmarks.train_probe --clips=clips.npz --runs=w256_jam,w256_base --out=DIR

Prints one JSON line per run: time, train losses, validation losses at fixed t
(EMA weights), and the mean of each motion metric over `num_prompts` sampled
clips per guidance setting; writes DIR/RUN.png (rows: clips, frames then motion).
docs/evaluation.md reports what these runs gave on an H200.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from videojam_jax.training import flow_matching
from videojam_jax.model import dit as model_lib
from videojam_jax.data import motion_encoding
from videojam_jax.evaluation import motion_metrics
from videojam_jax.sampling import sampler as sampler_lib
from videojam_jax.parallel import sharding
from videojam_jax.model import text_encoder
from videojam_jax.training import state as train_state_lib
from videojam_jax.training import step as train_step_lib

_EXPORT = flags.DEFINE_string("export", "", "Write the quickstart clips to this .npz and exit.")
_CLIPS = flags.DEFINE_string("clips", "", "The .npz written by --export.")
_RUNS = flags.DEFINE_list("runs", ["quickstart_400"], "Runs to train, from RUNS.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 0, "Train steps (0: the run's own).")
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", 0, "Sampler steps (0: the config's).")
_OUT = flags.DEFINE_string("out", "/tmp/train_probe", "Where the sample grids go.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 32, "Validation prompts sampled per setting.")

# name -> (config module in configs/, overrides)
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "quickstart_400": ("quickstart", {}),
    "quickstart_2000": ("quickstart", {"train.num_steps": 2000}),
    "xavier_2000": ("quickstart", {"train.num_steps": 2000, "model.motion_input_init": "xavier"}),
    "xavier_6000": ("quickstart", {"train.num_steps": 6000, "model.motion_input_init": "xavier"}),
    "w256_jam": ("quickstart_gpu", {}),
    "w256_base": ("quickstart_gpu", {"model.jam": False}),
}
GRID_ROWS = 3           # clips per guidance setting in the PNG
VAL_TIMES = (0.25, 0.5, 0.75)


# The next two mirror input_pipeline.ToTrainingExample and samples.to_uint8: those
# modules import grain and imageio-ffmpeg, which this script must run without.
def to_model_space(u8: np.ndarray) -> np.ndarray:
  return u8.astype(np.float32) / 127.5 - 1.0


def to_uint8(x: Any) -> np.ndarray:
  return motion_encoding.to_uint8((np.asarray(x, np.float32) + 1.0) / 2.0)


def export_clips(path: str) -> None:
  """The quickstart dataset's clips (uint8) and captions, both splits, as one .npz."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  from videojam_jax.data import pipeline as input_pipeline  # pylint: disable=g-import-not-at-top  (needs TFDS)
  config = quickstart.get_config()
  arrays = {}
  for split in ("train", "validation"):
    source, _ = input_pipeline.open_clip_source(config, split)
    records = [source[i] for i in range(len(source))]
    arrays[f"{split}_video"] = np.stack([np.asarray(r["video"], np.uint8) for r in records])
    arrays[f"{split}_motion"] = np.stack([np.asarray(r["motion"], np.uint8) for r in records])
    arrays[f"{split}_caption"] = np.array([r["caption"].decode() for r in records])
  np.savez_compressed(path, **arrays)
  print(f"wrote {path}: {len(arrays['train_video'])} train, "
        f"{len(arrays['validation_video'])} validation clips")


def run_config(name: str):
  module, overrides = RUNS[name]
  config = importlib.import_module(f"configs.{module}").get_config()
  config.update_from_flattened_dict(overrides)
  if _NUM_STEPS.value:
    config.train.num_steps = _NUM_STEPS.value
  if _SAMPLE_STEPS.value:
    config.sample.num_steps = _SAMPLE_STEPS.value
  return config


def train(config, clips) -> tuple[Any, list[tuple[int, float, float]], float]:
  """(train state, [(step, video loss, motion loss)] every 100 steps, seconds)."""
  mesh = sharding.create_mesh(config.mesh)
  tx = train_state_lib.create_optimizer(config)
  state, shardings = train_state_lib.create_train_state(config, mesh, tx)
  batch, length = config.train.batch_size, config.model.text.max_length
  clip_shape = clips["train_video"].shape[1:]
  # input_pipeline.batch_spec, written out: that module needs grain.
  spec = {"video": jax.ShapeDtypeStruct((batch,) + clip_shape, jnp.float32),
          "motion": jax.ShapeDtypeStruct((batch,) + clip_shape, jnp.float32),
          "text": jax.ShapeDtypeStruct((batch, length), jnp.int32),
          "text_mask": jax.ShapeDtypeStruct((batch, length), jnp.bool_)}
  step_fn = train_step_lib.make_train_step(config, mesh, tx, shardings, spec)
  ids, mask = text_encoder.tokenize(list(clips["train_caption"]), length)
  rng = np.random.default_rng(config.seed)
  history, start = [], time.time()
  for step in range(1, config.train.num_steps + 1):
    index = rng.integers(0, len(ids), batch)
    state, metrics = step_fn(state, {"video": to_model_space(clips["train_video"][index]),
                                     "motion": to_model_space(clips["train_motion"][index]),
                                     "text": ids[index], "text_mask": mask[index]})
    if step % 100 == 0 or step == config.train.num_steps:
      history.append((step, float(metrics["video_loss"]), float(metrics.get("motion_loss", np.nan))))
  return state, history, time.time() - start


def validation_losses(config, params, clips) -> dict[str, list[float | None]]:
  """Video and motion MSE of the velocity at fixed times on 16 validation clips."""
  model, jam = model_lib.build_model(config), bool(config.model.jam)
  x1 = jnp.asarray(to_model_space(clips["validation_video"][:16]))
  d1 = jnp.asarray(to_model_space(clips["validation_motion"][:16]))
  ids, mask = text_encoder.tokenize(list(clips["validation_caption"][:16]), config.model.text.max_length)
  x0, d0 = (jax.random.normal(jax.random.key(i), x1.shape) for i in (1, 2))
  out = {}
  for t in VAL_TIMES:
    times = jnp.full((16,), t)
    u_x, u_d = model.apply({"params": params}, flow_matching.interpolate(x1, x0, times),
                           flow_matching.interpolate(d1, d0, times) if jam else None, times, ids,
                           mask, jnp.ones((16,), bool))
    out[f"t={t}"] = [round(float(jnp.mean((u_x - (x1 - x0)) ** 2)), 4),
                     round(float(jnp.mean((u_d - (d1 - d0)) ** 2)), 4) if jam else None]
  return out


def sample_and_score(config, params, clips, num_prompts: int) -> tuple[dict, np.ndarray]:
  """Mean metrics per guidance setting, and a grid of the first clips (CFG, Inner w2=3)."""
  mesh = sharding.create_mesh(config.mesh)
  captions = list(clips["validation_caption"][:num_prompts])
  ids, mask = text_encoder.tokenize(captions, config.model.text.max_length)
  jam = bool(config.model.jam)
  settings = [("cfg", 0.0)] + ([("inner", w) for w in (1.0, 3.0, 5.0)] if jam else [])
  samplers, scores, rows = {}, {}, []
  sigma, fps = float(config.data.flow_sigma), float(config.sample.fps)
  for guidance, w2 in settings:
    if guidance not in samplers:
      samplers[guidance] = sampler_lib.make_sampler(
          config, mesh, sampler_lib.SamplerSettings(num_steps=config.sample.num_steps, guidance=guidance))
    video, motion = samplers[guidance](params, ids, mask, jax.random.key(0), motion_scale=w2)
    video = np.stack([to_uint8(v) for v in video])
    motion = None if motion is None else np.stack([to_uint8(m) for m in motion])
    per_clip = [motion_metrics.compute_all(video[i], None if motion is None else motion[i],
                                           sigma=sigma, fps=fps) for i in range(len(video))]
    scores[f"{guidance}_w2-{w2:g}"] = {
        k: round(float(np.mean([c[k] for c in per_clip])), 4)
        for k in per_clip[0] if per_clip[0][k] is not None}
    if w2 in (0.0, 3.0):
      for i in range(GRID_ROWS):
        right = motion[i] if motion is not None else np.zeros_like(video[i])
        rows.append(np.concatenate(list(video[i]) + list(right), axis=1))
  return scores, np.concatenate(rows, axis=0)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _EXPORT.value:
    export_clips(_EXPORT.value)
    return
  if not _CLIPS.value:
    raise app.UsageError("give --clips=FILE.npz (written by --export)")
  unknown = [r for r in _RUNS.value if r not in RUNS]
  if unknown:
    raise app.UsageError(f"unknown runs {unknown}; choose from {sorted(RUNS)}")
  os.makedirs(_OUT.value, exist_ok=True)
  with np.load(_CLIPS.value) as data:
    clips = {k: data[k] for k in data.files}
  for name in _RUNS.value:
    config = run_config(name)
    state, history, seconds = train(config, clips)
    result = {"run": name, "steps": config.train.num_steps, "train_seconds": round(seconds, 1),
              "loss_first": history[0], "loss_last": history[-1],
              "validation": validation_losses(config, state.ema_params, clips)}
    result["samples"], grid = sample_and_score(config, state.ema_params, clips, _NUM_PROMPTS.value)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2),   # 32 px clips are small
                                 Image.NEAREST).save(os.path.join(_OUT.value, f"{name}.png"))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)
