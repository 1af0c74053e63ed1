"""Stage 1 of a video build: decode each file, cut clips, estimate their flow, cache.

A pool of spawned processes works file by file (`prepare_clips`): each worker
decodes a file and cuts it into clips (video_files.py), estimates the flow of
every clip (videojam_jax/data/flow_estimators.py) and streams the result into
the cache (clip_cache.py). Files already in the cache are not redone. A file
that cannot give clips is recorded as such and skipped; a worker that dies on a
file (a native crash, the OOM killer) costs only that file.
"""

from __future__ import annotations

import dataclasses
import importlib
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from data_pipelines import video_files
from data_pipelines.captions import SourceVideo
from data_pipelines.clip_cache import ClipCache, FileResult
from videojam_jax.data import flow_estimators

# Submitted-but-unfinished files per worker: enough to keep workers busy, few
# enough that a crashed pool has little in flight to re-run.
TASKS_PER_WORKER = 2


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
    shots = set()

    def clips():
      for clip in video_files.iter_clips(source.path, _WORKER["clip_spec"],
                                         _WORKER["decode_threads"]):
        shots.add(clip.shot)
        yield clip, checked_flow(estimator, clip.frames)
    n = cache.write_clips(source, clips())
    return FileResult(source.path, source.key, "done", n, num_shots=len(shots),
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
