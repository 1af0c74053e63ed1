"""Reading sweep results for the report: setting fields, which of them vary, metric names, labels.

Shared by the tables, the plots and the page, so that all three name a
(model, setting) the same way. Results are as `result_store.run_jobs` returns
them (see the package docstring).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

# Numeric sampler fields that can be plotted on an x axis, in display order.
NUMERIC_FIELDS = ("text_scale", "motion_scale", "num_steps", "time_shift", "inner_guidance_until")
SETTING_FIELDS = ("guidance",) + NUMERIC_FIELDS + ("solver", "schedule")
# Short names used in labels (w1, w2 as in the paper).
SHORT_NAMES = {"text_scale": "w1", "motion_scale": "w2", "num_steps": "steps",
               "time_shift": "shift", "inner_guidance_until": "until", "solver": "solver",
               "schedule": "schedule"}
GUIDANCE_NAMES = {"none": "no guidance", "cfg": "CFG", "inner": "Inner-Guidance"}
# The scales each guidance mode uses: always in its label, varying or not.
_SCALES_USED = {"none": (), "cfg": ("text_scale",), "inner": ("text_scale", "motion_scale")}


def metric_names(results: Sequence[Mapping[str, Any]]) -> list[str]:
  """Every metric that occurs in any clip, in first-seen order."""
  names: list[str] = []
  for result in results:
    for clip in result["clips"]:
      names += [k for k in clip["metrics"] if k not in names]
  return names


def metric_value(x: Any) -> float:
  """A stored metric as a float: JSON stores NaN as null."""
  return float("nan") if x is None else float(x)


def varying_fields(results: Sequence[Mapping[str, Any]]) -> list[str]:
  """Setting fields that take more than one value across the results."""
  return [f for f in SETTING_FIELDS
          if len({json.dumps(r["settings"][f]) for r in results}) > 1]


def setting_label(settings: Mapping[str, Any], varying: Sequence[str]) -> str:
  """E.g. 'Inner-Guidance w1=5 w2=3': the mode, its scales, and other varying fields."""
  mode = settings["guidance"]
  parts = [GUIDANCE_NAMES.get(mode, mode)]
  relevant = _SCALES_USED[mode]
  for field in NUMERIC_FIELDS + ("solver",):
    if field in relevant or (field in varying and field not in ("text_scale", "motion_scale")):
      if field == "inner_guidance_until" and mode != "inner":
        continue
      value = settings[field]
      parts.append(f"{SHORT_NAMES[field]}={value:g}" if isinstance(value, float) else
                   f"{SHORT_NAMES[field]}={value}")
  return " ".join(parts)


def column_label(result: Mapping[str, Any], varying: Sequence[str]) -> str:
  """E.g. 'videojam / Inner-Guidance w1=5 w2=3': the header of the result's page column."""
  return f"{result['model']} / {setting_label(result['settings'], varying)}"
