"""Tests for data_pipelines/flow_workers.py: the per-file decode + flow worker pool."""

import dataclasses
import os
import shutil

import av
import numpy as np
import pytest

from data_pipelines import captions
from data_pipelines import clip_cache
from data_pipelines import flow_workers
from data_pipelines import video_files
from tests.data_pipelines.test_video_files import CARPHONE

SPEC = video_files.ClipSpec(num_frames=8, height=32, width=32, fps=8.0, stride=8)
CARPHONE_CLIPS = 4  # 4.004 s at 8 fps -> 33 frames -> 4 clips of 8

# Plug-in estimators, in a tiny module of their own so that spawned workers can
# import it cheaply (this test module pulls in JAX). "crash_on_black" kills its
# process on an all-black clip, like a native crash in a decoder; "bad_shape"
# returns flow of the wrong shape, like a buggy plug-in.
PLUGIN = """
import os
import numpy as np
from videojam_jax.data import flow_estimators

class CrashOnBlack:
  name = "crash_on_black"

  def estimate(self, frames):
    if frames.max() == 0:
      os._exit(3)
    t, h, w, _ = frames.shape
    return np.zeros((t - 1, h, w, 2), np.float32)

class BadShape:
  name = "bad_shape"

  def estimate(self, frames):
    return np.zeros((1, 2, 2, 2), np.float32)

flow_estimators.register_estimator("crash_on_black", CrashOnBlack, overwrite=True)
flow_estimators.register_estimator("bad_shape", BadShape, overwrite=True)
"""


def write_black_video(path: str, num_frames: int = 16) -> str:
  with av.open(path, "w") as out:
    stream = out.add_stream("libx264", rate=8)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for _ in range(num_frames):
      frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
      for packet in stream.encode(frame):
        out.mux(packet)
    for packet in stream.encode(None):
      out.mux(packet)
  return path


@pytest.fixture
def plugin(tmp_path, monkeypatch):
  folder = tmp_path / "plugins"
  folder.mkdir()
  (folder / "flow_plugin.py").write_text(PLUGIN)
  monkeypatch.syspath_prepend(str(folder))  # spawned workers inherit sys.path
  return "flow_plugin"


def keyed(path: str, flow_spec: flow_workers.FlowSpec) -> captions.SourceVideo:
  source = captions.SourceVideo(path, os.path.basename(path), "a caption")
  return dataclasses.replace(
      source, key=clip_cache.cache_key(path, SPEC, flow_spec.name, flow_spec))


def test_a_crashing_file_is_isolated(tmp_path, plugin):
  shutil.copy(CARPHONE, tmp_path / "carphone.mp4")
  flow_spec = flow_workers.FlowSpec("crash_on_black", modules=(plugin,))
  sources = [keyed(write_black_video(str(tmp_path / "black.mp4")), flow_spec),
             keyed(str(tmp_path / "carphone.mp4"), flow_spec)]
  summary = flow_workers.prepare_clips(sources, SPEC, flow_spec, str(tmp_path / "work"),
                                       workers=2, progress=False)
  # Results come back in the order of `sources`, whatever order the pool ran them in.
  assert [(os.path.basename(r.path), r.status, r.reason) for r in summary.results] == [
      ("black.mp4", "skipped", "crashed"), ("carphone.mp4", "done", "")]
  assert summary.new_clips == CARPHONE_CLIPS
  # A crash is not recorded (it may be the machine's fault): a rerun tries again;
  # the finished file is not redone.
  again = flow_workers.prepare_clips(sources, SPEC, flow_spec, str(tmp_path / "work"),
                                     workers=2, progress=False)
  assert [r.status for r in again.results] == ["skipped", "cached"] and again.new_clips == 0


def test_bad_files_are_recorded_and_plug_in_mistakes_are_errors(tmp_path, plugin):
  (tmp_path / "corrupt.mp4").write_bytes(b"\0" * 1000)
  shutil.copy(CARPHONE, tmp_path / "carphone.mp4")
  flow_spec = flow_workers.FlowSpec("bad_shape", modules=(plugin,))
  sources = [keyed(str(tmp_path / "corrupt.mp4"), flow_spec),
             keyed(str(tmp_path / "carphone.mp4"), flow_spec)]
  work = str(tmp_path / "work")
  summary = flow_workers.prepare_clips(sources, SPEC, flow_spec, work, workers=1,
                                       progress=False)
  corrupt, carphone = summary.results
  assert (corrupt.status, corrupt.reason) == ("skipped", "unreadable")
  assert carphone.status == "error" and "returned flow (1, 2, 2, 2), expected (7, 32, 32, 2)" \
      in carphone.detail
  # The bad file's verdict is cached; the error is not (a fixed plug-in retries it).
  cache = clip_cache.ClipCache(work)
  assert cache.lookup(sources[0]).reason == "unreadable" and cache.lookup(sources[1]) is None


def test_checked_flow_refuses_non_finite_flow():
  class NaNFlow:
    name = "nan"

    def estimate(self, frames):
      return np.full((frames.shape[0] - 1,) + frames.shape[1:3] + (2,), np.nan, np.float32)

  frames = np.zeros((3, 4, 4, 3), np.uint8)
  with pytest.raises(ValueError, match="estimator nan returned non-finite flow"):
    flow_workers.checked_flow(NaNFlow(), frames)


def test_flow_spec_creates_its_estimator():
  estimator = flow_workers.FlowSpec("dis", (("preset", "ultrafast"),)).create()
  assert estimator.name == "dis:ultrafast"
  with pytest.raises(ModuleNotFoundError):
    flow_workers.FlowSpec("dis", modules=("no_such_plugin_module",)).create()
