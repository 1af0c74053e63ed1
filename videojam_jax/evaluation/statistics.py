"""Confidence intervals for metrics averaged over clips: percentile bootstrap.

Clips (prompt x seed) are the unit of resampling. `paired_difference_ci`
resamples the same clip indices in both arms, which is what a comparison on
shared prompts and noise calls for. numpy's Generator does the resampling; scipy
is not a dependency, and `scipy.stats.bootstrap` would add nothing here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


def _finite(values: Sequence[float]) -> np.ndarray:
  array = np.asarray(values, np.float64).reshape(-1)
  return array[np.isfinite(array)]


def bootstrap_ci(values: Sequence[float], *, level: float = DEFAULT_LEVEL,
                 num_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float]:
  """The percentile-bootstrap interval of the mean of the finite `values`.

  Returns (nan, nan) with fewer than two finite values: one clip gives no spread.
  """
  if not 0.0 < level < 1.0:
    raise ValueError(f"confidence level {level} must be in (0, 1)")
  x = _finite(values)
  if x.size < 2:
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, x.size, size=(num_resamples, x.size))].mean(axis=1)
  tail = 100.0 * (1.0 - level) / 2.0
  low, high = np.percentile(means, [tail, 100.0 - tail])
  return float(low), float(high)


def paired_difference_ci(values: Sequence[float], reference: Sequence[float], *,
                         level: float = DEFAULT_LEVEL, num_resamples: int = DEFAULT_RESAMPLES,
                         seed: int = 0) -> tuple[float, float, float]:
  """Mean of values - reference over clips finite in both, and its bootstrap interval.

  `values[i]` and `reference[i]` must be the same clip (prompt and seed) in two arms.
  """
  a, b = np.asarray(values, np.float64), np.asarray(reference, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"paired metrics need the same clips: {a.shape} vs {b.shape}")
  diff = (a - b)[np.isfinite(a) & np.isfinite(b)]
  if diff.size == 0:
    return float("nan"), float("nan"), float("nan")
  return (float(diff.mean()),) + bootstrap_ci(diff, level=level, num_resamples=num_resamples,
                                              seed=seed)
