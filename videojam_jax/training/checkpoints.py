"""Orbax checkpoints: the train state and the Grain iterator state, saved together.

Saving is asynchronous (training continues while the previous step is
written). Every process takes part in saving; each writes its own shard of the
state and its own data-iterator position.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import numpy as np
import jax
import ml_collections
import orbax.checkpoint as ocp

STATE = "state"
DATA_ITERATOR = "data_iterator"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def create_manager(workdir: str, train_config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """A CheckpointManager for `workdir/checkpoints` saving state + data iterator."""
  # When to save is decided by the train loop (interval, end, preemption, signal);
  # the manager only writes, asynchronously, and prunes old steps.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=train_config.max_checkpoints_to_keep,
      enable_async_checkpointing=True,
      create=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=(STATE, DATA_ITERATOR))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any) -> None:
  """Starts an asynchronous save of the state and data position at `step`."""
  manager.save(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(state),
      DATA_ITERATOR: grain.checkpoint.CheckpointSave(data_iterator)}), force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iterator: Any) -> Any:
  """Restores the state (into `abstract_state`'s shardings) and the iterator in place."""
  restored = manager.restore(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardRestore(abstract_state),
      DATA_ITERATOR: grain.checkpoint.CheckpointRestore(data_iterator)}))
  return restored[STATE]


def load_weights(path: str, which: str = "ema") -> dict[str, Any]:
  """Parameters (`ema` or `params`) from the latest checkpoint of another run, on host.

  `path` is that run's workdir or its checkpoints/ folder. Returns a nested dict
  of numpy arrays; the caller places them on its own mesh.
  """
  if which not in ("ema", "params"):
    raise ValueError(f"train.init_from_weights must be 'ema' or 'params', got {which!r}")
  directory = path if os.path.basename(os.path.normpath(path)) == "checkpoints" else checkpoint_dir(path)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"init_from={path!r}: no checkpoints folder at {directory}")
  # The state's handler is named so that item_metadata returns its tree (it is
  # None for an unnamed handler, and then Orbax restores onto the devices the
  # checkpoint was written from, which fails for another run's topology).
  with ocp.CheckpointManager(directory, item_handlers={STATE: ocp.PyTreeCheckpointHandler()}) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"init_from={path!r}: {directory} holds no checkpoint")
    metadata = manager.item_metadata(step)[STATE]
    # Restore on host as numpy: the source run may have used another mesh.
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                metadata.tree if hasattr(metadata, "tree") else metadata)
    state = manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.PyTreeRestore(restore_args=restore_args)}))[STATE]
  key = "ema_params" if which == "ema" else "params"
  if key not in state:
    raise ValueError(f"init_from={path!r}: checkpoint has no {key!r} (keys: {list(state)})")
  return state[key]
