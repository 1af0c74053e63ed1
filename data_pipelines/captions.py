"""Which video files to use and what they show: finding videos, reading the
captions file, matching the two, and naming each video stably.

Captions: one per video, from a JSONL file ({"video": path, "caption": text} per
line) or a CSV file with columns video,caption; paths relative to the captions
file or absolute. Policy for a video with no caption: it is SKIPPED and listed in
the report (reason "no_caption"), never trained on with an empty caption: the
empty caption is the classifier-free-guidance null condition, and silently
feeding it real clips would bias what the model learns for it.

Videos and captions are local files (they are decoded by local processes).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
from collections.abc import Sequence
from typing import Any

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg",
                    ".ts", ".flv", ".wmv", ".3gp", ".gif")
CSV_COLUMNS = ("video", "caption")
CSV_FIRST_DATA_LINE = 2  # line 1 is the header
CSV_ENCODING = "utf-8-sig"  # -sig: Excel's BOM


class CaptionsError(ValueError):
  """The captions file is malformed (a user error: the build stops)."""


@dataclasses.dataclass(frozen=True)
class SourceVideo:
  """A video file to cut clips from. `name` is its stable relative name (clip ids,
  split assignment); `key` names its cache entry (clip_cache.cache_key)."""
  path: str
  name: str
  caption: str
  key: str = ""


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A file that gave no clips, and why."""
  path: str
  reason: str
  detail: str = ""


def find_videos(videos: str) -> list[str]:
  """Absolute paths of the videos in a directory (recursive, by extension) or glob."""
  if os.path.isdir(videos):
    found = [os.path.join(root, name)
             for root, _, names in os.walk(videos, followlinks=True) for name in names
             if name.lower().endswith(VIDEO_EXTENSIONS)]
  else:  # a glob names its files explicitly: take them whatever their extension
    found = [p for p in glob.glob(videos, recursive=True) if os.path.isfile(p)]
  return sorted({os.path.realpath(p) for p in found})


def load_captions(path: str) -> tuple[dict[str, str], list[str]]:
  """Reads a JSONL or CSV captions file -> ({real video path: caption}, warnings).

  The format is chosen by extension (.csv: CSV; anything else: JSONL). Repeated
  videos keep their first caption (a warning says so).
  """
  base = os.path.dirname(os.path.abspath(path))
  rows: list[tuple[int, Any, Any]] = []
  with open(path, newline="", encoding=CSV_ENCODING) as f:
    if path.lower().endswith(".csv"):
      reader = csv.DictReader(f)
      if not reader.fieldnames or not set(CSV_COLUMNS) <= set(reader.fieldnames):
        raise CaptionsError(f"{path}: CSV needs columns 'video' and 'caption', "
                            f"has {reader.fieldnames}")
      rows = [(i, r["video"], r["caption"])
              for i, r in enumerate(reader, start=CSV_FIRST_DATA_LINE)]
    else:
      for i, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise CaptionsError(f"{path}:{i}: not JSON ({e})") from e
        if not isinstance(record, dict):
          raise CaptionsError(f"{path}:{i}: expected an object, got {type(record).__name__}")
        rows.append((i, record.get("video"), record.get("caption")))
  captions: dict[str, str] = {}
  warnings = []
  for line, video, caption in rows:
    if not isinstance(video, str) or not video or not isinstance(caption, str):
      raise CaptionsError(f"{path}:{line}: needs a 'video' path and a 'caption' string")
    real = os.path.realpath(os.path.join(base, os.path.expanduser(video)))
    if real in captions:
      if captions[real] != caption:
        warnings.append(f"{path}:{line}: second caption for {video} ignored")
      continue
    captions[real] = caption
  return captions, warnings


def match_captions(video_paths: Sequence[str] | None, captions: dict[str, str],
                   captions_path: str) -> tuple[list[SourceVideo], list[Skipped]]:
  """Pairs videos with captions (None: the videos the captions file lists).

  Videos without a caption, or with an empty one, are skipped ("no_caption",
  see the module docstring for why); caption rows naming a
  missing file are skipped ("missing_file") when the captions define the set.
  """
  skipped = []
  if video_paths is None:
    video_paths = []
    for path in sorted(captions):
      if os.path.isfile(path):
        video_paths.append(path)
      else:
        skipped.append(Skipped(path, "missing_file", "listed in the captions file"))
  sources = []
  for path in video_paths:
    if path not in captions:
      skipped.append(Skipped(path, "no_caption", f"not in {captions_path}"))
    elif not captions[path].strip():
      skipped.append(Skipped(path, "no_caption", f"empty caption in {captions_path}"))
    else:
      sources.append(SourceVideo(path=path, name="", caption=captions[path]))
  names = relative_names([s.path for s in sources], os.path.dirname(os.path.abspath(captions_path)))
  return [dataclasses.replace(s, name=n) for s, n in zip(sources, names)], skipped


def relative_names(paths: Sequence[str], preferred_root: str) -> list[str]:
  """Short, machine-independent names: relative to the captions file's folder when
  all videos are under it, else to their common folder."""
  if not paths:
    return []
  root = os.path.realpath(preferred_root)
  if not all(p.startswith(root + os.sep) for p in paths):
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
  return [os.path.relpath(p, root) for p in paths]
