"""StopRequest in one process: signals become a flag read at the step boundary.

The multi-process agreement (JAX's preemption sync protocol, SIGTERM to one
process, Ctrl-C to another) needs several processes joined by
jax.distributed: tests/test_multiprocess.py.
"""

from __future__ import annotations

import os
import signal

import pytest

from videojam_jax.training import preemption


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_requests_a_stop_at_the_next_step(signum):
  before = {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS}
  with preemption.StopRequest() as stop:
    assert stop.mode == "local"
    assert not stop.should_stop(1)
    assert stop.reason == ""
    os.kill(os.getpid(), signum)   # handled (no exit, no KeyboardInterrupt)
    assert stop.received == signum
    assert stop.reason == f"{signal.Signals(signum).name} to this process"
    assert stop.should_stop(2)
    assert stop.should_stop(3)     # a request stays until the loop acts on it
  assert {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS} == before


def test_handlers_are_restored_when_the_loop_raises():
  before = {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS}
  with pytest.raises(ZeroDivisionError):
    with preemption.StopRequest():
      assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
      _ = 1 / 0
  assert {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS} == before


def test_several_processes_without_the_preemption_service_leave_signals_alone(monkeypatch):
  # A stop that one process took alone would hang the others: no handlers, never a stop.
  monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
  before = {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS}
  with preemption.StopRequest() as stop:
    assert stop.mode == "off"
    assert {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS} == before
    assert not stop.should_stop(1)


def test_posting_a_notice_needs_the_distributed_runtime():
  assert not preemption.sync_protocol_available()
  with pytest.raises(RuntimeError, match="jax.distributed.initialize"):
    preemption.post_preemption_notice()
