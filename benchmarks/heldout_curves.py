r"""Plots a run's held-out loss curves (the heldout_loss evaluator's TensorBoard scalars).

  python -m benchmarks.heldout_curves --workdir workdirs/quickstart --out docs/images/heldout.png

Reads every event file in the workdir with TensorBoard's own reader (no TensorFlow
needed) and draws, for video and motion, the loss at each fixed time t against the
training step, the mean over t in black. Prints the values as a table too.
"""

from __future__ import annotations

import collections
import os
import re

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from tensorboard.backend.event_processing import plugin_event_accumulator  # pylint: disable=g-import-not-at-top
from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_OUT = flags.DEFINE_string("out", None, "The PNG to write.")
_PREFIX = flags.DEFINE_string("prefix", "heldout", "The evaluator block's name.")
flags.mark_flags_as_required(["workdir", "out"])

TAG = re.compile(r"^(?P<block>[^/]+)/(?P<stream>video|motion)_loss(?:_t(?P<t>[0-9.]+))?$")


def read_scalars(workdir: str, prefix: str) -> dict[tuple[str, str], dict[int, float]]:
  """{(stream, t or 'mean'): {step: value}} of the block's held-out scalars."""
  curves: dict[tuple[str, str], dict[int, float]] = collections.defaultdict(dict)
  for name in sorted(os.listdir(workdir)):
    if not name.startswith("events.out.tfevents"):
      continue
    acc = plugin_event_accumulator.EventAccumulator(os.path.join(workdir, name))
    acc.Reload()
    for tag in acc.Tags()["tensors"]:
      match = TAG.match(tag)
      if not match or match["block"] != prefix:
        continue
      for event in acc.Tensors(tag):
        curves[(match["stream"], match["t"] or "mean")][event.step] = float(
            tensor_util.make_ndarray(event.tensor_proto))
  return curves


def main(argv) -> None:
  del argv
  curves = read_scalars(_WORKDIR.value, _PREFIX.value)
  if not curves:
    raise app.UsageError(f"no {_PREFIX.value}/* scalars in {_WORKDIR.value}")
  streams = sorted({s for s, _ in curves}, key=("video", "motion").index)
  fig, axes = plt.subplots(1, len(streams), figsize=(5 * len(streams), 3.5), squeeze=False)
  for ax, stream in zip(axes[0], streams):
    for (s, t), values in sorted(curves.items()):
      if s != stream:
        continue
      steps = sorted(values)
      style = dict(color="black", linewidth=2, label="mean over t") if t == "mean" else dict(label=f"t={t}")
      ax.plot(steps, [values[k] for k in steps], marker="o", markersize=3, **style)
      print(f"{stream:6} {t:>5}: " + ", ".join(f"{k}: {values[k]:.4f}" for k in steps))
    ax.set_title(f"held-out {stream} loss (fixed noise)")
    ax.set_xlabel("training step")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  fig.savefig(_OUT.value, dpi=100)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
