"""Writing MP4/GIF and reading them back; the video | motion panel."""

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from videojam_jax.data import motion_encoding
from videojam_jax.data import video_io

T, H, W, FPS = 6, 32, 32, 8.0
# Mean absolute error allowed after lossy coding: H.264 at CRF 17 in 4:2:0
# (smooth content), and GIF's 256-colour palette.
MP4_TOLERANCE, GIF_TOLERANCE = 4.0, 6.0


def _clip():
  """A smooth colour texture drifting right, plus a brightening ramp."""
  rng = np.random.default_rng(0)
  base = cv2.GaussianBlur(rng.random((H, 2 * W, 3)).astype(np.float32), (0, 0), 2.0)
  base = (base - base.min()) / (base.max() - base.min())
  frames = [np.roll(base, t, axis=1)[:, :W] * (0.7 + 0.05 * t) for t in range(T)]
  return np.rint(np.stack(frames) * 255).astype(np.uint8)


def test_upscale_is_nearest_neighbour_to_min_side():
  clip = _clip()
  big = video_io.upscale(clip, min_side=128)
  assert big.shape == (T, 128, 128, 3)
  np.testing.assert_array_equal(big[:, ::4, ::4], clip)
  np.testing.assert_array_equal(big[:, 3::4, 3::4], clip)
  assert video_io.upscale(clip, min_side=20).shape == clip.shape  # factor 1


def test_mp4_round_trip(tmp_path):
  clip = _clip()
  path = video_io.write_video(tmp_path / "clip.mp4", clip, FPS)
  meta = iio.immeta(path, plugin="pyav")
  assert meta["codec"] == "h264"
  assert meta["video_format"] == "yuv420p"   # what browsers can play
  assert meta["fps"] == pytest.approx(FPS)
  frames = iio.imread(path, plugin="pyav")
  assert frames.shape == (T, 128, 128, 3)
  error = np.abs(frames.astype(np.float32) - video_io.upscale(clip)).mean(axis=(1, 2, 3))
  assert np.all(error < MP4_TOLERANCE), error
  # The content survives, not just its statistics: each frame matches itself best.
  other = np.abs(frames[1:].astype(np.float32) - video_io.upscale(clip)[:-1]).mean()
  assert other > 2 * error.max()


def test_mp4_odd_size_is_padded_to_even(tmp_path):
  clip = _clip()[:, :15, :21]
  path = video_io.write_video(tmp_path / "odd.mp4", clip, FPS, min_side=1)
  frames = iio.imread(path, plugin="pyav")
  assert frames.shape == (T, 16, 22, 3)
  # Not upscaled, so 4:2:0 chroma subsampling blurs colour per pixel pair: looser.
  assert np.abs(frames[:, :15, :21].astype(np.float32) - clip).mean() < 2 * MP4_TOLERANCE


def test_gif_round_trip(tmp_path):
  clip = _clip()
  path = video_io.write_video(tmp_path / "clip.gif", clip, FPS)
  frames = iio.imread(path)[..., :3]
  assert frames.shape == (T, 128, 128, 3)
  assert np.abs(frames.astype(np.float32) - video_io.upscale(clip)).mean() < GIF_TOLERANCE
  meta = iio.immeta(path)
  assert meta["loop"] == 0                              # loops forever
  assert abs(meta["duration"] - 1000 / FPS) <= 10       # GIF delays are in 10 ms units


def test_rejects_unknown_extension_and_bad_frames(tmp_path):
  with pytest.raises(ValueError):
    video_io.write_video(tmp_path / "clip.avi", _clip(), FPS)
  with pytest.raises(ValueError):
    video_io.write_video(tmp_path / "clip.mp4", _clip().astype(np.float32), FPS)


def test_side_by_side_draws_decoded_motion_on_colour_wheel():
  clip = _clip()
  flows = np.zeros((T - 1, H, W, 2), np.float32)
  flows[:, :, W // 2:, 0] = 3.0          # right half moves right, left half is still
  motion = motion_encoding.flows_to_motion_video(flows)
  panel = video_io.side_by_side(clip, motion, gap=2)
  assert panel.shape == (T, H, 2 * W + 2, 3)
  np.testing.assert_array_equal(panel[:, :, :W], clip)
  assert np.all(panel[:, :, W:W + 2] == 255)             # white separator
  drawn = panel[:, :, W + 2:]
  assert np.all(drawn[:, :, :W // 2] == 255)             # still = white on the wheel
  scale = motion_encoding.DEFAULT_SIGMA * np.hypot(H, W)
  expected = motion_encoding.flow_to_colour_wheel(
      np.concatenate([flows[:1], flows]), max_magnitude=scale)
  assert np.abs(drawn.astype(int) - expected).max() <= 2   # up to uint8 decoding error
  right = drawn[:, :, W // 2:].reshape(-1, 3).astype(int)
  assert np.all(right[:, 0] > right[:, 1]) and np.all(right[:, 0] > right[:, 2])  # +x is red


def test_frame_grid_puts_each_clip_on_a_row_of_enlarged_frames():
  a = _clip()
  b = 255 - a
  grid = video_io.frame_grid([a, b], scale=2, gap=3)
  assert grid.shape == (2 * 2 * H + 3, T * (2 * W + 3) - 3, 3)
  for row, clip in enumerate((a, b)):
    for k in range(T):
      cell = grid[row * (2 * H + 3):row * (2 * H + 3) + 2 * H, k * (2 * W + 3):k * (2 * W + 3) + 2 * W]
      np.testing.assert_array_equal(cell[::2, ::2], clip[k])
      np.testing.assert_array_equal(cell[1::2, 1::2], clip[k])
  assert (grid[2 * H:2 * H + 3] == 255).all()   # the gap between rows is white


def test_frame_grid_refuses_clips_of_different_shapes():
  with pytest.raises(ValueError, match="share a shape"):
    video_io.frame_grid([_clip(), _clip()[:3]])
  with pytest.raises(ValueError, match="at least one"):
    video_io.frame_grid([])
