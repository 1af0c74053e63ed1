"""Accuracy and speed of the flow estimators, against exact synthetic flow.

  python -m benchmarks.flow_accuracy [--sizes=64,256 --num_clips=8 --threads=1] \
      [--raft_weights=raft_small_C_T_V2-01064c6d.pth,raft_large_C_T_SKHT_V2-ff5fadd5.pth]

Renders synthetic physics clips (data_pipelines/synthetic_physics.py), whose
forward flow is exact, runs every built-in estimator and preset on them and
prints, per frame size:

  mean EPE      end-point error |estimate - exact| in pixels, over all pixels
  moving EPE    the same over pixels whose exact flow is >= MOVING_PX
  frames/s      flow fields per second (one frame pair each), in one process

Occluded and disoccluded pixels are included (the exact flow there is that of
the surface at the pixel in frame k; no estimator can see where it went). The
"zero" row (predicting no motion) is the floor any useful estimator must beat.
Object speeds scale with the frame, so displacements at 256 px are 4x those at
64 px. --threads sets OpenCV's thread count (1: what each build worker uses).
--raft_weights adds a RAFT row per torchvision weights file (downloaded by you: none
ship with the project); RAFT runs through JAX on its default device.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from absl import app
from absl import flags
import cv2
import numpy as np

from data_pipelines import synthetic_physics
from videojam_jax.data import flow_estimators

MOVING_PX = 0.5   # exact flow at least this long (px) counts as moving
WARMUP_PAIRS = 2  # untimed estimates first: OpenCV allocates per size on first use

_SIZES = flags.DEFINE_list("sizes", ["64", "256"], "Square frame sizes.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 8, "Synthetic clips per size.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 8, "Frames per clip.")
_SEED = flags.DEFINE_integer("seed", 0, "First clip seed.")
_THREADS = flags.DEFINE_integer("threads", 1, "OpenCV threads (cv2.setNumThreads).")
_RAFT = flags.DEFINE_list("raft_weights", [], "torchvision RAFT weight files to add.")


def estimator_specs(raft_weights: Sequence[str] = ()) -> list[tuple[str, dict]]:
  """Every built-in estimator configuration worth comparing (RAFT: one per weights file)."""
  return ([("dis", {"preset": p}) for p in flow_estimators.DIS_PRESETS]
          + [("farneback", {})] + [("raft", {"weights_path": w}) for w in raft_weights])


class ZeroFlow:
  """Predicts no motion: the baseline."""
  name = "zero (baseline)"

  def estimate(self, frames: np.ndarray) -> np.ndarray:
    t, h, w, _ = frames.shape
    return np.zeros((t - 1, h, w, 2), np.float32)


def evaluate(estimator: flow_estimators.FlowEstimator,
             clips: Sequence[synthetic_physics.SyntheticClip]) -> dict[str, float]:
  """Mean EPE, moving-pixel EPE and frames/s of `estimator` on `clips`."""
  estimator.estimate(clips[0].video[:WARMUP_PAIRS + 1])
  errors, moving_errors, seconds, pairs = [], [], 0.0, 0
  for clip in clips:
    start = time.perf_counter()
    flow = estimator.estimate(clip.video)
    seconds += time.perf_counter() - start
    pairs += len(flow)
    epe = np.linalg.norm(flow - clip.flow, axis=-1)
    errors.append(epe.ravel())
    moving_errors.append(epe[np.linalg.norm(clip.flow, axis=-1) >= MOVING_PX])
  moving = np.concatenate(moving_errors)
  return dict(epe=float(np.mean(np.concatenate(errors))),
              moving_epe=float(np.mean(moving)) if moving.size else float("nan"),
              fps=pairs / seconds if seconds > 0 else float("inf"))


def run(sizes: Sequence[int], num_clips: int, num_frames: int, seed: int,
        raft_weights: Sequence[str] = ()) -> list[dict]:
  """Rows of the table: one per (size, estimator)."""
  rows = []
  for size in sizes:
    clips = [synthetic_physics.render_clip(seed + i, num_frames, size, size)
             for i in range(num_clips)]
    mean_motion = float(np.mean([np.linalg.norm(c.flow, axis=-1)[
        np.linalg.norm(c.flow, axis=-1) >= MOVING_PX].mean() for c in clips]))
    estimators = [ZeroFlow()] + [flow_estimators.create_estimator(n, **o)
                                 for n, o in estimator_specs(raft_weights)]
    for estimator in estimators:
      rows.append(dict(size=size, estimator=estimator.name, mean_motion=mean_motion,
                       **evaluate(estimator, clips)))
  return rows


def format_table(rows: Sequence[dict]) -> str:
  lines = ["| size | estimator | mean EPE (px) | moving EPE (px) | frames/s |",
           "|---:|---|---:|---:|---:|"]
  for r in rows:
    fps = "-" if r["estimator"].startswith("zero") else f"{r['fps']:.0f}"
    lines.append(f"| {r['size']} | {r['estimator']} | {r['epe']:.3f} | "
                 f"{r['moving_epe']:.3f} | {fps} |")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cv2.setNumThreads(_THREADS.value)
  sizes = [int(s) for s in _SIZES.value]
  rows = run(sizes, _NUM_CLIPS.value, _NUM_FRAMES.value, _SEED.value, _RAFT.value)
  print(f"{_NUM_CLIPS.value} synthetic clips x {_NUM_FRAMES.value - 1} flow fields per "
        f"size; OpenCV threads: {_THREADS.value}; moving: exact |flow| >= {MOVING_PX} px")
  for size in sizes:
    motion = next(r["mean_motion"] for r in rows if r["size"] == size)
    print(f"  {size}px: mean exact motion of moving pixels {motion:.2f} px/frame")
  print(format_table(rows))


if __name__ == "__main__":
  app.run(main)
