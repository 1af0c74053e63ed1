"""Renders records of any clip dataset (synthetic or from video files) to look at.

  python -m data_pipelines.inspect_dataset --dataset_dir DIR --split train --num 4 --out DIR

Each record becomes one MP4 (or GIF) of three panels side by side:

  frames | stored `flow` on the Middlebury colour wheel | stored `motion` (the RGB
  encoding the model trains on)

The flow panel of frame k shows the flow from frame k-1 to k (frame 0 repeats the
first flow), the same alignment the motion encoding uses, so the two right panels
should show the same motion in different colours. The wheel is scaled to the
clip's 99th-percentile flow magnitude (white: still; full colour: that or more). The file name
carries the record index and the caption; a JSON sidecar holds the full caption,
clip id and flow scale.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from absl import app
from absl import flags
import numpy as np
import tensorflow_datasets as tfds

from videojam_jax.data import pipeline as input_pipeline
from videojam_jax.data import motion_encoding
from videojam_jax.data import video_io

CAPTION_CHARS_IN_NAME = 60   # longer captions are cut in file names (sidecar has all)
PANEL_GAP = 2                # white pixels between panels (before upscaling)
DEFAULT_FPS = 8.0            # if the dataset's metadata has no fps
# The wheel's full colour: this percentile of the clip's flow magnitudes (robust to
# the few wild vectors estimated flow has at borders and occlusions).
SCALE_PERCENTILE = 99.0

def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def slug(text: str, max_chars: int = CAPTION_CHARS_IN_NAME) -> str:
  """A file-name-safe version of a caption."""
  return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:max_chars] or "no_caption"


def flow_panel(flow: np.ndarray) -> tuple[np.ndarray, float]:
  """Flow [T-1, H, W, 2] -> (colour-wheel frames uint8 [T, H, W, 3], scale in px)."""
  flow = np.asarray(flow, np.float32)
  scale = float(np.percentile(np.linalg.norm(flow, axis=-1), SCALE_PERCENTILE))
  padded = np.concatenate([flow[:1], flow], axis=0)  # align as the motion encoding does
  return motion_encoding.flow_to_colour_wheel(padded, max_magnitude=scale or None), scale


def render_record(record: dict[str, Any], flow_sigma: float = motion_encoding.DEFAULT_SIGMA
                  ) -> tuple[np.ndarray, float]:
  """One record -> (three-panel frames uint8 [T, H, 3W + 2 gaps, 3], flow scale px).

  The flow panel shows the stored flow, or (records without one) the motion video
  decoded back to flow with the dataset's `flow_sigma`.
  """
  video = np.asarray(record["video"], np.uint8)
  flow = (record["flow"] if "flow" in record else
          motion_encoding.motion_video_to_flows(np.asarray(record["motion"], np.uint8),
                                                flow_sigma))
  wheel, scale = flow_panel(flow)
  gap = np.full(video.shape[:2] + (PANEL_GAP, 3), 255, np.uint8)
  panels = [video, gap, wheel, gap, np.asarray(record["motion"], np.uint8)]
  return np.concatenate(panels, axis=2), scale


def inspect(dataset_dir: str, split: str, num: int, out_dir: str, *, start: int = 0,
            fmt: str = "mp4") -> list[str]:
  """Renders records [start, start + num) of `split`; returns the written paths."""
  version_dir = input_pipeline.find_dataset_version_dir(dataset_dir)
  builder = tfds.builder_from_directory(version_dir)
  metadata = dict(builder.info.metadata or {})
  fps = float(metadata.get("fps") or DEFAULT_FPS)
  source = builder.as_data_source(split)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for index in range(start, min(start + num, len(source))):
    record = source[index]
    caption = _text(record["caption"])
    frames, scale = render_record(
        record, float(metadata.get("flow_sigma") or motion_encoding.DEFAULT_SIGMA))
    stem = os.path.join(out_dir, f"{split}_{index:05d}_{slug(caption)}")
    written.append(video_io.write_video(f"{stem}.{fmt}", frames, fps))
    with open(f"{stem}.json", "w") as f:
      json.dump(dict(caption=caption, clip_id=_text(record["clip_id"]), split=split,
                     index=index, flow_scale_px=scale, dataset=version_dir,
                     flow_estimator=metadata.get("flow_estimator"),
                     panels="frames | flow (Middlebury wheel) | motion encoding"),
                f, indent=2)
  return written


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program)."""
  flags.DEFINE_string("dataset_dir", None,
                      "Dataset version dir, or a folder holding exactly one below it.")
  flags.DEFINE_string("split", "train", "Split to read.")
  flags.DEFINE_integer("num", 4, "Records to render.")
  flags.DEFINE_integer("start", 0, "Index of the first record.")
  flags.DEFINE_string("out", None, "Folder for the rendered files.")
  flags.DEFINE_enum("format", "mp4", ["mp4", "gif"], "Output format.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  paths = inspect(f.dataset_dir, f.split, f.num, f.out, start=f.start, fmt=f.format)
  print("\n".join(paths) if paths else "no records")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["dataset_dir", "out"])
  app.run(main)
