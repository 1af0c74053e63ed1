"""Clips as arrays: the one validator, and the uint8 <-> model-space conversions.

Host-side code (flow estimators, metrics, video writers) takes clips as uint8
RGB [T, H, W, 3]; the model sees them as float32 in [-1, 1]. These are the only
places that define either.
"""

from __future__ import annotations

import numpy as np

_HALF_RANGE = 127.5   # uint8 [0, 255] <-> [-1, 1]: x = u8 / 127.5 - 1
_MAX_PIXEL = 255


def check_frames(frames: np.ndarray, *, min_frames: int = 1, what: str = "frames") -> np.ndarray:
  """`frames` as a uint8 [T, H, W, 3] array with T >= min_frames, else ValueError.

  what: how the error names the input (e.g. "video", "motion video").
  No dtype conversion: float or int frames are refused, since silently
  casting them would hide a [0, 1] vs [0, 255] vs [-1, 1] mix-up.
  """
  frames = np.asarray(frames)
  if (frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3
      or frames.shape[0] < min_frames):
    raise ValueError(f"{what} must be uint8 [T>={min_frames}, H, W, 3], "
                     f"got {frames.dtype} {frames.shape}")
  return frames


def to_model_space(frames: np.ndarray) -> np.ndarray:
  """uint8 pixels [0, 255] -> float32 in [-1, 1] (u8 / 127.5 - 1)."""
  return np.asarray(frames, np.float32) / _HALF_RANGE - 1.0


def to_uint8(frames: np.ndarray) -> np.ndarray:
  """Model-space floats in [-1, 1] -> uint8 pixels, rounded, out-of-range values clipped."""
  unit = (np.asarray(frames, np.float32) + 1.0) / 2.0
  return np.clip(np.rint(unit * _MAX_PIXEL), 0, _MAX_PIXEL).astype(np.uint8)
