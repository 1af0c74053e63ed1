"""Which setting fields vary, metric names, and the labels of columns and rows."""

import dataclasses
import math

from tests.evaluation.report.conftest import BASE
from videojam_jax.evaluation.report import fields


def test_metric_names_and_varying_fields(make_results):
  results = make_results({"guidance": ("cfg", "inner"), "motion_scale": (1.0, 3.0)})
  assert fields.metric_names(results) == ["warping_error", "motion_smoothness", "motion_epe"]
  # text_scale is 5 everywhere, and CFG's w2 is canonically 0: guidance and w2 vary.
  assert fields.varying_fields(results) == ["guidance", "motion_scale"]
  assert fields.varying_fields(results[:1]) == []


def test_column_labels_name_the_mode_and_its_scales(make_results):
  results = make_results({"guidance": ("cfg", "inner"), "motion_scale": (1.0, 3.0)})
  varying = fields.varying_fields(results)
  assert [fields.column_label(r, varying) for r in results] == [
      "baseline / CFG w1=5", "videojam / CFG w1=5", "videojam / Inner-Guidance w1=5 w2=1",
      "videojam / Inner-Guidance w1=5 w2=3"]


def test_setting_labels_show_other_varying_fields_where_they_apply():
  varying = ["guidance", "num_steps", "inner_guidance_until"]

  def label(**changes):
    return fields.setting_label(dataclasses.asdict(dataclasses.replace(BASE, **changes)), varying)

  assert (label(guidance="none", text_scale=0.0, motion_scale=0.0, num_steps=4)
          == "no guidance steps=4")
  # inner_guidance_until only matters for Inner-Guidance, so only it shows the value.
  assert label(guidance="cfg", motion_scale=0.0, inner_guidance_until=0.5) == "CFG w1=5 steps=2"
  assert (label(inner_guidance_until=0.5, text_scale=2.5)
          == "Inner-Guidance w1=2.5 w2=3 steps=2 until=0.5")
  assert math.isnan(fields.metric_value(None))  # JSON stores NaN as null
  assert fields.metric_value(3) == 3.0
