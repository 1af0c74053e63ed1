"""Tests for videojam_jax/data/motion_encoding.py: flow <-> RGB motion video."""

from matplotlib import colors
import numpy as np
import pytest

from videojam_jax.data import motion_encoding as me

H, W = 24, 40  # not square, so swapped axes would show
SIGMA = me.DEFAULT_SIGMA
MAX_MAGNITUDE = SIGMA * np.sqrt(H**2 + W**2)  # pixels that encode to full brightness


def _random_flows(rng, shape, max_fraction):
  """Flows with random directions and magnitudes below max_fraction * clip point."""
  magnitude = rng.uniform(0, max_fraction * MAX_MAGNITUDE, size=shape)
  angle = rng.uniform(-np.pi, np.pi, size=shape)
  return np.stack([magnitude * np.cos(angle), magnitude * np.sin(angle)], -1).astype(np.float32)


def test_float_round_trip_below_clip_point():
  flow = _random_flows(np.random.default_rng(0), (3, H, W), 0.99)
  rgb = me.flow_to_motion_frame(flow, SIGMA)
  assert rgb.shape == (3, H, W, 3) and rgb.dtype == np.float32
  assert rgb.min() >= 0.0 and rgb.max() <= 1.0
  np.testing.assert_allclose(me.motion_frame_to_flow(rgb, SIGMA), flow, atol=1e-4)


def test_uint8_video_round_trip_within_quantisation():
  flows = _random_flows(np.random.default_rng(1), (5, H, W), 0.99)
  video = me.flows_to_motion_video(flows, SIGMA)
  assert video.shape == (6, H, W, 3) and video.dtype == np.uint8
  decoded = me.motion_video_to_flows(video, SIGMA)
  assert decoded.shape == flows.shape
  # One uint8 step moves the magnitude by MAX_MAGNITUDE / 255 and, through the hue,
  # the direction by a comparable arc; allow two steps.
  error = np.linalg.norm(decoded - flows, axis=-1)
  assert error.max() < 2 * MAX_MAGNITUDE / 255
  # And the float path of the same video gives the same answer.
  np.testing.assert_allclose(
      me.motion_video_to_flows(video.astype(np.float32) / 255.0, SIGMA), decoded, atol=1e-5)


def test_magnitude_clips_at_sigma_times_diagonal():
  direction = np.array([0.6, -0.8], np.float32)
  flow = np.broadcast_to(3.0 * MAX_MAGNITUDE * direction, (H, W, 2))
  decoded = me.motion_frame_to_flow(me.flow_to_motion_frame(flow, SIGMA), SIGMA)
  np.testing.assert_allclose(decoded[0, 0], MAX_MAGNITUDE * direction, rtol=1e-4)
  # A larger sigma means less brightness for the same flow.
  small = _random_flows(np.random.default_rng(2), (H, W), 0.5)
  dim, bright = me.flow_to_motion_frame(small, 2 * SIGMA), me.flow_to_motion_frame(small, SIGMA)
  assert (dim.max(-1) <= bright.max(-1) + 1e-6).all() and dim.max() < bright.max()


def test_zero_flow_is_black():
  zeros = np.zeros((4, H, W, 2), np.float32)
  assert np.all(me.flow_to_motion_frame(zeros) == 0.0)
  assert np.all(me.flows_to_motion_video(zeros) == 0)


@pytest.mark.parametrize("direction, rgb", [
    ((1, 0), (1.0, 0.0, 0.0)),    # right: hue 0, red
    ((0, 1), (0.5, 1.0, 0.0)),    # down (+y): hue 1/4, chartreuse
    ((-1, 0), (0.0, 1.0, 1.0)),   # left: hue 1/2, cyan
    ((0, -1), (0.5, 0.0, 1.0)),   # up: hue 3/4, violet
])
def test_hue_direction_convention(direction, rgb):
  flow = np.broadcast_to(MAX_MAGNITUDE * np.asarray(direction, np.float32), (H, W, 2))
  np.testing.assert_allclose(me.flow_to_motion_frame(flow)[5, 7], rgb, atol=1e-5)
  half = me.flow_to_motion_frame(0.5 * flow)[5, 7]
  np.testing.assert_allclose(half, 0.5 * np.asarray(rgb), atol=1e-5)  # value = magnitude


def test_video_pads_by_repeating_first_flow():
  rng = np.random.default_rng(3)
  flows = _random_flows(rng, (3, H, W), 0.9)
  video = me.flows_to_motion_video(flows)
  assert video.shape[0] == flows.shape[0] + 1
  np.testing.assert_array_equal(video[0], video[1])
  np.testing.assert_array_equal(video[1:], me.to_uint8(me.flow_to_motion_frame(flows)))
  assert not np.array_equal(video[1], video[2])


def test_colour_wheel():
  flow = np.zeros((H, W, 2), np.float32)
  flow[0, 0] = (4.0, 0.0)    # right, the largest: full saturation
  flow[0, 1] = (2.0, 0.0)    # right, half as large
  flow[0, 2] = (-4.0, 0.0)   # left
  image = me.flow_to_colour_wheel(flow)
  assert image.shape == (H, W, 3) and image.dtype == np.uint8
  assert np.all(image[1:] == 255)                      # white at rest
  right, half, left = image[0, 0].astype(int), image[0, 1].astype(int), image[0, 2].astype(int)
  assert right[0] == 255 and right[1] == 0 and right[2] < 60   # right is red
  # Left is the opposite side of the wheel: cyan turning blue (Middlebury entry 27).
  assert left[0] == 0 and 150 < left[1] < 255 and left[2] == 255
  assert np.all(half >= right) and half[1] > 100               # half way to white
  # A fixed scale: the same flow looks paler when the scale is larger.
  scaled = me.flow_to_colour_wheel(flow, max_magnitude=8.0)
  np.testing.assert_array_equal(scaled[0, 0], image[0, 1])
  assert me.flow_to_colour_wheel(np.zeros((2, 5, 6, 2))).shape == (2, 5, 6, 3)


@pytest.mark.parametrize("fn, bad", [
    (me.flow_to_motion_frame, np.zeros((H, W, 3))),       # 3 channels, not (dx, dy)
    (me.flow_to_motion_frame, np.zeros((W, 2))),          # no image axes
    (me.flows_to_motion_video, np.zeros((H, W, 2))),      # no time axis
    (me.flows_to_motion_video, np.zeros((0, H, W, 2))),   # no flows at all
    (me.flows_to_motion_video, np.zeros((3, H, W, 3))),
])
def test_bad_shapes_raise(fn, bad):
  with pytest.raises(ValueError, match="shape"):
    fn(bad)


# The hand-written HSV conversions motion_encoding used before it switched to
# matplotlib.colors, kept here as the reference the encoding must still match.
def _old_hsv_to_rgb(h, s, v):
  h6 = (h % 1.0) * 6.0
  i = np.floor(h6).astype(np.int32) % 6
  f = h6 - np.floor(h6)
  p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
  r = np.choose(i, [v, q, p, p, t, v])
  g = np.choose(i, [t, v, v, q, p, p])
  b = np.choose(i, [p, p, t, v, v, q])
  return np.stack([r, g, b], axis=-1)


def _old_rgb_to_hsv(rgb):
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = np.max(rgb, axis=-1)
  c = v - np.min(rgb, axis=-1)
  safe_c = np.where(c > 0, c, 1.0)
  h = np.where(v == r, ((g - b) / safe_c) % 6.0,
               np.where(v == g, (b - r) / safe_c + 2.0, (r - g) / safe_c + 4.0))
  return np.where(c > 0, h / 6.0, 0.0), v


def test_matches_the_previous_hand_written_hsv_conversion():
  rng = np.random.default_rng(4)
  flows = _random_flows(rng, (7, H, W), 1.5)   # some beyond the clip point
  flows[0, 0, :4] = [[0, 0], [1, 0], [0, -1], [-1e-30, 0]]   # still, axis-aligned, tiny
  magnitude = np.linalg.norm(flows, axis=-1)
  value = np.minimum(1.0, magnitude / MAX_MAGNITUDE)
  hue = (np.arctan2(flows[..., 1], flows[..., 0]) / (2 * np.pi)) % 1.0
  old_rgb = _old_hsv_to_rgb(hue, np.ones_like(value), value)
  # matplotlib computes part of the conversion in float64, the old code in float32:
  # the floats agree to rounding, the stored uint8 video to one step in rare pixels.
  np.testing.assert_allclose(me.flow_to_motion_frame(flows, SIGMA), old_rgb, atol=1e-6)
  video = me.flows_to_motion_video(flows, SIGMA)
  old_video = me.to_uint8(np.concatenate([old_rgb[:1], old_rgb]))
  steps = np.abs(video.astype(int) - old_video)
  assert steps.max() <= 1 and np.mean(steps > 0) < 1e-4
  # Decoding, including colours that are not valid encodings (saturation < 1).
  rgb = rng.uniform(0, 1, (5, H, W, 3)).astype(np.float32)
  rgb[0, 0, :3] = [[1, 1, 0], [0.5, 0.5, 0.5], [1, 0, 1]]   # ties between channels, grey
  old_hue, old_value = _old_rgb_to_hsv(rgb)
  alpha = old_hue * 2 * np.pi
  old_flow = old_value[..., None] * MAX_MAGNITUDE * np.stack([np.cos(alpha), np.sin(alpha)], -1)
  np.testing.assert_allclose(me.motion_frame_to_flow(rgb, SIGMA), old_flow, atol=1e-4)


def test_full_saturation_conversion_agrees_with_matplotlib():
  """The closed-form HSV -> RGB the encoder uses (saturation 1) against matplotlib's."""
  rng = np.random.default_rng(5)
  hue = rng.uniform(0, 1, (4, H, W)).astype(np.float32)
  hue[0, 0, :7] = [0.0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, np.nextafter(1, 0)]  # sector edges
  value = rng.uniform(0, 1, (4, H, W)).astype(np.float32)
  expected = colors.hsv_to_rgb(np.stack([hue, np.ones_like(value), value], -1))
  np.testing.assert_allclose(me._full_saturation_hsv_to_rgb(hue, value), expected, atol=5e-7)
