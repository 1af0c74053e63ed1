"""Tests for the synthetic_physics TFDS builder and the build_synthetic command."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import quickstart
from data_pipelines import synthetic_dataset
from data_pipelines import synthetic_physics
from videojam_jax.data import clip_records
from videojam_jax.data import motion_encoding

from tests.conftest import REPO
NUM_TRAIN, NUM_EVAL, T, H, W = 6, 3, 4, 16, 24


def _tiny_config(dataset_dir, **synthetic):
  config = quickstart.defaults()
  config.data.dataset_dir = str(dataset_dir)
  config.data.num_frames, config.data.height, config.data.width = T, H, W
  config.data.synthetic.num_train_clips = NUM_TRAIN
  config.data.synthetic.num_eval_clips = NUM_EVAL
  config.data.synthetic.update(synthetic)
  return config


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  config = _tiny_config(tmp_path_factory.mktemp("data"))
  return config, synthetic_dataset.build(config)


def test_layout_is_tfds_data_dir(built):
  config, path = built
  name = synthetic_dataset.make_builder_config(
      num_train_clips=NUM_TRAIN, num_eval_clips=NUM_EVAL, num_frames=T, height=H,
      width=W, seed=0, max_objects=3, fps=8.0, flow_sigma=0.15).name
  expected = pathlib.Path(config.data.dataset_dir) / "synthetic_physics" / name / "1.0.0"
  assert pathlib.Path(path) == expected
  files = os.listdir(path)
  assert "dataset_info.json" in files and "metadata.json" in files
  assert any(".array_record-" in f for f in files)
  assert not any(f.endswith((".tfrecord", ".riegeli")) or ".tfrecord-" in f for f in files)
  assert os.listdir(config.data.dataset_dir) == ["synthetic_physics"]  # no downloads/


def test_reads_back_without_tensorflow(built):
  config, path = built
  builder = tfds.builder_from_directory(path)
  train, validation = builder.as_data_source("train"), builder.as_data_source("validation")
  assert (len(train), len(validation)) == (NUM_TRAIN, NUM_EVAL)
  assert builder.info.splits["train"].num_examples == NUM_TRAIN
  example = train[0]
  assert example["video"].shape == (T, H, W, 3) and example["video"].dtype == np.uint8
  assert example["motion"].shape == (T, H, W, 3) and example["motion"].dtype == np.uint8
  assert example["flow"].shape == (T - 1, H, W, 2) and example["flow"].dtype == np.float32
  assert example["caption"].decode().endswith("background")
  # The motion video is the encoded flow, with the config's sigma.
  np.testing.assert_array_equal(
      example["motion"],
      motion_encoding.flows_to_motion_video(example["flow"], config.data.flow_sigma))
  # The data path never needs TensorFlow. Checked in a fresh interpreter: other
  # test modules (the trainer's TensorBoard writer) load it into this one.
  check = ("import sys, tensorflow_datasets as tfds; "
           f"ds = tfds.builder_from_directory({str(path)!r}).as_data_source('train'); ds[0]; "
           "assert 'tensorflow' not in sys.modules, 'reading clips imported tensorflow'")
  subprocess.run([sys.executable, "-c", check], check=True, timeout=120)


def test_metadata_and_check_dataset(built):
  config, path = built
  metadata = tfds.builder_from_directory(path).info.metadata
  assert metadata["source"] == "synthetic_physics"
  assert metadata["flow_estimator"] == "exact"
  assert metadata["seed"] == 0 and metadata["max_objects"] == 3
  assert metadata["fps"] == config.data.synthetic.fps
  clip_records.check_dataset(metadata, num_frames=T, height=H, width=W, flow_sigma=0.15)
  with pytest.raises(clip_records.DatasetMismatchError):
    clip_records.check_dataset(metadata, num_frames=T, height=W, width=H, flow_sigma=0.15)


def test_clips_are_the_renderer_output_and_splits_disjoint(built):
  config, path = built
  builder = tfds.builder_from_directory(path)
  by_id = {}
  for split, size in (("train", NUM_TRAIN), ("validation", NUM_EVAL)):
    source = builder.as_data_source(split)
    for i in range(len(source)):
      by_id[source[i]["clip_id"].decode()] = source[i]
  expected = ([f"synthetic-train-{i:06d}" for i in range(NUM_TRAIN)]
              + [f"synthetic-validation-{i:06d}" for i in range(NUM_EVAL)])
  assert sorted(by_id) == sorted(expected)
  # Each stored clip is exactly what the renderer gives for (seed, split, index).
  clip = synthetic_physics.render_clip(
      synthetic_dataset.clip_seed(0, "validation", 2), T, H, W, 3)
  stored = by_id["synthetic-validation-000002"]
  np.testing.assert_array_equal(stored["video"], clip.video)
  np.testing.assert_array_equal(stored["flow"], clip.flow)
  assert stored["caption"].decode() == clip.caption
  videos = {v["video"].tobytes() for v in by_id.values()}
  assert len(videos) == NUM_TRAIN + NUM_EVAL  # no clip twice, across splits too


def test_rebuild_is_a_noop(built, capsys):
  config, path = built
  before = {f: os.stat(os.path.join(path, f)).st_mtime_ns for f in os.listdir(path)}
  assert synthetic_dataset.build(config) == path
  assert "Already built" in capsys.readouterr().out
  after = {f: os.stat(os.path.join(path, f)).st_mtime_ns for f in os.listdir(path)}
  assert before == after


def test_other_sizes_get_their_own_folder(built, tmp_path):
  config, path = built
  bigger = _tiny_config(config.data.dataset_dir, num_train_clips=NUM_TRAIN + 2)
  other = synthetic_dataset.build(bigger)
  assert other != path and os.path.isdir(path)
  source = tfds.builder_from_directory(other).as_data_source("train")
  assert len(source) == NUM_TRAIN + 2
  # Growing a split keeps its clips: clip 0 is the same in both datasets.
  first = {source[i]["clip_id"]: source[i]["video"] for i in range(len(source))}
  old = tfds.builder_from_directory(path).as_data_source("train")
  old_first = {old[i]["clip_id"]: old[i]["video"] for i in range(len(old))}
  key = b"synthetic-train-000000"
  np.testing.assert_array_equal(first[key], old_first[key])


def test_motion_kinds_name_their_own_dataset(built, tmp_path):
  config, path = built
  linear = _tiny_config(config.data.dataset_dir)
  linear.data.synthetic.motion_kinds = ("linear",)
  other = synthetic_dataset.build(linear)
  assert other != path and "-mklinear" in other
  builder = tfds.builder_from_directory(other)
  assert list(builder.info.metadata["motion_kinds"]) == ["linear"]
  source = builder.as_data_source("train")
  for i in range(len(source)):
    assert " moving " in source[i]["caption"].decode()
  with pytest.raises(ValueError, match="motion kinds"):
    bad = _tiny_config(config.data.dataset_dir)
    bad.data.synthetic.motion_kinds = ("sliding",)
    synthetic_dataset.build(bad)


def test_max_shard_mb_bounds_the_shard_files(tmp_path):
  def train_split(config):
    path = synthetic_dataset.build(config)
    return path, tfds.builder_from_directory(path).info.splits["train"]

  default = _tiny_config(tmp_path / "default", num_train_clips=32)
  path, split = train_split(default)
  assert split.num_shards == 1     # TFDS's bounds (64 MiB to 1 GiB): one file
  small = _tiny_config(tmp_path / "small", num_train_clips=32)
  small.data.max_shard_mb = split.num_bytes / 2**20 / 4
  other, small_split = train_split(small)
  # TFDS's rule: a power of two of shards, each within [max / 2, max] bytes.
  assert small_split.num_shards in (4, 8)
  assert len([f for f in os.listdir(other) if "-train.array_record" in f]) == small_split.num_shards
  assert small_split.num_bytes / small_split.num_shards <= small.data.max_shard_mb * 2**20
  # Same records, in more files.
  old = tfds.builder_from_directory(path).as_data_source("train")
  new = tfds.builder_from_directory(other).as_data_source("train")
  assert sorted(r["clip_id"] for r in old) == sorted(r["clip_id"] for r in new)
  small.data.max_shard_mb = 0.0
  small.data.dataset_dir = str(tmp_path / "zero")
  with pytest.raises(ValueError, match="max_shard_mb must be > 0"):
    synthetic_dataset.build(small)


def test_command_line(tmp_path):
  command = [sys.executable, "-m", "data_pipelines.build_synthetic",
             "--config", "configs/quickstart.py",
             f"--config.data.dataset_dir={tmp_path}",
             "--config.data.synthetic.num_train_clips=2",
             "--config.data.synthetic.num_eval_clips=1",
             "--config.data.height=8", "--config.data.width=8",
             "--config.data.num_frames=3"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "Wrote" in result.stdout and "train: 2" in result.stdout
  path = result.stdout.split("Wrote ")[1].split(" (")[0]
  assert len(tfds.builder_from_directory(path).as_data_source("validation")) == 1
  again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert again.returncode == 0 and "Already built" in again.stdout
