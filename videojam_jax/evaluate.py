r"""Offline evaluation and sampler sweeps of trained models.

  python -m videojam_jax.evaluate --config configs/eval_quickstart.py --workdir DIR \
      [--config.models.baseline=workdirs/base --config.sweep.motion_scale='(1.0,3.0)' ...]

Writes clips, metrics.csv/json, plots and index.html into DIR (see
videojam_jax/evaluation/runner.py). Running again with the same DIR skips the
(model, setting) pairs that are already finished.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from videojam_jax.evaluation import runner
from videojam_jax.parallel import runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "Evaluation config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where clips, tables, plots and the page go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  runtime.initialize(config)
  summary = runner.run(config, _WORKDIR.value)
  print(f"{len(summary.generated)} setting(s) sampled, {len(summary.reused)} reused, "
        f"{len(summary.skipped)} skipped; open {summary.page}")


if __name__ == "__main__":
  app.run(main)
