"""The summary table of a sweep: one row per (model, setting), written as CSV and JSON.

Each row has the setting's fields and, per metric, the mean, the std and the
bootstrap 95% interval of the mean over the result's clips (prompts x seeds).
In the CSV a NaN is an empty cell, in the JSON it is null (strict JSON). The
markdown table shows each metric as mean [low, high].
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath
import numpy as np

from videojam_jax import files
from videojam_jax.evaluation import result_store
from videojam_jax.evaluation import statistics
from videojam_jax.evaluation.report import fields


def summary_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One row per (model, setting): its settings, each metric's mean and std over clips, and
  the model's own measurements (`model_metrics`, the same for all its settings)."""
  names = fields.metric_names(results)
  varying = fields.varying_fields(results)
  rows = []
  for result in results:
    row: dict[str, Any] = {"model": result["model"],
                           "setting": fields.setting_label(result["settings"], varying),
                           "checkpoint_step": result.get("checkpoint_step")}
    row.update({f: result["settings"][f] for f in fields.SETTING_FIELDS})
    row["num_clips"] = len(result["clips"])
    for name in names:
      values = [fields.metric_value(c["metrics"][name]) for c in result["clips"]
                if name in c["metrics"]]
      row[f"{name}_mean"] = float(np.mean(values)) if values else float("nan")
      row[f"{name}_std"] = float(np.std(values)) if values else float("nan")
      row[f"{name}_ci_low"], row[f"{name}_ci_high"] = statistics.bootstrap_ci(values)
    # Per-model measurements that do not depend on the sampler (e.g. heldout/video_loss).
    row.update({k: fields.metric_value(v) for k, v in result.get("model_metrics", {}).items()})
    rows.append(row)
  return rows


def write_csv(rows: Sequence[Mapping[str, Any]], path: epath.PathLike) -> None:
  """Rows as one CSV, atomically: the union of their keys in first-seen order, NaN as empty."""
  columns: list[str] = []
  for row in rows:
    columns += [k for k in row if k not in columns]
  with files.atomic_open(path) as f:
    writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v
                       for k, v in row.items()})


def write_tables(rows: Sequence[Mapping[str, Any]], csv_path: epath.PathLike,
                 json_path: epath.PathLike) -> None:
  """The summary rows as CSV (NaN as empty) and as JSON (NaN as null)."""
  write_csv(rows, csv_path)
  files.atomic_write(json_path, json.dumps(result_store.json_safe(list(rows)), indent=1,
                                           allow_nan=False))


def _missing(value: Any) -> bool:
  return value is None or (isinstance(value, float) and math.isnan(value))


def format_interval(row: Mapping[str, Any], name: str, signed: bool = False) -> str:
  """row[name] with row[name_ci_low/high] as '0.123 [0.101, 0.145]' ('-' where the value is
  missing or NaN, the bare value where the interval is); signed writes '+'/'-' (differences)."""
  value = row.get(name)
  if _missing(value):
    return "-"
  sign = "+" if signed else ""
  low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
  if _missing(low) or _missing(high):
    return f"{value:{sign}.4g}"
  return f"{value:{sign}.4g} [{low:{sign}.4g}, {high:{sign}.4g}]"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The rows as a markdown table: model, setting, clips, then every metric (and each
  model-level value such as heldout/*) as mean [95% interval]."""
  metrics = []
  for row in rows:
    for key in row:
      if key.endswith("_mean"):
        name = key[:-len("_mean")]
        entry = (name, key)
      elif key.startswith("heldout/") and not re.search(r"_t[0-9.]+$|_ci_(low|high)$", key):
        entry = (key, key)
      else:
        continue
      if entry not in metrics:
        metrics.append(entry)
  header = ["model", "setting", "clips"] + [label for label, _ in metrics]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [str(row["model"]), str(row["setting"]), str(row.get("num_clips", ""))]
    for label, key in metrics:
      ci_row = {key: row.get(key), f"{key}_ci_low": row.get(f"{label}_ci_low"),
                f"{key}_ci_high": row.get(f"{label}_ci_high")}
      cells.append(format_interval(ci_row, key))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
