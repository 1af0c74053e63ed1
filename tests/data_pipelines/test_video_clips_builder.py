"""Tests for data_pipelines/video_clips_builder.py: config names, the write plan's
digest, the prefetching writer helper and reading back a dataset's digest.

Writing real shards is covered end to end by test_build_from_videos.py."""

import hashlib
import json
import threading

from etils import epath
import pytest

from data_pipelines import captions
from data_pipelines import video_clips_builder
from data_pipelines import video_files
from tests.test_files import fake_gcs  # pylint: disable=unused-import (a fixture)

SPEC = video_files.ClipSpec(num_frames=8, height=32, width=48, fps=8.0, stride=4, max_clips=3)


def config():
  return video_clips_builder.make_builder_config(
      clip_spec=SPEC, flow_estimator="dis:fast", flow_sigma=0.15)


def plan() -> video_clips_builder.WritePlan:
  a = captions.SourceVideo("/v/a.mp4", "a.mp4", "a cat", key="a-0123")
  b = captions.SourceVideo("/v/b.mp4", "sub/b.mp4", "a dog, running", key="b-4567")
  return video_clips_builder.WritePlan("/work", {"train": [a], "validation": [b]})


def test_config_name_spells_out_every_setting():
  c = config()
  assert c.name == "8x32x48-fps8-stride4-max3-cut27-dis-fast-sigma0.15"
  assert (c.num_frames, c.height, c.width, c.stride, c.max_clips_per_video) == (8, 32, 48, 4, 3)
  with pytest.raises(ValueError, match="fps > 0"):
    video_clips_builder.make_builder_config(
        clip_spec=video_files.ClipSpec(8, 32, 32, fps=None), flow_estimator="dis:fast",
        flow_sigma=0.15)


def test_plan_digest_is_unchanged_and_follows_the_content():
  # As video_dataset.py computed it before the split: datasets built then carry
  # this digest in their metadata, and an equal digest means "do not rewrite".
  content = dict(config=config().name, splits={
      "train": [("a.mp4", "a cat", "a-0123")],
      "validation": [("sub/b.mp4", "a dog, running", "b-4567")]})
  before = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
  assert plan().digest(config()) == before
  moved = video_clips_builder.WritePlan("/work", {"train": plan().splits["validation"],
                                                  "validation": plan().splits["train"]})
  assert moved.digest(config()) != before


def test_prefetch_map_keeps_order_and_works_in_another_thread():
  threads = set()

  def work(x):
    threads.add(threading.get_ident())
    return x * x

  assert list(video_clips_builder.prefetch_map(work, range(10), depth=3)) == [
      x * x for x in range(10)]
  assert threads and threading.get_ident() not in threads
  assert list(video_clips_builder.prefetch_map(work, [], depth=3)) == []


def test_existing_digest(tmp_path, fake_gcs):
  assert video_clips_builder.existing_digest(tmp_path / "absent") is None
  for version_dir in (tmp_path / "1.0.0", epath.Path("gs://bucket/clips/1.0.0")):
    version_dir = epath.Path(version_dir)
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "metadata.json").write_text(json.dumps({"inputs_digest": "abc"}))
    assert video_clips_builder.existing_digest(version_dir) is None   # no dataset_info yet
    (version_dir / "dataset_info.json").write_text("{}")
    assert video_clips_builder.existing_digest(str(version_dir)) == "abc"
