"""Motion filters: the flow summary and the keep / drop decision."""

import numpy as np
import pytest

from data_pipelines import motion_filters


def test_stats_of_a_known_flow():
  flow = np.zeros((3, 10, 10, 2), np.float32)
  flow[..., 0], flow[..., 1] = 3.0, 4.0            # 5 px everywhere
  flow[0, 0, 0] = (60.0, 80.0)                      # one outlier of 100 px
  stats = motion_filters.motion_stats(flow)
  assert stats.mean_px == pytest.approx((299 * 5 + 100) / 300)
  assert stats.p99_px == pytest.approx(5.0)         # the 99th percentile ignores it


def test_filters_drop_still_and_implausible_clips_and_off_keeps_all():
  f = motion_filters.MotionFilter(min_mean_px=0.2, max_p99_px=8.0)
  assert f.reason_to_drop(motion_filters.MotionStats(0.1, 0.5)) == motion_filters.STATIC
  assert f.reason_to_drop(motion_filters.MotionStats(2.0, 9.0)) == motion_filters.FAST
  assert f.reason_to_drop(motion_filters.MotionStats(2.0, 7.0)) is None
  off = motion_filters.MotionFilter()
  assert off.reason_to_drop(motion_filters.MotionStats(0.0, 1e6)) is None
  with pytest.raises(ValueError, match=">= 0"):
    motion_filters.MotionFilter(min_mean_px=-1.0)
  with pytest.raises(ValueError, match="every clip would be dropped"):
    motion_filters.MotionFilter(min_mean_px=5.0, max_p99_px=2.0)
