"""Bootstrap intervals of clip means: coverage, degenerate inputs, pairing."""

import math

import numpy as np
import pytest

from videojam_jax.evaluation import statistics


def test_bootstrap_ci_covers_the_true_mean_at_about_the_stated_rate():
  rng = np.random.default_rng(0)
  hits = 0
  for trial in range(200):
    sample = rng.exponential(2.0, size=64)   # skewed, true mean 2
    low, high = statistics.bootstrap_ci(sample, num_resamples=500, seed=trial)
    assert low < sample.mean() < high
    hits += low <= 2.0 <= high
  assert 0.88 <= hits / 200 <= 0.99   # nominal 0.95; percentile bootstrap runs a bit low


def test_bootstrap_ci_narrows_with_more_clips_and_ignores_nan():
  rng = np.random.default_rng(1)
  few, many = rng.normal(size=16), rng.normal(size=1024)
  width = lambda ci: ci[1] - ci[0]
  assert width(statistics.bootstrap_ci(many)) < 0.4 * width(statistics.bootstrap_ci(few))
  with_nan = np.concatenate([few, [np.nan, np.inf]])
  assert statistics.bootstrap_ci(with_nan) == statistics.bootstrap_ci(few)
  assert all(math.isnan(v) for v in statistics.bootstrap_ci([1.0, np.nan]))
  assert statistics.bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)
  with pytest.raises(ValueError, match="level"):
    statistics.bootstrap_ci(few, level=95)


def test_paired_difference_removes_the_shared_clip_effect():
  rng = np.random.default_rng(2)
  difficulty = rng.normal(scale=5.0, size=128)       # per-clip effect shared by both arms
  reference = difficulty + rng.normal(scale=0.1, size=128)
  ours = difficulty - 0.2 + rng.normal(scale=0.1, size=128)
  mean, low, high = statistics.paired_difference_ci(ours, reference)
  assert mean == pytest.approx(-0.2, abs=0.05) and low < -0.1 and high < 0  # clearly negative
  # Unpaired, the clip effect swamps the difference: both intervals overlap widely.
  a, b = statistics.bootstrap_ci(ours), statistics.bootstrap_ci(reference)
  assert a[1] > b[0] and b[1] > a[0]
  ours[0] = np.nan                                   # dropped from both sides
  assert statistics.paired_difference_ci(ours, reference)[0] == pytest.approx(
      np.mean(ours[1:] - reference[1:]))
  with pytest.raises(ValueError, match="same clips"):
    statistics.paired_difference_ci(ours[:3], reference)
