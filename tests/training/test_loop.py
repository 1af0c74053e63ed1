"""videojam_jax/training/loop.py in-process: evaluators, run hygiene, and what survives errors."""

import logging
import os

import ml_collections
import numpy as np
import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.util import tensor_util

from videojam_jax.training import checkpoints
from videojam_jax.training import loop


def scalars(workdir):
  """{tag: {step: value}} of every scalar in the run's event files."""
  out = {}
  for name in os.listdir(workdir):
    if name.startswith("events.out.tfevents"):
      acc = plugin_event_accumulator.EventAccumulator(os.path.join(workdir, name))
      acc.Reload()
      for tag in acc.Tags()["tensors"]:
        for event in acc.Tensors(tag):
          value = tensor_util.make_ndarray(event.tensor_proto)
          if value.ndim == 0 and value.dtype.kind == "f":   # scalars, not texts or images
            out.setdefault(tag, {})[event.step] = float(value)
  return out


@pytest.fixture(scope="module")
def run(synthetic_data, make_tiny_config, tmp_path_factory):
  """4 steps with both evaluators, a profile of steps 2-3, and a samples folder that
  cannot be written (a file sits where it should be)."""
  config = make_tiny_config(synthetic_data[0])
  config.train.num_steps = 4
  config.train.checkpoint_every = 2
  config.train.log_every = 1
  config.train.profile_steps = (2, 3)
  config.evals.heldout.every_steps = 2
  config.evals.heldout.times = (0.5,)
  config.evals.samples.every_steps = 4
  config.evals.samples.dis_preset = "ultrafast"
  workdir = tmp_path_factory.mktemp("loop")
  (workdir / "samples").write_text("not a folder")
  handler = _Capture()
  logger = logging.getLogger("absl")
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    state = loop.train_and_evaluate(config, str(workdir))
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  return workdir, state, "\n".join(handler.lines)


class _Capture(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


def test_heldout_curves_and_sample_metrics_reach_tensorboard(run):
  workdir, state, _ = run
  values = scalars(workdir)
  assert sorted(values["heldout/video_loss"]) == [2, 4]
  assert sorted(values["heldout/motion_loss_t0.5"]) == [2, 4]
  assert sorted(values["samples/warping_error"]) == [4]
  assert sorted(values["train/loss"]) == [1, 2, 3, 4]
  assert int(state.step) == 4


def test_a_failure_to_write_samples_does_not_end_the_run(run):
  workdir, _, log = run
  assert "could not write samples" in log
  assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["2", "4"]


def test_parameter_overview_and_profile(run):
  workdir, _, log = run
  assert "model parameters" in log and "blocks/self_attn/query/kernel" in log
  traces = [f for root, _, files in os.walk(workdir / "profile") for f in files
            if f.endswith(".xplane.pb")]
  assert traces, "no profiler trace written"
  assert "profiling steps 2-3" in log


def test_an_evaluator_error_after_a_save_keeps_that_checkpoint(synthetic_data, make_tiny_config,
                                                               tmp_path):
  config = make_tiny_config(synthetic_data[0])
  config.train.num_steps = 4
  config.train.checkpoint_every = 2
  config.evals.boom = ml_collections.ConfigDict(dict(
      type="tests.training.failing_evaluator", every_steps=2, fail_at_step=2))
  with pytest.raises(RuntimeError, match="failed on purpose at step 2"):
    loop.train_and_evaluate(config, str(tmp_path))
  # The save of step 2 started just before the evaluator ran: it completed anyway.
  assert os.listdir(tmp_path / "checkpoints") == ["2"]
  assert checkpoints.latest_finished_step(str(tmp_path)) == 2
  params = checkpoints.load_weights(str(tmp_path), "params")
  assert "patch_embed" in params


def test_check_finite_names_the_first_bad_step():
  good = {"loss": np.float32(1.0), "grad_norm": np.float32(0.5)}
  loop.check_finite([good, good], first_step=5, last_good_step=4)
  bad = {"loss": np.float32(np.nan), "grad_norm": np.float32(np.inf)}
  with pytest.raises(loop.NonFiniteError, match=r"step 7: non-finite loss=nan, grad_norm=inf.*"
                                                r"last good checkpoint is step 4"):
    loop.check_finite([good, good, bad, bad], first_step=5, last_good_step=4)
  with pytest.raises(loop.NonFiniteError, match="no checkpoint was written"):
    loop.check_finite([bad], first_step=1, last_good_step=None)
