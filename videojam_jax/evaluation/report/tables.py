"""The summary table of a sweep: one row per (model, setting), written as CSV and JSON.

Each row has the setting's fields and, per metric, the mean and std over the
result's clips (prompts x seeds). In the CSV a NaN is an empty cell, in the
JSON it is null (strict JSON).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath
import numpy as np

from videojam_jax import files
from videojam_jax.evaluation import result_store
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
    # Per-model measurements that do not depend on the sampler (e.g. heldout/video_loss).
    row.update({k: fields.metric_value(v) for k, v in result.get("model_metrics", {}).items()})
    rows.append(row)
  return rows


def write_tables(rows: Sequence[Mapping[str, Any]], csv_path: epath.PathLike,
                 json_path: epath.PathLike) -> None:
  """The summary rows as CSV (NaN as empty) and as JSON (NaN as null)."""
  columns: list[str] = []
  for row in rows:  # union of keys, in first-seen order
    columns += [k for k in row if k not in columns]
  with files.atomic_open(csv_path) as f:
    writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v
                       for k, v in row.items()})
  files.atomic_write(json_path, json.dumps(result_store.json_safe(list(rows)), indent=1,
                                           allow_nan=False))
