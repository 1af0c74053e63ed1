"""TFDS builder `wan_latent_clips`: a pixel clip dataset through the Wan 2.1 VAE.

Reads a clip dataset in the shared format (synthetic physics, or built from video
files) and writes the same record layout with latents in place of pixels:

  video:   float32 [T', h, w, z]  the clip's VAE latent mean, normalised with the
                                  VAE's latents_mean / latents_std (what Wan trains on)
  motion:  float32 [T', h, w, z]  the motion video through the same VAE, the same way
                                  (the paper: motion goes through the video autoencoder)
  caption, clip_id                copied
  text_embedding: float32 [n, D]  with data.latents.text_encoder (a Wan pipeline folder):
                                  the caption's umT5 embedding, its n tokens only (the
                                  trainer pads to model.text.max_length); no .npz needed

T' = 1 + (T - 1) / 4, h = H / 8, w = W / 8. The metadata carries the clip metadata
with the latent sizes (so the trainer's size checks read latent sizes), `channels`,
`vae_sha256` (a hash of the VAE's weight files), `latents_mean` / `latents_std`, the
pixel sizes and the source dataset (and, with text, `text_embedding_dim`,
`text_max_length` and the text encoder's folder). Each split's records are encoded in batches by
one jitted program, pixels read once per clip (video and motion in one VAE call).

  <data_dir>/wan_latent_clips/<source config>-vae<hash>/1.0.0/

The build has two stages, so that it resumes and splits over the hosts of a job:

1. Encode. Each split's clips are cut into chunks of `data.latents.chunk_clips`;
   process p of P encodes the chunks c with c % P == p, on its own devices, and
   writes each one whole (`ChunkStore`, under `data.latents.work_dir`, by default
   <data_dir>/wan_latent_clips_encoding/<name>/). A rerun skips the chunks that are
   there: an interrupted build loses at most one chunk per process.
2. Write. Once every process is done, process 0 writes the TFDS dataset from the
   chunks, in source order, and removes the work dir.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from data_pipelines import tfds_prepare
from videojam_jax import files
from videojam_jax.data import clip_records
from videojam_jax.data import frames
from videojam_jax.data import motion_encoding
from videojam_jax.data import pipeline
from videojam_jax.data import raft_flow
from videojam_jax.model import functional
from videojam_jax.model.wan import text as wan_text
from videojam_jax.model.wan import vae as vae_lib
from videojam_jax.model.wan import weights
from videojam_jax.parallel import sharding

SOURCE = "wan_latent_clips"
FILE_FORMAT = "array_record"
SKIPPED_FILE = "skipped_clips.json"   # beside dataset_info.json: the clips left out, and why
WORK_FOLDER = "wan_latent_clips_encoding"   # <data_dir>/<this>/<name>/: the encode stage
IDENTITY_FILE = "identity.json"             # in the work dir: what its chunks were encoded from


class EncodingWorkDirError(ValueError):
  """The encode stage's work dir holds chunks of another build."""


@dataclasses.dataclass(eq=False, kw_only=True)
class LatentClipsConfig(tfds.core.BuilderConfig):
  source_dir: str
  vae_dir: str
  vae_sha256: str
  batch_size: int
  chunk_clips: int
  text_encoder_dir: str = ""
  text_max_length: int = 0
  flow_estimator: str = ""      # RAFT's name when the motion is recomputed ("": the source's)
  flow_weights: str = ""


def latent_features(num_frames: int, height: int, width: int, channels: int,
                    text_dim: int = 0) -> tfds.features.FeaturesDict:
  encoding = clip_records.TENSOR_ENCODING   # ArrayRecord compresses each record
  shape = (num_frames, height, width, channels)
  features = {
      "video": tfds.features.Tensor(shape=shape, dtype=np.float32, encoding=encoding),
      "motion": tfds.features.Tensor(shape=shape, dtype=np.float32, encoding=encoding),
      "caption": tfds.features.Text(),
      "clip_id": tfds.features.Text(),
  }
  if text_dim:
    features[pipeline.TEXT_EMBEDDING] = tfds.features.Tensor(
        shape=(None, text_dim), dtype=np.float32, encoding=encoding)
  return tfds.features.FeaturesDict(features)


class LatentEncoder:
  """Pixel clips uint8 [B, T, H, W, 3] -> normalised latent means [B, T', h, w, z], jitted."""

  def __init__(self, directory: str, plan: sharding.ShardingPlan):
    directory = pathlib.Path(weights.vae_directory(directory))
    self.config = weights.read_vae_config(directory)
    graphdef, abstract = functional.abstract_split(
        lambda: vae_lib.WanVAE(self.config, rngs=nnx.Rngs(0)), plan)
    self.params, self.plan = weights.load_vae(directory, abstract), plan

    def encode(params, clips):
      vae = nnx.merge(graphdef, params)
      mean, _ = vae.encode(clips)
      return vae.normalize(mean)
    self._encode = jax.jit(encode)

  def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    ct, cs = self.config.temporal_compression, self.config.spatial_compression
    if (num_frames - 1) % ct or height % cs or width % cs:
      raise clip_records.DatasetMismatchError(
          f"the Wan VAE encodes 1 + {ct}k frames of a multiple of {cs} pixels; the source "
          f"clips are {num_frames} frames of {height}x{width}: rebuild them at such a size")
    return (1 + (num_frames - 1) // ct, height // cs, width // cs, self.config.z_dim)

  def check_batch(self, batch: int) -> None:
    """Clear error unless a call of `batch` clips splits evenly over the encoder's devices."""
    self.plan.check_batch_divisible(batch, "2 x data.latents.batch_size (video and motion)")

  def __call__(self, clips: np.ndarray) -> np.ndarray:
    with self.plan.active():
      x = jax.device_put(frames.to_model_space(clips), self.plan.batch_sharding(clips.ndim))
      return np.asarray(jax.device_get(self._encode(self.params, x)))


@dataclasses.dataclass(frozen=True)
class Share:
  """The chunks one process encodes: every process_count-th, from process_index."""
  process_index: int = 0
  process_count: int = 1

  @classmethod
  def of_this_process(cls) -> "Share":
    return cls(jax.process_index(), jax.process_count())

  def owns(self, chunk: int) -> bool:
    return chunk % self.process_count == self.process_index


def chunk_ranges(num_clips: int, chunk_clips: int) -> list[range]:
  """The source indices of each chunk of a split, in order."""
  return [range(start, min(num_clips, start + chunk_clips))
          for start in range(0, num_clips, chunk_clips)]


class ChunkStore:
  """The encode stage's results: <root>/<split>/chunk-00000.npz, each written whole.

  A chunk holds its clips' records (latents, caption, clip id, text embedding
  padded to the chunk's longest, with its lengths) and the clips it skipped. It is
  written with files.atomic_write, so a chunk is there entirely or not at all.
  """

  def __init__(self, root: epath.PathLike):
    self.root = epath.Path(root)

  def path(self, split: str, chunk: int) -> epath.Path:
    return self.root / split / f"chunk-{chunk:05d}.npz"

  def has(self, split: str, chunk: int) -> bool:
    return self.path(split, chunk).exists()

  def check_identity(self, identity: dict[str, Any]) -> None:
    """Claims the work dir for this build, or refuses one that another build started."""
    path = self.root / IDENTITY_FILE
    if path.exists():
      found = json.loads(path.read_text())
      if found != identity:
        differ = {k: (found.get(k), identity.get(k))
                  for k in sorted(set(found) | set(identity)) if found.get(k) != identity.get(k)}
        raise EncodingWorkDirError(
            f"{self.root} holds latents encoded for another build (differs in: "
            + "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differ.items())
            + "). Remove it, or set data.latents.work_dir to another folder.")
      return
    self.root.mkdir(parents=True, exist_ok=True)
    files.atomic_write(path, json.dumps(identity, indent=2, sort_keys=True) + "\n")

  def write(self, split: str, chunk: int, examples: Sequence[dict[str, Any]],
            skipped: Sequence[dict[str, Any]]) -> None:
    arrays: dict[str, np.ndarray] = dict(skipped=np.asarray(json.dumps(list(skipped))))
    if examples:
      for key in ("video", "motion"):
        arrays[key] = np.stack([e[key] for e in examples])
      for key in ("caption", "clip_id"):
        arrays[key] = np.asarray([e[key] for e in examples], dtype=str)
      if pipeline.TEXT_EMBEDDING in examples[0]:
        texts = [e[pipeline.TEXT_EMBEDDING] for e in examples]
        lengths = np.asarray([len(t) for t in texts], np.int32)
        padded = np.zeros((len(texts), int(lengths.max()), texts[0].shape[-1]), np.float32)
        for i, t in enumerate(texts):
          padded[i, :len(t)] = t
        arrays[pipeline.TEXT_EMBEDDING], arrays["text_length"] = padded, lengths
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    self.path(split, chunk).parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(self.path(split, chunk), buffer.getvalue())

  def read(self, split: str, chunk: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records, skipped) of one chunk."""
    with self.path(split, chunk).open("rb") as f, np.load(f) as npz:
      data = {key: npz[key] for key in npz.files}   # each npz[key] reads its array again
    skipped = json.loads(str(data["skipped"]))
    examples = []
    for i in range(len(data.get("video", ()))):
      example = {"video": data["video"][i], "motion": data["motion"][i],
                 "caption": str(data["caption"][i]), "clip_id": str(data["clip_id"][i])}
      if pipeline.TEXT_EMBEDDING in data:
        example[pipeline.TEXT_EMBEDDING] = data[pipeline.TEXT_EMBEDDING][i][:data["text_length"][i]]
      examples.append(example)
    return examples, skipped

  def remove(self) -> None:
    self.root.rmtree(missing_ok=True)


class WanLatentClips(tfds.core.GeneratorBasedBuilder):
  """Clips of another dataset as Wan 2.1 VAE latents (video and motion)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = []

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def __init__(self, *, encoder: LatentEncoder, text_encoder: Any = None, flow: Any = None,
               **kwargs: Any):
    self._encoder, self._text_encoder, self._flow = encoder, text_encoder, flow
    self.skipped: list[dict[str, Any]] = []     # clips left out, and why (SKIPPED_FILE)
    self.store: ChunkStore | None = None         # the encoded chunks the dataset is written from
    config: LatentClipsConfig = kwargs["config"]
    self._source_version_dir, self._source = pipeline._open_builder(config.source_dir)  # pylint: disable=protected-access
    self._source_metadata = dict(self._source.info.metadata or {})
    clip_records.check_dataset(
        self._source_metadata, num_frames=int(self._source_metadata.get("num_frames", 0)),
        height=int(self._source_metadata.get("height", 0)),
        width=int(self._source_metadata.get("width", 0)),
        flow_sigma=float(self._source_metadata.get("flow_sigma", 0.0)),
        where=self._source_version_dir)
    if self._source_metadata.get("source") == SOURCE:
      raise clip_records.DatasetMismatchError(
          f"{self._source_version_dir} is already a latent dataset")
    m = self._source_metadata
    self._latent_shape = encoder.latent_shape(int(m["num_frames"]), int(m["height"]),
                                              int(m["width"]))
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    t, h, w, z = self._latent_shape
    m, vae = self._source_metadata, self._encoder.config
    text = {}
    if self._text_encoder is not None:
      text = dict(text_embedding_dim=int(self._text_encoder.width),
                  text_max_length=int(self.builder_config.text_max_length),
                  text_encoder=self.builder_config.text_encoder_dir)
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__.splitlines()[0],
        features=latent_features(t, h, w, z, text.get("text_embedding_dim", 0)),
        metadata=clip_records.clip_metadata(
            num_frames=t, height=h, width=w, fps=float(m["fps"]),
            flow_estimator=(self._flow.name if self._flow is not None
                            else str(m["flow_estimator"])),
            flow_sigma=float(m["flow_sigma"]),
            source=SOURCE, channels=z, vae_sha256=self.builder_config.vae_sha256,
            latents_mean=list(vae.latents_mean), latents_std=list(vae.latents_std),
            pixel_num_frames=int(m["num_frames"]), pixel_height=int(m["height"]),
            pixel_width=int(m["width"]), source_dataset=self._source_version_dir,
            source_metadata={k: v for k, v in m.items() if isinstance(v, (int, float, str))},
            **text))

  def identity(self) -> dict[str, Any]:
    """What the encode stage's chunks depend on (kept in the work dir, checked on reruns)."""
    c = self.builder_config
    return dict(source_dataset=self._source_version_dir, vae_sha256=c.vae_sha256,
                text_encoder=c.text_encoder_dir, text_max_length=c.text_max_length,
                **({"flow_estimator": c.flow_estimator, "flow_weights": c.flow_weights}
                   if c.flow_estimator else {}),
                chunk_clips=c.chunk_clips, latent_shape=list(self._latent_shape),
                splits={s: int(info.num_examples) for s, info in self._source.info.splits.items()})

  def _chunks(self, split: str) -> list[range]:
    return chunk_ranges(int(self._source.info.splits[split].num_examples),
                        self.builder_config.chunk_clips)

  def encode(self, store: ChunkStore, share: Share = Share()) -> None:
    """Stage 1: encodes this process's chunks of every split that `store` lacks."""
    from tqdm import tqdm
    batch = self.builder_config.batch_size
    who = f" (process {share.process_index} of {share.process_count})" if share.process_count > 1 else ""
    for split in self._source.info.splits:
      source = pipeline.CheckedSource(self._source.as_data_source(split),
                                      f"{self._source_version_dir}[{split}]")
      mine = [(c, r) for c, r in enumerate(self._chunks(split)) if share.owns(c)]
      todo = [(c, r) for c, r in mine if not store.has(split, c)]
      if len(todo) < len(mine):
        print(f"{split}{who}: {len(mine) - len(todo)} of {len(mine)} chunks already encoded in "
              f"{store.root}; encoding the other {len(todo)}")
      num_clips = sum(len(r) for _, r in mine)
      progress = tqdm(total=num_clips, unit="clip", desc=f"VAE {split}{who}",
                      initial=num_clips - sum(len(r) for _, r in todo))
      for chunk, indices in todo:
        examples, skipped = [], []
        for start in range(indices.start, indices.stop, batch):
          batch_indices = range(start, min(indices.stop, start + batch))
          done, left_out = self._encode_batch(source, split, batch_indices)
          examples += done
          skipped += left_out
          progress.update(len(batch_indices))
        store.write(split, chunk, examples, skipped)
        logging.info("%s%s: chunk %d (clips %d..%d) encoded", split, who, chunk, indices.start,
                     indices.stop - 1)
      progress.close()

  def missing_chunks(self, store: ChunkStore) -> list[str]:
    return [str(store.path(split, c)) for split in self._source.info.splits
            for c in range(len(self._chunks(split))) if not store.has(split, c)]

  def _encode_batch(self, source: pipeline.CheckedSource, split: str,
                    indices: range) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records, skipped clips) of source[indices]: pixels read once, one VAE call."""
    batch = self.builder_config.batch_size
    records, skipped = [], []
    for index in indices:
      try:
        records.append(source[index])
      except pipeline.CorruptRecordError as e:   # skipped and reported, not fatal
        skipped.append(dict(split=split, index=index, reason=str(e)))
    if not records:
      return [], skipped
    n = len(records)
    # Video and motion of the batch in one call (the same VAE), padded to a constant
    # batch so that one program serves every batch.
    if self._flow is not None:   # the motion videos from RAFT flow of the frames
      sigma = float(self._source_metadata["flow_sigma"])
      motions = [motion_encoding.flows_to_motion_video(self._flow.estimate(r["video"]), sigma)
                 for r in records]
    else:
      motions = [r["motion"] for r in records]
    clips = np.stack([r["video"] for r in records] + motions)
    pad = 2 * batch - len(clips)
    if pad:
      clips = np.concatenate([clips, np.repeat(clips[:1], pad, axis=0)])
    latents = self._encoder(clips)
    captions = [pipeline._text(r["caption"]) for r in records]  # pylint: disable=protected-access
    if self._text_encoder is not None:
      # Constant batch shape (one compile): the last batch padded with empty captions.
      embeddings, masks = self._text_encoder(captions + [""] * (batch - n))
    examples = []
    for i, record in enumerate(records):
      key = pipeline._text(record["clip_id"])  # pylint: disable=protected-access
      if not (np.isfinite(latents[i]).all() and np.isfinite(latents[n + i]).all()):
        skipped.append(dict(split=split, clip_id=key, reason="non-finite latents"))
        continue
      example = {"video": latents[i], "motion": latents[n + i], "caption": captions[i],
                 "clip_id": key}
      if self._text_encoder is not None:
        example[pipeline.TEXT_EMBEDDING] = embeddings[i][:int(masks[i].sum())]
      examples.append(example)
    return examples, skipped

  def _split_generators(self, dl_manager):
    del dl_manager
    if self.store is None:
      raise RuntimeError("WanLatentClips writes from encoded chunks: set .store, run .encode")
    return {split: self._generate_examples(split) for split in self._source.info.splits}

  def _generate_examples(self, split: str):
    """Stage 2: the split's records from the chunks, in source order."""
    for chunk in range(len(self._chunks(split))):
      examples, skipped = self.store.read(split, chunk)
      self.skipped += skipped
      for example in examples:
        yield example["clip_id"], example


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def build(config: ml_collections.ConfigDict, *, share: Share | None = None,
          sync: Callable[[str], None] = _sync_processes) -> str:
  """Encodes config.data.latents.source_dir with config.data.latents.vae into
  config.data.dataset_dir, unless already built; returns the version directory.

  Every process of a job runs this: each encodes its `share` of the chunks (default:
  this process's), `sync` waits for all of them, and process 0 writes the dataset.
  """
  latents = config.data.latents
  if not latents.source_dir or not latents.vae:
    raise ValueError("set config.data.latents.source_dir (a pixel clip dataset) and "
                     "config.data.latents.vae (a Wan VAE folder or pipeline)")
  batch, chunk_clips = int(latents.batch_size), int(latents.chunk_clips)
  if batch < 1 or chunk_clips < 1 or chunk_clips % batch:
    raise ValueError(f"data.latents.chunk_clips={chunk_clips} must be a positive multiple of "
                     f"data.latents.batch_size={batch}")
  share = share or Share.of_this_process()
  # Each process encodes its own chunks on its own devices: config.mesh over them.
  plan = sharding.ShardingPlan.from_config(config.mesh, devices=jax.local_devices())
  encoder = LatentEncoder(latents.vae, plan)
  encoder.check_batch(2 * batch)
  source_version_dir = pipeline.find_dataset_version_dir(latents.source_dir)
  vae_hash = weights.vae_sha256(latents.vae)       # hashed once: it reads every weight file
  name = f"{pathlib.Path(source_version_dir).parent.name}-vae{vae_hash[:12]}"
  text_dir = str(latents.get("text_encoder", ""))
  text_encoder, max_length = None, int(config.model.text.max_length)
  if text_dir:
    text_encoder = wan_text.WanTextEncoder.from_pipeline(text_dir, plan, max_length=max_length)
    name += f"-text{max_length}"
  flow = None
  flow_weights = str(latents.get("flow_weights", ""))
  if flow_weights:
    flow = raft_flow.RaftEstimator(flow_weights, num_updates=int(latents.get("flow_updates", 12)))
    name += "-" + flow.name.replace(":", "-")
  builder_config = LatentClipsConfig(name=name, version=WanLatentClips.VERSION,
                                     source_dir=str(latents.source_dir),
                                     vae_dir=str(latents.vae), vae_sha256=vae_hash,
                                     batch_size=batch, chunk_clips=chunk_clips,
                                     text_encoder_dir=text_dir,
                                     text_max_length=max_length if text_dir else 0,
                                     flow_estimator=flow.name if flow else "",
                                     flow_weights=flow_weights)
  builder = WanLatentClips(encoder=encoder, text_encoder=text_encoder, flow=flow,
                           config=builder_config,
                           data_dir=str(config.data.dataset_dir), file_format=FILE_FORMAT)
  path = str(builder.data_dir)
  if builder.is_prepared():
    print(f"Already built, nothing to do: {path}")
    return path
  work_dir = latents.work_dir or epath.Path(config.data.dataset_dir) / WORK_FOLDER / name
  store = ChunkStore(work_dir)
  store.check_identity(builder.identity())
  builder.encode(store, share)
  sync("latent_clips: every chunk encoded")
  if share.process_index == 0:
    missing = builder.missing_chunks(store)
    if missing:   # only if a process's share failed without failing the job
      raise RuntimeError(f"{len(missing)} chunks were not encoded, e.g. {missing[:3]}: rerun "
                         "the command (on every host) to encode them")
    builder.store = store
    tfds_prepare.prepare(builder, max_shard_mb=config.data.max_shard_mb)
    splits = builder.info.splits
    (epath.Path(path) / SKIPPED_FILE).write_text(json.dumps(builder.skipped, indent=2) + "\n")
    store.remove()
    print(f"Wrote {path}: " + ", ".join(f"{s}: {splits[s].num_examples}" for s in splits)
          + f" clips of latents {builder._latent_shape}"  # pylint: disable=protected-access
          + f"; {len(builder.skipped)} skipped (listed in {SKIPPED_FILE})")
    for item in builder.skipped[:10]:
      print(f"  skipped {item}")
  sync("latent_clips: dataset written")
  return path
