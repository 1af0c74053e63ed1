"""Tests for videojam_jax/data/frames.py: the clip validator and pixel conversions."""

import numpy as np
import pytest

from videojam_jax.data import frames
from videojam_jax.data import motion_encoding


def test_check_frames_accepts_uint8_clips_and_returns_arrays():
  clip = [[[[0, 1, 2]] * 4] * 3] * 2     # nested lists: T=2, H=3, W=4
  checked = frames.check_frames(np.asarray(clip, np.uint8), min_frames=2)
  assert checked.shape == (2, 3, 4, 3) and checked.dtype == np.uint8
  single = np.zeros((1, 5, 5, 3), np.uint8)
  assert frames.check_frames(single) is single    # no copy of a valid array


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 8, 8, 3), np.float32), r"video must be uint8 \[T>=2, H, W, 3\], got float32"),
    (np.zeros((8, 8, 3), np.uint8), r"got uint8 \(8, 8, 3\)"),          # no time axis
    (np.zeros((2, 8, 8, 4), np.uint8), r"got uint8 \(2, 8, 8, 4\)"),    # RGBA
    (np.zeros((1, 8, 8, 3), np.uint8), r"T>=2"),                        # too few frames
])
def test_check_frames_names_what_is_wrong(bad, message):
  with pytest.raises(ValueError, match=message):
    frames.check_frames(bad, min_frames=2, what="video")


def test_model_space_round_trip_and_range():
  pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
  model = frames.to_model_space(pixels)
  assert model.dtype == np.float32
  assert model.min() == -1.0 and model.max() == 1.0
  np.testing.assert_allclose(model, pixels / 127.5 - 1.0, atol=1e-7)
  np.testing.assert_array_equal(frames.to_uint8(model), pixels)   # exact inverse on pixels
  # Model outputs overshoot [-1, 1]; they are clipped, not wrapped.
  np.testing.assert_array_equal(frames.to_uint8(np.array([-3.0, -1.0, 0.0, 1.0, 2.5])),
                                [0, 0, 128, 255, 255])


def test_to_uint8_matches_the_sample_writer_formula():
  # sampling/samples.to_uint8 computed motion_encoding.to_uint8((x + 1) / 2): the
  # shared conversion must give the same bytes on arbitrary model outputs.
  x = np.random.default_rng(0).uniform(-1.2, 1.2, (4, 8, 8, 3)).astype(np.float32)
  np.testing.assert_array_equal(frames.to_uint8(x),
                                motion_encoding.to_uint8((x + 1.0) / 2.0))
