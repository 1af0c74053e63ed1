"""PNG plots of metrics against a swept value (e.g. the motion guidance weight w2).

Input is a flat list of records, one per generated sample (or per averaged
setting), such as {"w2": 3.0, "mode": "inner_guidance", "seed": 1,
"motion_smoothness": 0.98, ...}. Records with the same group and swept value
are averaged, and the spread over them (e.g. over seeds) is drawn as +-1 std.
Uses matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless; must come before pyplot is imported
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

_PANEL_INCHES = (4.0, 3.0)  # width, height of one metric's subplot
_MAX_COLUMNS = 3
_DPI = 100


def aggregate(records: Sequence[Mapping[str, object]], x_key: str, metric: str,
              group_key: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Groups records -> {group: (sorted x values, mean of metric, std of metric)}.

  Records without `x_key` or `metric`, or with a NaN metric, are skipped.
  """
  buckets: dict[str, dict[float, list[float]]] = {}
  for record in records:
    if x_key not in record or metric not in record:
      continue
    value = float(record[metric])
    if math.isnan(value):
      continue
    group = str(record.get(group_key, "")) if group_key else ""
    buckets.setdefault(group, {}).setdefault(float(record[x_key]), []).append(value)
  result = {}
  for group, by_x in buckets.items():
    xs = np.array(sorted(by_x))
    result[group] = (xs, np.array([np.mean(by_x[x]) for x in xs]),
                     np.array([np.std(by_x[x]) for x in xs]))
  return result


def plot_sweep(records: Sequence[Mapping[str, object]], x_key: str, metrics: Sequence[str],
               path: str | os.PathLike, group_key: str | None = None,
               title: str | None = None) -> str:
  """Writes one PNG with a subplot per metric (metric vs `x_key`); returns the path.

  One line per value of `group_key` (e.g. the guidance mode), mean +- std over
  the records that share a group and x value.
  """
  if not metrics:
    raise ValueError("no metrics to plot")
  path = os.fspath(path)
  columns = min(len(metrics), _MAX_COLUMNS)
  rows = math.ceil(len(metrics) / columns)
  fig, axes = plt.subplots(rows, columns, squeeze=False,
                           figsize=(_PANEL_INCHES[0] * columns, _PANEL_INCHES[1] * rows))
  try:
    for ax, metric in zip(axes.ravel(), metrics):
      for group, (xs, mean, std) in sorted(aggregate(records, x_key, metric, group_key).items()):
        ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, label=group or None)
      ax.set_xlabel(x_key)
      ax.set_title(metric)
      ax.grid(alpha=0.3)
      if group_key and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    for ax in axes.ravel()[len(metrics):]:
      ax.axis("off")
    if title:
      fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
  finally:
    plt.close(fig)  # figures are global state in pyplot; don't leak them in sweeps
  return path
