"""Motion metrics on synthetic clips whose answers are known by construction."""

import cv2
import numpy as np
import pytest

from videojam_jax.data import flow_estimators
from videojam_jax.data import motion_encoding
from videojam_jax.evaluation import motion_metrics

T, H, W = 9, 64, 64      # odd T: every odd frame has two neighbours to interpolate from
SMALL_SHIFT, LARGE_SHIFT = 1, 3   # px / frame; VBench's threshold at 64 px, 8 fps is 1.5 px
MARGIN = 8               # pixels from the border where content enters the view
OBJECT = 12              # side of the moving square
TELEPORT_FRAME, TELEPORT_JUMP = 4, 30


def _texture(height, width, blur, seed):
  """Smooth random colour texture: well-posed for optical flow."""
  noise = np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)
  noise = cv2.GaussianBlur(noise, (0, 0), blur)
  noise = (noise - noise.min()) / (noise.max() - noise.min())
  return np.rint(noise * 255).astype(np.uint8)


_BIG = _texture(H + 64, W + 64, blur=1.5, seed=0)


def _translation(shift):
  """A window sliding left over a large texture: the content moves by (+shift, 0) px/frame."""
  x0 = 56  # room for 6 px/frame over T frames inside the texture
  return np.stack([_BIG[16:16 + H, x0 - shift * t: x0 - shift * t + W] for t in range(T)])


def _static():
  return np.stack([_BIG[16:16 + H, 16:16 + W]] * T)


def _object_clip(xs):
  """A textured square over a static background, at column xs[t] in frame t."""
  background = _texture(H, W, blur=3, seed=1) // 2 + 64
  square = _texture(OBJECT, OBJECT, blur=1, seed=2)
  video = np.stack([background] * T)
  y0 = (H - OBJECT) // 2
  for t, x in enumerate(xs):
    video[t, y0:y0 + OBJECT, x:x + OBJECT] = square
  return video


def _smooth_object():
  return _object_clip([4 + 2 * t for t in range(T)])


def _teleporting_object():
  """Same motion, except the square jumps TELEPORT_JUMP px at one frame."""
  return _object_clip([4 + 2 * t + (TELEPORT_JUMP if t >= TELEPORT_FRAME else 0)
                       for t in range(T)])


def _flickering(static, dim=0.8):
  """Every other frame dimmed: no motion, only brightness changes."""
  scale = np.where(np.arange(T) % 2 == 1, dim, 1.0)[:, None, None, None]
  return np.clip(np.rint(static * scale), 0, 255).astype(np.uint8)


def _constant_flow_motion_video(flow_xy):
  flows = np.broadcast_to(np.asarray(flow_xy, np.float32), (T - 1, H, W, 2))
  return motion_encoding.flows_to_motion_video(flows)


def test_static_clip_scores_perfectly():
  video = _static()
  assert motion_metrics.warping_error(video) < 1e-6
  assert motion_metrics.motion_smoothness(video) > 0.999
  assert motion_metrics.temporal_flickering(video) == pytest.approx(1.0)
  dynamic = motion_metrics.dynamic_degree(video)
  assert not dynamic.is_dynamic
  assert dynamic.magnitude < 0.1


def test_dis_recovers_known_translation():
  flows = motion_metrics.video_flows(_translation(LARGE_SHIFT))
  assert flows.shape == (T - 1, H, W, 2)
  interior = flows[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
  np.testing.assert_allclose(interior.mean(axis=(0, 1, 2)), [LARGE_SHIFT, 0.0], atol=0.05)
  assert np.max(np.abs(interior - [LARGE_SHIFT, 0.0])) < 0.5


def test_translation_is_consistent_smooth_and_dynamic_above_threshold():
  video = _translation(LARGE_SHIFT)
  # Exact correspondences: warping brings t+1 onto t up to interpolation noise,
  # far below what brightness changes cause (see the flicker test).
  assert motion_metrics.warping_error(video) < 1e-3
  assert motion_metrics.motion_smoothness(video) > 0.99
  dynamic = motion_metrics.dynamic_degree(video, fps=8.0)
  assert dynamic.threshold == pytest.approx(6.0 * 64 / 256)
  assert dynamic.is_dynamic
  assert dynamic.magnitude == pytest.approx(LARGE_SHIFT, abs=0.3)
  # 1 px/frame is below the 1.5 px threshold: it counts as static.
  slow = motion_metrics.dynamic_degree(_translation(SMALL_SHIFT), fps=8.0)
  assert slow.magnitude == pytest.approx(SMALL_SHIFT, abs=0.3)
  assert not slow.is_dynamic
  # At a lower frame rate the same per-frame motion is slower in time: higher threshold.
  assert not motion_metrics.dynamic_degree(video, fps=2.0).is_dynamic


def test_teleporting_object_is_worse_than_smooth_motion():
  smooth, teleport = _smooth_object(), _teleporting_object()
  assert (motion_metrics.warping_error(teleport)
          > 3 * motion_metrics.warping_error(smooth))
  # Compare the smoothness *loss* (1 - score): the jump cannot be interpolated.
  assert (1 - motion_metrics.motion_smoothness(teleport)
          > 2 * (1 - motion_metrics.motion_smoothness(smooth)))


def test_flickering_brightness_lowers_flicker_score():
  static = _static()
  flicker = motion_metrics.temporal_flickering(_flickering(static))
  # |0.8 v - v| = 0.2 v on every consecutive pair.
  expected = 1.0 - 0.2 * static.mean() / 255.0
  assert flicker == pytest.approx(expected, abs=0.005)
  assert flicker < motion_metrics.temporal_flickering(static) - 0.05
  # Flicker breaks brightness constancy, so warping error rises too.
  assert motion_metrics.warping_error(_flickering(static)) > 0.01


def test_motion_epe_small_for_true_flow_large_for_wrong_flow():
  video = _translation(LARGE_SHIFT)
  true_epe = motion_metrics.motion_epe(video, _constant_flow_motion_video([LARGE_SHIFT, 0.0]))
  wrong_epe = motion_metrics.motion_epe(video, _constant_flow_motion_video([0.0, -LARGE_SHIFT]))
  assert true_epe < 0.3
  # The wrong flow is (-3, -3) px away: EPE ~ 3 * sqrt(2).
  assert wrong_epe == pytest.approx(LARGE_SHIFT * np.sqrt(2), rel=0.1)


def test_motion_epe_does_not_penalise_saturated_motion_output():
  # With a small sigma the encoding saturates at sigma * diag = 4.5 px; the clip
  # moves 6 px/frame, so a correct motion output is at full brightness (4.5 px).
  sigma, shift = 0.05, 6
  clip_point = sigma * np.hypot(H, W)
  video = _translation(shift)
  saturated = motion_encoding.flows_to_motion_video(
      np.full((T - 1, H, W, 2), [shift, 0.0], np.float32), sigma)
  decoded = motion_encoding.motion_video_to_flows(saturated, sigma)
  np.testing.assert_allclose(np.linalg.norm(decoded, axis=-1), clip_point, rtol=0.01)
  interior = motion_metrics.video_flows(video)[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
  assert np.mean(interior[..., 0]) == pytest.approx(shift, abs=0.2)  # DIS sees all 6 px
  # Unclipped, the EPE would be ~ shift - clip_point = 1.5 px.
  assert motion_metrics.motion_epe(video, saturated, sigma=sigma) < 0.3


def test_compute_all_keys_and_agreement():
  video = _translation(LARGE_SHIFT)
  metrics = motion_metrics.compute_all(video)
  assert set(metrics) == {"warping_error", "motion_smoothness", "dynamic_degree",
                          "dynamic_magnitude", "temporal_flickering"}
  assert all(isinstance(value, float) for value in metrics.values())
  assert metrics["dynamic_degree"] == 1.0
  assert metrics["warping_error"] == pytest.approx(motion_metrics.warping_error(video))
  with_motion = motion_metrics.compute_all(video, _constant_flow_motion_video([LARGE_SHIFT, 0.0]))
  assert with_motion["motion_epe"] < 0.3


def test_rejects_bad_input():
  with pytest.raises(ValueError, match="video must be uint8"):
    motion_metrics.warping_error(np.zeros((T, H, W, 3), np.float32))
  with pytest.raises(ValueError, match=r"T>=3"):
    motion_metrics.motion_smoothness(_static()[:2])
  with pytest.raises(ValueError, match="unknown DIS preset 'slowest'"):
    motion_metrics.warping_error(_static(), preset="slowest")


def test_flow_is_the_shared_dis_estimator():
  video = _translation(LARGE_SHIFT)
  for preset in flow_estimators.DIS_PRESETS:
    expected = flow_estimators.create_estimator("dis", preset=preset).estimate(video)
    np.testing.assert_array_equal(motion_metrics.video_flows(video, preset), expected)
  assert motion_metrics.DEFAULT_PRESET == flow_estimators.DEFAULT_DIS_PRESET
