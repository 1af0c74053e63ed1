"""Tests for dataset discovery and the Grain input pipeline (videojam_jax/data/pipeline.py)."""

import glob
import os
import pathlib
import shutil
import subprocess
import sys

from array_record.python import array_record_module
from etils import epath
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from tests.conftest import TINY_EVAL_CLIPS, TINY_TRAIN_CLIPS
from tests.test_files import fake_gcs  # pylint: disable=unused-import (a fixture)
from videojam_jax.data import clip_records
from videojam_jax.data import pipeline as input_pipeline
from videojam_jax.data import text as text_lib
from videojam_jax.model import dit


def dataset(config, split, **kwargs):
  """The training pipeline as the trainer builds it: config.data, the batch size and the
  caption inputs (built here, so caption errors surface from this call too)."""
  captions = text_lib.CaptionInputs(config.model.text, config.data.get("text_embeddings", ""))
  return input_pipeline.create_dataset(config.data, split, batch_size=config.train.batch_size,
                                       captions=captions, **kwargs)


def spec_for(config):
  return input_pipeline.batch_spec(dit.VideoShape.from_data_config(config.data),
                                   text_lib.CaptionInputs(config.model.text, None),
                                   config.train.batch_size)


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
    dataset(config, "train")


def test_empty_dataset_dir_is_a_clear_error(make_tiny_config, tmp_path):
  with pytest.raises(FileNotFoundError, match="no dataset .dataset_info.json. found"):
    input_pipeline.open_clip_source(make_tiny_config(str(tmp_path)), "train")


def test_dataset_dir_may_be_any_folder_above_the_version_folder(make_tiny_config, synthetic_data):
  dataset_dir, version_dir = synthetic_data
  for folder in (dataset_dir, os.path.dirname(version_dir), version_dir):
    assert input_pipeline.find_dataset_version_dir(folder) == version_dir


def test_dataset_dir_may_be_a_string_or_any_path_object(synthetic_data):
  dataset_dir, version_dir = synthetic_data
  for folder in (dataset_dir, pathlib.Path(dataset_dir), epath.Path(dataset_dir)):
    found = input_pipeline.find_dataset_version_dir(folder)
    assert isinstance(found, str) and found == version_dir


def _upload(local_dir: str, remote_dir: str) -> None:
  """Copies the small files of a dataset folder tree (no shards) to a (fake) bucket."""
  for path in glob.glob(os.path.join(local_dir, "**", "*.json"), recursive=True):
    target = epath.Path(remote_dir) / os.path.relpath(path, local_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(pathlib.Path(path).read_bytes())


def test_dataset_dir_on_a_cloud_bucket(synthetic_data, fake_gcs):
  dataset_dir, version_dir = synthetic_data
  _upload(dataset_dir, "gs://bucket/data")
  expected = "gs://bucket/data/" + os.path.relpath(version_dir, dataset_dir)
  for folder in ("gs://bucket/data", epath.Path("gs://bucket/data"), expected):
    assert input_pipeline.find_dataset_version_dir(folder) == expected
  # An interrupted TFDS build (its incomplete.* folder) does not count.
  incomplete = epath.Path(expected).parent / "incomplete.ABC123_1.0.0" / "dataset_info.json"
  incomplete.parent.mkdir(parents=True, exist_ok=True)
  incomplete.write_text("{}")
  assert input_pipeline.find_dataset_version_dir("gs://bucket/data") == expected
  with pytest.raises(FileNotFoundError, match="gs://bucket/nothing.*does not exist"):
    input_pipeline.find_dataset_version_dir("gs://bucket/nothing")
  epath.Path("gs://bucket/empty/readme.txt").parent.mkdir(parents=True, exist_ok=True)
  epath.Path("gs://bucket/empty/readme.txt").write_text("no dataset here")
  with pytest.raises(FileNotFoundError, match="no dataset .dataset_info.json. found under 'gs://bucket/empty'"):
    input_pipeline.find_dataset_version_dir("gs://bucket/empty")
  _upload(dataset_dir, "gs://bucket/data/copy")
  with pytest.raises(ValueError, match=r"several datasets under 'gs://bucket/data'"):
    input_pipeline.find_dataset_version_dir("gs://bucket/data")


def test_dataset_of_another_size_is_refused(synthetic_data, make_tiny_config):
  config = make_tiny_config(synthetic_data[0])
  config.data.height = 32
  with pytest.raises(clip_records.DatasetMismatchError,
                     match=r"clips are \{'num_frames': 4, 'height': 16, 'width': 16\} but the config asks for "
                           r"\{'num_frames': 4, 'height': 32, 'width': 16\}"):
    dataset(config, "train")
  config = make_tiny_config(synthetic_data[0])
  config.data.flow_sigma = 0.2
  with pytest.raises(clip_records.DatasetMismatchError, match="sigma"):
    input_pipeline.open_clip_source(config, "train")


def test_two_datasets_in_one_dir_is_a_clear_error(synthetic_data, make_tiny_config, tmp_path):
  _, version_dir = synthetic_data
  for name in ("a", "b"):
    shutil.copytree(version_dir, tmp_path / name / "1.0.0")
  with pytest.raises(ValueError, match=r"several datasets under .*a/1.0.0.*b/1.0.0.*set data.dataset_dir"):
    dataset(make_tiny_config(str(tmp_path)), "train")
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
  iterator = iter(dataset(config, "train"))
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
  batch = next(iter(dataset(config, "train", shuffle=False)))
  spec = spec_for(config)
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
    ids, mask = text_lib.tokenize([record["caption"].decode()], config.model.text.max_length)
    np.testing.assert_array_equal(batch["text"][i], ids[0])
    np.testing.assert_array_equal(batch["text_mask"][i], mask[0])
    assert batch["text"][i, 0] == text_lib.BOS_ID and batch["text_mask"][i].sum() > 10


def test_eval_split_without_repeat_keeps_the_remainder(config):
  config.train.batch_size = 3
  batches = list(dataset(config, "validation", shuffle=False, repeat=False))
  assert [b["video"].shape[0] for b in batches] == [3, TINY_EVAL_CLIPS - 3]


def test_shuffled_epochs_cover_every_record(config):
  iterator = iter(dataset(config, "train"))
  per_epoch = TINY_TRAIN_CLIPS // config.train.batch_size
  epochs = [np.concatenate([b["video"] for b in take(iterator, per_epoch)]) for _ in range(2)]
  everything = sorted(all_clip_keys(config))
  assert len(set(everything)) == TINY_TRAIN_CLIPS
  for clips in epochs:
    assert sorted(clip_keys(clips)) == everything
  assert not np.array_equal(epochs[0], epochs[1])      # reshuffled each epoch


def test_iterator_state_round_trips(config):
  iterator = iter(dataset(config, "train"))
  take(iterator, 3)
  state = iterator.get_state()
  # Six more batches cross the epoch boundary (4 batches per epoch).
  expected = take(iterator, 6)
  resumed = iter(dataset(config, "train"))
  resumed.set_state(state)
  for a, b in zip(expected, take(resumed, 6)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # A fresh iterator does not read them in that order: the state was what mattered.
  fresh = take(iter(dataset(config, "train")), 6)
  assert not all(np.array_equal(a["video"], b["video"]) for a, b in zip(expected, fresh))


def test_processes_read_disjoint_slices(config, monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  per_process = {}
  for index in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    batches = list(dataset(config, "train", repeat=False))
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
    dataset(config, "train")


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
  batch = next(iter(dataset(config, "train", shuffle=False)))
  assert batch["text"].shape == spec_for(config)["text"].shape == (4, 32, 24)
  first = captions.index(source[0]["caption"].decode())
  np.testing.assert_array_equal(batch["text"][0], embeddings[first])
  config.model.text.embedding_dim = 16
  with pytest.raises(ValueError, match=r"embeddings are \(32, 24\), config wants \(32, 16\)"):
    dataset(config, "train")
  config.data.text_embeddings = str(tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match="data.text_embeddings=.*missing.npz"):
    dataset(config, "train")
  # A mask with a hole (padding before a valid token) is refused when loaded.
  masks[1, 3] = False
  np.savez(path, captions=np.array(captions), embeddings=embeddings, masks=masks)
  config.model.text.embedding_dim = 24
  config.data.text_embeddings = path
  with pytest.raises(ValueError, match=r"masks\[1\] is not a prefix"):
    dataset(config, "train")


def full_decode_captions(version_dir, split):
  source = tfds.builder_from_directory(version_dir).as_data_source(split)
  return [source[i]["caption"].decode() for i in range(len(source))]


def test_read_captions_matches_the_full_decode(synthetic_data):
  dataset_dir, version_dir = synthetic_data
  for split, size in (("train", TINY_TRAIN_CLIPS), ("validation", TINY_EVAL_CLIPS)):
    everything = full_decode_captions(version_dir, split)
    assert len(everything) == size and len(set(everything)) > 1
    assert input_pipeline.read_captions(dataset_dir, split, 3) == everything[:3]
    assert input_pipeline.read_captions(pathlib.Path(version_dir), split, size + 5) == everything
  assert input_pipeline.read_captions(dataset_dir, "train", 0) == []
  with pytest.raises(ValueError, match="has no split 'test'"):
    input_pipeline.read_captions(dataset_dir, "test", 1)
  with pytest.raises(ValueError, match="count must be >= 0"):
    input_pipeline.read_captions(dataset_dir, "train", -1)


@pytest.fixture
def garbled_video_copy(synthetic_data, tmp_path):
  """A copy of the dataset whose train record 2 has garbage for its video bytes
  (a valid record otherwise): decoding its video fails, its caption is intact."""
  _, version_dir = synthetic_data
  copy = tmp_path / "garbled"
  shutil.copytree(version_dir, copy)
  raw = tfds.builder_from_directory(str(copy)).as_data_source(
      "train", deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  records = [raw[i] for i in range(len(raw))]
  example = tf_example_pb2.Example.FromString(records[2])
  example.features.feature["video"].bytes_list.value[0] = b"not a video tensor"
  records[2] = example.SerializeToString()
  (shard,) = glob.glob(str(copy / "*train.array_record*"))
  writer = array_record_module.ArrayRecordWriter(shard, "group_size:1")  # as TFDS writes
  for record in records:
    writer.write(record)
  writer.close()
  return str(copy)


def test_read_captions_does_not_decode_the_tensors(garbled_video_copy, synthetic_data):
  with pytest.raises(Exception, match="cannot reshape"):   # the video bytes are garbage
    tfds.builder_from_directory(garbled_video_copy).as_data_source("train")[2]
  expected = full_decode_captions(synthetic_data[1], "train")[:4]
  assert input_pipeline.read_captions(garbled_video_copy, "train", 4) == expected


def test_read_captions_needs_no_tensorflow(synthetic_data):
  # A fresh interpreter: other test modules load TensorFlow into this one.
  check = ("import sys; from videojam_jax.data import pipeline; "
           f"assert pipeline.read_captions({synthetic_data[0]!r}, 'train', 2); "
           "assert 'tensorflow' not in sys.modules, 'reading captions imported tensorflow'")
  subprocess.run([sys.executable, "-c", check], check=True, timeout=120,
                 cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
