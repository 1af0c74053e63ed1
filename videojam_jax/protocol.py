r"""The paper's protocol as one command: pretrain a base, fine-tune base vs VideoJAM, compare.

  python -m videojam_jax.protocol --config configs/protocol_quickstart.py \
      --workdir workdirs/protocol_quickstart [--config.finetune.num_steps=2000 ...]

Builds the synthetic dataset if it is missing, then runs the stages of
videojam_jax/experiments/protocol.py. DIR/protocol.md is the table,
DIR/eval/index.html the clips side by side. Running again skips finished stages.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from data_pipelines import synthetic_dataset
from videojam_jax.experiments import protocol
from videojam_jax.parallel import runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "Protocol config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where every stage's runs and the table go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  runtime.initialize(config.train)
  written = protocol.run(config, _WORKDIR.value, build_data=synthetic_dataset.build,
                         command=" ".join(["python -m videojam_jax.protocol"] + sys.argv[1:]))
  print(f"wrote {written['markdown']} and {written['csv']}; open {written['page']}")


if __name__ == "__main__":
  app.run(main)
