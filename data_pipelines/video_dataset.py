"""TFDS builder `video_clips`: clips cut from video files, with precomputed flow.

Two stages, so that the expensive one is resumable and parallel:

1. Prepare (`prepare_clips`, a process pool over files). Each file is decoded, cut
   into clips (video_files.py) and its flow estimated (flow_estimators.py). The
   result is cached in a work dir under a key made of the file's path, size and
   mtime and every setting that changes the clips, written to a temporary folder
   and renamed into place when complete: a cache entry is all of a file or
   nothing. A file that cannot give clips (corrupt, truncated, too short, not a
   video) gets a failure record instead. A rerun finds both and redoes nothing;
   changing a file or a setting changes its key.

2. Write (`VideoClips`, a TFDS GeneratorBasedBuilder). Reads the cache, encodes
   the motion video from the flow (so flow_sigma can change without recomputing
   flow) and writes ArrayRecord shards in the shared clip format
   (videojam_jax/data/clip_records.py), split into train / validation by file (clips of
   one video never straddle splits).

Captions: one per video, from a JSONL file ({"video": path, "caption": text} per
line) or a CSV file with columns video,caption; paths relative to the captions
file or absolute. Policy for a video with no caption: it is SKIPPED and listed in
the report (reason "no_caption"), never trained on with an empty caption: the
empty caption is the classifier-free-guidance null condition, and silently
feeding it real clips would bias what the model learns for it.

Layout: <data_dir>/video_clips/<config name>/1.0.0/ (config name spells out the
clip settings, as synthetic_physics does). Read back without TensorFlow:
  tfds.builder_from_directory(version_dir).as_data_source("train")
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import importlib
import json
import os
import shutil
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
import multiprocessing
from typing import Any

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import flow_estimators
from data_pipelines import video_files
from videojam_jax.data import clip_records
from videojam_jax.data import motion_encoding

SOURCE = "video_files"
FILE_FORMAT = "array_record"
SPLITS = ("train", "validation")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg",
                    ".ts", ".flv", ".wmv", ".3gp", ".gif")
# Bump when the cached arrays change meaning: old entries are then ignored.
CACHE_VERSION = 1
# Clips per cache chunk: bounds a worker's memory on long files (a 256x256x8 clip
# with flow is ~7 MB).
CHUNK_CLIPS = 32
# Submitted-but-unfinished files per worker: enough to keep workers busy, few
# enough that a crashed pool has little in flight to re-run.
TASKS_PER_WORKER = 2
# Examples prepared ahead of the TFDS writer (bounded: each is several MB).
WRITE_PREFETCH = 4


class CaptionsError(ValueError):
  """The captions file is malformed (a user error: the build stops)."""


class NoClipsError(RuntimeError):
  """No file gave a clip; nothing to write."""


# --------------------------------------------------------------------------------
# Inputs: which files, which captions.

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
  with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
    if path.lower().endswith(".csv"):
      reader = csv.DictReader(f)
      if not reader.fieldnames or not {"video", "caption"} <= set(reader.fieldnames):
        raise CaptionsError(f"{path}: CSV needs columns 'video' and 'caption', "
                            f"has {reader.fieldnames}")
      rows = [(i, r["video"], r["caption"]) for i, r in enumerate(reader, start=2)]
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


@dataclasses.dataclass(frozen=True)
class SourceVideo:
  """A video file to cut clips from. `name` is its stable relative name (clip ids,
  split assignment); `key` names its cache entry."""
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


# --------------------------------------------------------------------------------
# Stage 1: clips + flow per file, cached.

@dataclasses.dataclass(frozen=True)
class FlowSpec:
  """A picklable recipe for the flow estimator (each worker builds its own).

  modules: imported first in every process, so that plug-in estimators (e.g. a
  RAFT wrapper) can register themselves.
  """
  name: str = flow_estimators.DEFAULT_ESTIMATOR
  options: tuple[tuple[str, Any], ...] = ()
  modules: tuple[str, ...] = ()

  def create(self) -> flow_estimators.FlowEstimator:
    for module in self.modules:
      importlib.import_module(module)
    return flow_estimators.create_estimator(self.name, **dict(self.options))


def cache_key(path: str, clip_spec: video_files.ClipSpec, estimator_name: str,
              flow_spec: FlowSpec) -> str:
  """Names a file's cache entry: changes when the file or any clip setting does."""
  stat = os.stat(path)
  identity = dict(version=CACHE_VERSION, path=path, size=stat.st_size,
                  mtime_ns=stat.st_mtime_ns, clip=dataclasses.asdict(clip_spec),
                  estimator=estimator_name, options=[list(o) for o in flow_spec.options])
  digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
  stem = "".join(c if c.isalnum() or c in "-_" else "_"
                 for c in os.path.splitext(os.path.basename(path))[0])[:40]
  return f"{stem}-{digest.hexdigest()[:16]}"


@dataclasses.dataclass(frozen=True)
class FileResult:
  """What stage 1 did with one file. status: done | cached | skipped | error."""
  path: str
  key: str
  status: str
  num_clips: int = 0
  reason: str = ""
  detail: str = ""
  seconds: float = 0.0


class ClipCache:
  """The work dir: clips/<key>/ (manifest.json + chunk-*.npz), failed/<key>.json."""

  MANIFEST = "manifest.json"

  def __init__(self, work_dir: str):
    self.root = work_dir
    self.clips_dir = os.path.join(work_dir, "clips")
    self.failed_dir = os.path.join(work_dir, "failed")

  def entry_dir(self, key: str) -> str:
    return os.path.join(self.clips_dir, key)

  def lookup(self, source: SourceVideo) -> FileResult | None:
    """The cached result for a file, if stage 1 already finished it.

    An entry that cannot be read (disk trouble, hand edits) counts as absent and
    is removed, so the file is simply redone.
    """
    entry = self.entry_dir(source.key)
    failed = os.path.join(self.failed_dir, source.key + ".json")
    try:
      if os.path.exists(os.path.join(entry, self.MANIFEST)):
        with open(os.path.join(entry, self.MANIFEST)) as f:
          return FileResult(source.path, source.key, "cached", int(json.load(f)["num_clips"]))
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
        if ".tmp-" in name:
          shutil.rmtree(os.path.join(self.clips_dir, name), ignore_errors=True)

  def write_clips(self, source: SourceVideo, clips: Iterable[tuple[video_files.Clip, np.ndarray]]
                  ) -> int:
    """Streams (clip, flow) pairs into a new entry; returns the clip count.

    Written into a temporary folder and renamed when complete, so an entry is
    never partial; exceptions from `clips` propagate and leave no entry.
    """
    tmp = f"{self.entry_dir(source.key)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    try:
      chunks, start_times, buffer = [], [], []
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
        if len(buffer) == CHUNK_CLIPS:
          flush()
      if buffer:
        flush()
      with open(os.path.join(tmp, self.MANIFEST), "w") as f:
        json.dump(dict(path=source.path, num_clips=len(start_times), chunks=chunks,
                       start_times=start_times), f)
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
    tmp = os.path.join(self.failed_dir, f".{source.key}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
      json.dump(dict(path=source.path, reason=reason, detail=detail), f)
    os.replace(tmp, os.path.join(self.failed_dir, source.key + ".json"))

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


# Per-process state of pool workers (estimators hold OpenCV objects: not picklable).
_WORKER: dict[str, Any] = {}


def init_worker(flow_spec: FlowSpec, cache_root: str, clip_spec: video_files.ClipSpec,
                single_threaded: bool) -> None:
  """Sets up a process to run `process_file` (also used in-process).

  single_threaded: one OpenCV and one decoder thread, for pool workers (the pool
  already runs a process per core; more threads would only contend).
  """
  if single_threaded:
    import cv2  # pylint: disable=g-import-not-at-top
    cv2.setNumThreads(1)
  _WORKER.update(estimator=flow_spec.create(), cache=ClipCache(cache_root),
                 clip_spec=clip_spec, decode_threads=1 if single_threaded else 0)


def checked_flow(estimator: flow_estimators.FlowEstimator, frames: np.ndarray) -> np.ndarray:
  """estimator.estimate(frames), refused unless finite and of the right shape (a
  plug-in's mistake must fail its file here, not the TFDS write later)."""
  flow = np.asarray(estimator.estimate(frames), np.float32)
  want = (frames.shape[0] - 1,) + frames.shape[1:3] + (2,)
  if flow.shape != want:
    raise ValueError(f"estimator {estimator.name} returned flow {flow.shape}, expected {want}")
  if not np.isfinite(flow).all():
    raise ValueError(f"estimator {estimator.name} returned non-finite flow")
  return flow


def process_file(source: SourceVideo) -> FileResult:
  """Stage 1 for one file, in a worker set up by `init_worker`. Never raises for
  a bad file: VideoFileErrors are recorded and returned as "skipped", anything
  else (a bug, memory) as "error" (not recorded, so a rerun retries it)."""
  estimator, cache = _WORKER["estimator"], _WORKER["cache"]
  start = time.perf_counter()
  try:
    clips = ((clip, checked_flow(estimator, clip.frames))
             for clip in video_files.iter_clips(source.path, _WORKER["clip_spec"],
                                                _WORKER["decode_threads"]))
    n = cache.write_clips(source, clips)
    return FileResult(source.path, source.key, "done", n,
                      seconds=time.perf_counter() - start)
  except video_files.VideoFileError as e:
    cache.write_failure(source, e.reason, e.detail)
    return FileResult(source.path, source.key, "skipped", reason=e.reason, detail=e.detail)
  except Exception as e:  # pylint: disable=broad-except
    return FileResult(source.path, source.key, "error", reason="error",
                      detail=f"{type(e).__name__}: {e}")


class WorkerStartError(RuntimeError):
  """Worker processes could not start: an environment problem, not a file's."""


def _ping() -> bool:
  return True


def _start_pool(workers: int, initargs: tuple) -> futures.ProcessPoolExecutor:
  """A started pool of spawned workers, each set up by init_worker.

  Checked with a no-op task first, so that a pool that cannot start (the estimator
  fails in a worker, the main module cannot be re-imported) is reported as such
  and no file is blamed for it.
  """
  context = multiprocessing.get_context("spawn")  # fork + threads (JAX, TFDS) can hang
  pool = futures.ProcessPoolExecutor(workers, context, init_worker, initargs)
  try:
    pool.submit(_ping).result()
  except BrokenProcessPool as e:
    pool.shutdown(cancel_futures=True)
    raise WorkerStartError(
        "build worker processes failed to start. Either the flow estimator cannot be "
        "created in a fresh process (are its --estimator_module modules importable?) "
        "or the program's main module cannot be re-imported, which 'spawn' needs (run "
        "from a file or with -m, not from stdin). --workers=1 runs in-process.") from e
  return pool


def _run_pool(sources: Sequence[SourceVideo], workers: int, initargs: tuple,
              on_result: Callable[[FileResult], None]) -> None:
  """Runs process_file over `sources` in `workers` spawned processes.

  A worker that dies (a native crash in a decoder, the OOM killer) breaks the
  pool; the files in flight then run again one at a time, so only the file that
  crashes is blamed ("crashed"; not recorded, as a crash may be the machine's
  fault: a rerun tries it again) and the rest of the run goes on.
  """
  pending = list(sources)
  suspects: list[SourceVideo] = []
  while pending or suspects:
    if suspects:  # isolate: one file in a fresh single-worker pool
      source = suspects.pop()
      finished = ClipCache(initargs[1]).lookup(source)  # done before the crash?
      if finished:
        on_result(dataclasses.replace(finished, status="done"))
        continue
      pool = _start_pool(1, initargs)
      try:
        on_result(pool.submit(process_file, source).result())
      except BrokenProcessPool:
        on_result(FileResult(source.path, source.key, "skipped", reason="crashed",
                             detail="the worker process died on this file"))
      finally:
        pool.shutdown(cancel_futures=True)
      continue
    pool = _start_pool(workers, initargs)
    in_flight: dict[futures.Future, SourceVideo] = {}
    try:
      while pending or in_flight:
        while pending and len(in_flight) < workers * TASKS_PER_WORKER:
          future = pool.submit(process_file, pending[0])
          in_flight[future] = pending.pop(0)
        done, _ = futures.wait(in_flight, return_when=futures.FIRST_COMPLETED)
        for future in done:
          result = future.result()  # raises BrokenProcessPool if a worker died
          del in_flight[future]
          on_result(result)
    except BrokenProcessPool:
      suspects.extend(in_flight.values())
    finally:
      pool.shutdown(cancel_futures=True)


@dataclasses.dataclass
class PrepareSummary:
  """Stage 1 outcome: per-file results and timing."""
  results: list[FileResult]
  seconds: float
  new_clips: int

  @property
  def clips_per_second(self) -> float:
    return self.new_clips / self.seconds if self.seconds > 0 else 0.0


def _file_size(path: str) -> int:
  try:
    return os.path.getsize(path)
  except OSError:
    return 0  # gone: process_file will report it


def prepare_clips(sources: Sequence[SourceVideo], clip_spec: video_files.ClipSpec,
                  flow_spec: FlowSpec, work_dir: str, *, workers: int = 2,
                  progress: bool = True) -> PrepareSummary:
  """Stage 1 over all files (cached ones are not redone). `sources` need keys."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  cache = ClipCache(work_dir)
  os.makedirs(cache.clips_dir, exist_ok=True)
  cache.remove_partial()
  results: list[FileResult] = []
  todo = []
  for source in sources:
    cached = cache.lookup(source)
    if cached:
      results.append(cached)
    else:
      todo.append(source)
  # Largest files first: the pool's tail is then short files.
  todo.sort(key=lambda s: -_file_size(s.path))

  start = time.perf_counter()
  bar = tqdm(total=len(sources), initial=len(results), unit="file",
             disable=not progress, dynamic_ncols=True, desc="flow")
  new_clips = 0

  def on_result(result: FileResult) -> None:
    nonlocal new_clips
    results.append(result)
    new_clips += result.num_clips
    elapsed = time.perf_counter() - start
    bar.set_postfix_str(f"{new_clips} clips, {new_clips / max(elapsed, 1e-9):.1f} clips/s")
    bar.update(1)

  initargs = (flow_spec, work_dir, clip_spec, workers > 1)
  if todo and workers > 1:
    _run_pool(todo, workers, initargs, on_result)
  elif todo:
    init_worker(*initargs)
    for source in todo:
      on_result(process_file(source))
  bar.close()
  order = {s.path: i for i, s in enumerate(sources)}
  results.sort(key=lambda r: order[r.path])
  return PrepareSummary(results, time.perf_counter() - start, new_clips)


# --------------------------------------------------------------------------------
# Split assignment.

def assign_splits(names: Sequence[str], validation_fraction: float) -> dict[str, str]:
  """name -> "train" | "validation", by file, deterministic in the names.

  Files are ranked by a hash of their name and the first round(fraction * n) go
  to validation (at least one when the fraction is > 0 and there are >= 2 files).
  """
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
  ranked = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
  num_val = round(validation_fraction * len(names))
  if validation_fraction > 0 and len(names) >= 2:
    num_val = max(num_val, 1)
  return {n: ("validation" if i < num_val else "train") for i, n in enumerate(ranked)}


# --------------------------------------------------------------------------------
# Stage 2: the TFDS builder.

@dataclasses.dataclass(eq=False)
class VideoClipsConfig(tfds.core.BuilderConfig):
  """Clip settings of a video_clips dataset. Build one with `make_builder_config`."""
  num_frames: int = 8
  height: int = 32
  width: int = 32
  fps: float = 8.0
  stride: int = 8
  max_clips_per_video: int = 0
  flow_estimator: str = "dis:medium"
  flow_sigma: float = motion_encoding.DEFAULT_SIGMA


def make_builder_config(*, clip_spec: video_files.ClipSpec, flow_estimator: str,
                        flow_sigma: float) -> VideoClipsConfig:
  """A builder config whose name spells out every clip setting."""
  if not clip_spec.fps or clip_spec.fps <= 0:
    raise ValueError("a dataset needs one frame rate: set fps > 0")
  estimator = flow_estimator.replace(":", "-")
  name = (f"{clip_spec.num_frames}x{clip_spec.height}x{clip_spec.width}-fps{clip_spec.fps:g}"
          f"-stride{clip_spec.stride}-max{clip_spec.max_clips}-{estimator}"
          f"-sigma{flow_sigma:g}")
  return VideoClipsConfig(
      name=name, version=VideoClips.VERSION,
      description=f"Clips of {clip_spec.num_frames}x{clip_spec.height}x{clip_spec.width} "
                  f"at {clip_spec.fps:g} fps, flow by {flow_estimator}.",
      num_frames=clip_spec.num_frames, height=clip_spec.height, width=clip_spec.width,
      fps=float(clip_spec.fps), stride=clip_spec.stride,
      max_clips_per_video=clip_spec.max_clips, flow_estimator=flow_estimator,
      flow_sigma=float(flow_sigma))


@dataclasses.dataclass(frozen=True)
class WritePlan:
  """What stage 2 writes: per split, the (source, cache key) pairs, in order."""
  work_dir: str
  splits: dict[str, list[SourceVideo]]

  def digest(self, config: VideoClipsConfig) -> str:
    """Identifies the dataset content: equal digests -> identical datasets."""
    content = dict(config=config.name, splits={
        split: [(s.name, s.caption, s.key) for s in sources]
        for split, sources in self.splits.items()})
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


class VideoClips(tfds.core.GeneratorBasedBuilder):
  """Clips from video files with estimated optical flow, in the shared clip format."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = []  # every setting is a config made by make_builder_config

  def __init__(self, *, plan: WritePlan, **kwargs: Any):
    self._plan = plan
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default needs the optional `importlib_resources` (not installed).
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly: dataset_info_from_configs needs a registered TFDS package.
    config: VideoClipsConfig = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.splitlines()[0],
        features=clip_records.clip_features(config.num_frames, config.height, config.width),
        metadata=clip_records.clip_metadata(
            num_frames=config.num_frames, height=config.height, width=config.width,
            fps=config.fps, flow_estimator=config.flow_estimator,
            flow_sigma=config.flow_sigma, source=SOURCE, stride=config.stride,
            max_clips_per_video=config.max_clips_per_video,
            resize="cover_then_centre_crop",
            num_videos={s: len(v) for s, v in self._plan.splits.items()},
            inputs_digest=self._plan.digest(config)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(sources)
            for split, sources in self._plan.splits.items() if sources}

  def _generate_examples(self, sources: list[SourceVideo]):
    config: VideoClipsConfig = self.builder_config
    cache = ClipCache(self._plan.work_dir)

    def cached_clips():
      for source in sources:
        for index, start, video, flow in cache.read_clips(source.key):
          yield source, index, start, video, flow

    def make_example(item) -> tuple[str, dict[str, Any]]:
      source, index, start, video, flow = item
      clip_id = f"{source.name}#{index:05d}@{start:.3f}s"
      return clip_id, {
          "video": video,
          "motion": motion_encoding.flows_to_motion_video(flow, config.flow_sigma),
          "flow": flow,
          "caption": source.caption,
          "clip_id": clip_id,
      }

    # TFDS compresses each example in this thread; encoding the next motion videos
    # meanwhile in another (NumPy and zlib both release the GIL) uses a second core.
    yield from prefetch_map(make_example, cached_clips(), WRITE_PREFETCH)


def prefetch_map(fn: Callable[[Any], Any], items: Iterable[Any], depth: int) -> Iterator[Any]:
  """map(fn, items) computed up to `depth` items ahead in a background thread."""
  with futures.ThreadPoolExecutor(1) as pool:
    queue: deque[futures.Future] = deque()
    for item in items:
      queue.append(pool.submit(fn, item))
      if len(queue) > depth:
        yield queue.popleft().result()
    while queue:
      yield queue.popleft().result()


def existing_digest(version_dir: str) -> str | None:
  """inputs_digest of a dataset already at `version_dir` (None: absent/unknown)."""
  path = os.path.join(version_dir, "metadata.json")
  if not os.path.exists(os.path.join(version_dir, "dataset_info.json")) or not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("inputs_digest")
