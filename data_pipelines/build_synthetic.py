"""Builds the synthetic physics clip dataset that a config trains on.

  python -m data_pipelines.build_synthetic --config configs/quickstart.py \
      [--config.data.synthetic.num_train_clips=64 ...]

Sizes come from config.data (num_frames, height, width, flow_sigma) and
config.data.synthetic (num_train_clips, num_eval_clips, seed, max_objects, fps).
The data goes into config.data.dataset_dir, used as a TFDS data_dir:

  <dataset_dir>/synthetic_physics/<config name>/1.0.0/

Rerunning with the dataset already there does nothing (and says so).
"""

from __future__ import annotations

import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import ml_collections

from data_pipelines import synthetic_dataset
from data_pipelines import tfds_prepare

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (e.g. configs/quickstart.py).")
flags.mark_flags_as_required(["config"])


def builder_for(config: ml_collections.ConfigDict) -> synthetic_dataset.SyntheticPhysics:
  """The TFDS builder for the synthetic dataset that `config` describes."""
  data, synthetic = config.data, config.data.synthetic
  builder_config = synthetic_dataset.make_builder_config(
      num_train_clips=synthetic.num_train_clips, num_eval_clips=synthetic.num_eval_clips,
      num_frames=data.num_frames, height=data.height, width=data.width,
      seed=synthetic.seed, max_objects=synthetic.max_objects, fps=synthetic.fps,
      flow_sigma=data.flow_sigma, background_kinds=tuple(synthetic.background_kinds))
  return synthetic_dataset.SyntheticPhysics(
      config=builder_config, data_dir=os.fspath(data.dataset_dir),
      file_format=synthetic_dataset.FILE_FORMAT)


def build(config: ml_collections.ConfigDict) -> str:
  """Builds the dataset unless it already exists; returns its version directory."""
  builder = builder_for(config)
  path = os.fspath(builder.data_dir)
  if builder.is_prepared():
    print(f"Already built, nothing to do: {path}")
    return path
  start = time.time()
  tfds_prepare.prepare(builder)
  splits = builder.info.splits
  counts = ", ".join(f"{name}: {splits[name].num_examples}" for name in splits)
  print(f"Wrote {path} ({counts} clips of {config.data.num_frames}x"
        f"{config.data.height}x{config.data.width}) in {time.time() - start:.1f}s")
  return path


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  build(_CONFIG.value)


if __name__ == "__main__":
  app.run(main)
