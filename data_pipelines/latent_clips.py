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
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from flax import nnx

from data_pipelines import tfds_prepare
from videojam_jax.data import clip_records
from videojam_jax.data import frames
from videojam_jax.data import pipeline
from videojam_jax.model import functional
from videojam_jax.model.wan import text as wan_text
from videojam_jax.model.wan import vae as vae_lib
from videojam_jax.model.wan import weights
from videojam_jax.parallel import sharding

SOURCE = "wan_latent_clips"
FILE_FORMAT = "array_record"
SKIPPED_FILE = "skipped_clips.json"   # beside dataset_info.json: the clips left out, and why

@dataclasses.dataclass(eq=False, kw_only=True)
class LatentClipsConfig(tfds.core.BuilderConfig):
  source_dir: str
  vae_dir: str
  vae_sha256: str
  batch_size: int
  text_encoder_dir: str = ""
  text_max_length: int = 0


def latent_features(num_frames: int, height: int, width: int, channels: int,
                    text_dim: int = 0) -> tfds.features.FeaturesDict:
  zlib = tfds.features.Encoding.ZLIB
  shape = (num_frames, height, width, channels)
  features = {
      "video": tfds.features.Tensor(shape=shape, dtype=np.float32, encoding=zlib),
      "motion": tfds.features.Tensor(shape=shape, dtype=np.float32, encoding=zlib),
      "caption": tfds.features.Text(),
      "clip_id": tfds.features.Text(),
  }
  if text_dim:
    features[pipeline.TEXT_EMBEDDING] = tfds.features.Tensor(
        shape=(None, text_dim), dtype=np.float32, encoding=zlib)
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

  def __call__(self, clips: np.ndarray) -> np.ndarray:
    with self.plan.active():
      return np.asarray(jax.device_get(self._encode(self.params, frames.to_model_space(clips))))


class WanLatentClips(tfds.core.GeneratorBasedBuilder):
  """Clips of another dataset as Wan 2.1 VAE latents (video and motion)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = []

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def __init__(self, *, encoder: LatentEncoder, text_encoder: Any = None, **kwargs: Any):
    self._encoder, self._text_encoder = encoder, text_encoder
    self.skipped: list[dict[str, Any]] = []     # clips left out, and why (SKIPPED_FILE)
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
            flow_estimator=str(m["flow_estimator"]), flow_sigma=float(m["flow_sigma"]),
            source=SOURCE, channels=z, vae_sha256=self.builder_config.vae_sha256,
            latents_mean=list(vae.latents_mean), latents_std=list(vae.latents_std),
            pixel_num_frames=int(m["num_frames"]), pixel_height=int(m["height"]),
            pixel_width=int(m["width"]), source_dataset=self._source_version_dir,
            source_metadata={k: v for k, v in m.items() if isinstance(v, (int, float, str))},
            **text))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self._source.info.splits}

  def _generate_examples(self, split: str):
    from tqdm import tqdm
    source = pipeline.CheckedSource(self._source.as_data_source(split),
                                    f"{self._source_version_dir}[{split}]")
    batch = self.builder_config.batch_size
    total = len(source)
    progress = tqdm(total=total, desc=f"VAE {split}", unit="clip")
    index = 0
    while index < total:
      records = []
      while len(records) < batch and index < total:
        try:
          records.append(source[index])
        except pipeline.CorruptRecordError as e:   # skipped and reported, not fatal
          self.skipped.append(dict(split=split, index=index, reason=str(e)))
        index += 1
      if not records:
        continue
      n = len(records)
      # Video and motion of the batch in one call (the same VAE), padded to a constant
      # batch so that one program serves every batch.
      clips = np.stack([r["video"] for r in records] + [r["motion"] for r in records])
      pad = 2 * batch - len(clips)
      if pad:
        clips = np.concatenate([clips, np.repeat(clips[:1], pad, axis=0)])
      latents = self._encoder(clips)
      captions = [pipeline._text(r["caption"]) for r in records]  # pylint: disable=protected-access
      if self._text_encoder is not None:
        # Constant batch shape (one compile): the last batch padded with empty captions.
        embeddings, masks = self._text_encoder(captions + [""] * (batch - n))
      for i, record in enumerate(records):
        key = pipeline._text(record["clip_id"])  # pylint: disable=protected-access
        if not (np.isfinite(latents[i]).all() and np.isfinite(latents[n + i]).all()):
          self.skipped.append(dict(split=split, clip_id=key, reason="non-finite latents"))
          continue
        example = {"video": latents[i], "motion": latents[n + i], "caption": captions[i],
                   "clip_id": key}
        if self._text_encoder is not None:
          example[pipeline.TEXT_EMBEDDING] = embeddings[i][:int(masks[i].sum())]
        yield key, example
      progress.update(index - progress.n)
      logging.info("%s: encoded %d / %d clips", split, index, total)
    progress.close()


def build(config: ml_collections.ConfigDict) -> str:
  """Encodes config.data.latents.source_dir with config.data.latents.vae into
  config.data.dataset_dir, unless already built; returns the version directory."""
  latents = config.data.latents
  if not latents.source_dir or not latents.vae:
    raise ValueError("set config.data.latents.source_dir (a pixel clip dataset) and "
                     "config.data.latents.vae (a Wan VAE folder or pipeline)")
  plan = sharding.ShardingPlan.from_config(config.mesh)
  encoder = LatentEncoder(latents.vae, plan)
  source_version_dir = pipeline.find_dataset_version_dir(latents.source_dir)
  vae_hash = weights.vae_sha256(latents.vae)       # hashed once: it reads every weight file
  name = f"{pathlib.Path(source_version_dir).parent.name}-vae{vae_hash[:12]}"
  text_dir = str(latents.get("text_encoder", ""))
  text_encoder, max_length = None, int(config.model.text.max_length)
  if text_dir:
    text_encoder = wan_text.WanTextEncoder.from_pipeline(text_dir, plan, max_length=max_length)
    name += f"-text{max_length}"
  builder_config = LatentClipsConfig(name=name, version=WanLatentClips.VERSION,
                                     source_dir=str(latents.source_dir),
                                     vae_dir=str(latents.vae), vae_sha256=vae_hash,
                                     batch_size=int(latents.batch_size),
                                     text_encoder_dir=text_dir,
                                     text_max_length=max_length if text_dir else 0)
  builder = WanLatentClips(encoder=encoder, text_encoder=text_encoder, config=builder_config,
                           data_dir=str(config.data.dataset_dir), file_format=FILE_FORMAT)
  path = str(builder.data_dir)
  if builder.is_prepared():
    print(f"Already built, nothing to do: {path}")
    return path
  tfds_prepare.prepare(builder)
  splits = builder.info.splits
  (epath.Path(path) / SKIPPED_FILE).write_text(json.dumps(builder.skipped, indent=2) + "\n")
  print(f"Wrote {path}: " + ", ".join(f"{s}: {splits[s].num_examples}" for s in splits)
        + f" clips of latents {builder._latent_shape}"  # pylint: disable=protected-access
        + f"; {len(builder.skipped)} skipped (listed in {SKIPPED_FILE})")
  for item in builder.skipped[:10]:
    print(f"  skipped {item}")
  return path
