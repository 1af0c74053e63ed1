"""Starting JAX for a run: multi-host initialisation and the compilation cache.

Both entry points (train, evaluate) call `initialize` first thing: on a
multi-host slice `jax.distributed.initialize()` must run before anything starts
the backend (after that it raises).
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import logging


def is_multihost_env() -> bool:
  """True on a multi-host TPU slice or when a coordinator is given explicitly.

  The launch/ scripts set VIDEOJAM_DISTRIBUTED=1 on every host: a TPU VM's
  environment does not say that it is one of several (JAX finds its peers
  through the TPU metadata once asked to).
  """
  return bool(os.environ.get("VIDEOJAM_DISTRIBUTED") == "1" or
              os.environ.get("JAX_COORDINATOR_ADDRESS") or
              int(os.environ.get("TPU_WORKER_COUNT", "1") or 1) > 1 or
              os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(config: ml_collections.ConfigDict) -> None:
  """jax.distributed on multi-host jobs, then config.compilation_cache_dir ("" = off)."""
  # Not jax.process_count() here: it starts the backend, after which
  # jax.distributed.initialize() raises.
  if is_multihost_env() and not jax.distributed.is_initialized():
    jax.distributed.initialize()
  cache = config.get("compilation_cache_dir", "")
  if cache:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache))
  logging.info("JAX %s, %d devices (%s), process %d of %d", jax.__version__, jax.device_count(),
               jax.default_backend(), jax.process_index(), jax.process_count())
