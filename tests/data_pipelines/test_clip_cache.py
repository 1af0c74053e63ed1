"""Tests for data_pipelines/clip_cache.py: cache keys and the resumable per-file cache."""

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest

from data_pipelines import captions
from data_pipelines import clip_cache
from data_pipelines import flow_workers
from data_pipelines import video_files

SPEC = video_files.ClipSpec(num_frames=3, height=4, width=5, fps=8.0, stride=3)
FLOW_SPEC = flow_workers.FlowSpec("dis", (("preset", "fast"),))


def key_before_the_split(path, clip_spec, estimator_name, flow_spec) -> str:
  """cache_key as video_dataset.py computed it before it moved here: caches made
  then must keep their keys, or every file would be decoded again (only a bump of
  CACHE_VERSION, when cached arrays change meaning, may change them)."""
  stat = os.stat(path)
  identity = dict(version=clip_cache.CACHE_VERSION, path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                  clip=dataclasses.asdict(clip_spec), estimator=estimator_name,
                  options=[list(o) for o in flow_spec.options])
  digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
  stem = "".join(c if c.isalnum() or c in "-_" else "_"
                 for c in os.path.splitext(os.path.basename(path))[0])[:40]
  return f"{stem}-{digest.hexdigest()[:16]}"


def clip(index: int, seed: int) -> tuple[video_files.Clip, np.ndarray]:
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
  return (video_files.Clip(frames, index, index * 0.375),
          rng.standard_normal((2, 4, 5, 2)).astype(np.float32))


@pytest.fixture
def video(tmp_path):
  path = tmp_path / "my clip (1).mp4"
  path.write_bytes(b"not decoded here")
  return str(path)


def test_cache_keys_are_unchanged_and_follow_the_file_and_settings(video):
  key = clip_cache.cache_key(video, SPEC, "dis:fast", FLOW_SPEC)
  assert key == key_before_the_split(video, SPEC, "dis:fast", FLOW_SPEC)
  assert key.startswith("my_clip__1_-") and len(key.split("-")[-1]) == 16
  assert clip_cache.cache_key(video, SPEC, "dis:fast", FLOW_SPEC) == key   # stable
  changed = [
      clip_cache.cache_key(video, dataclasses.replace(SPEC, stride=1), "dis:fast", FLOW_SPEC),
      clip_cache.cache_key(video, SPEC, "dis:medium", FLOW_SPEC),
      clip_cache.cache_key(video, SPEC, "dis:fast",
                           flow_workers.FlowSpec("dis", (("preset", "medium"),))),
  ]
  stat = os.stat(video)
  os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))   # the file was touched
  changed.append(clip_cache.cache_key(video, SPEC, "dis:fast", FLOW_SPEC))
  assert len({key, *changed}) == 5


def test_entries_round_trip_in_chunks(tmp_path, video, monkeypatch):
  monkeypatch.setattr(clip_cache, "CHUNK_CLIPS", 2)   # 5 clips -> chunks of 2, 2, 1
  cache = clip_cache.ClipCache(str(tmp_path / "work"))
  source = captions.SourceVideo(video, "clip.mp4", "a caption", key="k1")
  assert cache.lookup(source) is None
  pairs = [clip(i, seed=i) for i in range(5)]
  assert cache.write_clips(source, iter(pairs)) == 5
  entry = os.listdir(cache.entry_dir("k1"))
  assert sorted(entry) == ["chunk-00000.npz", "chunk-00001.npz", "chunk-00002.npz",
                           "manifest.json"]
  assert cache.lookup(source) == clip_cache.FileResult(video, "k1", "cached", 5, num_shots=1)
  for (index, start, frames, flow), (expected_clip, expected_flow) in zip(
      cache.read_clips("k1"), pairs, strict=True):
    assert index == expected_clip.index and start == expected_clip.start_time
    np.testing.assert_array_equal(frames, expected_clip.frames)
    np.testing.assert_array_equal(flow, expected_flow)


def test_a_failing_file_leaves_no_entry_and_a_recorded_failure_is_found(tmp_path, video):
  cache = clip_cache.ClipCache(str(tmp_path / "work"))
  os.makedirs(cache.clips_dir)
  source = captions.SourceVideo(video, "clip.mp4", "a caption", key="k2")

  def clips_then_error():
    yield clip(0, seed=0)
    raise video_files.TruncatedVideoError(video, "ends early")

  with pytest.raises(video_files.TruncatedVideoError):
    cache.write_clips(source, clips_then_error())
  assert os.listdir(cache.clips_dir) == [] and cache.lookup(source) is None
  cache.write_failure(source, "truncated", "ends early")
  assert os.listdir(cache.failed_dir) == ["k2.json"]    # written whole, no temporary left
  assert cache.lookup(source) == clip_cache.FileResult(
      video, "k2", "skipped", reason="truncated", detail="ends early")


def test_unreadable_entries_count_as_absent_and_debris_is_removed(tmp_path, video):
  cache = clip_cache.ClipCache(str(tmp_path / "work"))
  source = captions.SourceVideo(video, "clip.mp4", "a caption", key="k3")
  cache.write_clips(source, [clip(0, seed=0)])
  with open(os.path.join(cache.entry_dir("k3"), cache.MANIFEST), "w") as f:
    f.write("{truncated")                               # e.g. a hand edit
  assert cache.lookup(source) is None and not os.path.exists(cache.entry_dir("k3"))
  os.makedirs(os.path.join(cache.clips_dir, "k4.tmp-123-abcd"))   # an interrupted write
  cache.remove_partial()
  assert os.listdir(cache.clips_dir) == []


def test_work_dir_must_be_local():
  with pytest.raises(clip_cache.WorkDirError, match="must be a local folder.*gs://b/work"):
    clip_cache.ClipCache("gs://b/work")
