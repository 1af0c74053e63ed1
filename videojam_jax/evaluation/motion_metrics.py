"""Motion-coherence metrics for generated clips that need no downloaded weights.

Every metric takes a generated clip as uint8 [T, H, W, 3] RGB and measures its
motion with OpenCV's DIS optical flow (Kroeger et al., ECCV 2016; the "dis"
estimator of videojam_jax/data/flow_estimators.py), which ships with OpenCV and
so works offline, in place of the learned estimators (RAFT, FlowNet2, AMT) that
the published metrics use. Absolute values are therefore not comparable with
published VBench / Lai et al. numbers; they are meant for comparing our own
models, guidance settings and sweeps against each other.

  warping_error        Lai et al. 2018, lower is better
  motion_smoothness    VBench (Huang et al., CVPR 2024), higher is better
  dynamic_degree       VBench, is the clip moving at all (bool) + magnitude
  temporal_flickering  VBench, higher is better (steadier)
  motion_epe           VideoJAM-specific: does the model's own motion output
                       agree with the motion of its frames; lower is better

Flow convention: flow[t] maps frame t to frame t+1, i.e. the pixel at x in
frame t is at x + flow[t](x) in frame t+1, (dx, dy) in pixels, matching
`motion_encoding`. Everything here is host-side NumPy/OpenCV.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from videojam_jax.data import flow_estimators
from videojam_jax.data import frames as frames_lib
from videojam_jax.data import motion_encoding

# Every `preset` argument is a key of flow_estimators.DIS_PRESETS.
DEFAULT_PRESET = flow_estimators.DEFAULT_DIS_PRESET

# Occlusion test of Ruder et al. (GCPR 2016), as used by Lai et al.'s evaluation code.
_CONSISTENCY_REL = 0.01   # |fw + bw|^2 > REL * (|fw|^2 + |bw|^2) + ABS  -> occluded
_CONSISTENCY_ABS = 0.5
_BOUNDARY_REL = 0.01      # |grad fw|^2 > REL * |fw|^2 + ABS  -> motion boundary
_BOUNDARY_ABS = 0.002

# VBench dynamic degree (vbench/dynamic_degree.py).
_TOP_FRACTION = 0.05            # mean of the largest 5% flow magnitudes per frame pair
_VBENCH_THRESHOLD_PX = 6.0      # at VBench's reference resolution and frame rate
_VBENCH_REFERENCE_SIDE = 256.0  # the threshold scales linearly with min(H, W)
_VBENCH_FPS = 8.0               # VBench samples frames at ~8 fps
_VBENCH_COUNT_PER_16 = 4        # moving pairs needed, per 16 sampled frames

_MAX_PIXEL = 255.0


class DynamicDegree(NamedTuple):
  """Result of `dynamic_degree`."""
  is_dynamic: bool   # VBench's per-video verdict
  magnitude: float   # mean over frame pairs of the top-5% flow magnitude, pixels
  threshold: float   # the per-pair threshold it was compared with, pixels


def _check_video(video: np.ndarray, min_frames: int = 2) -> np.ndarray:
  """uint8 [T >= min_frames, H, W, 3] or ValueError (the shared frames validator)."""
  return frames_lib.check_frames(video, min_frames=min_frames, what="video")


def video_flows(video: np.ndarray, preset: str = DEFAULT_PRESET) -> np.ndarray:
  """Forward DIS flows of consecutive frames: uint8 [T, H, W, 3] -> float32 [T-1, H, W, 2]."""
  return flow_estimators.DISEstimator(preset).estimate(_check_video(video))


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
  """Backward warp: out(x) = image(x + flow(x)), bilinear, border replicated.

  With flow = flow_{t->t+1} and image = frame t+1 this brings frame t+1 into
  frame t's pixel grid. Works for any [H, W, C] float image (including flows).
  """
  height, width = flow.shape[:2]
  grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32),
                               np.arange(height, dtype=np.float32))
  map_x = grid_x + flow[..., 0].astype(np.float32)
  map_y = grid_y + flow[..., 1].astype(np.float32)
  out = cv2.remap(np.asarray(image, np.float32), map_x, map_y, cv2.INTER_LINEAR,
                  borderMode=cv2.BORDER_REPLICATE)
  return out.reshape(np.shape(image))


def _squared_norm(flow: np.ndarray) -> np.ndarray:
  return np.sum(np.square(flow), axis=-1)


def non_occlusion_mask(fw: np.ndarray, bw: np.ndarray) -> np.ndarray:
  """Valid-pixel mask M_t [H, W] (bool) for frame t from flows fw = t->t+1, bw = t+1->t.

  Ruder et al., "Artistic style transfer for videos", GCPR 2016, as used in
  Lai et al.'s evaluation: a pixel is occluded when forward and backward flow
  disagree, |fw + bw(x + fw)|^2 > 0.01 (|fw|^2 + |bw(x + fw)|^2) + 0.5, or it sits
  on a motion boundary, |grad fw_x|^2 + |grad fw_y|^2 > 0.01 |fw|^2 + 0.002.
  We also mark pixels whose flow leaves the frame: they have no correspondence.
  """
  bw_at_target = warp(bw, fw)
  sq = _squared_norm
  inconsistent = sq(fw + bw_at_target) > _CONSISTENCY_REL * (sq(fw) + sq(bw_at_target)) + _CONSISTENCY_ABS
  # Forward differences, zero on the last row/column (as in Lai et al.'s code).
  du = np.zeros_like(fw)
  dv = np.zeros_like(fw)
  du[:, :-1] = fw[:, :-1] - fw[:, 1:]
  dv[:-1, :] = fw[:-1, :] - fw[1:, :]
  boundary = sq(du) + sq(dv) > _BOUNDARY_REL * sq(fw) + _BOUNDARY_ABS
  height, width = fw.shape[:2]
  grid_x, grid_y = np.meshgrid(np.arange(width), np.arange(height))
  target_x, target_y = grid_x + fw[..., 0], grid_y + fw[..., 1]
  outside = (target_x < 0) | (target_x > width - 1) | (target_y < 0) | (target_y > height - 1)
  return ~(inconsistent | boundary | outside)


def warping_error(video: np.ndarray, preset: str = DEFAULT_PRESET) -> float:
  """Flow warping error with an occlusion mask (lower = more temporally consistent).

  Lai et al., "Learning Blind Video Temporal Consistency", ECCV 2018, eq. (9):

    E_warp = 1/(T-1) sum_{t=1}^{T-1} 1/sum_x M_t(x) sum_x M_t(x) ||V_t(x) - V^_{t+1}(x)||^2

  where V^_{t+1} = warp(V_{t+1}, F_{t->t+1}) is frame t+1 warped back onto frame
  t along the forward flow, ||.||^2 sums over the RGB channels with pixel values
  in [0, 1], and M_t is `non_occlusion_mask` (forward-backward consistency).
  Flow here is DIS instead of FlowNet2. A pair with no valid pixel adds 0, as in
  Lai et al.'s code.
  """
  video = _check_video(video)
  frames = video.astype(np.float32) / _MAX_PIXEL
  estimator = flow_estimators.DISEstimator(preset)
  forward = estimator.estimate(video)                # t -> t+1
  backward = estimator.estimate(video[::-1])[::-1]   # t+1 -> t
  errors = []
  for t, (fw, bw) in enumerate(zip(forward, backward)):
    mask = non_occlusion_mask(fw, bw)
    sq_err = np.sum(np.square(frames[t] - warp(frames[t + 1], fw)), axis=-1)
    errors.append(float(np.sum(sq_err * mask) / max(int(mask.sum()), 1)))
  return float(np.mean(errors))


def interpolate_midframe(frame_0: np.ndarray, frame_1: np.ndarray,
                         preset: str = DEFAULT_PRESET) -> np.ndarray:
  """The frame halfway between two uint8 frames, by flow-based interpolation -> uint8.

  Stands in for AMT (VBench's interpolator): bidirectional DIS flow, the
  linear-motion approximation of Super SloMo (Jiang et al., CVPR 2018) at
  t = 1/2,  F_{t->0} = (F_{1->0} - F_{0->1}) / 4,  F_{t->1} = -F_{t->0},
  then the average of both frames backward-warped to time t.
  """
  estimator = flow_estimators.DISEstimator(preset)
  f01 = estimator.pair(frame_0, frame_1)
  f10 = estimator.pair(frame_1, frame_0)
  ft0 = 0.25 * (f10 - f01)
  mid = 0.5 * (warp(frame_0.astype(np.float32), ft0) + warp(frame_1.astype(np.float32), -ft0))
  return np.clip(np.rint(mid), 0, _MAX_PIXEL).astype(np.uint8)


def motion_smoothness(video: np.ndarray, preset: str = DEFAULT_PRESET) -> float:
  """VBench motion smoothness with flow interpolation in place of AMT (higher = smoother).

  VBench (Huang et al., CVPR 2024, vbench/motion_smoothness.py): keep the even
  frames, reconstruct every odd frame 2k+1 (that has a successor) by
  interpolating between frames 2k and 2k+2 (`interpolate_midframe`), and score

    S = (255 - mean_k mean_{x,c} |V_{2k+1} - V^_{2k+1}|) / 255     in [0, 1],

  so smooth, linear motion is predictable from its neighbours and scores ~1,
  while jitter or teleports cannot be interpolated and score lower.
  """
  video = _check_video(video, min_frames=3)
  errors = []
  for i in range(1, video.shape[0] - 1, 2):
    mid = interpolate_midframe(video[i - 1], video[i + 1], preset)
    errors.append(np.mean(np.abs(video[i].astype(np.float32) - mid)))
  return float((_MAX_PIXEL - np.mean(errors)) / _MAX_PIXEL)


def dynamic_degree(video: np.ndarray, fps: float = _VBENCH_FPS,
                   preset: str = DEFAULT_PRESET) -> DynamicDegree:
  """VBench dynamic degree with DIS in place of RAFT: does the clip move?

  VBench (vbench/dynamic_degree.py): sample frames at about 8 fps (every
  max(1, round(fps / 8))-th frame), and for each consecutive pair take
  s_k = mean of the largest 5% of per-pixel flow magnitudes |F_k(x)|. The clip
  is dynamic when at least round(4 N / 16) pairs (N sampled frames; at least 1
  here, VBench's rule would give 0 for N <= 2) have s_k > tau, with VBench's
  threshold scaled by resolution and frame rate:

    tau = 6 px * max(1, 8 / fps) * min(H, W) / 256

  (6 px at 256 px and 8 fps; e.g. 0.75 px for a 32 x 32 clip at 8 fps).
  Returns the verdict, the raw magnitude mean_k s_k in pixels, and tau.
  """
  video = _check_video(video)
  interval = max(1, round(fps / _VBENCH_FPS))
  frames = video[::interval]
  if frames.shape[0] < 2:
    raise ValueError(f"fps={fps} leaves fewer than 2 sampled frames of {video.shape[0]}")
  height, width = video.shape[1:3]
  threshold = (_VBENCH_THRESHOLD_PX * max(1.0, _VBENCH_FPS / fps)
               * min(height, width) / _VBENCH_REFERENCE_SIDE)
  needed = max(1, round(_VBENCH_COUNT_PER_16 * frames.shape[0] / 16.0))
  top_k = max(1, int(height * width * _TOP_FRACTION))
  scores = []
  for flow in video_flows(frames, preset):
    magnitude = np.linalg.norm(flow, axis=-1).ravel()
    scores.append(float(np.mean(np.sort(magnitude)[-top_k:])))
  moving_pairs = sum(score > threshold for score in scores)
  return DynamicDegree(bool(moving_pairs >= needed), float(np.mean(scores)), float(threshold))


def temporal_flickering(video: np.ndarray) -> float:
  """VBench temporal flickering score (higher = steadier), in [0, 1].

  VBench (vbench/temporal_flickering.py):

    S = (255 - 1/(T-1) sum_t mean_{x,c} |V_{t+1} - V_t|) / 255.

  VBench scores only videos of static scenes (its prompt set for this
  dimension is filtered to static clips), so that the score measures flicker
  rather than motion. Here it is computed on every video: on a moving clip it
  also drops with motion, so read it next to `dynamic_degree`.
  """
  video = _check_video(video).astype(np.float32)
  mae = np.mean(np.abs(video[1:] - video[:-1]))
  return float((_MAX_PIXEL - mae) / _MAX_PIXEL)


def motion_epe(video: np.ndarray, motion_video: np.ndarray,
               sigma: float = motion_encoding.DEFAULT_SIGMA,
               preset: str = DEFAULT_PRESET) -> float:
  """End-point error between the model's motion output and its frames' motion, pixels.

  VideoJAM-specific: the model generates a motion video (flow encoded as RGB,
  `motion_encoding`) beside the frames. Decode it, F^m = motion_video_to_flows
  (motion_video, sigma) [T-1], measure the frames' flow F^d_t = DIS(V_t, V_{t+1}),
  and report

    EPE = 1/((T-1) H W) sum_{t,x} ||F^m_t(x) - clip(F^d_t(x))||_2.

  The measured flow is clipped to the largest magnitude the encoding can
  express, sigma * sqrt(H^2 + W^2), so a correct but saturated motion output is
  not penalised. Low EPE: the model's idea of the motion matches what it drew.
  """
  video = _check_video(video)
  motion_video = np.asarray(motion_video)
  if motion_video.shape != video.shape:
    raise ValueError(f"motion video {motion_video.shape} must match video {video.shape}")
  predicted = motion_encoding.motion_video_to_flows(motion_video, sigma)
  measured = video_flows(video, preset)
  height, width = video.shape[1:3]
  max_magnitude = sigma * float(np.hypot(height, width))  # the encoding's clip point
  norm = np.linalg.norm(measured, axis=-1, keepdims=True)
  measured = measured * np.minimum(1.0, max_magnitude / np.maximum(norm, 1e-6))
  return float(np.mean(np.linalg.norm(predicted - measured, axis=-1)))


def compute_all(video: np.ndarray, motion_video: np.ndarray | None = None,
                sigma: float = motion_encoding.DEFAULT_SIGMA, fps: float = _VBENCH_FPS,
                preset: str = DEFAULT_PRESET) -> dict[str, float]:
  """Every metric of one clip, as a flat dict of floats (for tables and JSON).

  Keys: warping_error, motion_smoothness (needs >= 3 frames, else NaN),
  dynamic_degree (1.0 / 0.0), dynamic_magnitude (pixels), temporal_flickering,
  and motion_epe when `motion_video` is given.
  """
  video = _check_video(video)
  dynamic = dynamic_degree(video, fps=fps, preset=preset)
  metrics = {
      "warping_error": warping_error(video, preset),
      "motion_smoothness": (motion_smoothness(video, preset) if video.shape[0] >= 3
                            else float("nan")),
      "dynamic_degree": float(dynamic.is_dynamic),
      "dynamic_magnitude": dynamic.magnitude,
      "temporal_flickering": temporal_flickering(video),
  }
  if motion_video is not None:
    metrics["motion_epe"] = motion_epe(video, motion_video, sigma, preset)
  return metrics
