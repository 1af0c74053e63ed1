"""write_report: a sweep's results in a result store -> tables, plots and page in one folder."""

import csv
import html.parser
import json
import os

import numpy as np

from tests.evaluation.report.conftest import BASE
from tests.evaluation.report.conftest import MODELS
from tests.evaluation.report.conftest import results_for
from videojam_jax.evaluation import report
from videojam_jax.evaluation import result_store
from videojam_jax.evaluation import sweep
from videojam_jax.evaluation.report import page

T, SIDE, FPS = 4, 16, 8.0
AXES = {"guidance": ("cfg", "inner"), "motion_scale": (1.0, 3.0)}


class _Sources(html.parser.HTMLParser):
  """The src of every <video> and <img> on a page."""

  def __init__(self):
    super().__init__()
    self.videos, self.images = [], []

  def handle_starttag(self, tag, attrs):
    if tag in ("video", "img"):
      (self.videos if tag == "video" else self.images).append(dict(attrs)["src"])


def _store_results(tmp_path):
  """The fixture's results, their clips written for real by a run of the result store."""
  by_key = {r["key"]: r for r in results_for(AXES)}
  jobs, _ = sweep.plan(MODELS, sweep.expand(BASE, AXES))
  rng = np.random.default_rng(0)

  def generate(job, stage):
    clips = by_key[job.key]["clips"]
    for clip in clips:
      video = rng.integers(0, 256, (T, SIDE, SIDE, 3), dtype=np.uint8)
      motion = None if clip["motion"] is None else rng.integers(0, 256, video.shape, dtype=np.uint8)
      name = os.path.basename(clip["video"])[:-len(".mp4")]
      page.write_cell(os.path.join(stage, "clips"), name, video, motion, fps=FPS, min_side=SIDE)
    return {"checkpoint_step": 3, "clips": clips}

  store = result_store.ResultStore(tmp_path / "runs")
  prints = {job: sweep.fingerprint({"key": job.key}) for job in jobs}
  return result_store.run_jobs(jobs, store, prints, generate, progress=False).results, store


def test_write_report_writes_every_file_and_links_the_clips(tmp_path):
  results, store = _store_results(tmp_path)
  out = tmp_path / "report"
  files = report.write_report(results, store.root, out, title="Sweep <1>",
                              notes=["Two prompts.", "Not sampled for baseline: Inner-Guidance."])
  csv_path, json_path, markdown_path, plot_paths, page_path = files  # a plain tuple too
  assert (csv_path, json_path, markdown_path, page_path) == (
      str(out / "metrics.csv"), str(out / "metrics.json"), str(out / "metrics.md"),
      str(out / "index.html"))
  assert open(markdown_path).read().startswith("| model | setting | clips | warping_error")
  assert plot_paths == [str(out / "plots" / "metrics_vs_motion_scale.png")]
  assert files.page == page_path and files.plots == plot_paths
  with open(csv_path, newline="") as f:
    assert [(r["model"], r["setting"]) for r in csv.DictReader(f)] == [
        ("baseline", "CFG w1=5"), ("videojam", "CFG w1=5"),
        ("videojam", "Inner-Guidance w1=5 w2=1"), ("videojam", "Inner-Guidance w1=5 w2=3")]
  with open(json_path) as f:
    assert len(json.load(f)) == 4

  text = open(page_path, encoding="utf-8").read()
  for column in ("baseline / CFG w1=5", "videojam / Inner-Guidance w1=5 w2=3"):
    assert f"<th>{column}</th>" in text
  assert "Two prompts. Not sampled for baseline: Inner-Guidance. Metrics — warping_error:" in text
  assert "Sweep &lt;1&gt;" in text and "a red ball &lt;rolls&gt;" in text
  assert "1.5 ± 0.5" in text  # videojam / CFG's warping error in the sweep table
  sources = _Sources()
  sources.feed(text)
  # 2 prompts x 2 seeds rows; baseline: a video, the three VideoJAM columns: video + motion.
  assert len(sources.videos) == 4 * (1 + 3 * 2)
  for src in sources.videos:
    assert not os.path.isabs(src) and src.startswith("../runs/")
    assert os.path.getsize(out / src) > 0
  assert sources.images[-1] == "plots/metrics_vs_motion_scale.png"
