"""VideoJAM's motion representation: optical flow encoded as an RGB video.

The encoding (DESIGN.md §1, Chefer et al. 2025 §3.1):

  m     = min(1, |F| / (sigma * sqrt(H^2 + W^2)))     # normalised magnitude
  alpha = atan2(F_y, F_x)                            # direction
  HSV   = (hue = alpha, saturation = 1, value = m)    # static pixels are black

so a motion video has the same shape and value range as the frames it describes
and can go through the same autoencoder. The encoding is invertible wherever
m < 1 (up to uint8 quantisation when stored as bytes).

Hue convention: hue in [0, 1) is (alpha mod 2*pi) / (2*pi); alpha = 0 (motion to
+x, i.e. right) is red. Everything here is NumPy (host-side, used by the data
builders and by the sample writer), vectorised over any leading axes; the HSV
<-> RGB conversions are matplotlib.colors'.
"""

from __future__ import annotations

from matplotlib import colors
import numpy as np

DEFAULT_SIGMA = 0.15


def _max_magnitude(height: int, width: int, sigma: float) -> float:
  """The flow magnitude (pixels) that encodes to full brightness."""
  return sigma * float(np.sqrt(height**2 + width**2))


def flow_to_motion_frame(flow: np.ndarray, sigma: float = DEFAULT_SIGMA) -> np.ndarray:
  """Encodes flow [..., H, W, 2] (pixels, (dx, dy)) as RGB floats in [0, 1]."""
  flow = np.asarray(flow, np.float32)
  if flow.ndim < 3 or flow.shape[-1] != 2:
    raise ValueError(f"flow must have shape [..., H, W, 2], got {flow.shape}")
  height, width = flow.shape[-3], flow.shape[-2]
  magnitude = np.hypot(flow[..., 0], flow[..., 1])
  value = np.minimum(1.0, magnitude / _max_magnitude(height, width, sigma))
  hue = (np.arctan2(flow[..., 1], flow[..., 0]) / (2 * np.pi)) % 1.0
  return _full_saturation_hsv_to_rgb(hue.astype(np.float32), value.astype(np.float32))


_HSV_CHANNEL_OFFSETS = np.array([5.0, 3.0, 1.0], np.float32)   # R, G, B


def _full_saturation_hsv_to_rgb(hue: np.ndarray, value: np.ndarray) -> np.ndarray:
  """HSV with saturation 1 -> RGB, float32: channel n is v * (1 - clip(min(k, 4 - k), 0, 1))
  with k = (n + 6h) mod 6 (the standard closed form). Hand-written because
  matplotlib.colors.hsv_to_rgb, which handles any saturation in float64, made this
  encoding the slowest stage of a video build (136 frames/s at 256x256): on 8 frames
  of 256x256 it took 80 ms, this takes 14 ms. It agrees with matplotlib to 5e-7
  (tests/data/test_motion_encoding.py)."""
  k = _HSV_CHANNEL_OFFSETS + np.float32(6.0) * hue[..., None]   # in [1, 11): hue in [0, 1)
  k -= np.float32(6.0) * (k >= 6.0)                              # mod 6, without fmod
  weight = np.minimum(k, np.float32(4.0) - k)
  np.clip(weight, 0.0, 1.0, out=weight)
  return value[..., None] * (np.float32(1.0) - weight)


def motion_frame_to_flow(rgb: np.ndarray, sigma: float = DEFAULT_SIGMA) -> np.ndarray:
  """Inverts `flow_to_motion_frame`: RGB [..., H, W, 3] in [0, 1] -> flow [..., H, W, 2].

  Exact where the encoded magnitude is below the clip point (value < 1).
  Model outputs that are not valid HSV colours (saturation < 1) are decoded by
  their hue and brightness, which is the natural reading of them.
  """
  rgb = np.clip(np.asarray(rgb, np.float32), 0.0, 1.0)
  height, width = rgb.shape[-3], rgb.shape[-2]
  hsv = colors.rgb_to_hsv(rgb)
  hue, value = hsv[..., 0], hsv[..., 2]
  magnitude = value * _max_magnitude(height, width, sigma)
  alpha = hue * 2 * np.pi
  return np.stack([magnitude * np.cos(alpha), magnitude * np.sin(alpha)], axis=-1)


def flows_to_motion_video(flows: np.ndarray, sigma: float = DEFAULT_SIGMA) -> np.ndarray:
  """T-1 flows [T-1, H, W, 2] -> a T-frame uint8 motion video [T, H, W, 3].

  T frames give T-1 flows; the first flow is repeated so that the motion video
  has exactly as many frames as the video (DESIGN.md §1).
  """
  flows = np.asarray(flows, np.float32)
  if flows.ndim != 4 or flows.shape[-1] != 2 or flows.shape[0] < 1:
    raise ValueError(f"flows must have shape [T-1>=1, H, W, 2], got {flows.shape}")
  padded = np.concatenate([flows[:1], flows], axis=0)
  return to_uint8(flow_to_motion_frame(padded, sigma))


def motion_video_to_flows(motion: np.ndarray, sigma: float = DEFAULT_SIGMA) -> np.ndarray:
  """Inverse of `flows_to_motion_video`: uint8 or [0,1] float [T,H,W,3] -> [T-1,H,W,2]."""
  motion = np.asarray(motion)
  if motion.dtype == np.uint8:
    motion = motion.astype(np.float32) / 255.0
  return motion_frame_to_flow(motion[1:], sigma)


def to_uint8(frames: np.ndarray) -> np.ndarray:
  """[0, 1] floats -> uint8 with rounding."""
  return np.clip(np.rint(np.asarray(frames) * 255.0), 0, 255).astype(np.uint8)


def flow_to_colour_wheel(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
  """Renders flow [..., H, W, 2] with the Middlebury colour wheel -> uint8 RGB.

  This is the standard optical-flow visualisation (Baker et al., IJCV 2011): a
  55-colour wheel interpolated by direction, saturated by magnitude, white at
  rest. Hand-written because none of our dependencies ships it (OpenCV only
  documents an HSV rendering); it is the picture flow researchers expect.
  `max_magnitude` fixes the scale (e.g. for a whole video); default: per call max.
  """
  flow = np.asarray(flow, np.float32)
  wheel = _middlebury_wheel()
  u, v = flow[..., 0], flow[..., 1]
  magnitude = np.sqrt(u**2 + v**2)
  scale = float(max_magnitude) if max_magnitude else float(np.max(magnitude))
  scale = max(scale, 1e-6)
  u, v, magnitude = u / scale, v / scale, np.minimum(magnitude / scale, 1.0)
  angle = np.arctan2(-v, -u) / np.pi                     # in [-1, 1]
  fk = (angle + 1.0) / 2.0 * (len(wheel) - 1)
  k0 = np.floor(fk).astype(np.int32)
  k1 = (k0 + 1) % len(wheel)
  f = (fk - k0)[..., None]
  colour = (1 - f) * wheel[k0] + f * wheel[k1]           # [..., 3] in [0, 1]
  colour = 1 - magnitude[..., None] * (1 - colour)       # white at rest
  return to_uint8(colour)


def _middlebury_wheel() -> np.ndarray:
  """The 55-entry Middlebury colour wheel, RGB in [0, 1]."""
  segments = [(15, (1, 0, 0), (1, 1, 0)),    # red -> yellow
              (6, (1, 1, 0), (0, 1, 0)),     # yellow -> green
              (4, (0, 1, 0), (0, 1, 1)),     # green -> cyan
              (11, (0, 1, 1), (0, 0, 1)),    # cyan -> blue
              (13, (0, 0, 1), (1, 0, 1)),    # blue -> magenta
              (6, (1, 0, 1), (1, 0, 0))]     # magenta -> red
  rows = []
  for n, start, end in segments:
    ramp = np.arange(n, dtype=np.float32)[:, None] / n
    rows.append((1 - ramp) * np.asarray(start, np.float32) + ramp * np.asarray(end, np.float32))
  return np.concatenate(rows, axis=0)
