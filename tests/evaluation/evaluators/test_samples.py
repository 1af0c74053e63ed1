"""videojam_jax/evaluation/evaluators/samples.py and the evaluator registry."""

import logging

import imageio.v3 as iio
import jax
import ml_collections
import numpy as np
import pytest
from etils import epath

from videojam_jax.data import pipeline
from videojam_jax.evaluation import evaluators
from videojam_jax.evaluation import object_check
from videojam_jax.evaluation.evaluators import samples
from videojam_jax.training import experiment

METRICS = {"warping_error", "motion_smoothness", "dynamic_degree", "dynamic_magnitude",
           "temporal_flickering", "motion_epe"}


@pytest.fixture(scope="module")
def setup(synthetic_data, make_tiny_config, perturb_params):
  config = make_tiny_config(synthetic_data[0])
  config.sample.num_steps = 1
  exp = experiment.build(config)
  params = perturb_params(jax.device_get(exp.model.init(jax.random.key(0))), seed=3)
  return exp, params


def options(**changes):
  return ml_collections.ConfigDict(dict(dict(num_prompts=2, seeds=(0,), batch_size=2,
                                             dis_preset="ultrafast", min_side=16), **changes))


def test_writes_clips_and_yields_mean_metrics(setup, tmp_path):
  exp, params = setup
  evaluator = samples.Evaluator(options(), evaluators.EvalContext(exp, epath.Path(tmp_path)))
  assert evaluator.prompts == pipeline.read_captions(exp.config.data.dataset_dir, "validation", 2)
  values = dict(evaluator.run(params, 7))
  assert set(values) == METRICS and all(np.isfinite(v) for v in values.values())
  out = tmp_path / "samples" / "step_000007"
  assert sorted(p.name for p in out.iterdir()) == ["captions.txt", "grid.png", "sample_00.mp4",
                                                     "sample_01.mp4"]
  lines = (out / "captions.txt").read_text().splitlines()
  assert [line.split("\t")[1] for line in lines] == evaluator.prompts
  # The grid: a row per clip, each row the clip's frames (video | motion panels).
  grid = iio.imread(out / "grid.png")
  t, h, w = exp.video_shape.dims[:3]
  scale = max(1, 16 // min(h, w) // 2)
  assert grid.shape == (2 * h * scale + 2, t * ((2 * w + 2) * scale + 2) - 2, 3)
  # The same weights and seeds give the same clips: the metrics repeat.
  assert dict(evaluator.run(params, 8)) == values


def test_object_check_yields_the_fractions_and_refuses_foreign_captions(setup, tmp_path,
                                                                       monkeypatch):
  exp, params = setup
  context = evaluators.EvalContext(exp, epath.Path(tmp_path))
  evaluator = samples.Evaluator(options(object_check=True, write_videos=False), context)
  values = dict(evaluator.run(params, 1))
  checks = {"objects_present", "objects_moving", "clips_correct"}
  assert set(values) == METRICS | checks
  assert all(0.0 <= values[k] <= 1.0 for k in checks)
  # Captions the check cannot read are refused when the evaluator is made, not at step N.
  monkeypatch.setattr(samples.pipeline, "read_captions", lambda *a: ["a cat on a sofa"])
  with pytest.raises(object_check.CaptionGrammarError, match="a cat on a sofa"):
    samples.Evaluator(options(object_check=True), context)


def test_a_failure_to_write_videos_is_logged_and_the_metrics_still_come(setup, tmp_path, caplog):
  exp, params = setup
  (tmp_path / "samples").write_text("a file where the samples folder should be")
  evaluator = samples.Evaluator(options(), evaluators.EvalContext(exp, epath.Path(tmp_path)))
  with caplog.at_level(logging.ERROR):
    values = dict(evaluator.run(params, 1))
  assert set(values) == METRICS
  assert "could not write samples" in caplog.text and "training continues" in caplog.text


def test_a_baseline_asked_for_inner_guidance_samples_with_cfg(synthetic_data, make_tiny_config):
  config = make_tiny_config(synthetic_data[0], jam=False)
  assert config.sample.guidance == "inner"
  evaluator = samples.Evaluator(options(), evaluators.EvalContext(experiment.build(config), None))
  assert evaluator.settings.guidance == "cfg" and not evaluator.write_videos


def test_registry_picks_evaluators_by_type(setup, tmp_path):
  exp, _ = setup
  context = evaluators.EvalContext(exp, epath.Path(tmp_path))
  blocks = ml_collections.ConfigDict({
      "held": dict(type="heldout_loss", every_steps=5, num_clips=2, batch_size=2),
      "clips": dict(type="samples", every_steps=0, num_prompts=1),   # off: not built
      "mine": dict(type="tests.training.failing_evaluator", every_steps=2, weights="params",
                   fail_at_step=99)})
  scheduled = evaluators.create(blocks, context)
  assert [(s.name, s.every_steps, s.weights) for s in scheduled] == [
      ("held", 5, "ema"), ("mine", 2, "params")]
  held = scheduled[0]
  assert [held.due(step, final=False) for step in (4, 5, 10)] == [False, True, True]
  assert held.due(7, final=True)


@pytest.mark.parametrize("block, message", [
    (dict(type="nope", every_steps=1), r"no module 'videojam_jax.evaluation.evaluators.nope'"),
    (dict(type="os.path", every_steps=1), "has no Evaluator class"),
    (dict(every_steps=1), "needs a 'type'"),
    (dict(type="samples", every_steps=-1), "must be >= 0"),
    (dict(type="samples", every_steps=1, weights="best"), "choose one of"),
    (dict(type="samples", every_steps=1, num_promtps=2), r"unknown option\(s\) \['num_promtps'\]"),
])
def test_bad_evaluator_blocks_are_clear_errors(setup, block, message):
  exp, _ = setup
  with pytest.raises(evaluators.EvaluatorConfigError, match=message):
    evaluators.create(ml_collections.ConfigDict({"x": block}), evaluators.EvalContext(exp, None))
