"""Clip shards -> Grain -> per-process batches -> global jax.Arrays on the mesh.

Each process reads only its slice of the records (records i with
i % process_count == process_index), shuffles them per epoch with a fixed seed,
and batches its share of the global batch; `make_global_batch` assembles the
per-process batches into arrays sharded over the mesh's batch axes. The Grain
iterator's state is checkpointed beside the train state (checkpoints.py), so a
resumed run reads exactly the batches it would have read.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Mapping
from typing import Any

from etils import epath
import grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding

from videojam_jax.data import clip_records
from videojam_jax.data import frames
from videojam_jax.data import open_files
from videojam_jax.data import text as text_lib
from videojam_jax.model.wan import weights as wan_weights

MAX_SEARCH_DEPTH = 4   # how far below data.dataset_dir to look for dataset_info.json
DATASET_INFO = "dataset_info.json"
# TFDS writes a dataset into an "incomplete.*" folder and renames it when done.
INCOMPLETE_PREFIX = "incomplete"
CAPTION = "caption"    # the caption feature of the clip format (clip_records.py)
CLIP_INDEX = "clip_index"   # added by create_dataset(with_index=True)
# Latent clips built with a text encoder carry their caption's umT5 embedding [n, D].
TEXT_EMBEDDING = "text_embedding"


class CorruptRecordError(RuntimeError):
  """A record in the shards could not be decoded."""


def find_dataset_version_dir(dataset_dir: epath.PathLike) -> str:
  """The folder holding dataset_info.json at or below `dataset_dir` (exactly one).

  dataset_dir: a local path (str or path object) or a cloud one (gs://...), read
  through etils.epath, so no gcsfuse mount is needed. It is searched one level
  at a time, down to MAX_SEARCH_DEPTH levels, with one glob per level: cheap on
  an object store, where walking a whole tree lists every shard.
  """
  root = epath.Path(dataset_dir)
  if not root.is_dir():
    raise FileNotFoundError(
        f"data.dataset_dir={os.fspath(dataset_dir)!r} does not exist. Build the synthetic "
        "clips with `python -m data_pipelines.build_synthetic --config <your config>` or "
        "your own videos with `python -m data_pipelines.build_from_videos`.")
  found = []
  for depth in range(MAX_SEARCH_DEPTH + 1):
    for info in root.glob("/".join(["*"] * depth + [DATASET_INFO])):
      if not info.parent.name.startswith(INCOMPLETE_PREFIX):
        found.append(os.fspath(info.parent))
  if not found:
    raise FileNotFoundError(f"no dataset ({DATASET_INFO}) found under "
                            f"{os.fspath(dataset_dir)!r}; it may be empty or its build "
                            "was interrupted: rebuild it.")
  if len(found) > 1:
    raise ValueError(f"several datasets under {os.fspath(dataset_dir)!r}: {sorted(found)}; "
                     "set data.dataset_dir to the one to train on.")
  return found[0]


def _open_builder(dataset_dir: epath.PathLike) -> tuple[str, tfds.core.DatasetBuilder]:
  """(version dir, TFDS builder) of the one dataset at or below `dataset_dir`."""
  version_dir = find_dataset_version_dir(dataset_dir)
  return version_dir, tfds.builder_from_directory(version_dir)


def _check_split(builder: tfds.core.DatasetBuilder, version_dir: str, split: str) -> None:
  if split not in builder.info.splits:
    raise ValueError(f"{version_dir} has no split {split!r}; it has {list(builder.info.splits)}")


def open_clip_source(config: ml_collections.ConfigDict, split: str) -> tuple[Any, dict[str, Any]]:
  """A random-access source of the split's records, checked against the config."""
  version_dir, builder = _open_builder(config.data.dataset_dir)
  metadata = dict(builder.info.metadata or {})
  latents = config.data.get("latents")
  vae = latents.get("vae", "") if latents is not None else ""
  # Only a latent dataset is checked against a VAE (hashing reads its weights once).
  vae_hash = wan_weights.vae_sha256(vae) if vae and "vae_sha256" in metadata else None
  clip_records.check_dataset(
      metadata, num_frames=config.data.num_frames, height=config.data.height,
      width=config.data.width, flow_sigma=config.data.flow_sigma, where=version_dir,
      channels=int(config.data.get("channels", 3)), vae_sha256=vae_hash)
  _check_split(builder, version_dir, split)
  name = f"{version_dir}[{split}]"
  open_files.reserve_shard_files(name, builder.info.splits[split].num_shards)
  return CheckedSource(builder.as_data_source(split), name), metadata


def read_captions(dataset_dir: epath.PathLike, split: str, count: int) -> list[str]:
  """The first `count` captions of `split`, in record order (all, if it has fewer).

  Only the caption is decoded: the other features (video, motion, flow, ...) are
  handed over undecoded (tfds.decode.SkipDecoding), so no tensor of a record is
  decompressed, which is what made reading prompts through `open_clip_source`
  slow. Needs no TensorFlow; dataset_dir as in `find_dataset_version_dir`.
  """
  if count < 0:
    raise ValueError(f"read_captions: count must be >= 0, got {count}")
  version_dir, builder = _open_builder(dataset_dir)
  _check_split(builder, version_dir, split)
  features = builder.info.features
  if CAPTION not in features.keys():
    raise clip_records.DatasetMismatchError(
        f"{version_dir}: records have no {CAPTION!r} feature (they have "
        f"{sorted(features.keys())}); not a videojam clip dataset.")
  skip = {name: tfds.decode.SkipDecoding() for name in features.keys() if name != CAPTION}
  source = CheckedSource(builder.as_data_source(split, decoders=skip), f"{version_dir}[{split}]")
  return [_text(source[i][CAPTION]) for i in range(min(count, len(source)))]


def _text(value: Any) -> str:
  """A decoded TFDS Text feature (bytes) as str."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


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
      if open_files.is_too_many_open_files(e):  # the machine's limit, not the record
        raise OSError(errno.EMFILE, f"record {index} of {self._name}: its shard file cannot be "
                      f"opened ({e}); the process has run out of open files. Raise "
                      "`ulimit -n`, or rebuild the dataset with larger shards.") from e
      raise CorruptRecordError(f"record {index} of {self._name} cannot be decoded "
                               f"({type(e).__name__}: {e}); rebuild the dataset.") from e
    missing = [k for k in ("video", "motion", "caption") if k not in record]
    if missing:
      raise CorruptRecordError(f"record {index} of {self._name} lacks fields {missing}")
    return record


class ToTrainingExample(grain.transforms.Map):
  """Record -> model inputs: frames and motion in [-1, 1], caption tokens or embeddings
  (through `text.CaptionInputs`, the path sampling uses too)."""

  def __init__(self, captions: text_lib.CaptionInputs):
    self._captions = captions

  def map(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if TEXT_EMBEDDING in record and self._captions.source == "precomputed":
      text, mask = self._captions.from_embedding(record[TEXT_EMBEDDING])
    else:
      text, mask = (x[0] for x in self._captions([_text(record[CAPTION])]))
    example = {
        "video": _model_space(record["video"]),
        "motion": _model_space(record["motion"]),
        "text": text,
        "text_mask": mask,
    }
    if CLIP_INDEX in record:
      example[CLIP_INDEX] = np.int32(record[CLIP_INDEX])
    return example


def _model_space(clip: np.ndarray) -> np.ndarray:
  """uint8 pixels to [-1, 1]; latent clips (float32, already normalised) as they are."""
  clip = np.asarray(clip)
  return clip.astype(np.float32) if clip.dtype.kind == "f" else frames.to_model_space(clip)


class _WithIndex(grain.transforms.MapWithIndex):
  """Adds the record's index in its split (stable ids for held-out noise)."""

  def map_with_index(self, index: int, record: Mapping[str, Any]) -> dict[str, Any]:
    return {**record, CLIP_INDEX: index}


def check_caption_embeddings(metadata: Mapping[str, Any], captions: text_lib.CaptionInputs,
                             where: Any) -> None:
  """Before any record is read: captions can become model inputs (the records carry
  embeddings of the config's width, or data.text_embeddings is set)."""
  if captions.source != "precomputed":
    return
  dim = metadata.get("text_embedding_dim")
  if dim is None:
    if not captions.has_lookup:
      raise ValueError(
          f"model.text.source='precomputed' but {where} holds no caption embeddings and "
          "data.text_embeddings is not set: run `python -m data_pipelines.embed_captions`, "
          "or build the latent clips with data.latents.text_encoder")
    return
  if int(dim) != captions.embedding_dim:
    raise clip_records.DatasetMismatchError(
        f"{where}: the records' caption embeddings are {dim} wide, model.text.embedding_dim "
        f"is {captions.embedding_dim}")
  if int(metadata.get("text_max_length", 0)) > captions.max_length:
    raise clip_records.DatasetMismatchError(
        f"{where}: captions were embedded up to {metadata['text_max_length']} tokens, more "
        f"than model.text.max_length={captions.max_length}")


def per_process_batch_size(global_batch: int) -> int:
  if global_batch % jax.process_count():
    raise ValueError(f"batch size {global_batch} is not divisible by "
                     f"{jax.process_count()} processes")
  return global_batch // jax.process_count()


def create_dataset(data_config: ml_collections.ConfigDict, split: str, *, batch_size: int,
                   captions: text_lib.CaptionInputs, shuffle: bool = True, repeat: bool = True,
                   with_index: bool = False, drop_remainder: bool | None = None,
                   ) -> grain.IterDataset:
  """The Grain pipeline for `split` (config.data): this process's share of every global batch.

  with_index: each example also carries `clip_index`, its record's index in the
  split. drop_remainder (default: when repeating) drops a last, smaller batch.
  """
  source, metadata = open_clip_source(ml_collections.ConfigDict({"data": data_config}), split)
  check_caption_embeddings(metadata, captions, data_config.dataset_dir)
  ds = grain.MapDataset.source(source)
  if with_index:
    ds = ds.map_with_index(_WithIndex())
  # Each process reads a disjoint slice; the slicing happens before shuffling so
  # that the slice is fixed and the per-epoch order is seeded per process.
  ds = ds[jax.process_index()::jax.process_count()]
  if len(ds) == 0:
    raise ValueError(f"split {split!r} has no records for process {jax.process_index()}")
  if shuffle:
    ds = ds.shuffle(seed=data_config.shuffle_seed + jax.process_index())
  if repeat:
    ds = ds.repeat()
  ds = ds.map(ToTrainingExample(captions))
  ds = ds.batch(per_process_batch_size(batch_size),
                drop_remainder=repeat if drop_remainder is None else drop_remainder)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=max(1, int(data_config.get("read_threads", 2))),
      prefetch_buffer_size=int(data_config.prefetch_buffer_size)))
  if int(data_config.worker_count) > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(data_config.worker_count)))
  return it_ds


def make_global_batch(local_batch: Mapping[str, np.ndarray],
                      shardings: Mapping[str, NamedSharding]) -> dict[str, jax.Array]:
  """Per-process numpy batches -> global jax.Arrays laid out by `shardings`."""
  return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
          for k, v in local_batch.items()}


def batch_spec(video_shape: Any, captions: text_lib.CaptionInputs,
               batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of one global training batch (for shardings and ahead-of-time compiles).

  video_shape: the model's clip shape (model.dit.VideoShape: frames, height, width, channels).
  """
  video = jax.ShapeDtypeStruct((batch_size,) + tuple(video_shape.dims), np.float32)
  text, mask = captions.spec(batch_size)
  return {"video": video, "motion": video, "text": text, "text_mask": mask}


def iterate_global(iterator: Iterator[Mapping[str, np.ndarray]],
                   shardings: Mapping[str, NamedSharding]) -> Iterator[dict[str, jax.Array]]:
  for local in iterator:
    yield make_global_batch(local, shardings)
