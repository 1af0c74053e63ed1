"""Writing a dataset with a TFDS builder the way every builder here does."""

from __future__ import annotations

import tempfile
from typing import Any

import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import shard_utils


# TFDS's own bounds on a shard's size (tensorflow_datasets.core.utils.shard_utils): it
# picks the number of shards (a power of two, or a multiple of 1024) that fits them.
DEFAULT_MIN_SHARD_MB = 64
DEFAULT_MAX_SHARD_MB = 1024


class _DownloadConfig(tfds.download.DownloadConfig):
  """DownloadConfig whose shard-size bounds take effect.

  TFDS 4.9's ShardConfig.calculate_number_shards is a classmethod that reads the class's
  default bounds, so DownloadConfig(min_shard_size=..., max_shard_size=...) is ignored. A
  subclass carrying the bounds as class attributes makes TFDS's own rule (per split, a
  power of two of shards within the bounds) use them.
  """

  def get_shard_config(self) -> shard_utils.ShardConfig:
    bounds = type("ShardBounds", (shard_utils.ShardConfig,),
                  dict(min_shard_size=self.min_shard_size, max_shard_size=self.max_shard_size))
    return bounds(num_shards=self.num_shards, min_shard_size=self.min_shard_size,
                  max_shard_size=self.max_shard_size)


def prepare(builder: tfds.core.DatasetBuilder, beam_options: Any = None, *,
            max_shard_mb: float = DEFAULT_MAX_SHARD_MB) -> None:
  """`builder.download_and_prepare()` with nothing to download and no statistics.

  A throwaway download_dir keeps TFDS from leaving an empty `downloads/` folder in
  the data dir; statistics would decode every record once more. `max_shard_mb` bounds
  a shard file's size: Grain reads records by index from any shard, so the count of
  shards does not limit read parallelism (benchmarks/grain_read_throughput.py), but
  every shard read is an open file in every reading process (data/open_files.py).
  """
  if not max_shard_mb > 0:
    raise ValueError(f"max_shard_mb must be > 0, got {max_shard_mb}")
  mib = 2 ** 20
  max_bytes = int(max_shard_mb * mib)
  with tempfile.TemporaryDirectory() as download_dir:
    builder.download_and_prepare(
        download_dir=download_dir,
        download_config=_DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP, beam_options=beam_options,
            # A max at least twice the min always admits a power of two (TFDS picks one).
            min_shard_size=min(DEFAULT_MIN_SHARD_MB * mib, max_bytes // 2),
            max_shard_size=max_bytes))
