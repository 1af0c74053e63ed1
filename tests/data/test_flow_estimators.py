"""Tests for videojam_jax/data/flow_estimators.py."""

import cv2
import numpy as np
import pytest

from videojam_jax.data import flow_estimators

SIZE = 64
BORDER = 12            # pixels at the edges where a shifted image has no source
SHIFT = (1.5, -0.75)   # (dx, dy) pixels: sub-pixel on purpose
SHIFT_TOLERANCE = 0.25  # px, on the median interior flow
STATIC_TOLERANCE = 0.05  # px, mean |flow| of a still clip

ESTIMATORS = [("dis", {"preset": p}) for p in flow_estimators.DIS_PRESETS] + [("farneback", {})]


def textured_image(seed: int = 0) -> np.ndarray:
  """Smooth random texture (blurred noise): trackable, like natural images."""
  noise = np.random.default_rng(seed).uniform(0, 255, (SIZE, SIZE, 3)).astype(np.float32)
  return np.clip(cv2.GaussianBlur(noise, (0, 0), 2.0) * 3 - 255, 0, 255).astype(np.uint8)


def translated_clip(num_frames: int = 3) -> np.ndarray:
  """Frame k is frame 0 moved by k * SHIFT (bilinear, reflected borders)."""
  image = textured_image()
  frames = []
  for k in range(num_frames):
    matrix = np.float32([[1, 0, k * SHIFT[0]], [0, 1, k * SHIFT[1]]])
    frames.append(cv2.warpAffine(image, matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT))
  return np.stack(frames)


@pytest.mark.parametrize("name,options", ESTIMATORS)
def test_translation_is_recovered(name, options):
  flow = flow_estimators.create_estimator(name, **options).estimate(translated_clip())
  assert flow.shape == (2, SIZE, SIZE, 2) and flow.dtype == np.float32
  interior = flow[:, BORDER:-BORDER, BORDER:-BORDER]
  median = np.median(interior.reshape(-1, 2), axis=0)
  np.testing.assert_allclose(median, SHIFT, atol=SHIFT_TOLERANCE)


@pytest.mark.parametrize("name,options", ESTIMATORS)
def test_static_clip_has_no_flow(name, options):
  clip = np.stack([textured_image()] * 3)
  flow = flow_estimators.create_estimator(name, **options).estimate(clip)
  assert np.mean(np.linalg.norm(flow, axis=-1)) < STATIC_TOLERANCE


def test_pair_is_one_step_of_estimate_and_the_estimator_keeps_no_state():
  clip = translated_clip(4)
  estimator = flow_estimators.create_estimator("dis", preset="fast")
  flows = estimator.estimate(clip)
  # A reversed clip has negative strides: frames must still be accepted.
  backward = estimator.estimate(clip[::-1])
  for k in range(3):
    np.testing.assert_array_equal(estimator.pair(clip[k], clip[k + 1]), flows[k])
    # A fresh estimator gives the same flow: reusing one across calls is safe.
    fresh = flow_estimators.DISEstimator("fast")
    np.testing.assert_array_equal(fresh.pair(clip[k + 1], clip[k]), backward[2 - k])
  with pytest.raises(ValueError, match="a frame pair must be uint8"):
    estimator.pair(clip[0].astype(np.float32), clip[1])


def test_names_record_the_preset():
  assert flow_estimators.create_estimator("dis", preset="fast").name == "dis:fast"
  assert flow_estimators.create_estimator().name == "dis:medium"
  assert flow_estimators.create_estimator("farneback").name == "farneback"


def test_bad_frames_are_rejected():
  estimator = flow_estimators.create_estimator("dis")
  with pytest.raises(ValueError, match="T>=2"):
    estimator.estimate(np.zeros((1, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    estimator.estimate(np.zeros((2, 8, 8, 3), np.float32))


def test_registry_errors():
  with pytest.raises(flow_estimators.FlowEstimatorError, match="available"):
    flow_estimators.create_estimator("pwcnet")
  with pytest.raises(flow_estimators.FlowEstimatorError, match="preset"):
    flow_estimators.create_estimator("dis", preset="slowest")
  with pytest.raises(flow_estimators.FlowEstimatorError, match="(?i)farneback options"):
    flow_estimators.create_estimator("farneback", preset="medium")
  with pytest.raises(flow_estimators.FlowEstimatorError, match="already registered"):
    flow_estimators.register_estimator("dis", flow_estimators.DISEstimator)


def test_plug_in_estimator():
  class Zero:
    name = "zero"

    def estimate(self, frames):
      t, h, w, _ = frames.shape
      return np.zeros((t - 1, h, w, 2), np.float32)

  flow_estimators.register_estimator("zero_test", Zero)
  try:
    assert "zero_test" in flow_estimators.available_estimators()
    flow = flow_estimators.create_estimator("zero_test").estimate(translated_clip())
    assert flow.shape == (2, SIZE, SIZE, 2)
  finally:
    flow_estimators._REGISTRY.pop("zero_test")


def test_raft_without_usable_weights_says_what_to_do(tmp_path):
  with pytest.raises(flow_estimators.EstimatorUnavailableError) as info:
    flow_estimators.create_estimator("raft")
  message = str(info.value)
  assert "weights" in message and "--estimator_weights" in message and "raft_large" in message

  with pytest.raises(flow_estimators.EstimatorUnavailableError, match="not found"):
    flow_estimators.create_estimator("raft", weights_path=str(tmp_path / "missing.pth"))

  weights = tmp_path / "raft-things.pth"
  weights.write_bytes(b"\0")
  with pytest.raises(flow_estimators.FlowEstimatorError, match="not a torch.save zip"):
    flow_estimators.create_estimator("raft", weights_path=str(weights))
