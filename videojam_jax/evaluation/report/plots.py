"""PNG plots of metrics against a swept value (e.g. the motion guidance weight w2).

`write_plots` draws, for a sweep's results, one PNG per numeric setting that
varies. Underneath, `plot_sweep` takes a flat list of records, one per
generated sample (or per averaged setting), such as {"w2": 3.0,
"mode": "inner_guidance", "seed": 1, "motion_smoothness": 0.98, ...}. Records
with the same group and swept value are averaged, and the spread over them
(e.g. over seeds) is drawn as +-1 std. Uses matplotlib's Agg backend: no
display needed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath
import matplotlib

matplotlib.use("Agg")  # headless; must come before pyplot is imported
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from videojam_jax import files
from videojam_jax.evaluation.report import fields

_PANEL_INCHES = (4.0, 3.0)  # width, height of one metric's subplot
_MAX_COLUMNS = 3
_DPI = 100
PLOT_PREFIX = "metrics_vs_"  # files are <PLOT_PREFIX><field>.png


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
               path: epath.PathLike, group_key: str | None = None,
               title: str | None = None) -> str:
  """Writes one PNG with a subplot per metric (metric vs `x_key`); returns the path.

  One line per value of `group_key` (e.g. the guidance mode), mean +- std over
  the records that share a group and x value. The image format follows the
  file's extension, as in `Figure.savefig`.
  """
  if not metrics:
    raise ValueError("no metrics to plot")
  path = epath.Path(path)
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
    # Saved through a file object so that the path may be remote (gs://); savefig
    # then cannot see the name, so it is given the format the extension names.
    with files.atomic_open(path, "wb") as f:
      fig.savefig(f, format=path.suffix.lstrip(".") or None, dpi=_DPI)
  finally:
    plt.close(fig)  # figures are global state in pyplot; don't leak them in sweeps
  return os.fspath(path)


def write_plots(results: Sequence[Mapping[str, Any]], out_dir: epath.PathLike) -> list[str]:
  """One PNG per numeric setting that varies: every metric against it; returns the paths.

  One line per model, guidance mode and value of the other varying fields;
  error bars are the std over clips (prompts x seeds). Nothing (not even
  `out_dir`) is written when no numeric setting varies.
  """
  out_dir = epath.Path(out_dir)
  varying = fields.varying_fields(results)
  names = fields.metric_names(results)
  paths = []
  for x in (f for f in fields.NUMERIC_FIELDS if f in varying):
    others = [f for f in varying if f not in (x, "guidance")]
    records = []
    for result in results:
      s = result["settings"]
      group = " ".join([result["model"], fields.GUIDANCE_NAMES.get(s["guidance"], s["guidance"])]
                       + [f"{fields.SHORT_NAMES[f]}={s[f]}" for f in others])
      for clip in result["clips"]:
        records.append({x: s[x], "group": group,
                        **{k: fields.metric_value(v) for k, v in clip["metrics"].items()}})
    out_dir.mkdir(parents=True, exist_ok=True)
    paths.append(plot_sweep(records, x, names, out_dir / f"{PLOT_PREFIX}{x}.png", group_key="group",
                            title=f"metrics vs {x} (mean ± std over clips)"))
  return paths
