r"""Trains a VideoJAM (or baseline) video DiT.

  python -m videojam_jax.train --config configs/quickstart.py --workdir workdirs/quickstart \
      [--config.train.num_steps=1000 ...]

Running again with the same workdir resumes from its latest checkpoint.
"""

import re
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from videojam_jax.parallel import runtime
from videojam_jax.training import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  runtime.initialize(config)
  loop.train_and_evaluate(config, _WORKDIR.value)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, plus a clear error for a --config.<path> that names no field.

  ml_collections reports such an override with a bare AttributeError/KeyError
  traceback ("'nonexistent'"), not as a flags error; say which override is wrong.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    detail = e
    while isinstance(detail, BaseException) and detail.args:
      detail = detail.args[0]
    detail = str(detail)
    key = re.match(r"'([^']*)'", detail)
    overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    named = [o for o in overrides if key and key.group(1) in o[len("--config."):].split(".")]
    if not named:
      raise
    hint = " " + detail.split("\n", 1)[1] if "\n" in detail else ""
    sys.stderr.write(f"FATAL Flags parsing error: {', '.join(named)}: the config has no field "
                     f"{key.group(1)!r}; overrides can only set fields that the config file "
                     f"defines.{hint}\n")
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
