r"""Trains a VideoJAM (or baseline) video DiT.

  python -m videojam_jax.train --config configs/quickstart.py --workdir workdirs/quickstart \
      [--config.train.num_steps=1000 ...]

Running again with the same workdir resumes from its latest checkpoint.
"""

import os
import re
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from videojam_jax.training import loop as trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Not jax.process_count() here: it starts the backend, after which
  # jax.distributed.initialize() raises.
  if _is_multihost_env() and not jax.distributed.is_initialized():
    jax.distributed.initialize()
  config = _CONFIG.value
  if config.get("compilation_cache_dir"):
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compilation_cache_dir))
  logging.info("JAX %s, %d devices (%s)", jax.__version__, jax.device_count(), jax.default_backend())
  trainer.train_and_evaluate(config, _WORKDIR.value)


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


def _is_multihost_env() -> bool:
  """True on a multi-host TPU slice or when a coordinator is given explicitly.

  The launch/ scripts set VIDEOJAM_DISTRIBUTED=1 on every host: a TPU VM's
  environment does not say that it is one of several (JAX finds its peers
  through the TPU metadata once asked to).
  """
  return bool(os.environ.get("VIDEOJAM_DISTRIBUTED") == "1" or
              os.environ.get("JAX_COORDINATOR_ADDRESS") or
              int(os.environ.get("TPU_WORKER_COUNT", "1") or 1) > 1 or
              os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
