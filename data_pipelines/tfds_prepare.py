"""Writing a dataset with a TFDS builder the way every builder here does."""

from __future__ import annotations

import tempfile
from typing import Any

import tensorflow_datasets as tfds


def prepare(builder: tfds.core.DatasetBuilder, beam_options: Any = None) -> None:
  """`builder.download_and_prepare()` with nothing to download and no statistics.

  A throwaway download_dir keeps TFDS from leaving an empty `downloads/` folder in
  the data dir; statistics would decode every record once more.
  """
  with tempfile.TemporaryDirectory() as download_dir:
    builder.download_and_prepare(
        download_dir=download_dir,
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP, beam_options=beam_options))
