"""The on-disk format of a training clip, shared by every dataset builder.

Every builder in `data_pipelines/` (the synthetic physics clips, real video files)
writes TFDS ArrayRecord shards whose examples have exactly these features, and
records how the motion was made in the dataset metadata. The trainer reads the
shards through `tfds.builder_from_directory` and checks the metadata with
`check_dataset`, so it never depends on which builder made the data.

Features of one example (T frames of H x W):
  video:   uint8  [T, H, W, 3]   the frames
  motion:  uint8  [T, H, W, 3]   flow encoded as an RGB video (motion_encoding.py)
  flow:    float32 or float16 [T-1, H, W, 2], optional: the flow itself in pixels
                                  (exact for synthetic data, estimated for real video),
                                  for evaluation and inspection; training reads only
                                  the motion video, so the video builder stores it
                                  only when asked (metadata flow_storage)
  caption: text                  what the clip shows
  clip_id: text                  stable id of the clip (source file / seed + index)

Metadata (tfds MetadataDict, saved as metadata.json beside the shards):
  format_version, num_frames, height, width, fps, flow_estimator, flow_sigma,
  source (e.g. "synthetic_physics", "video_files").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

FORMAT_VERSION = 1
REQUIRED_METADATA = ("format_version", "num_frames", "height", "width", "fps",
                     "flow_estimator", "flow_sigma", "source")


class DatasetMismatchError(ValueError):
  """The dataset on disk is not what the config asks for."""


# How the optional raw flow is stored: not at all, or as float16 / float32.
FLOW_STORAGE = {"none": None, "float16": np.float16, "float32": np.float32}

# Tensors are stored as their raw bytes: ArrayRecord already compresses every record
# (zstd level 3, as TFDS writes it). ZLIB-encoded features were compressed twice, and
# ZLIB was most of the writer's time: on 8-frame 256x256 clips, raw bytes under zstd:3
# are as small (0.86 vs 0.88 MB a clip of video + motion), written 5x faster and read
# 1.9x faster (benchmarks/record_encoding.py). Datasets written with ZLIB still read: each
# dataset's features.json names its encoding.
TENSOR_ENCODING = tfds.features.Encoding.BYTES


def clip_features(num_frames: int, height: int, width: int, flow_storage: str = "float32",
                  encoding: tfds.features.Encoding = TENSOR_ENCODING
                  ) -> tfds.features.FeaturesDict:
  """The TFDS feature spec of one clip (raw tensor bytes by default, no TF needed);
  `encoding` ZLIB makes the serialized examples smaller for a writer that moves them
  between machines before ArrayRecord compresses them (the Beam engine's shuffle)."""
  if flow_storage not in FLOW_STORAGE:
    raise ValueError(f"flow_storage={flow_storage!r}: choose from {sorted(FLOW_STORAGE)}")
  features = {
      "video": tfds.features.Tensor(
          shape=(num_frames, height, width, 3), dtype=np.uint8, encoding=encoding),
      "motion": tfds.features.Tensor(
          shape=(num_frames, height, width, 3), dtype=np.uint8, encoding=encoding),
      "caption": tfds.features.Text(),
      "clip_id": tfds.features.Text(),
  }
  if FLOW_STORAGE[flow_storage] is not None:
    features["flow"] = tfds.features.Tensor(
        shape=(num_frames - 1, height, width, 2), dtype=FLOW_STORAGE[flow_storage],
        encoding=encoding)
  return tfds.features.FeaturesDict(features)


def clip_metadata(*, num_frames: int, height: int, width: int, fps: float,
                  flow_estimator: str, flow_sigma: float, source: str,
                  **extra: Any) -> tfds.core.MetadataDict:
  """The metadata every clip dataset carries (extra keys are kept too)."""
  return tfds.core.MetadataDict(
      format_version=FORMAT_VERSION, num_frames=int(num_frames), height=int(height),
      width=int(width), fps=float(fps), flow_estimator=str(flow_estimator),
      flow_sigma=float(flow_sigma), source=str(source), **extra)


def check_dataset(metadata: Mapping[str, Any], *, num_frames: int, height: int,
                  width: int, flow_sigma: float, where: str = "", channels: int = 3,
                  vae_sha256: str | None = None) -> None:
  """Raises DatasetMismatchError unless `metadata` describes the clips we expect."""
  missing = [k for k in REQUIRED_METADATA if k not in metadata]
  if missing:
    raise DatasetMismatchError(
        f"{where}: not a videojam clip dataset (metadata lacks {missing}). "
        "Build one with `python -m data_pipelines.build_synthetic` or "
        "`python -m data_pipelines.build_from_videos`.")
  if int(metadata["format_version"]) != FORMAT_VERSION:
    raise DatasetMismatchError(
        f"{where}: clip format version {metadata['format_version']}, this code reads "
        f"{FORMAT_VERSION}; rebuild the dataset.")
  want = {"num_frames": num_frames, "height": height, "width": width}
  got = {k: int(metadata[k]) for k in want}
  if got != want:
    raise DatasetMismatchError(
        f"{where}: dataset clips are {got} but the config asks for {want}; "
        "rebuild the dataset at this size or change config.data.")
  # Latent datasets (data_pipelines/latent_clips.py) record their channels and VAE.
  found_channels = int(metadata.get("channels", 3))
  if found_channels != channels:
    raise DatasetMismatchError(
        f"{where}: the clips have {found_channels} channels"
        f"{' (VAE latents)' if found_channels != 3 else ' (RGB pixels)'} but the config has "
        f"data.channels={channels}.")
  if vae_sha256 is not None and metadata.get("vae_sha256") != vae_sha256:
    raise DatasetMismatchError(
        f"{where}: the latents were made by another VAE (sha256 "
        f"{str(metadata.get('vae_sha256'))[:12]}...) than data.latents.vae "
        f"({vae_sha256[:12]}...); rebuild them with that VAE or point data.latents.vae "
        "at the one they were made with.")
  if abs(float(metadata["flow_sigma"]) - flow_sigma) > 1e-9:
    raise DatasetMismatchError(
        f"{where}: motion was encoded with sigma={metadata['flow_sigma']} but "
        f"config.data.flow_sigma={flow_sigma}.")
