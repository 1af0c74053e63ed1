"""Samples with motion metrics: generate clips for fixed prompts and seeds, score, write.

The prompts are the first `num_prompts` captions of a split; each is sampled once
per seed with the run's sampler settings (config.sample; a baseline asked for
Inner-Guidance falls back to CFG). Per clip: the weight-free motion metrics
(`evaluation.motion_metrics`) and, for synthetic scenes with `object_check`, whether
the captioned objects are there and move as captioned (`evaluation.object_check`);
yielded: their means. On process 0 the clips are
also written to `<workdir>/samples/step_<step>/` as MP4s, each the video beside
the model's own motion prediction. A failure to write them is logged and the run
goes on: a full disk must not end a long training run.

`generate_clips` and `score_clips` are also what offline evaluation
(`evaluation/runner.py`) uses for each (model, sampler setting) of a sweep.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
import imageio.v3 as iio
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from videojam_jax import files
from videojam_jax.data import frames as frames_lib
from videojam_jax.data import pipeline
from videojam_jax.data import text as text_lib
from videojam_jax.data import video_io
from videojam_jax.evaluation import evaluators
from videojam_jax.evaluation import motion_metrics
from videojam_jax.evaluation import object_check
from videojam_jax.sampling import sampler as sampler_lib

OPTIONS = ("split", "num_prompts", "seeds", "batch_size", "write_videos", "metrics",
           "dis_preset", "fps", "min_side", "object_check")
SAMPLES_DIR = "samples"
GRID_NAME = "grid.png"
DEFAULT_FPS = 8.0   # the synthetic clips' and VBench's frame rate


@dataclasses.dataclass(frozen=True)
class Clip:
  """One generated sample: its prompt, seed, video and (VideoJAM) motion, uint8 [T,H,W,3]."""
  prompt_index: int
  prompt: str
  seed: int
  video: np.ndarray
  motion: np.ndarray | None


def clip_batch_size(batch_size: int, num_prompts: int, batch_ways: int) -> int:
  """Clips per sampler call: batch_size, but no more than the prompts (rounded up to the
  mesh's batch shards)."""
  if batch_size < 1 or batch_size % batch_ways:
    raise sampler_lib.GuidanceError(
        f"batch_size={batch_size} must be a positive multiple of the {batch_ways} batch shards")
  return min(batch_size, -(-num_prompts // batch_ways) * batch_ways)


def generate_clips(sampler: sampler_lib.Sampler, params: Any, captions: text_lib.CaptionInputs,
                   prompts: Sequence[str], seeds: Sequence[int], batch_size: int, *,
                   text_scale: float | None = None, motion_scale: float | None = None,
                   ) -> list[Clip]:
  """Every prompt x seed, in fixed-size batches (the last padded by repeating its last prompt,
  so the sampler compiles once).

  Batch c of seed s draws its noise from fold_in(key(s), c): a (prompt, seed) gets
  the same noise for every setting and every model of the same clip shape, so
  columns of a comparison compare like with like. The clips are gathered from every
  process (they are sharded over the batch axes).
  """
  text, mask = captions(list(prompts), trim=True)
  clips = []
  for seed in seeds:
    for chunk, start in enumerate(range(0, len(prompts), batch_size)):
      index = list(range(start, min(start + batch_size, len(prompts))))
      padded = index + [index[-1]] * (batch_size - len(index))
      rng = jax.random.fold_in(jax.random.key(int(seed)), chunk)
      video, motion = sampler(params, text[padded], mask[padded], rng,
                              text_scale=text_scale, motion_scale=motion_scale)
      gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
      video = gather(video)
      motion = None if motion is None else gather(motion)
      for row, i in enumerate(index):
        clips.append(Clip(i, prompts[i], int(seed), frames_lib.to_uint8(video[row]),
                          None if motion is None else frames_lib.to_uint8(motion[row])))
  return clips


def score_clips(clips: Sequence[Clip], *, sigma: float, fps: float,
                preset: str = motion_metrics.DEFAULT_PRESET) -> list[dict[str, float]]:
  """The motion metrics of every clip (motion_metrics.compute_all)."""
  return [motion_metrics.compute_all(c.video, c.motion, sigma=sigma, fps=fps, preset=preset)
          for c in clips]


def write_video(path: epath.Path, frames: np.ndarray, fps: float, min_side: int) -> None:
  """An MP4 at `path`, local or cloud (ffmpeg writes a local file, copied when remote)."""
  if files.is_local(path):
    video_io.write_video(os.fspath(path), frames, fps, min_side)
    return
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, path.name)
    video_io.write_video(local, frames, fps, min_side)
    path.write_bytes(epath.Path(local).read_bytes())


def write_samples(out_dir: epath.PathLike, clips: Sequence[Clip], *, fps: float, sigma: float,
                  min_side: int = video_io.DEFAULT_MIN_SIDE) -> list[epath.Path]:
  """One MP4 per clip (the video beside its decoded motion), grid.png (every clip's
  frames, a row each) and captions.txt."""
  out_dir = epath.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths, lines, panels = [], [], []
  for i, clip in enumerate(clips):
    panel = clip.video if clip.motion is None else video_io.side_by_side(clip.video, clip.motion,
                                                                         sigma)
    path = out_dir / f"sample_{i:02d}.mp4"
    write_video(path, panel, fps, min_side)
    paths.append(path)
    panels.append(panel)
    lines.append(f"{path.name}\t{clip.prompt}\tseed {clip.seed}")
  # Every clip's frames in one image: row i is sample_i (captions.txt names it).
  grid = video_io.frame_grid(panels, scale=max(1, min_side // min(clips[0].video.shape[1:3]) // 2))
  files.atomic_write(out_dir / GRID_NAME, iio.imwrite("<bytes>", grid, extension=".png"))
  files.atomic_write(out_dir / "captions.txt", "\n".join(lines) + "\n")
  return paths


class Evaluator:
  """Samples the first `num_prompts` captions of `split` once per seed and scores them."""

  def __init__(self, options: ml_collections.ConfigDict, context: evaluators.EvalContext):
    evaluators.check_known(options, OPTIONS, "samples")
    exp = context.experiment
    config = exp.config
    opt = lambda name, default: evaluators.option(options, name, default)
    self._exp, self._workdir = exp, context.workdir
    self.split = str(opt("split", config.data.eval_split))
    self.seeds = tuple(int(s) for s in opt("seeds", (0,)))
    self.write_videos = bool(opt("write_videos", True)) and context.workdir is not None
    self.metrics = bool(opt("metrics", True))
    self.preset = str(opt("dis_preset", motion_metrics.DEFAULT_PRESET))
    self.fps = float(opt("fps", DEFAULT_FPS))
    self.min_side = int(opt("min_side", video_io.DEFAULT_MIN_SIDE))
    self.sigma = float(config.data.flow_sigma)
    num_prompts = int(opt("num_prompts", 4))
    self.prompts = pipeline.read_captions(config.data.dataset_dir, self.split, num_prompts)
    if not self.prompts:
      raise ValueError(f"samples: split {self.split!r} of {config.data.dataset_dir} has no captions")
    self.object_check = bool(opt("object_check", False))
    if self.object_check:  # refuse now, not after the first thousand steps
      for prompt in self.prompts:
        object_check.parse_caption(prompt)
    self.batch_size = clip_batch_size(int(opt("batch_size", 8)), len(self.prompts),
                                      exp.plan.batch_ways)
    settings = sampler_lib.settings_from_config(config.sample)
    if not exp.model.jam and settings.guidance == "inner":
      settings = dataclasses.replace(settings, guidance="cfg")
    self.settings = settings
    self._sampler: sampler_lib.Sampler | None = None   # compiled on first use

  def generate(self, params: Any) -> list[Clip]:
    if self._sampler is None:
      self._sampler = sampler_lib.Sampler(self._exp.model, self.settings)
    return generate_clips(self._sampler, params, self._exp.captions, self.prompts, self.seeds,
                          self.batch_size)

  def run(self, params: Any, step: int) -> Iterator[tuple[str, float]]:
    clips = self.generate(params)
    if jax.process_index() != 0:
      return
    if self.write_videos:
      out_dir = self._workdir / SAMPLES_DIR / f"step_{step:06d}"
      try:
        paths = write_samples(out_dir, clips, fps=self.fps, sigma=self.sigma,
                              min_side=self.min_side)
        logging.info("wrote %d samples to %s", len(paths), out_dir)
      except Exception as e:  # pylint: disable=broad-except
        # Any failure to write files (disk full, permissions, a path that is a file)
        # loses only these videos; training goes on.
        logging.error("could not write samples to %s (%s: %s); training continues",
                      out_dir, type(e).__name__, e)
    if self.metrics:
      scores = score_clips(clips, sigma=self.sigma, fps=self.fps, preset=self.preset)
      for name in scores[0]:
        values = [s[name] for s in scores if np.isfinite(s[name])]
        if values:
          yield name, float(np.mean(values))
    if self.object_check:
      yield from object_check.summarize([c.video for c in clips],
                                        [c.prompt for c in clips]).items()
