"""Generating and writing sample clips (video | motion side by side) during training."""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from videojam_jax.data import motion_encoding
from videojam_jax.model import text_encoder
from videojam_jax.data import video_io


def to_uint8(frames: np.ndarray) -> np.ndarray:
  """[-1, 1] model-space frames -> uint8."""
  return motion_encoding.to_uint8((np.asarray(frames, np.float32) + 1.0) / 2.0)


PROMPT_LENGTH_MULTIPLE = 16   # trimmed prompt lengths are rounded up to this (fewer compiles)


def prompt_batch(config: ml_collections.ConfigDict, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and mask [B, L] for sampling, L trimmed to the longest caption.

  Padding is masked out of every attention, so dropping padding columns changes
  nothing but cost: cross-attention scales with L at every sampler step. L is
  rounded up to a multiple of PROMPT_LENGTH_MULTIPLE, at most text.max_length.
  """
  if config.model.text.source != "builtin":
    raise ValueError("sampling from captions needs the builtin text encoder")
  max_length = config.model.text.max_length
  ids, mask = text_encoder.tokenize(captions, max_length)
  longest = int(mask.sum(axis=1).max())
  length = min(max_length, -(-longest // PROMPT_LENGTH_MULTIPLE) * PROMPT_LENGTH_MULTIPLE)
  return ids[:, :length], mask[:, :length]


def write_samples(out_dir: str, videos: np.ndarray, motions: np.ndarray | None,
                  captions: list[str], fps: float, sigma: float) -> list[str]:
  """Writes one MP4 per sample: the video beside its decoded motion (colour wheel)."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for i, caption in enumerate(captions):
    video = to_uint8(videos[i])
    panel = video if motions is None else video_io.side_by_side(video, to_uint8(motions[i]), sigma)
    path = os.path.join(out_dir, f"sample_{i:02d}.mp4")
    video_io.write_video(path, panel, fps)
    paths.append(path)
  with open(os.path.join(out_dir, "captions.txt"), "w") as f:
    f.write("\n".join(f"sample_{i:02d}.mp4\t{c}" for i, c in enumerate(captions)) + "\n")
  return paths


def generate(sample_fn, params: Any, config: ml_collections.ConfigDict, captions: list[str],
             seed: int) -> tuple[np.ndarray, np.ndarray | None]:
  ids, mask = prompt_batch(config, captions)
  video, motion = sample_fn(params, ids, mask, jax.random.key(seed))
  # The clips are sharded over the batch axes, which span all processes on a
  # multi-host slice: gather them (device_get only reaches this host's shards).
  gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return gather(video), None if motion is None else gather(motion)
