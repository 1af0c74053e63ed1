"""Optical-flow estimators, behind one small interface and a registry.

VideoJAM trains on optical flow precomputed offline (DESIGN.md §1), and the
motion metrics (evaluation/motion_metrics.py) measure generated clips with flow
too; both get their estimators here. Any estimator that maps a clip to its
forward flow can be used:

  estimate(frames uint8 [T, H, W, 3]) -> flow float32 [T-1, H, W, 2]

where flow[k] is (dx, dy) in pixels, taking pixel p of frame k to p + flow[k](p) in
frame k+1 (the same convention as the synthetic renderer and motion_encoding.py).

Built in:
  dis        OpenCV Dense Inverse Search (Kroeger et al. 2016), presets ultrafast/fast/
             medium. The default: good accuracy per CPU second.
  farneback  OpenCV Farneback polynomial expansion (2003): slower, smoother, a reference.
  raft       RAFT (Teed & Deng 2020, what the paper used) in JAX, batched on CPU, GPU or
             TPU (videojam_jax/data/raft_flow.py), with torchvision's raft_large or
             raft_small weights, which the user downloads: `--estimator=raft
             --estimator_weights=raft_large_C_T_SKHT_V2-ff5fadd5.pth`.

Plugging in your own estimator: write a class with a `name` attribute and an
`estimate` method as above, then register it before building:

  from videojam_jax.data import flow_estimators
  flow_estimators.register_estimator("mine", MyFlow)

From the command line, put that call in a module of yours and pass
`--estimator_module=my_package.my_flow --estimator=mine`; the build imports the
module in every worker process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

import cv2
import numpy as np

from videojam_jax.data import frames as frames_lib

DEFAULT_ESTIMATOR = "dis"
# The one table of DIS speed presets (the builders and the metrics both use it).
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
DEFAULT_DIS_PRESET = "medium"  # the most accurate preset; our clips are small, so it is cheap

# Farneback parameters: OpenCV's documented example values (tutorial / samples),
# except more pyramid levels so that motions of several pixels are still found.
FARNEBACK_DEFAULTS = dict(pyr_scale=0.5, levels=4, winsize=15, iterations=3,
                          poly_n=5, poly_sigma=1.2)
_MIN_FRAMES = 2  # flow is between frames


class FlowEstimator(Protocol):
  """What the data builders need from a flow estimator."""

  name: str  # recorded in dataset metadata, e.g. "dis:medium"

  def estimate(self, frames: np.ndarray) -> np.ndarray:
    """uint8 frames [T, H, W, 3] -> float32 forward flow [T-1, H, W, 2] (dx, dy) px."""


class FlowEstimatorError(ValueError):
  """An estimator could not be created (unknown name, bad options)."""


class EstimatorUnavailableError(FlowEstimatorError):
  """The estimator exists as a slot but cannot run here (e.g. no weights)."""


EstimatorFactory = Callable[..., FlowEstimator]
_REGISTRY: dict[str, EstimatorFactory] = {}


def register_estimator(name: str, factory: EstimatorFactory | None = None, *,
                       overwrite: bool = False):
  """Registers `factory(**options) -> FlowEstimator` under `name`.

  Usable directly or as a class decorator. Re-registering a name needs
  overwrite=True, so a typo cannot silently replace a built-in estimator.
  """
  def _register(f: EstimatorFactory) -> EstimatorFactory:
    if name in _REGISTRY and not overwrite:
      raise FlowEstimatorError(
          f"flow estimator {name!r} is already registered; pass overwrite=True "
          "to replace it")
    _REGISTRY[name] = f
    return f
  return _register(factory) if factory is not None else _register


def available_estimators() -> list[str]:
  """Names that `create_estimator` accepts."""
  return sorted(_REGISTRY)


def create_estimator(name: str = DEFAULT_ESTIMATOR, **options: Any) -> FlowEstimator:
  """Builds the estimator registered as `name` with `options` (e.g. preset='fast')."""
  if name not in _REGISTRY:
    raise FlowEstimatorError(
        f"unknown flow estimator {name!r}; available: {available_estimators()}. "
        "Register your own with videojam_jax.data.flow_estimators.register_estimator.")
  try:
    return _REGISTRY[name](**options)
  except TypeError as e:  # wrong option names: say which estimator refused them
    raise FlowEstimatorError(f"flow estimator {name!r} rejected options {options}: {e}") from e


class _PairwiseOpenCV:
  """Base for OpenCV estimators that work on consecutive grayscale frames."""

  name = "opencv"

  def estimate(self, frames: np.ndarray) -> np.ndarray:
    frames = frames_lib.check_frames(frames, min_frames=_MIN_FRAMES)
    grey = [_grey(f) for f in frames]
    flows = [self._pair(a, b) for a, b in zip(grey[:-1], grey[1:])]
    return np.stack(flows).astype(np.float32, copy=False)

  def pair(self, frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray:
    """Flow from uint8 RGB frame_a [H, W, 3] to frame_b -> float32 [H, W, 2]."""
    clip = frames_lib.check_frames(np.stack([frame_a, frame_b]), min_frames=_MIN_FRAMES,
                                   what="a frame pair")
    return np.asarray(self._pair(_grey(clip[0]), _grey(clip[1])), np.float32)

  def _pair(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    raise NotImplementedError


def _grey(frame: np.ndarray) -> np.ndarray:
  # OpenCV needs contiguous images; a frame of a reversed or strided clip is not.
  return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


@register_estimator("dis")
class DISEstimator(_PairwiseOpenCV):
  """OpenCV Dense Inverse Search optical flow (cv2.DISOpticalFlow)."""

  def __init__(self, preset: str = DEFAULT_DIS_PRESET):
    if preset not in DIS_PRESETS:
      raise FlowEstimatorError(
          f"unknown DIS preset {preset!r}; choose one of {sorted(DIS_PRESETS)}")
    self.preset = preset
    self.name = f"dis:{preset}"
    # One DIS object serves every pair: calc() keeps no state between calls
    # (results equal a fresh object's), and creating one per pair costs time.
    self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])

  def _pair(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    return self._dis.calc(prev, nxt, None)


@register_estimator("farneback")
class FarnebackEstimator(_PairwiseOpenCV):
  """OpenCV Farneback dense optical flow (cv2.calcOpticalFlowFarneback)."""

  def __init__(self, **params: float):
    unknown = set(params) - set(FARNEBACK_DEFAULTS)
    if unknown:
      raise FlowEstimatorError(
          f"unknown Farneback options {sorted(unknown)}; known: {sorted(FARNEBACK_DEFAULTS)}")
    self.params = {**FARNEBACK_DEFAULTS, **params}
    self.name = "farneback"

  def _pair(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    p = self.params
    return cv2.calcOpticalFlowFarneback(
        prev, nxt, None, p["pyr_scale"], int(p["levels"]), int(p["winsize"]),
        int(p["iterations"]), int(p["poly_n"]), p["poly_sigma"], 0)


@register_estimator("raft")
def raft(weights_path: str | None = None, variant: str | None = None,
         num_updates: int | str = 12, batch_size: int | str = 8) -> FlowEstimator:
  """RAFT (videojam_jax/data/raft_flow.py) with torchvision's raft_large / raft_small
  weights, which the user downloads: nothing is fetched at run time."""
  if not weights_path:
    raise EstimatorUnavailableError(
        "flow estimator 'raft' needs weights: download torchvision's raft_large or "
        "raft_small file (e.g. raft_large_C_T_SKHT_V2-ff5fadd5.pth) and pass its path "
        "(--estimator_weights=/path/to/raft.pth, i.e. weights_path=...).")
  if not os.path.exists(weights_path):
    raise EstimatorUnavailableError(f"RAFT weights not found at {weights_path!r}.")
  # Imported here: JAX and the network load only when RAFT is asked for.
  # pylint: disable=import-outside-toplevel
  from videojam_jax.data import raft_flow
  from videojam_jax.model.raft import weights as raft_weights
  try:
    return raft_flow.RaftEstimator(weights_path, variant=variant, num_updates=int(num_updates),
                                   batch_size=int(batch_size))
  except (raft_weights.RaftWeightsError, ValueError) as e:
    raise FlowEstimatorError(f"flow estimator 'raft': {e}") from e
