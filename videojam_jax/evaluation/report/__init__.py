"""What an evaluation sweep writes for people: tables, plots and the comparison page.

Input: the per-(model, setting) results of `result_store.run_jobs`, each a dict
with `key`, `model`, `settings` (a SamplerSettings as a dict), `checkpoint_step`
and `clips`: [{prompt_index, prompt, seed, video, motion, metrics}], where
video/motion are paths relative to the result's folder (`runs_root/key`).

Modules: `fields` (setting fields, metric names, labels), `tables` (summary
rows, CSV and JSON), `plots` (metrics against each swept value, PNG), `page`
(the HTML page). `write_report` writes all of them into one folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from etils import epath

from videojam_jax import files
from videojam_jax.evaluation.report import page as page_lib
from videojam_jax.evaluation.report import plots as plots_lib
from videojam_jax.evaluation.report import tables

CSV_FILE = "metrics.csv"
MARKDOWN_FILE = "metrics.md"
JSON_FILE = "metrics.json"
PLOTS_DIR = "plots"
PAGE_FILE = "index.html"


class ReportFiles(NamedTuple):
  """The files `write_report` wrote."""
  csv_path: str
  json_path: str
  markdown_path: str
  plots: list[str]
  page: str


def write_report(results: Sequence[Mapping[str, Any]], runs_root: epath.PathLike,
                 out_dir: epath.PathLike, *, title: str,
                 notes: Sequence[str] = ()) -> ReportFiles:
  """Writes metrics.csv|json|md, plots/metrics_vs_<field>.png and index.html into out_dir.

  results: as `result_store.run_jobs` returns them, their clips under
  `runs_root` (the `ResultStore.root`). notes: sentences shown at the top of
  the page. Returns the paths written (a tuple: csv, json, plots, page).
  """
  out_dir = epath.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  csv_path, json_path = out_dir / CSV_FILE, out_dir / JSON_FILE
  rows = tables.summary_rows(results)
  tables.write_tables(rows, csv_path, json_path)
  markdown_path = out_dir / MARKDOWN_FILE
  files.atomic_write(markdown_path, tables.markdown_table(rows))
  plots = plots_lib.write_plots(results, out_dir / PLOTS_DIR)
  page = page_lib.write_page(results, runs_root, out_dir / PAGE_FILE, title=title, plots=plots,
                             notes=notes)
  return ReportFiles(os.fspath(csv_path), os.fspath(json_path), os.fspath(markdown_path), plots,
                     page)
