r"""Offline evaluation and sampler sweeps of trained models.

  python -m videojam_jax.evaluate --config configs/eval_quickstart.py --workdir DIR \
      [--config.models.baseline=workdirs/base --config.sweep.motion_scale='(1.0,3.0)' ...]

Writes clips, metrics.csv/json, plots and index.html into DIR (see
videojam_jax/evaluation/runner.py). Running again with the same DIR skips the
(model, setting) pairs that are already finished.
"""

import os

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from videojam_jax.evaluation import runner as evaluation

_CONFIG = config_flags.DEFINE_config_file("config", None, "Evaluation config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where clips, tables, plots and the page go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config.get("compilation_cache_dir"):
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compilation_cache_dir))
  logging.info("JAX %s, %d devices (%s)", jax.__version__, jax.device_count(), jax.default_backend())
  summary = evaluation.run(config, _WORKDIR.value)
  print(f"{len(summary.generated)} setting(s) sampled, {len(summary.reused)} reused, "
        f"{len(summary.skipped)} skipped; open {summary.page}")


if __name__ == "__main__":
  app.run(main)
