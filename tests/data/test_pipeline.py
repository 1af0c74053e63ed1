"""Tests for dataset discovery and the Grain input pipeline (videojam_jax/data/pipeline.py)."""

import os
import shutil

import jax
import numpy as np
import pytest

from tests.conftest import TINY_EVAL_CLIPS, TINY_TRAIN_CLIPS
from videojam_jax.data import clip_records
from videojam_jax.data import pipeline as input_pipeline
from videojam_jax.model import text_encoder


@pytest.fixture
def config(make_tiny_config, synthetic_data):
  return make_tiny_config(synthetic_data[0])


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def clip_keys(videos):
  """Identity of clips: their uint8 frames, recovered from [-1, 1] model inputs."""
  return [np.round((np.asarray(v) + 1.0) * 127.5).astype(np.uint8).tobytes() for v in videos]


def all_clip_keys(config, split="train"):
  source, _ = input_pipeline.open_clip_source(config, split)
  return [np.asarray(source[i]["video"], np.uint8).tobytes() for i in range(len(source))]


def test_missing_dataset_dir_says_how_to_build_one(make_tiny_config, tmp_path):
  config = make_tiny_config(str(tmp_path / "nothing_here"))
  with pytest.raises(FileNotFoundError, match="nothing_here.*does not exist.*data_pipelines.build_synthetic"):
    input_pipeline.create_dataset(config, "train")


def test_empty_dataset_dir_is_a_clear_error(make_tiny_config, tmp_path):
  with pytest.raises(FileNotFoundError, match="no dataset .dataset_info.json. found"):
    input_pipeline.open_clip_source(make_tiny_config(str(tmp_path)), "train")


def test_dataset_dir_may_be_any_folder_above_the_version_folder(make_tiny_config, synthetic_data):
  dataset_dir, version_dir = synthetic_data
  for folder in (dataset_dir, os.path.dirname(version_dir), version_dir):
    assert input_pipeline.find_dataset_version_dir(folder) == version_dir


def test_dataset_of_another_size_is_refused(synthetic_data, make_tiny_config):
  config = make_tiny_config(synthetic_data[0])
  config.data.height = 32
  with pytest.raises(clip_records.DatasetMismatchError,
                     match=r"clips are \{'num_frames': 4, 'height': 16, 'width': 16\} but the config asks for "
                           r"\{'num_frames': 4, 'height': 32, 'width': 16\}"):
    input_pipeline.create_dataset(config, "train")
  config = make_tiny_config(synthetic_data[0])
  config.data.flow_sigma = 0.2
  with pytest.raises(clip_records.DatasetMismatchError, match="sigma"):
    input_pipeline.open_clip_source(config, "train")


def test_two_datasets_in_one_dir_is_a_clear_error(synthetic_data, make_tiny_config, tmp_path):
  _, version_dir = synthetic_data
  for name in ("a", "b"):
    shutil.copytree(version_dir, tmp_path / name / "1.0.0")
  with pytest.raises(ValueError, match=r"several datasets under .*a/1.0.0.*b/1.0.0.*set data.dataset_dir"):
    input_pipeline.create_dataset(make_tiny_config(str(tmp_path)), "train")
  # Pointing at one of them works.
  source, _ = input_pipeline.open_clip_source(make_tiny_config(str(tmp_path / "b")), "train")
  assert len(source) == TINY_TRAIN_CLIPS


def test_unknown_split_is_a_clear_error(config):
  with pytest.raises(ValueError, match="has no split 'test'.*train.*validation"):
    input_pipeline.open_clip_source(config, "test")


@pytest.fixture
def corrupt_copy(synthetic_data, tmp_path):
  """A copy of the dataset whose train shard has random bytes written into its middle."""
  _, version_dir = synthetic_data
  copy = tmp_path / "corrupt"
  shutil.copytree(version_dir, copy)
  (shard,) = [p for p in copy.iterdir() if "train.array_record" in p.name]
  data = bytearray(shard.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 64] = np.random.default_rng(0).integers(0, 256, 64, np.uint8).tobytes()
  shard.write_bytes(bytes(data))
  return str(copy)


def test_corrupt_record_names_itself(corrupt_copy, make_tiny_config):
  config = make_tiny_config(corrupt_copy)
  source, _ = input_pipeline.open_clip_source(config, "train")
  with pytest.raises(input_pipeline.CorruptRecordError,
                     match=r"record 5 of .*corrupt\[train\] cannot be decoded .*rebuild the dataset"):
    source[5]
  # The error reaches the training loop as it is, not as a crash of a reader thread.
  iterator = iter(input_pipeline.create_dataset(config, "train"))
  with pytest.raises(input_pipeline.CorruptRecordError, match="cannot be decoded"):
    next(iterator)
  # The other split, in its own shard, still reads.
  validation, _ = input_pipeline.open_clip_source(config, "validation")
  assert validation[0]["video"].shape == (4, 16, 16, 3)


def test_record_without_required_fields_is_refused():
  source = input_pipeline.CheckedSource([{"video": 0, "caption": b"x"}], "fake[train]")
  with pytest.raises(input_pipeline.CorruptRecordError, match=r"record 0 of fake\[train\] lacks fields \['motion'\]"):
    source[0]


def test_batches_have_the_spec_shapes_dtypes_and_ranges(config, synthetic_data):
  batch = next(iter(input_pipeline.create_dataset(config, "train", shuffle=False)))
  spec = input_pipeline.batch_spec(config)
  assert set(batch) == set(spec) == {"video", "motion", "text", "text_mask"}
  for key, s in spec.items():
    assert batch[key].shape == s.shape, key
    assert batch[key].dtype == s.dtype, key
  assert batch["video"].shape == (4, 4, 16, 16, 3)
  for key in ("video", "motion"):
    assert batch[key].min() >= -1.0 and batch[key].max() <= 1.0
    assert batch[key].max() - batch[key].min() > 1.0        # a real clip, not a constant
  # Unshuffled: the first batch is records 0..3, pixels mapped to [-1, 1], captions tokenized.
  source, _ = input_pipeline.open_clip_source(config, "train")
  for i in range(4):
    record = source[i]
    np.testing.assert_allclose(batch["video"][i], record["video"] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_allclose(batch["motion"][i], record["motion"] / 127.5 - 1.0, atol=1e-6)
    ids, mask = text_encoder.tokenize([record["caption"].decode()], config.model.text.max_length)
    np.testing.assert_array_equal(batch["text"][i], ids[0])
    np.testing.assert_array_equal(batch["text_mask"][i], mask[0])
    assert batch["text"][i, 0] == text_encoder.BOS_ID and batch["text_mask"][i].sum() > 10


def test_eval_split_without_repeat_keeps_the_remainder(config):
  config.train.batch_size = 3
  batches = list(input_pipeline.create_dataset(config, "validation", shuffle=False, repeat=False))
  assert [b["video"].shape[0] for b in batches] == [3, TINY_EVAL_CLIPS - 3]


def test_shuffled_epochs_cover_every_record(config):
  iterator = iter(input_pipeline.create_dataset(config, "train"))
  per_epoch = TINY_TRAIN_CLIPS // config.train.batch_size
  epochs = [np.concatenate([b["video"] for b in take(iterator, per_epoch)]) for _ in range(2)]
  everything = sorted(all_clip_keys(config))
  assert len(set(everything)) == TINY_TRAIN_CLIPS
  for clips in epochs:
    assert sorted(clip_keys(clips)) == everything
  assert not np.array_equal(epochs[0], epochs[1])      # reshuffled each epoch


def test_iterator_state_round_trips(config):
  iterator = iter(input_pipeline.create_dataset(config, "train"))
  take(iterator, 3)
  state = iterator.get_state()
  # Six more batches cross the epoch boundary (4 batches per epoch).
  expected = take(iterator, 6)
  resumed = iter(input_pipeline.create_dataset(config, "train"))
  resumed.set_state(state)
  for a, b in zip(expected, take(resumed, 6)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # A fresh iterator does not read them in that order: the state was what mattered.
  fresh = take(iter(input_pipeline.create_dataset(config, "train")), 6)
  assert not all(np.array_equal(a["video"], b["video"]) for a, b in zip(expected, fresh))


def test_processes_read_disjoint_slices(config, monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  per_process = {}
  for index in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    batches = list(input_pipeline.create_dataset(config, "train", repeat=False))
    # Each process batches its half of the global batch.
    assert all(b["video"].shape[0] == config.train.batch_size // 2 for b in batches)
    per_process[index] = set(clip_keys(np.concatenate([b["video"] for b in batches])))
    assert len(per_process[index]) == TINY_TRAIN_CLIPS // 2
  assert not per_process[0] & per_process[1]
  # Together they read every record once.
  everything = all_clip_keys(config)
  assert per_process[0] | per_process[1] == set(everything)
  # Process i reads records i, i + 2, i + 4, ... (the documented slicing).
  assert per_process[0] == set(everything[0::2]) and per_process[1] == set(everything[1::2])
  config.train.batch_size = 3
  with pytest.raises(ValueError, match="batch size 3 is not divisible by 2 processes"):
    input_pipeline.create_dataset(config, "train")


def test_precomputed_text_embeddings(config, synthetic_data, tmp_path):
  source, _ = input_pipeline.open_clip_source(config, "train")
  captions = sorted({source[i]["caption"].decode() for i in range(len(source))})
  rng = np.random.default_rng(0)
  embeddings = rng.standard_normal((len(captions), 32, 24)).astype(np.float32)
  masks = np.ones((len(captions), 32), bool)
  path = str(tmp_path / "text.npz")
  np.savez(path, captions=np.array(captions), embeddings=embeddings, masks=masks)
  config.model.text.source = "precomputed"
  config.model.text.embedding_dim = 24
  config.data.text_embeddings = path
  batch = next(iter(input_pipeline.create_dataset(config, "train", shuffle=False)))
  assert batch["text"].shape == input_pipeline.batch_spec(config)["text"].shape == (4, 32, 24)
  first = captions.index(source[0]["caption"].decode())
  np.testing.assert_array_equal(batch["text"][0], embeddings[first])
  config.model.text.embedding_dim = 16
  with pytest.raises(ValueError, match=r"embeddings are \(32, 24\), config wants \(32, 16\)"):
    input_pipeline.create_dataset(config, "train")
  config.data.text_embeddings = str(tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match="data.text_embeddings=.*missing.npz"):
    input_pipeline.create_dataset(config, "train")
  # A mask with a hole (padding before a valid token) is refused when loaded.
  masks[1, 3] = False
  np.savez(path, captions=np.array(captions), embeddings=embeddings, masks=masks)
  config.model.text.embedding_dim = 24
  config.data.text_embeddings = path
  with pytest.raises(ValueError, match=r"masks\[1\] is not a prefix"):
    input_pipeline.create_dataset(config, "train")
