"""Orbax checkpoints: the train state and the Grain iterator state, saved together.

Saving is asynchronous (training continues while the previous step is
written). Every process takes part in saving; each writes its own shard of the
state and its own data-iterator position.

A run never strands on a bad checkpoint: `restore_latest` tries the newest
finished step and, if it cannot be read, moves it (never deletes it) to
`<workdir>/checkpoints_corrupt/<step>-<time>` and tries the next newest. An
unfinished save (a run killed mid-write leaves `<step>.orbax-checkpoint-tmp*`)
is never a step to Orbax, and the manager removes such folders when it starts.

`load_params` restores the weights of another run straight into the caller's
shardings, reading only the `params` or `ema_params` subtree: no host ever holds
a whole copy of the model.

Checkpoint folders may be local or on GCS (`gs://...`): paths go through
etils.epath, which Orbax uses too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils

from videojam_jax.model import lora as lora_lib

STATE = "state"
DATA_ITERATOR = "data_iterator"
CHECKPOINTS_DIR = "checkpoints"
# In the name of a step folder that Orbax is still writing (or never finished).
UNFINISHED_MARK = ".orbax-checkpoint-tmp"
# Beside the checkpoints folder, so Orbax (which lists `checkpoints/`) never sees it.
CORRUPT_DIR = "checkpoints_corrupt"
# `which` (config.train.init_from_weights, evaluation weights) -> the state field.
WEIGHTS_FIELDS = {"ema": "ema_params", "params": "params"}
# A LoRA run's frozen base (state.LoraTrainState): part of both its params and EMA weights.
FROZEN_FIELD = "frozen"
# Status codes (tensorstore / absl) that say the storage was unreachable or
# refused, not that the checkpoint is damaged: such a restore error is raised,
# never a reason to set a checkpoint aside.
TRANSIENT_ERROR_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
                         "PERMISSION_DENIED", "UNAUTHENTICATED", "CANCELLED", "ABORTED")
TRANSIENT_ERROR_TYPES = (MemoryError, TimeoutError, ConnectionError)
# What one process found when it tried a step (agreed on across processes).
_RESTORED, _DAMAGED, _STORAGE_ERROR = 0, 1, 2
# How long a failed restore may take to wind down the reads it had started.
DRAIN_TIMEOUT_S = 120.0
# Tree differences listed in an error message (the count of the rest follows).
MAX_LISTED_DIFFERENCES = 8
# Tensorstore errors carry their whole JSON spec; a log line keeps the start.
ERROR_LINE_CHARS = 400


class CheckpointNotFoundError(FileNotFoundError):
  """The path is not a training run, or its checkpoints folder holds no finished checkpoint."""


class CheckpointMismatchError(ValueError):
  """A checkpoint's tree (keys or shapes) is not the tree the caller expects."""


def _absolute(path: str | os.PathLike[str]) -> epath.Path:
  """`path` as an absolute epath.Path (Orbax needs absolute paths; URIs already are)."""
  text = os.fspath(path)
  if "://" in text:
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def checkpoint_dir(workdir: str | os.PathLike[str]) -> str:
  """The checkpoints folder of a training workdir (local or gs://)."""
  return os.fspath(_absolute(workdir) / CHECKPOINTS_DIR)


def corrupt_dir(workdir: str | os.PathLike[str]) -> str:
  """Where `restore_latest` moves checkpoints that cannot be restored."""
  return os.fspath(_absolute(workdir) / CORRUPT_DIR)


def create_manager(workdir: str, train_config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """A CheckpointManager for `workdir/checkpoints` saving state + data iterator."""
  # When to save is decided by the train loop (interval, end, preemption, signal);
  # the manager only writes, asynchronously, and prunes old steps.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=train_config.max_checkpoints_to_keep,
      enable_async_checkpointing=True,
      # A run killed mid-save leaves `<step>.orbax-checkpoint-tmp*`; Orbax never
      # lists it as a step, and this removes it when the run restarts.
      cleanup_tmp_directories=True,
      create=True)
  # Handlers are named, not inferred at the first save: item_metadata then works
  # in a fresh process too.
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options,
      item_handlers={STATE: ocp.StandardCheckpointHandler(),
                     DATA_ITERATOR: grain.checkpoint.CheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any) -> None:
  """Starts an asynchronous save of the state and data position at `step`."""
  manager.save(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(state),
      DATA_ITERATOR: grain.checkpoint.CheckpointSave(data_iterator)}), force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iterator: Any) -> Any:
  """Restores the state (into `abstract_state`'s shardings) and the iterator in place.

  Each process reads its own part; there is no barrier across processes (see
  _restore_step), so a process whose read fails does not leave the others
  waiting in one. restore_latest makes the processes agree on the outcome.
  """
  return _restore_step(_step_dir(manager, step), abstract_state, data_iterator)


def _step_dir(manager: ocp.CheckpointManager, step: int) -> epath.Path:
  # create_manager keeps Orbax's default step names: the step number itself.
  return manager.directory / str(step)


def _restore_step(step_dir: epath.Path, abstract_state: Any, data_iterator: Any) -> Any:
  """The state and data position at `step_dir`, read through the item handlers.

  Not through CheckpointManager.restore: that ends in a barrier across all
  processes, which a process whose read raised never reaches; the processes'
  next collectives would then pair up wrongly (a mismatch, or a hang).
  """
  with _reads_drained_on_failure(), contextlib.closing(ocp.StandardCheckpointHandler()) as handler:
    state = handler.restore(step_dir / STATE, args=ocp.args.StandardRestore(abstract_state))
  with contextlib.closing(grain.checkpoint.CheckpointHandler()) as handler:
    handler.restore(step_dir / DATA_ITERATOR, args=grain.checkpoint.CheckpointRestore(data_iterator))
  return state


def _read_state_tree(step_dir: epath.Path) -> Any:
  """The train state's tree of ArrayMetadata (shape, dtype) in `step_dir`, from its metadata.

  Reads every array's metadata, so it fails on damaged data files too. Through
  the handler, like _restore_step: no cross-process barrier.
  """
  with _reads_drained_on_failure(), contextlib.closing(ocp.StandardCheckpointHandler()) as handler:
    metadata = handler.metadata(step_dir / STATE)
  if metadata is None:
    raise ValueError(f"{step_dir} has no readable {STATE!r} metadata")
  return metadata.tree if hasattr(metadata, "tree") else metadata


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   data_iterator: Any) -> tuple[Any | None, int | None]:
  """(state, step) of the newest checkpoint that restores; (None, None) if there is none.

  A checkpoint that cannot be read (truncated or missing files, unreadable
  metadata) is logged with its path and the first line of the error, moved to
  `<workdir>/checkpoints_corrupt/<step>-<UTC time>` (kept, never deleted), and
  the next newest is tried. `manager` is reloaded, so it lists only the steps
  left. Raises CheckpointMismatchError, touching nothing, when a readable
  checkpoint's tree does not fit `abstract_state` (a config change is not
  corruption), and re-raises storage errors that are not about the data
  (unavailable, permission denied, out of memory). With several processes,
  a step is used only if it restored on all of them, and process 0 alone
  moves folders.
  """
  set_aside = 0
  while (step := manager.latest_step()) is not None:
    path = _step_dir(manager, step)
    state, error = None, None
    try:
      saved = _read_state_tree(path)
    except Exception as e:  # pylint: disable=broad-exception-caught
      error = e
    else:
      # Every process reads the same metadata, so all raise here or none does.
      problems = tree_differences(abstract_state, saved)
      if problems:
        raise CheckpointMismatchError(
            f"checkpoint {path} (step {step}) does not fit this run's train state "
            f"(was the model config changed?): {_listed(problems)}"
            + (LINEN_CHECKPOINT_HINT if _written_by_linen(saved) else ""))
      try:
        state = _restore_step(path, abstract_state, data_iterator)
      except Exception as e:  # pylint: disable=broad-exception-caught
        error = e
    outcome = _worst_on_any_process(_outcome(error))
    if outcome == _STORAGE_ERROR:
      # Raised on every process (none may wait alone in a collective), and
      # nothing is set aside: the checkpoint may be fine.
      if error is not None and _outcome(error) == _STORAGE_ERROR:
        raise error
      raise RuntimeError(f"reading checkpoint {path} (step {step}) hit a storage error on another "
                         "process (see its log); nothing was set aside")
    if outcome == _RESTORED:
      logging.info("restored checkpoint %s (step %d)", path, step)
      return state, step
    reason = _one_line(error) if error is not None else "it failed to restore on another process"
    destination = _set_aside(manager, step)
    set_aside += 1
    logging.error("checkpoint at step %d (%s) cannot be restored: %s -- moved it to %s "
                  "(kept, not deleted) and trying the next newest", step, path, reason,
                  destination)
  if set_aside:
    logging.warning("no checkpoint in %s could be restored (%d moved to %s): starting from "
                    "scratch", manager.directory, set_aside, manager.directory.parent / CORRUPT_DIR)
  return None, None


def _set_aside(manager: ocp.CheckpointManager, step: int) -> epath.Path:
  """Moves step `step` out of the manager's folder (process 0) and reloads the manager."""
  manager.wait_until_finished()
  source = _step_dir(manager, step)
  destination = manager.directory.parent / CORRUPT_DIR / f"{step}-{_shared_utc_stamp()}"
  if jax.process_index() == 0:
    destination.parent.mkdir(parents=True, exist_ok=True)
    source.rename(destination)
  if jax.process_count() > 1:
    # No process lists the steps again before process 0 has moved the folder.
    multihost_utils.sync_global_devices(f"videojam_checkpoint_set_aside_{step}")
  manager.reload()
  if manager.latest_step() == step:
    raise RuntimeError(f"moved {source} to {destination}, but the checkpoint manager still "
                       f"lists step {step}")
  return destination


def _shared_utc_stamp() -> str:
  """The UTC time on process 0, e.g. 20260101T120000.123456Z, the same string on every process."""
  now = datetime.datetime.now(datetime.timezone.utc)
  if jax.process_count() > 1:
    # Two int32s: without jax_enable_x64 a broadcast int64 would be cut to 32 bits.
    seconds, micros = multihost_utils.broadcast_one_to_all(
        np.asarray([int(now.timestamp()), now.microsecond], np.int32))
    now = datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc).replace(
        microsecond=int(micros))
  return now.strftime("%Y%m%dT%H%M%S.%fZ")


def _outcome(error: BaseException | None) -> int:
  if error is None:
    return _RESTORED
  if isinstance(error, TRANSIENT_ERROR_TYPES) or str(error).startswith(TRANSIENT_ERROR_CODES):
    return _STORAGE_ERROR
  return _DAMAGED


def _worst_on_any_process(outcome: int) -> int:
  """The largest outcome over all processes: they must agree on the step they resume from."""
  if jax.process_count() == 1:
    return outcome
  return int(np.max(multihost_utils.process_allgather(np.asarray(outcome, np.int32))))


def _one_line(error: BaseException) -> str:
  """`Type: first line` of an error, without tensorstore's JSON spec."""
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else ""
  text = text.split(" [tensorstore_spec=")[0]
  if len(text) > ERROR_LINE_CHARS:
    text = text[:ERROR_LINE_CHARS] + "..."
  return f"{type(error).__name__}: {text}"


class _DrainBeforeClosePolicy(asyncio.DefaultEventLoopPolicy):
  """Event loops that finish their pending tasks before they close.

  Orbax runs a restore in a fresh event loop and gathers one read per array;
  when one read fails, the gather raises at once and Orbax closes the loop with
  the other reads still in flight. Tensorstore then completes them on a closed
  loop and prints an `Event loop is closed` traceback for each. Letting the
  pending reads finish (their errors collected) before the loop closes leaves
  no work behind and no noise. (asyncio's policy API is what picks the loop
  class that `asyncio.new_event_loop()` returns; Python 3.14 deprecates it, and
  this then needs Orbax to stop closing loops with work pending.)
  """

  def new_event_loop(self) -> asyncio.AbstractEventLoop:
    loop = super().new_event_loop()
    close = loop.close

    def drain_then_close() -> None:
      pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
      if pending and not loop.is_running() and not loop.is_closed():
        try:
          loop.run_until_complete(asyncio.wait_for(
              asyncio.gather(*pending, return_exceptions=True), DRAIN_TIMEOUT_S))
        except (asyncio.TimeoutError, asyncio.CancelledError):
          logging.warning("%d checkpoint reads were still pending after %.0f s; closing anyway",
                          len(pending), DRAIN_TIMEOUT_S)
      close()

    loop.close = drain_then_close
    return loop


@contextlib.contextmanager
def _reads_drained_on_failure() -> Iterator[None]:
  """Within: event loops (Orbax's restores) finish pending reads before closing."""
  previous = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_DrainBeforeClosePolicy())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(previous)


# --- Trees: comparing what a checkpoint holds with what the caller expects.

def _key_name(key: Any) -> str:
  for attribute in ("key", "name", "idx"):   # DictKey, GetAttrKey, SequenceKey / FlattenedIndexKey
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """'a/b/c' -> shape for every leaf; dataclass fields and dict keys read alike."""
  # Orbax's ArrayMetadata and ShapeDtypeStructs have .shape; np.shape reads Python scalars.
  return {"/".join(_key_name(k) for k in path):
              tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def tree_differences(expected: Any, saved: Any, *, allow_unused: bool = False) -> list[str]:
  """What differs between an expected tree (arrays or ShapeDtypeStructs) and a saved one.

  Entries are 'missing from the checkpoint: k', 'not expected: k' (unless
  `allow_unused`: the caller wants a subset of the checkpoint) and
  'k: checkpoint shape (..) but expected (..)'. Empty if the trees fit.
  """
  want, have = _flat_shapes(expected), _flat_shapes(saved)
  problems = [f"missing from the checkpoint: {k} {want[k]}" for k in sorted(want.keys() - have.keys())]
  if not allow_unused:
    problems += [f"not expected: {k} {have[k]}" for k in sorted(have.keys() - want.keys())]
  problems += [f"{k}: checkpoint shape {have[k]} but expected {want[k]}"
               for k in sorted(want.keys() & have.keys()) if have[k] != want[k]]
  return problems


# Linen wrapped every LayerNorm in a submodule of this name; the Flax NNX model
# (videojam_jax/model) never does, so the name marks a checkpoint of the old model.
_LINEN_MARK = "LayerNorm_0"


def _written_by_linen(saved: Any) -> bool:
  """Whether a saved tree comes from the Linen DiT (before the Flax NNX rewrite)."""
  return any(_LINEN_MARK in jax.tree_util.keystr(path)
             for path, _ in jax.tree_util.tree_flatten_with_path(saved)[0])


LINEN_CHECKPOINT_HINT = (
    " This checkpoint was written by the Linen DiT of videojam_jax before its Flax NNX "
    "rewrite; such checkpoints are not converted: train again in a new workdir (the "
    "quickstart takes minutes).")


def _listed(problems: list[str]) -> str:
  shown = "; ".join(problems[:MAX_LISTED_DIFFERENCES])
  rest = len(problems) - MAX_LISTED_DIFFERENCES
  return f"differences ({len(problems)}): {shown}" + (f"; and {rest} more" if rest > 0 else "")


# --- Weights of another run (init_from, evaluation).

def _weights_field(which: str) -> str:
  if which not in WEIGHTS_FIELDS:
    raise ValueError(f"the weights to load (train.init_from_weights) must be 'ema' or "
                     f"'params', got {which!r}")
  return WEIGHTS_FIELDS[which]


def _run_checkpoints(path: str | os.PathLike[str]) -> epath.Path:
  """The checkpoints folder of `path` (a run's workdir or that folder itself)."""
  root = _absolute(path)
  directory = root if root.name == CHECKPOINTS_DIR else root / CHECKPOINTS_DIR
  if not directory.is_dir():
    what = "does not exist" if not root.exists() else "is not a training run"
    raise CheckpointNotFoundError(f"{os.fspath(path)!r} {what}: no checkpoints folder at {directory}")
  return directory


def _finished_step(manager: ocp.CheckpointManager, step: int | None) -> int:
  """`step` if it is a finished checkpoint (default: the latest), else a clear error."""
  steps = manager.all_steps()
  if not steps:
    unfinished = sorted(p.name for p in manager.directory.iterdir()
                        if UNFINISHED_MARK in p.name)
    hint = f" (unfinished saves only: {unfinished})" if unfinished else ""
    raise CheckpointNotFoundError(f"{manager.directory} holds no finished checkpoint{hint}")
  if step is None:
    return int(max(steps))
  if step not in steps:
    raise CheckpointNotFoundError(f"{manager.directory} has no finished checkpoint at step "
                                  f"{step} (steps: {sorted(steps)})")
  return int(step)


def _read_only_manager(directory: epath.Path) -> ocp.CheckpointManager:
  # Read-only: another run's folder is never written or cleaned from here (it
  # may still be training). Handlers are named so that a restore of the state
  # alone knows both items. (save_interval_steps and create are what read_only
  # implies; set here, Orbax need not warn about them.)
  options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
  return ocp.CheckpointManager(directory, options=options,
                               item_handlers={STATE: ocp.PyTreeCheckpointHandler(),
                                              DATA_ITERATOR: grain.checkpoint.CheckpointHandler()})


def _saved_weights(manager: ocp.CheckpointManager, step: int, field: str, path: Any) -> Any:
  try:
    saved = _read_state_tree(_step_dir(manager, step))
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise CheckpointNotFoundError(f"{os.fspath(path)!r}: cannot read the metadata of "
                                  f"{_step_dir(manager, step)}: {_one_line(e)}") from e
  if not isinstance(saved, dict) or field not in saved:
    keys = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
    raise CheckpointMismatchError(f"{os.fspath(path)!r}: checkpoint {_step_dir(manager, step)} "
                                  f"has no {field!r} (top-level entries: {keys})")
  if saved.get(FROZEN_FIELD) is not None:      # LoRA: the weights are trained + frozen parts
    return lora_lib.merge(saved[field], saved[FROZEN_FIELD]), saved[FROZEN_FIELD]
  return saved[field], None


def _restore_item(field: str, abstract_params: Any, saved_frozen: Any) -> dict[str, Any]:
  """What to restore for `abstract_params`: the field alone, or (LoRA) the expected
  leaves split between the field and the frozen base as the checkpoint holds them."""
  if saved_frozen is None:
    return {field: abstract_params}
  frozen_keys = set(traverse_util.flatten_dict(saved_frozen))
  flat = traverse_util.flatten_dict(abstract_params)
  part = lambda frozen: traverse_util.unflatten_dict(
      {k: v for k, v in flat.items() if (k in frozen_keys) == frozen})
  return {field: part(False), FROZEN_FIELD: part(True)}


def _restored_weights(restored: dict[str, Any], field: str) -> Any:
  if FROZEN_FIELD in restored:
    return lora_lib.merge(restored[field], restored[FROZEN_FIELD])
  return restored[field]


def latest_finished_step(path: str | os.PathLike[str]) -> int:
  """The step of the newest finished checkpoint of a run (its workdir or checkpoints/ folder).

  Raises CheckpointNotFoundError if `path` is not a run or holds no finished checkpoint.
  """
  with _read_only_manager(_run_checkpoints(path)) as manager:
    return _finished_step(manager, None)


def params_metadata(path: str | os.PathLike[str], which: str = "ema", *,
                    step: int | None = None) -> Any:
  """Shapes and dtypes (jax.ShapeDtypeStruct, no sharding) of a run's saved weights.

  Reads only metadata. Lets a caller decide what to load before loading it, e.g.
  whether a checkpoint is a base model or a VideoJAM one (retrofit.is_jam).
  """
  field = _weights_field(which)
  with _read_only_manager(_run_checkpoints(path)) as manager:
    step = _finished_step(manager, step)
    saved, _ = _saved_weights(manager, step, field, path)
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), saved)


def load_params(path: str | os.PathLike[str], which: str, abstract_params: Any, *,
                step: int | None = None, allow_unused: bool = False) -> Any:
  """Restores a run's `params` or `ema_params` straight into `abstract_params`' shardings.

  Args:
    path: the run's workdir or its checkpoints/ folder (local or gs://).
    which: 'ema' (ema_params) or 'params'.
    abstract_params: the tree expected from the checkpoint, with a
      jax.ShapeDtypeStruct carrying a `.sharding` at every leaf. Each process
      reads only its own shards of those leaves; nothing else of the
      checkpoint (other weights, optimiser state) is read.
    step: the checkpoint step to load (default: the latest finished one).
    allow_unused: accept a checkpoint holding parameters that
      `abstract_params` lacks (they are not read). Missing ones and wrong
      shapes are always an error.

  Returns:
    `abstract_params`' tree of jax.Arrays. Raises CheckpointNotFoundError (not a
    run, no finished checkpoint) or CheckpointMismatchError (listing the
    differing keys and shapes).
  """
  field = _weights_field(which)
  unsharded = [jax.tree_util.keystr(p) for p, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]
               if getattr(leaf, "sharding", None) is None]
  if unsharded:
    raise ValueError(f"load_params needs a jax.ShapeDtypeStruct with a sharding at every leaf of "
                     f"abstract_params; these have none: {unsharded[:MAX_LISTED_DIFFERENCES]}")
  with _read_only_manager(_run_checkpoints(path)) as manager:
    step = _finished_step(manager, step)
    saved, saved_frozen = _saved_weights(manager, step, field, path)
    problems = tree_differences(abstract_params, saved, allow_unused=allow_unused)
    if problems:
      only_unused = all(p.startswith("not expected") for p in problems)
      hint = " (to load only the expected ones, pass allow_unused=True)" if only_unused else ""
      raise CheckpointMismatchError(
          f"{os.fspath(path)!r}: the {field} of checkpoint {_step_dir(manager, step)} do not "
          f"match the expected parameters{hint}: {_listed(problems)}"
          + (LINEN_CHECKPOINT_HINT if _written_by_linen(saved) else ""))
    # Partial restore: Orbax reads only the leaves named in `item`, each as a
    # jax.Array laid out by its sharding (every process reads its own shards).
    item = _restore_item(field, abstract_params, saved_frozen)
    args = ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)
    with _reads_drained_on_failure():
      restored = manager.restore(step, args=ocp.args.Composite(**{STATE: args}))
  return _restored_weights(restored[STATE], field)


def load_weights(path: str, which: str = "ema") -> dict[str, Any]:
  """Parameters (`ema` or `params`) from the latest checkpoint of another run, on host.

  `path` is that run's workdir or its checkpoints/ folder. Returns a nested dict
  of numpy arrays: the whole tree on this host, for tests and small models
  (load_params restores sharded, without a host copy).
  """
  field = _weights_field(which)
  with _read_only_manager(_run_checkpoints(path)) as manager:
    step = _finished_step(manager, None)
    saved, saved_frozen = _saved_weights(manager, step, field, path)
    # Restore on host as numpy: the source run may have used another mesh.
    item = _restore_item(field, saved, saved_frozen)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    with _reads_drained_on_failure():
      restored = manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args, partial_restore=True)}))
  return _restored_weights(restored[STATE], field)
