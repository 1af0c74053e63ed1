"""What an evaluation sweep writes for people: tables, plots and the comparison page.

Input: the per-(model, setting) results of `sweep.run_jobs`, each a dict with
`key`, `model`, `settings` (a SamplerSettings as a dict), `checkpoint_step`
and `clips`: [{prompt_index, prompt, seed, video, motion, metrics}], where
video/motion are paths relative to the result's folder (`runs_root/key`).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from videojam_jax.evaluation import page as report_html
from videojam_jax.evaluation import sweep as sweep_lib
from videojam_jax.evaluation import plots as sweep_plots

# Numeric sampler fields that can be plotted on an x axis, in display order.
NUMERIC_FIELDS = ("text_scale", "motion_scale", "num_steps", "time_shift", "inner_guidance_until")
SETTING_FIELDS = ("guidance",) + NUMERIC_FIELDS + ("solver",)
_SHORT = {"text_scale": "w1", "motion_scale": "w2", "num_steps": "steps", "time_shift": "shift",
          "inner_guidance_until": "until", "solver": "solver"}
_GUIDANCE_NAMES = {"none": "no guidance", "cfg": "CFG", "inner": "Inner-Guidance"}
# Which direction is better, shown on the page (motion_metrics.py has the definitions).
METRIC_NOTES = {
    "warping_error": "lower is better",
    "motion_smoothness": "higher is better",
    "dynamic_degree": "fraction of clips that move",
    "dynamic_magnitude": "pixels per frame, top 5% of flow",
    "temporal_flickering": "higher is steadier",
    "motion_epe": "lower: the model's motion output matches its frames",
}


def metric_names(results: Sequence[Mapping[str, Any]]) -> list[str]:
  """Every metric that occurs in any clip, in first-seen order."""
  names: list[str] = []
  for result in results:
    for clip in result["clips"]:
      names += [k for k in clip["metrics"] if k not in names]
  return names


def _value(x: Any) -> float:
  return float("nan") if x is None else float(x)  # JSON stores NaN as null


def varying_fields(results: Sequence[Mapping[str, Any]]) -> list[str]:
  """Setting fields that take more than one value across the results."""
  return [f for f in SETTING_FIELDS
          if len({json.dumps(r["settings"][f]) for r in results}) > 1]


def setting_label(settings: Mapping[str, Any], varying: Sequence[str]) -> str:
  """E.g. 'Inner-Guidance w1=5 w2=3': the mode, its scales, and other varying fields."""
  mode = settings["guidance"]
  parts = [_GUIDANCE_NAMES.get(mode, mode)]
  relevant = {"none": (), "cfg": ("text_scale",), "inner": ("text_scale", "motion_scale")}[mode]
  for field in NUMERIC_FIELDS + ("solver",):
    if field in relevant or (field in varying and field not in ("text_scale", "motion_scale")):
      if field == "inner_guidance_until" and mode != "inner":
        continue
      value = settings[field]
      parts.append(f"{_SHORT[field]}={value:g}" if isinstance(value, float) else
                   f"{_SHORT[field]}={value}")
  return " ".join(parts)


def column_label(result: Mapping[str, Any], varying: Sequence[str]) -> str:
  return f"{result['model']} / {setting_label(result['settings'], varying)}"


def summary_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One row per (model, setting): its settings and each metric's mean and std over clips."""
  names = metric_names(results)
  varying = varying_fields(results)
  rows = []
  for result in results:
    row: dict[str, Any] = {"model": result["model"], "setting": setting_label(result["settings"], varying),
                           "checkpoint_step": result.get("checkpoint_step")}
    row.update({f: result["settings"][f] for f in SETTING_FIELDS})
    row["num_clips"] = len(result["clips"])
    for name in names:
      values = [_value(c["metrics"][name]) for c in result["clips"] if name in c["metrics"]]
      row[f"{name}_mean"] = float(np.mean(values)) if values else float("nan")
      row[f"{name}_std"] = float(np.std(values)) if values else float("nan")
    rows.append(row)
  return rows


def write_tables(rows: Sequence[Mapping[str, Any]], csv_path: str, json_path: str) -> None:
  """The summary rows as CSV (NaN as empty) and as JSON (NaN as null)."""
  fields: list[str] = []
  for row in rows:
    fields += [k for k in row if k not in fields]
  _atomic_write(csv_path, lambda f: _write_csv(f, rows, fields))
  _atomic_write(json_path, lambda f: json.dump(
      sweep_lib.json_safe(list(rows)), f, indent=1, allow_nan=False))


def _write_csv(f, rows, fields) -> None:
  writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})


def _atomic_write(path: str, write) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8", newline="") as f:
    write(f)
  os.replace(tmp, path)


def write_plots(results: Sequence[Mapping[str, Any]], out_dir: str) -> list[str]:
  """One PNG per numeric setting that varies: every metric against it.

  One line per model, guidance mode and value of the other varying fields;
  error bars are the std over clips (prompts x seeds).
  """
  varying = varying_fields(results)
  names = metric_names(results)
  paths = []
  for x in (f for f in NUMERIC_FIELDS if f in varying):
    others = [f for f in varying if f not in (x, "guidance")]
    records = []
    for result in results:
      s = result["settings"]
      group = " ".join([result["model"], _GUIDANCE_NAMES.get(s["guidance"], s["guidance"])]
                       + [f"{_SHORT[f]}={s[f]}" for f in others])
      for clip in result["clips"]:
        records.append({x: s[x], "group": group,
                        **{k: _value(v) for k, v in clip["metrics"].items()}})
    os.makedirs(out_dir, exist_ok=True)
    paths.append(sweep_plots.plot_sweep(records, x, names, os.path.join(out_dir, f"metrics_vs_{x}.png"),
                                        group_key="group", title=f"metrics vs {x} (mean ± std over clips)"))
  return paths


def write_page(results: Sequence[Mapping[str, Any]], runs_root: str, path: str, *,
               title: str, plots: Sequence[str] = (), notes: Sequence[str] = ()) -> str:
  """The side-by-side page: one row per (prompt, seed), one column per (model, setting)."""
  varying = varying_fields(results)
  columns = [column_label(r, varying) for r in results]
  rows: dict[tuple[int, int], report_html.Row] = {}
  for result, column in zip(results, columns):
    folder = os.path.join(runs_root, *result["key"].split("/"))
    for clip in result["clips"]:
      key = (clip["prompt_index"], clip["seed"])
      row = rows.setdefault(key, report_html.Row(clip["prompt"], clip["seed"], {}))
      row.cells[column] = report_html.Cell(
          os.path.join(folder, clip["video"]),
          None if clip.get("motion") is None else os.path.join(folder, clip["motion"]),
          {k: _value(v) for k, v in clip["metrics"].items()})
  sweep_table = []
  for row in summary_rows(results):
    record = {"model": row["model"], "setting": row["setting"], "step": row["checkpoint_step"],
              "clips": row["num_clips"]}
    for name in metric_names(results):
      mean, std = row[f"{name}_mean"], row[f"{name}_std"]
      record[name] = "" if math.isnan(mean) else f"{mean:.4g} ± {std:.2g}"
    sweep_table.append(record)
  metric_help = "; ".join(f"{k}: {METRIC_NOTES[k]}" for k in metric_names(results) if k in METRIC_NOTES)
  text = " ".join(list(notes) + ([f"Metrics — {metric_help}."] if metric_help else []))
  return report_html.write_report(path, [rows[k] for k in sorted(rows)], columns, title=title,
                                  sweep=sweep_table, plots=plots, notes=text)
