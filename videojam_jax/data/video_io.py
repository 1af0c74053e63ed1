"""Writing clips for people to look at: browser-playable MP4 and GIF, and frame grids.

Generated clips are tiny (e.g. 32 x 32), so they are upscaled by an integer
factor with nearest-neighbour (crisp pixels, no invented detail) before
encoding. MP4s are H.264 in yuv420p, the one pixel format every browser
decodes, with the index at the front (`+faststart`) so playback starts at once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import imageio.v3 as iio
import numpy as np

from videojam_jax.data import frames as frames_lib
from videojam_jax.data import motion_encoding

DEFAULT_MIN_SIDE = 128   # upscale until the shorter side is at least this many pixels
H264_CRF = 17            # x264 constant rate factor: visually lossless, still 4:2:0
_MS_PER_SECOND = 1000.0


def upscale(frames: np.ndarray, min_side: int = DEFAULT_MIN_SIDE) -> np.ndarray:
  """Nearest-neighbour upscale of uint8 [T, H, W, 3] by the smallest integer
  factor that makes min(H, W) >= min_side (factor 1 if already large enough)."""
  frames = frames_lib.check_frames(frames)
  factor = max(1, math.ceil(min_side / min(frames.shape[1:3])))
  return np.repeat(np.repeat(frames, factor, axis=1), factor, axis=2)


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
  """yuv420p needs even width and height; repeat the last row/column if odd."""
  pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
  return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _imageio_ffmpeg():
  """imageio-ffmpeg, imported when an MP4 is written: it is a 65 MB binary that machines
  writing only GIFs (e.g. an accelerator image without it) need not have."""
  try:
    import imageio_ffmpeg  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("writing MP4 needs imageio-ffmpeg (requirements.txt); without it, "
                      "write .gif (evaluation: config.report.video_format='gif')") from e
  return imageio_ffmpeg


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float,
                min_side: int = DEFAULT_MIN_SIDE) -> str:
  """Writes uint8 [T, H, W, 3] RGB frames to `path` (.mp4 or .gif); returns the path.

  Frames are first upscaled with `upscale(frames, min_side)`. MP4: H.264 via
  imageio-ffmpeg, `-pix_fmt yuv420p`, CRF 17. GIF: Pillow via imageio, looping
  forever, 256-colour palette per frame (so colours are approximate).
  """
  path = os.fspath(path)
  frames = upscale(frames, min_side)
  extension = os.path.splitext(path)[1].lower()
  if extension == ".mp4":
    frames = _pad_to_even(frames)
    height, width = frames.shape[1:3]
    writer = _imageio_ffmpeg().write_frames(
        path, (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p", quality=None, macro_block_size=1,
        output_params=["-crf", str(H264_CRF), "-movflags", "+faststart"])
    writer.send(None)  # starts ffmpeg
    for frame in frames:
      writer.send(np.ascontiguousarray(frame))
    writer.close()
  elif extension == ".gif":
    iio.imwrite(path, frames, extension=".gif", plugin="pillow",
                duration=_MS_PER_SECOND / fps, loop=0)
  else:
    raise ValueError(f"unsupported video extension {extension!r} (use .mp4 or .gif)")
  return path


def motion_panel(motion_rgb: np.ndarray, sigma: float = motion_encoding.DEFAULT_SIGMA,
                 max_magnitude: float | None = None) -> np.ndarray:
  """Renders an encoded motion video uint8 [T, H, W, 3] for people -> uint8 [T, H, W, 3].

  Decodes it to flow (`motion_encoding.motion_video_to_flows`, T-1 flows; the
  first is repeated to keep T frames, as the encoding does) and draws it with
  the Middlebury colour wheel. The scale is fixed (default: the encoding's
  largest magnitude, sigma * sqrt(H^2 + W^2)) so panels of different clips use
  the same colours for the same motion.
  """
  motion_rgb = frames_lib.check_frames(motion_rgb, min_frames=2, what="motion video")
  height, width = motion_rgb.shape[1:3]
  if max_magnitude is None:
    max_magnitude = sigma * float(np.hypot(height, width))
  flows = motion_encoding.motion_video_to_flows(motion_rgb, sigma)
  flows = np.concatenate([flows[:1], flows], axis=0)
  return motion_encoding.flow_to_colour_wheel(flows, max_magnitude=max_magnitude)


def side_by_side(video: np.ndarray, motion_rgb: np.ndarray,
                 sigma: float = motion_encoding.DEFAULT_SIGMA, gap: int = 2) -> np.ndarray:
  """A "video | motion" panel: uint8 [T, H, 2W + gap, 3].

  `motion_rgb` is an encoded motion video (what the model outputs beside the
  frames); it is shown as its decoded flow on the colour wheel (`motion_panel`),
  separated from the frames by a white `gap` pixels wide.
  """
  video = frames_lib.check_frames(video, what="video")
  motion_rgb = frames_lib.check_frames(motion_rgb, what="motion video")
  if motion_rgb.shape != video.shape:
    raise ValueError(f"motion {motion_rgb.shape} must match video {video.shape}")
  separator = np.full(video.shape[:2] + (gap, 3), 255, np.uint8)
  return np.concatenate([video, separator, motion_panel(motion_rgb, sigma)], axis=2)


def frame_grid(panels: Sequence[np.ndarray], *, scale: int = 4, gap: int = 2) -> np.ndarray:
  """Clips as one still image: row i holds the frames of panels[i] left to right.

  panels: uint8 [T, H, W, 3] each (e.g. `side_by_side` panels), all the same shape.
  Each frame is enlarged `scale` times (nearest neighbour, so pixels stay visible)
  and frames and rows are `gap` white pixels apart. Returns uint8 [rows, cols, 3].
  """
  if not panels:
    raise ValueError("frame_grid needs at least one clip")
  panels = [frames_lib.check_frames(p, what="clip") for p in panels]
  if len({p.shape for p in panels}) != 1:
    raise ValueError(f"frame_grid clips must share a shape, got {sorted({p.shape for p in panels})}")
  t, h, w, _ = panels[0].shape
  h, w = h * scale, w * scale
  grid = np.full((len(panels) * (h + gap) - gap, t * (w + gap) - gap, 3), 255, np.uint8)
  for row, panel in enumerate(panels):
    big = panel.repeat(scale, axis=1).repeat(scale, axis=2)
    for k in range(t):
      grid[row * (h + gap):row * (h + gap) + h, k * (w + gap):k * (w + gap) + w] = big[k]
  return grid
