"""Metrics against swept values: the aggregation, the PNGs, which plots a sweep gets."""

import os

import cv2
import numpy as np

from videojam_jax.evaluation.report import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_sweep_aggregate_and_plot(tmp_path):
  records = [{"w2": 1.0, "mode": "a", "m": 1.0}, {"w2": 1.0, "mode": "a", "m": 3.0},
             {"w2": 0.0, "mode": "a", "m": 5.0}, {"w2": 0.0, "mode": "b", "m": float("nan")},
             {"w2": 2.0, "mode": "b", "m": 7.0}, {"mode": "b", "m": 9.0}]
  groups = plots.aggregate(records, "w2", "m", group_key="mode")
  xs, mean, std = groups["a"]
  np.testing.assert_array_equal(xs, [0.0, 1.0])
  np.testing.assert_allclose(mean, [5.0, 2.0])
  np.testing.assert_allclose(std, [0.0, 1.0])
  np.testing.assert_array_equal(groups["b"][0], [2.0])   # NaN and x-less records skipped
  path = plots.plot_sweep(records, "w2", ["m", "m"], tmp_path / "p.png", group_key="mode")
  assert path == str(tmp_path / "p.png")
  image = cv2.imread(path)
  assert image is not None and image.shape[0] > 100 and image.std() > 10
  # The format follows the extension, as savefig does for a file name.
  svg = plots.plot_sweep(records, "w2", ["m"], tmp_path / "p.svg", group_key="mode")
  assert open(svg, "rb").read(5) == b"<?xml"


def test_write_plots_one_png_per_varying_numeric_field(tmp_path, make_results):
  results = make_results({"guidance": ("cfg", "inner"), "motion_scale": (1.0, 3.0),
                          "num_steps": (2, 4)})
  paths = plots.write_plots(results, tmp_path / "plots")
  # guidance varies too but is not numeric; w1 is 5 throughout.
  assert paths == [str(tmp_path / "plots" / "metrics_vs_motion_scale.png"),
                   str(tmp_path / "plots" / "metrics_vs_num_steps.png")]
  for path in paths:
    with open(path, "rb") as f:
      assert f.read(8) == PNG_MAGIC
  # A single setting has nothing to plot: no files, not even the folder.
  assert plots.write_plots(results[:1], tmp_path / "none") == []
  assert not os.path.exists(tmp_path / "none")
