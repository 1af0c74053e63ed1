r"""Still image of saved clips (clips.npz of `evaluate` / the protocol), arms interleaved.

  python -m benchmarks.clips_grid --out docs/images/protocol_grid.png --num 6 \
      base=workdirs/protocol/eval/runs/base/cfg_w1-1_w2-0_n25_euler_shift1_until1/clips.npz \
      videojam=workdirs/protocol/eval/runs/videojam/inner_w1-1_w2-1_n25_euler_shift1_until1/clips.npz

For each of the first --num clips, one row per LABEL=NPZ given (their frames left to
right, enlarged), so the same prompt and noise sit in adjacent rows; the rows are
listed with their captions in <out>.txt.
"""

from absl import app
from absl import flags
import imageio.v3 as iio
import numpy as np

from videojam_jax import files
from videojam_jax.data import video_io

_OUT = flags.DEFINE_string("out", None, "PNG to write.")
_NUM = flags.DEFINE_integer("num", 6, "Clips per file (the first ones).")
_SCALE = flags.DEFINE_integer("scale", 4, "Nearest-neighbour enlargement of each frame.")
flags.mark_flag_as_required("out")


def main(argv):
  sources = []
  for arg in argv[1:]:
    label, sep, path = arg.partition("=")
    if not sep:
      raise app.UsageError(f"{arg!r}: give LABEL=path/to/clips.npz")
    with np.load(path) as npz:
      sources.append((label, npz["videos"], npz["captions"], npz["seeds"]))
  if not sources:
    raise app.UsageError("give at least one LABEL=clips.npz")
  n = min(_NUM.value, *(len(videos) for _, videos, _, _ in sources))
  panels, lines = [], []
  for i in range(n):
    for label, videos, captions, seeds in sources:
      if captions[i] != sources[0][2][i] or seeds[i] != sources[0][3][i]:
        raise ValueError(f"clip {i}: {label} has another prompt or seed than {sources[0][0]}")
      panels.append(videos[i])
      lines.append(f"row {len(panels)}: {label}, seed {seeds[i]}: {captions[i]}")
  grid = video_io.frame_grid(panels, scale=_SCALE.value)
  files.atomic_write(_OUT.value, iio.imwrite("<bytes>", grid, extension=".png"))
  files.atomic_write(_OUT.value + ".txt", "\n".join(lines) + "\n")
  print(f"wrote {_OUT.value} ({len(panels)} rows) and {_OUT.value}.txt")


if __name__ == "__main__":
  app.run(main)
