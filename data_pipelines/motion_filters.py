"""Optional motion filters: drop clips that hardly move, or whose flow is implausible.

Each clip's flow is summarised once, when it is computed (stage 1, stored in the
clip cache's manifest): its mean flow magnitude and the 99th percentile of it, in
output pixels per frame. Stage 2 keeps or drops clips from those numbers, so
changing a threshold rewrites the dataset without recomputing any flow.

- min_mean_px: a clip whose mean magnitude is below this is (nearly) still, e.g. a
  static shot or a slide; it teaches no motion.
- max_p99_px: a clip whose 99th percentile is above this moves faster than the
  estimator can follow at this size (DIS's search range), or the flow failed; such
  "flow" is noise trained on as motion.

0 turns a filter off (the default: nothing is dropped).
"""

from __future__ import annotations

import dataclasses

import numpy as np

STATIC = "static"   # reasons, as counted in the build report
FAST = "fast"
PERCENTILE = 99.0


@dataclasses.dataclass(frozen=True)
class MotionStats:
  """A clip's flow summary, pixels per frame at the output size."""
  mean_px: float
  p99_px: float


def motion_stats(flow: np.ndarray) -> MotionStats:
  """flow [T-1, H, W, 2] -> its mean and 99th-percentile magnitude."""
  magnitude = np.hypot(flow[..., 0], flow[..., 1])
  return MotionStats(float(magnitude.mean()), float(np.percentile(magnitude, PERCENTILE)))


@dataclasses.dataclass(frozen=True)
class MotionFilter:
  """Thresholds in pixels per frame; 0 = off."""
  min_mean_px: float = 0.0
  max_p99_px: float = 0.0

  def __post_init__(self):
    if self.min_mean_px < 0 or self.max_p99_px < 0:
      raise ValueError(f"motion filter thresholds must be >= 0 (0: off), got {self}")
    if self.max_p99_px and self.min_mean_px >= self.max_p99_px:
      raise ValueError(f"min_mean_px={self.min_mean_px} >= max_p99_px={self.max_p99_px}: "
                       "every clip would be dropped")

  def reason_to_drop(self, stats: MotionStats) -> str | None:
    """STATIC, FAST, or None to keep the clip."""
    if self.min_mean_px and stats.mean_px < self.min_mean_px:
      return STATIC
    if self.max_p99_px and stats.p99_px > self.max_p99_px:
      return FAST
    return None
