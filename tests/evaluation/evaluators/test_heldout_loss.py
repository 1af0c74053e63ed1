"""videojam_jax/evaluation/evaluators/heldout_loss.py: fixed-time held-out losses."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from videojam_jax.data import pipeline
from videojam_jax.evaluation import evaluators
from videojam_jax.evaluation.evaluators import heldout_loss
from videojam_jax.training import flow_matching


def evaluate(exp, params, **options):
  block = ml_collections.ConfigDict(dict(dict(num_clips=3, batch_size=2, times=(0.3, 0.7)), **options))
  return dict(heldout_loss.Evaluator(block, evaluators.EvalContext(exp, None)).run(params, 0))


def test_losses_per_time_and_their_means(setup):
  exp, params = setup
  values = evaluate(exp, params)
  assert set(values) == {f"{s}_loss{t}" for s in ("video", "motion") for t in ("_t0.3", "_t0.7", "")}
  for stream in ("video", "motion"):
    assert values[f"{stream}_loss"] == pytest.approx(
        (values[f"{stream}_loss_t0.3"] + values[f"{stream}_loss_t0.7"]) / 2)
  assert all(np.isfinite(v) and v > 0 for v in values.values())


def test_fixed_noise_makes_values_repeatable_and_independent_of_the_batch(setup):
  exp, params = setup
  first, again = evaluate(exp, params), evaluate(exp, params)
  assert first == again                       # same noise at every evaluation
  # 3 clips as 2 + 1 (padded) or as 1 + 1 + 1: each clip meets the same noise.
  by_one = evaluate(exp, params, batch_size=1)
  for k in first:
    assert by_one[k] == pytest.approx(first[k], rel=1e-5), k
  assert evaluate(exp, params, seed=1) != first  # the noise is the seed's


def test_values_are_the_mean_over_exactly_the_first_clips(setup):
  exp, params = setup
  got = evaluate(exp, params, times=(0.5,))
  ds = pipeline.create_dataset(exp.config.data, "validation", batch_size=4, captions=exp.captions,
                               shuffle=False, repeat=False, with_index=True)
  batch = {k: jnp.asarray(v[:3]) for k, v in next(iter(ds)).items()}
  assert list(np.asarray(batch["clip_index"])) == [0, 1, 2]
  key = jax.random.fold_in(jax.random.key(0), 0)
  per_clip = flow_matching.fixed_time_losses(exp.model.apply, params, batch, 0.5, key, True)
  assert got["video_loss_t0.5"] == pytest.approx(float(per_clip["video_loss"].mean()), rel=1e-5)
  assert got["motion_loss_t0.5"] == pytest.approx(float(per_clip["motion_loss"].mean()), rel=1e-5)


def test_bad_options_are_clear_errors(setup):
  exp, params = setup
  with pytest.raises(evaluators.EvaluatorConfigError, match=r"unknown option\(s\) \['time'\]"):
    evaluate(exp, params, time=(0.5,))
  with pytest.raises(evaluators.EvaluatorConfigError, match=r"must be in \[0, 1\]"):
    evaluate(exp, params, times=(1.5,))
