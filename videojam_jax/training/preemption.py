"""Stop requests (SIGTERM, Ctrl-C, preemption notices) that every process agrees on.

A multi-host job must stop after the *same* step on every process: the train
step is a collective, so a process that stops alone leaves its peers waiting in
the next step for ever. A preemption or maintenance notice (SIGTERM), or a
Ctrl-C, need not reach every host, let alone at the same step.

With the JAX distributed runtime (`jax.distributed.initialize`) the agreement
is JAX's own preemption sync protocol: `jax.distributed.initialize` installs a
native SIGTERM handler whose listener thread posts a notice to the coordination
service; every process then reports the last step it completed, and
`multihost_utils.reached_preemption_sync_point(step)` becomes True on all of
them at the same step (the largest reported plus one). Orbax's
`CheckpointManager.reached_preemption` asks the same question. What breaks it
is a Python `signal.signal(SIGTERM, ...)` installed after initialisation: it
replaces the native handler, the notice is never posted, and the process that
got the signal stops alone. So in that mode `StopRequest` leaves SIGTERM to
JAX, and turns Ctrl-C (which JAX does not listen for) into the same notice.

Without the distributed runtime (one process) there is nothing to agree on:
Python handlers for SIGTERM and SIGINT set a flag that the loop reads at the
next step boundary.

The check per step is local in both modes: no collective. The sync protocol
runs once, in a background thread, after a notice.
"""

from __future__ import annotations

import datetime
import signal
import types
from typing import Any

import jax
from absl import logging
from jax._src import distributed
from jax.experimental import multihost_utils

# Signals that ask the run to save and stop at the next step boundary.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The coordination-service key that JAX's native SIGTERM notifier writes (the
# death time, RFC 3339) and that every process's preemption sync manager
# watches: xla/tsl/distributed_runtime/preemption/preemption_sync_manager.cc,
# kPreemptionNoticeKey. Writing it is how a Ctrl-C joins the same protocol;
# there is no public API to post a notice from Python.
PREEMPTION_NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"


def sync_protocol_available() -> bool:
  """True when JAX's preemption sync manager runs (jax.distributed with the preemption service)."""
  return distributed.global_state.preemption_sync_manager is not None


def post_preemption_notice() -> bool:
  """Tells every process, through the coordination service, that this one must stop now.

  Returns False when a notice was already posted (by a signal to any process):
  the coordination service keeps the first, and the protocol it started is the
  one everybody follows.
  """
  client = distributed.global_state.client
  if client is None:
    raise RuntimeError("post_preemption_notice needs jax.distributed.initialize() first")
  death_time = datetime.datetime.now(datetime.timezone.utc).isoformat()
  try:
    client.key_value_set(PREEMPTION_NOTICE_KEY, death_time)
  except jax.errors.JaxRuntimeError as e:
    if "ALREADY_EXISTS" not in str(e):
      raise
    return False
  return True


class StopRequest:
  """Within `with StopRequest(first_step) as stop:`, `stop.should_stop(step)` says when to stop.

  `first_step` is the step training starts from (the restored one). Call
  `should_stop` at every step boundary on every process, with the number of
  steps completed; a True answer comes at the same step on all processes, and
  the caller then saves a checkpoint and stops. Modes (chosen on entry):

  - "sync": JAX's preemption sync manager is running. SIGTERM stays with JAX's
    native notifier; SIGINT posts the same notice; the answer is
    `reached_preemption_sync_point(step)`. Entering reports `first_step` to
    the protocol: it agrees on (largest step reported) + 1, and before any
    report that is step 1, which a resumed run never reaches (a notice during
    the first step's compile would then stop nobody). A notice that arrives
    before entering still has that problem: enter before slow set-up work
    where possible.
  - "local": one process without the distributed runtime. SIGTERM and SIGINT
    set a flag; the answer is that flag.
  - "off": several processes but the preemption service is disabled
    (jax_enable_preemption_service=False). A stop that one process decides
    alone would hang the others, so signals keep their default effect (the job
    fails instead of hanging) and the answer is always False.
  """

  def __init__(self, first_step: int = 0):
    if first_step < 0:
      raise ValueError(f"first_step must be >= 0, got {first_step}")
    self.first_step = first_step
    self.received: int | None = None   # the last stop signal this process got, if any
    self.mode = ""
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> StopRequest:
    if sync_protocol_available():
      self.mode = "sync"
      handled = (signal.SIGINT,)   # SIGTERM: JAX's native handler, see the module docstring
      # Never True here: every process starts from first_step, so no agreed
      # step can be first_step itself.
      multihost_utils.reached_preemption_sync_point(self.first_step)
    elif jax.process_count() == 1:
      self.mode = "local"
      handled = STOP_SIGNALS
    else:
      self.mode = "off"
      handled = ()
      logging.warning("%d processes without JAX's preemption service "
                      "(jax_enable_preemption_service=False): SIGTERM/SIGINT cannot be agreed "
                      "on and will end the job without a checkpoint", jax.process_count())
    for sig in handled:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc: object) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    self.received = signum
    name = signal.Signals(signum).name
    if self.mode == "sync":
      posted = post_preemption_notice()
      logging.warning("received %s: %s; all processes will checkpoint and stop at the same step",
                      name, "told the other processes" if posted else "a stop is already under way")
    else:
      logging.warning("received %s: will checkpoint and stop after this step", name)

  @property
  def reason(self) -> str:
    """Why the run stops, for the log: the signal this process got, or a notice to some process."""
    if self.received is not None:
      return f"{signal.Signals(self.received).name} to this process"
    # In sync mode a SIGTERM goes to JAX's native handler, unseen here.
    return "a stop request to one of the processes" if self.mode == "sync" else ""

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop now, `step` steps into training (the same answer on every process)."""
    if self.mode == "sync":
      stop = multihost_utils.reached_preemption_sync_point(step)
      if stop:
        logging.warning("process %d reached the agreed stop step %d", jax.process_index(), step)
      return stop
    return self.received is not None
