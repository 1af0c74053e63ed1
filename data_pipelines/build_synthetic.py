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

from absl import app
from absl import flags
from ml_collections import config_flags

from data_pipelines import synthetic_dataset

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (e.g. configs/quickstart.py).")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  synthetic_dataset.build(_CONFIG.value)


if __name__ == "__main__":
  app.run(main)
