r"""Clips/s the trainer's Grain pipeline reads, by number of shard files and workers.

  python -m benchmarks.grain_read_throughput [--shards=1,16,256] [--workers=0,2] \
      [--num_clips=512] [--size=64] [--batches=40] [--work_dir=/tmp/grain_read]

Writes the synthetic clip dataset (config.data of configs/quickstart.py:defaults at
--size) once per shard count, then reads --batches shuffled batches of 8 through
`videojam_jax.data.pipeline.create_dataset` (the trainer's own path: ArrayRecord ->
decode -> model inputs) after a warm-up of 5 batches. One line per setting, then a
markdown table. Also prints the shard files' sizes and the open files each read held.
"""

import os
import time

from absl import app
from absl import flags
import tensorflow_datasets as tfds

from configs import quickstart
from data_pipelines import synthetic_dataset
from videojam_jax.data import pipeline
from videojam_jax.data import text as text_lib

_SHARDS = flags.DEFINE_list("shards", ["1", "16", "256"], "Shard counts to write and read.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Grain worker processes (data.worker_count).")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 512, "Training clips in each dataset.")
_SIZE = flags.DEFINE_integer("size", 64, "Frame height and width.")
_BATCHES = flags.DEFINE_integer("batches", 40, "Timed batches of 8 per setting.")
_WORK_DIR = flags.DEFINE_string("work_dir", "/tmp/grain_read", "Where the datasets go.")
WARMUP_BATCHES = 5
BATCH = 8


def dataset_config(num_shards: int):
  config = quickstart.defaults()
  config.data.dataset_dir = os.path.join(_WORK_DIR.value, f"shards{num_shards}")
  config.data.height = config.data.width = _SIZE.value
  config.data.synthetic.num_train_clips = _NUM_CLIPS.value
  config.data.synthetic.num_eval_clips = num_shards   # TFDS wants >= 1 clip per shard
  return config


def write(config, num_shards: int) -> str:
  """The dataset with exactly `num_shards` shards per split (TFDS's num_shards)."""
  builder = synthetic_dataset.builder_for(config)
  if not builder.is_prepared():
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP, num_shards=num_shards))
  return os.fspath(builder.data_dir)


def read_rate(config, workers: int) -> tuple[float, int]:
  """(clips/s, open files of this process after the read)."""
  config.data.worker_count = workers
  captions = text_lib.CaptionInputs(config.model.text)
  iterator = iter(pipeline.create_dataset(config.data, "train", batch_size=BATCH,
                                          captions=captions))
  for _ in range(WARMUP_BATCHES):
    next(iterator)
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(iterator)
  seconds = time.perf_counter() - start
  return _BATCHES.value * BATCH / seconds, len(os.listdir("/proc/self/fd"))


def main(argv):
  del argv
  rows = []
  for shards in map(int, _SHARDS.value):
    config = dataset_config(shards)
    path = write(config, shards)
    sizes = [os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
             if "-train.array_record" in f]
    for workers in map(int, _WORKERS.value):
      rate, fds = read_rate(dataset_config(shards), workers)
      row = dict(shards=shards, mb_per_shard=sum(sizes) / len(sizes) / 2**20,
                 workers=workers, clips_per_s=rate, open_files=fds)
      print(row, flush=True)
      rows.append(row)
  print(f"\n{_NUM_CLIPS.value} clips of 8x{_SIZE.value}x{_SIZE.value}, batches of {BATCH}, "
        f"{os.cpu_count()} CPUs\n")
  print("| shards | MB a shard | Grain workers | clips/s | open files (main process) |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['shards']} | {r['mb_per_shard']:.2f} | {r['workers']} | "
          f"{r['clips_per_s']:.0f} | {r['open_files']} |")


if __name__ == "__main__":
  app.run(main)
