"""The summary table: mean and std per metric and (model, setting), as CSV and strict JSON."""

import csv
import json
import math
import os

import pytest

from videojam_jax.evaluation.report import tables

AXES = {"guidance": ("cfg", "inner"), "motion_scale": (1.0, 3.0)}


def test_summary_rows(make_results):
  rows = tables.summary_rows(make_results(AXES))
  assert [(r["model"], r["setting"]) for r in rows] == [
      ("baseline", "CFG w1=5"), ("videojam", "CFG w1=5"), ("videojam", "Inner-Guidance w1=5 w2=1"),
      ("videojam", "Inner-Guidance w1=5 w2=3")]
  assert list(rows[0]) == [
      "model", "setting", "checkpoint_step", "guidance", "text_scale", "motion_scale", "num_steps",
      "time_shift", "inner_guidance_until", "solver", "schedule", "num_clips",
      "warping_error_mean", "warping_error_std", "warping_error_ci_low", "warping_error_ci_high",
      "motion_smoothness_mean", "motion_smoothness_std", "motion_smoothness_ci_low",
      "motion_smoothness_ci_high", "motion_epe_mean", "motion_epe_std", "motion_epe_ci_low",
      "motion_epe_ci_high"]
  for n, row in enumerate(rows):
    assert row["num_clips"] == 4 and row["checkpoint_step"] == 3
    assert row["warping_error_mean"] == pytest.approx(n + 0.5)
    assert row["warping_error_std"] == pytest.approx(0.5)
    assert row["motion_smoothness_mean"] == pytest.approx(0.95)
    assert row["motion_smoothness_std"] == pytest.approx(0.05)
    # The bootstrap interval of the mean lies inside the clips' range and holds the mean.
    assert n <= row["warping_error_ci_low"] < row["warping_error_mean"]
    assert row["warping_error_mean"] < row["warping_error_ci_high"] <= n + 1
  assert math.isnan(rows[0]["motion_epe_mean"])  # the baseline has no motion output
  assert rows[3]["motion_epe_mean"] == pytest.approx(5.5)
  assert rows[2]["motion_scale"] == 1.0 and rows[1]["motion_scale"] == 0.0


def test_write_tables_csv_and_strict_json(tmp_path, make_results):
  rows = tables.summary_rows(make_results(AXES))
  csv_path, json_path = tmp_path / "metrics.csv", tmp_path / "metrics.json"
  tables.write_tables(rows[:1], csv_path, json_path)
  tables.write_tables(rows, csv_path, json_path)  # rewritten whole, not appended
  assert sorted(os.listdir(tmp_path)) == ["metrics.csv", "metrics.json"]  # no temporary left
  with open(csv_path, newline="") as f:
    assert f.readline() == ",".join(rows[0]) + "\n"
  with open(csv_path, newline="") as f:
    read = list(csv.DictReader(f))
  assert len(read) == 4
  assert read[0]["motion_epe_mean"] == ""  # NaN is an empty cell
  assert float(read[1]["warping_error_mean"]) == pytest.approx(1.5)
  text = json_path.read_text()
  assert "NaN" not in text
  records = json.loads(text)
  assert records[0]["motion_epe_mean"] is None  # and null in JSON
  assert [r["setting"] for r in records] == [r["setting"] for r in rows]
  assert records[3]["motion_epe_mean"] == pytest.approx(5.5)


def test_markdown_table_shows_means_with_intervals(make_results):
  results = make_results(AXES)
  for result in results:
    result["model_metrics"] = {"heldout/video_loss": 0.25, "heldout/video_loss_ci_low": 0.2,
                               "heldout/video_loss_ci_high": 0.3, "heldout/video_loss_t0.3": 0.1}
  rows = tables.summary_rows(results)
  text = tables.markdown_table(rows)
  lines = text.splitlines()
  assert lines[0] == ("| model | setting | clips | warping_error | motion_smoothness | motion_epe | "
                      "heldout/video_loss |")
  assert len(lines) == 2 + len(rows)
  base = lines[2].split(" | ")
  assert base[:3] == ["| baseline", "CFG w1=5", "4"]
  low, high = rows[0]["warping_error_ci_low"], rows[0]["warping_error_ci_high"]
  assert base[3] == f"0.5 [{low:.4g}, {high:.4g}]"
  assert base[5] == "-"                              # no motion output: NaN shown as '-'
  assert base[6] == "0.25 [0.2, 0.3] |"              # per-time values stay in the CSV only
