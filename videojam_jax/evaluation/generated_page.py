"""The comparison page of `generate` outputs: the same prompts and seeds side by side.

Each column is one `python -m videojam_jax.generate` folder (its samples.json and
MP4s), e.g. the base Wan pipeline with CFG and its Wan-VideoJAM fine-tune with
Inner-Guidance. Rows are joined on (prompt, seed, index in batch), which fix the
initial noise, so a row shows what each model made of the same noise. The table
under the grid gives each column's mean motion metrics (generate's
`metrics_preset`). Written with the same page code as the `evaluate` sweeps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from videojam_jax.evaluation.report import page

SAMPLES_FILE = "samples.json"


class ComparisonError(ValueError):
  """The generate folders cannot be compared."""


def read_samples(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, SAMPLES_FILE)
  if not os.path.exists(path):
    raise ComparisonError(f"{directory} has no {SAMPLES_FILE}: is it the --workdir of "
                          "`python -m videojam_jax.generate`?")
  with open(path) as f:
    return json.load(f)


def _key(sample: Mapping[str, Any]) -> tuple[str, int, int]:
  return (str(sample["prompt"]), int(sample["seed"]), int(sample.get("index_in_batch", 0)))


def write_comparison(columns: Mapping[str, str], out_path: str,
                     title: str = "Wan 2.1 beside Wan-VideoJAM") -> str:
  """Writes the HTML page comparing the generate folders `columns` (name -> folder)."""
  if len(columns) < 1:
    raise ComparisonError("name at least one generate folder (--samples name=folder)")
  runs = {name: read_samples(d) for name, d in columns.items()}
  keys = {name: [_key(s) for s in run["samples"]] for name, run in runs.items()}
  first = next(iter(keys))
  for name, k in keys.items():
    if sorted(k) != sorted(keys[first]):
      raise ComparisonError(
          f"{columns[name]} and {columns[first]} sampled different prompts or seeds "
          f"({len(set(k) ^ set(keys[first]))} differ): generate both with the same "
          "config.prompts, config.seed and config.batch_size")
  for field in ("num_frames", "height", "width"):
    values = {name: run.get(field) for name, run in runs.items()}
    if len(set(values.values())) > 1:
      raise ComparisonError(f"the folders differ in {field}: {values}")
  rows = []
  for key in keys[first]:
    cells = {}
    for name, run in runs.items():
      sample = next(s for s in run["samples"] if _key(s) == key)
      cells[name] = page.Cell(os.path.join(columns[name], sample["file"]),
                              metrics=sample.get("metrics", {}))
    rows.append(page.Row(key[0], key[1], cells))
  summary = []
  for name, run in runs.items():
    metrics = [s.get("metrics", {}) for s in run["samples"]]
    names = sorted({m for sample in metrics for m in sample})
    means = {m: float(np.nanmean([s.get(m, np.nan) for s in metrics])) for m in names}
    settings = run.get("settings", {})
    summary.append({"column": name, "guidance": settings.get("guidance", ""),
                    "Wan-VideoJAM": bool(run.get("wan_videojam")),
                    "samples": len(run["samples"]), **{f"mean {m}": v for m, v in means.items()}})
  notes = ("Same prompts and seeds in every column (the same initial noise). Wan-VideoJAM "
           "cells show the video beside its own decoded motion. Lower warping error and "
           "higher motion smoothness are smoother motion; dynamic degree guards against a "
           "model that smooths by not moving.")
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  return page.write_html(out_path, rows, list(columns), title=title, sweep=summary, notes=notes)
