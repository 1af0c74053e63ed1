"""The resumable per-file cache of stage 1 (clips + flow), and its keys.

Each video file's clips and flow are cached in a work dir under a key made of
the file's path, size and mtime and every setting that changes the clips
(`cache_key`). An entry is written into a temporary folder and renamed into
place when complete, so it is all of a file or nothing. A file that cannot give
clips (corrupt, truncated, too short, not a video) gets a failure record
instead. A rerun finds both and redoes nothing; changing a file or a setting
changes its key.

Layout of the work dir (a local folder: entries are renamed into place, which
object stores cannot do atomically):

  clips/<key>/manifest.json + chunk-00000.npz ...   one entry per finished file
  failed/<key>.json                                 files that gave no clips, and why
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from data_pipelines import motion_filters
from data_pipelines import video_files
from data_pipelines.captions import SourceVideo
from videojam_jax import files

if TYPE_CHECKING:  # flow_workers imports this module; only the type is needed here
  from data_pipelines.flow_workers import FlowSpec

# Bump when the cached arrays change meaning: old entries are then ignored.
CACHE_VERSION = 2   # 2: manifests record each clip's shot and motion statistics
# Clips per cache chunk: bounds a worker's memory on long files (a 256x256x8 clip
# with flow is ~7 MB).
CHUNK_CLIPS = 32
KEY_STEM_CHARS = 40   # characters of the file name kept in its key (readability)
_TMP_MARKER = ".tmp-"  # in the names of entries still being written


def cache_key(path: str, clip_spec: video_files.ClipSpec, estimator_name: str,
              flow_spec: FlowSpec) -> str:
  """Names a file's cache entry: changes when the file or any clip setting does.

  "<file stem>-<json_digest of the identity>"; the identity's encoding must not
  change, or every existing cache entry would be recomputed.
  """
  stat = os.stat(path)
  identity = dict(version=CACHE_VERSION, path=path, size=stat.st_size,
                  mtime_ns=stat.st_mtime_ns, clip=dataclasses.asdict(clip_spec),
                  estimator=estimator_name, options=[list(o) for o in flow_spec.options])
  stem = "".join(c if c.isalnum() or c in "-_" else "_"
                 for c in os.path.splitext(os.path.basename(path))[0])[:KEY_STEM_CHARS]
  return f"{stem}-{files.json_digest(identity)}"


class WorkDirError(ValueError):
  """The flow work dir cannot be used (e.g. it is not a local folder)."""


@dataclasses.dataclass(frozen=True)
class FileResult:
  """What stage 1 did with one file. status: done | cached | skipped | error."""
  path: str
  key: str
  status: str
  num_clips: int = 0
  num_shots: int = 0     # shots (between cuts) that gave clips
  reason: str = ""
  detail: str = ""
  seconds: float = 0.0


class ClipCache:
  """The work dir: clips/<key>/ (manifest.json + chunk-*.npz), failed/<key>.json."""

  MANIFEST = "manifest.json"

  def __init__(self, work_dir: str):
    if not files.is_local(work_dir):
      raise WorkDirError(f"the flow work dir must be a local folder, got {work_dir!r}")
    self.root = work_dir
    self.clips_dir = os.path.join(work_dir, "clips")
    self.failed_dir = os.path.join(work_dir, "failed")

  def entry_dir(self, key: str) -> str:
    return os.path.join(self.clips_dir, key)

  def failure_path(self, key: str) -> str:
    return os.path.join(self.failed_dir, key + ".json")

  def lookup(self, source: SourceVideo) -> FileResult | None:
    """The cached result for a file, if stage 1 already finished it.

    An entry that cannot be read (disk trouble, hand edits) counts as absent and
    is removed, so the file is simply redone.
    """
    entry = self.entry_dir(source.key)
    failed = self.failure_path(source.key)
    try:
      if os.path.exists(os.path.join(entry, self.MANIFEST)):
        with open(os.path.join(entry, self.MANIFEST)) as f:
          manifest = json.load(f)
        if len(manifest["motion"]) != int(manifest["num_clips"]):
          raise ValueError("manifest lacks motion statistics")
        return FileResult(source.path, source.key, "cached", int(manifest["num_clips"]),
                          num_shots=len(set(manifest["shots"])))
      if os.path.exists(failed):
        with open(failed) as f:
          record = json.load(f)
        return FileResult(source.path, source.key, "skipped", reason=record["reason"],
                          detail=record["detail"])
    except (OSError, ValueError, KeyError, TypeError):
      shutil.rmtree(entry, ignore_errors=True)
      if os.path.exists(failed):
        os.remove(failed)
    return None

  def remove_partial(self) -> None:
    """Deletes temporary folders left by an interrupted run.

    Only one build may use a work dir at a time (their temporaries would clash).
    """
    if os.path.isdir(self.clips_dir):
      for name in os.listdir(self.clips_dir):
        if _TMP_MARKER in name:
          shutil.rmtree(os.path.join(self.clips_dir, name), ignore_errors=True)

  def write_clips(self, source: SourceVideo, clips: Iterable[tuple[video_files.Clip, np.ndarray]]
                  ) -> int:
    """Streams (clip, flow) pairs into a new entry; returns the clip count.

    Written into a temporary folder and renamed when complete, so an entry is
    never partial; exceptions from `clips` propagate and leave no entry.
    """
    tmp = f"{self.entry_dir(source.key)}{_TMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    try:
      chunks, start_times, shots, motion, buffer = [], [], [], [], []
      def flush():
        name = f"chunk-{len(chunks):05d}.npz"
        np.savez(os.path.join(tmp, name),
                 video=np.stack([c.frames for c, _ in buffer]),
                 flow=np.stack([f for _, f in buffer]).astype(np.float32))
        chunks.append(name)
        buffer.clear()
      for clip, flow in clips:
        buffer.append((clip, flow))
        start_times.append(clip.start_time)
        shots.append(clip.shot)
        stats = motion_filters.motion_stats(flow)
        motion.append([stats.mean_px, stats.p99_px])
        if len(buffer) == CHUNK_CLIPS:
          flush()
      if buffer:
        flush()
      with open(os.path.join(tmp, self.MANIFEST), "w") as f:
        json.dump(dict(path=source.path, num_clips=len(start_times), chunks=chunks,
                       start_times=start_times, shots=shots, motion=motion), f)
      final = self.entry_dir(source.key)
      if os.path.exists(final):  # a concurrent writer won; same content by key
        shutil.rmtree(tmp)
      else:
        os.rename(tmp, final)
      return len(start_times)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise

  def write_failure(self, source: SourceVideo, reason: str, detail: str) -> None:
    """Records a deterministic failure so reruns skip the file without decoding."""
    os.makedirs(self.failed_dir, exist_ok=True)
    files.atomic_write(self.failure_path(source.key),
                       json.dumps(dict(path=source.path, reason=reason, detail=detail)))

  def motion_stats(self, key: str) -> list[motion_filters.MotionStats]:
    """Each clip's flow summary (motion_filters.py), from the entry's manifest."""
    with open(os.path.join(self.entry_dir(key), self.MANIFEST)) as f:
      return [motion_filters.MotionStats(*m) for m in json.load(f)["motion"]]

  def read_clips(self, key: str) -> Iterator[tuple[int, float, np.ndarray, np.ndarray]]:
    """Yields (index, start time, video [T,H,W,3], flow [T-1,H,W,2]) of an entry."""
    entry = self.entry_dir(key)
    with open(os.path.join(entry, self.MANIFEST)) as f:
      manifest = json.load(f)
    index = 0
    for chunk in manifest["chunks"]:
      with np.load(os.path.join(entry, chunk)) as arrays:
        videos, flows = arrays["video"], arrays["flow"]
      for video, flow in zip(videos, flows):
        yield index, manifest["start_times"][index], video, flow
        index += 1
