"""Clip shards -> Grain -> per-process batches -> global jax.Arrays on the mesh.

Each process reads only its slice of the records (records i with
i % process_count == process_index), shuffles them per epoch with a fixed seed,
and batches its share of the global batch; `make_global_batch` assembles the
per-process batches into arrays sharded over the mesh's batch axes. The Grain
iterator's state is checkpointed beside the train state (checkpoints.py), so a
resumed run reads exactly the batches it would have read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding

from videojam_jax.data import clip_records
from videojam_jax.model import text_encoder

MAX_SEARCH_DEPTH = 4   # how far below data.dataset_dir to look for dataset_info.json


class CorruptRecordError(RuntimeError):
  """A record in the shards could not be decoded."""


def find_dataset_version_dir(dataset_dir: str) -> str:
  """The folder holding dataset_info.json at or below `dataset_dir` (exactly one)."""
  if not os.path.isdir(dataset_dir):
    raise FileNotFoundError(
        f"data.dataset_dir={dataset_dir!r} does not exist. Build the synthetic clips with "
        "`python -m data_pipelines.build_synthetic --config <your config>` or your own "
        "videos with `python -m data_pipelines.build_from_videos`.")
  found = []
  for root, dirs, files in os.walk(dataset_dir):
    if root[len(dataset_dir):].count(os.sep) >= MAX_SEARCH_DEPTH:
      dirs[:] = []
    if "dataset_info.json" in files and not os.path.basename(root).startswith("incomplete"):
      found.append(root)
  if not found:
    raise FileNotFoundError(f"no dataset (dataset_info.json) found under {dataset_dir!r}; "
                            "it may be empty or its build was interrupted: rebuild it.")
  if len(found) > 1:
    raise ValueError(f"several datasets under {dataset_dir!r}: {sorted(found)}; set "
                     "data.dataset_dir to the one to train on.")
  return found[0]


def open_clip_source(config: ml_collections.ConfigDict, split: str) -> tuple[Any, dict[str, Any]]:
  """A random-access source of the split's records, checked against the config."""
  version_dir = find_dataset_version_dir(config.data.dataset_dir)
  builder = tfds.builder_from_directory(version_dir)
  metadata = dict(builder.info.metadata or {})
  clip_records.check_dataset(
      metadata, num_frames=config.data.num_frames, height=config.data.height,
      width=config.data.width, flow_sigma=config.data.flow_sigma, where=version_dir)
  if split not in builder.info.splits:
    raise ValueError(f"{version_dir} has no split {split!r}; it has {list(builder.info.splits)}")
  return CheckedSource(builder.as_data_source(split), f"{version_dir}[{split}]"), metadata


class CheckedSource(grain.sources.RandomAccessDataSource):
  """Wraps a TFDS data source so that a record that fails to decode names itself."""

  def __init__(self, source: Any, name: str):
    self._source, self._name = source, name

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> Mapping[str, Any]:
    try:
      record = self._source[index]
    except Exception as e:  # decoding errors come as many types (zlib, protobuf, ...)
      raise CorruptRecordError(f"record {index} of {self._name} cannot be decoded "
                               f"({type(e).__name__}: {e}); rebuild the dataset.") from e
    missing = [k for k in ("video", "motion", "caption") if k not in record]
    if missing:
      raise CorruptRecordError(f"record {index} of {self._name} lacks fields {missing}")
    return record


class PrecomputedText:
  """Caption -> precomputed (embedding [L, D], mask [L]) from an .npz file.

  The file holds `captions` [N] (str), `embeddings` [N, L, D] and `masks` [N, L],
  e.g. written once by a user's T5 / CLIP encoder over the dataset's captions.
  """

  def __init__(self, path: str, max_length: int, embedding_dim: int):
    if not path or not os.path.exists(path):
      raise FileNotFoundError(f"data.text_embeddings={path!r} not found (needed by "
                              "model.text.source='precomputed')")
    with np.load(path, allow_pickle=False) as f:
      captions, self._embeddings, self._masks = f["captions"], f["embeddings"], f["masks"]
    if self._embeddings.shape[1:] != (max_length, embedding_dim):
      raise ValueError(f"{path}: embeddings are {self._embeddings.shape[1:]}, config wants "
                       f"({max_length}, {embedding_dim})")
    masks = self._masks.astype(bool)
    prefix = np.arange(max_length)[None] < masks.sum(axis=1, keepdims=True)
    if not np.array_equal(masks, prefix):
      bad = int(np.argmax(np.any(masks != prefix, axis=1)))
      raise ValueError(f"{path}: masks[{bad}] is not a prefix (valid tokens first, padding "
                       "after), which the attention kernels assume")
    self._index = {str(c): i for i, c in enumerate(captions)}

  def __call__(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
    if caption not in self._index:
      raise KeyError(f"no precomputed text embedding for caption {caption!r}")
    i = self._index[caption]
    return self._embeddings[i].astype(np.float32), self._masks[i].astype(bool)


class ToTrainingExample(grain.transforms.Map):
  """Record -> model inputs: frames and motion in [-1, 1], caption tokens/embeddings."""

  def __init__(self, config: ml_collections.ConfigDict):
    self._text = config.model.text
    self._lookup = None
    if self._text.source == "precomputed":
      self._lookup = PrecomputedText(config.data.get("text_embeddings", ""),
                                     self._text.max_length, self._text.embedding_dim)

  def map(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    caption = record["caption"]
    caption = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
    if self._lookup is not None:
      text, mask = self._lookup(caption)
    else:
      ids, masks = text_encoder.tokenize([caption], self._text.max_length)
      text, mask = ids[0], masks[0]
    return {
        "video": np.asarray(record["video"], np.float32) / 127.5 - 1.0,
        "motion": np.asarray(record["motion"], np.float32) / 127.5 - 1.0,
        "text": text,
        "text_mask": mask,
    }


def per_process_batch_size(global_batch: int) -> int:
  if global_batch % jax.process_count():
    raise ValueError(f"batch size {global_batch} is not divisible by "
                     f"{jax.process_count()} processes")
  return global_batch // jax.process_count()


def create_dataset(config: ml_collections.ConfigDict, split: str, *, shuffle: bool = True,
                   repeat: bool = True) -> grain.IterDataset:
  """The Grain pipeline for `split`, this process's share of every global batch."""
  source, _ = open_clip_source(config, split)
  ds = grain.MapDataset.source(source)
  # Each process reads a disjoint slice; the slicing happens before shuffling so
  # that the slice is fixed and the per-epoch order is seeded per process.
  ds = ds[jax.process_index()::jax.process_count()]
  if len(ds) == 0:
    raise ValueError(f"split {split!r} has no records for process {jax.process_index()}")
  if shuffle:
    ds = ds.shuffle(seed=config.data.shuffle_seed + jax.process_index())
  if repeat:
    ds = ds.repeat()
  ds = ds.map(ToTrainingExample(config))
  ds = ds.batch(per_process_batch_size(config.train.batch_size), drop_remainder=repeat)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=max(1, int(config.data.get("read_threads", 2))),
      prefetch_buffer_size=int(config.data.prefetch_buffer_size)))
  if int(config.data.worker_count) > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(config.data.worker_count)))
  return it_ds


def make_global_batch(local_batch: Mapping[str, np.ndarray],
                      shardings: Mapping[str, NamedSharding]) -> dict[str, jax.Array]:
  """Per-process numpy batches -> global jax.Arrays laid out by `shardings`."""
  return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
          for k, v in local_batch.items()}


def batch_spec(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of one global batch (for sharding and ahead-of-time compiles)."""
  d, b = config.data, config.train.batch_size
  channels = int(d.get("channels", 3))   # model_lib.video_channels; 3 = RGB pixels
  video = jax.ShapeDtypeStruct((b, d.num_frames, d.height, d.width, channels), np.float32)
  length = config.model.text.max_length
  if config.model.text.source == "precomputed":
    text = jax.ShapeDtypeStruct((b, length, config.model.text.embedding_dim), np.float32)
  else:
    text = jax.ShapeDtypeStruct((b, length), np.int32)
  return {"video": video, "motion": video, "text": text,
          "text_mask": jax.ShapeDtypeStruct((b, length), np.bool_)}


def iterate_global(iterator: Iterator[Mapping[str, np.ndarray]],
                   shardings: Mapping[str, NamedSharding]) -> Iterator[dict[str, jax.Array]]:
  for local in iterator:
    yield make_global_batch(local, shardings)
