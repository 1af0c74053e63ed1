"""End to end: train a tiny VideoJAM model and a tiny baseline, evaluate a sweep, resume it.

The training runs in a subprocess that starts when collection ends (it
compiles while other tests run), with cheap XLA backend options. The
first evaluation goes through the real command; the rerun is in-process and
must sample nothing.
"""

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from configs import eval_quickstart
from tests.conftest import FAST_COMPILE
from tests.conftest import REPO
from tests.conftest import BackgroundCommand
from tests.conftest import start_early
from tests.conftest import started_command
from tests.conftest import tiny_config

XLA_FLAGS = " ".join(f"--{k}={str(v).lower()}" for k, v in FAST_COMPILE.items())
ENV = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": XLA_FLAGS, "PYTHONPATH": str(REPO)}

TRAIN_SCRIPT = """
import sys
from tests.conftest import tiny_config
from videojam_jax.training import loop as trainer

root, name = sys.argv[1:]
config = tiny_config(root + "/data", jam=name == "videojam")
config.train.num_steps = 3
config.train.checkpoint_every = 3
# Big steps move the zero-initialised heads, so guidance settings give different clips.
config.optim.warmup_steps = 0
config.optim.learning_rate = 0.05
trainer.train_and_evaluate(config, root + "/" + name)
"""


@start_early("eval_models")
def start_training(workdir):
  """Builds a tiny dataset, then trains both tiny models for 3 steps in two parallel processes."""
  from data_pipelines import synthetic_dataset  # pylint: disable=g-import-not-at-top
  synthetic_dataset.build(tiny_config(str(workdir / "data")))
  script = workdir / "train.py"
  script.write_text(TRAIN_SCRIPT)
  train = f"{sys.executable} {script} {workdir}"
  # Compiling is mostly single-threaded: the two runs overlap well on 2 cores.
  both = f"{train} videojam & {train} baseline; b=$?; wait $!; v=$?; exit $((b | v))"
  # An RngBitGenerator default key compiles the initialisers much faster than threefry.
  return BackgroundCommand(["bash", "-c", both], workdir,
                           env={**ENV, "JAX_DEFAULT_PRNG_IMPL": "unsafe_rbg"})


@pytest.fixture(scope="module")
def eval_models():
  command = started_command("eval_models")
  returncode, output = command.result()
  assert returncode == 0, output[-5000:]
  return command.workdir


def eval_overrides(root):
  """A 2 x 2 sweep (guidance x motion_scale), 2 prompts, 1 seed, 2 sampler steps."""
  return {"models.videojam": f"{root}/videojam", "models.baseline": f"{root}/baseline",
          "weights": "params", "prompts.num_prompts": 2, "seeds": (0,), "batch_size": 2,
          "sample.num_steps": 2, "sweep.guidance": ("cfg", "inner"),
          "sweep.motion_scale": (1.0, 3.0), "metrics.dis_preset": "ultrafast",
          "report.min_side": 32, "compilation_cache_dir": "",
          "heldout.num_clips": 4, "heldout.batch_size": 2, "heldout.times": (0.3, 0.7)}


def _mtimes(root):
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(root) for f in files}


EXPECTED_ROWS = {("baseline", "cfg", 0.0), ("videojam", "cfg", 0.0),
                 ("videojam", "inner", 1.0), ("videojam", "inner", 3.0)}


def test_evaluate_writes_tables_plots_page_and_resumes(eval_models, tmp_path):
  out = tmp_path / "eval"
  flags = [f"--config.{k}={v}" for k, v in eval_overrides(eval_models).items()]
  result = subprocess.run(
      [sys.executable, "-m", "videojam_jax.evaluate", "--config=configs/eval_quickstart.py",
       f"--workdir={out}", *flags], cwd=REPO, env={**os.environ, **ENV},
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-5000:]
  assert "4 setting(s) sampled, 0 reused, 2 skipped" in result.stdout
  assert "skipping inner_w1-5_w2-1" in result.stderr and "needs a VideoJAM model" in result.stderr
  # w1 and w2 are sampler inputs: both Inner-Guidance scales share one compiled sampler.
  assert result.stderr.count("new sampler for") == 3, result.stderr[-5000:]

  # Tables: one row per (model, setting) that could run, every metric finite.
  with open(out / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
  assert {(r["model"], r["guidance"], float(r["motion_scale"])) for r in rows} == EXPECTED_ROWS
  with open(out / "metrics.json") as f:
    records = json.load(f)
  assert [(r["model"], r["guidance"], r["motion_scale"]) for r in records] == [
      (r["model"], r["guidance"], float(r["motion_scale"])) for r in rows]
  metric_keys = [k for k in records[0] if k.endswith(("_mean", "_std"))]
  assert {"warping_error_mean", "motion_smoothness_std", "dynamic_degree_mean"} <= set(metric_keys)
  for record in records:
    assert record["num_clips"] == 2 and record["checkpoint_step"] == 3
    keys = [k for k in record if k.endswith(("_mean", "_std"))]
    if record["model"] == "videojam":
      assert "motion_epe_mean" in keys  # the model's own motion output is scored
    else:
      assert record["motion_epe_mean"] is None  # no motion output
      keys = [k for k in keys if not k.startswith("motion_epe")]
    assert all(math.isfinite(record[k]) for k in keys), record

  # Each model's held-out loss (the trainer's heldout_loss evaluator), the same in all its rows.
  heldout = {}
  for record in records:
    value = (record["heldout/video_loss"], record["heldout/video_loss_t0.3"])
    assert all(math.isfinite(v) for v in value)
    assert heldout.setdefault(record["model"], value) == value
    assert ("heldout/motion_loss" in record) == (record["model"] == "videojam")
  assert heldout["videojam"] != heldout["baseline"]

  # Guidance changes the clips (the trained heads are not zero).
  by_setting = {(r["model"], r["guidance"], r["motion_scale"]): r for r in records}
  assert (by_setting[("videojam", "cfg", 0.0)]["motion_epe_mean"]
          != by_setting[("videojam", "inner", 3.0)]["motion_epe_mean"])

  # Plot and page.
  (plot,) = os.listdir(out / "plots")
  assert plot == "metrics_vs_motion_scale.png"
  assert (out / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  page = (out / "index.html").read_text()
  for column in ("baseline / CFG w1=5", "videojam / CFG w1=5",
                 "videojam / Inner-Guidance w1=5 w2=1", "videojam / Inner-Guidance w1=5 w2=3"):
    assert f"<th>{column}</th>" in page
  assert page.count("<video ") == 2 * (1 + 3 * 2)  # 2 prompts: baseline video, JAM video + motion
  clips = [p for p in _mtimes(out) if p.endswith(".mp4")]
  assert len(clips) == 14 and all(os.path.getsize(p) > 0 for p in clips)

  # Restarted: every setting is finished, so nothing is sampled or rewritten.
  from videojam_jax.evaluation import runner as evaluation  # pylint: disable=g-import-not-at-top
  before = {p: t for p, t in _mtimes(out / "runs").items()}
  config = eval_quickstart.get_config()
  config.update_from_flattened_dict(eval_overrides(eval_models))
  summary = evaluation.run(config, str(out), progress=False)
  assert summary.generated == [] and len(summary.reused) == 4 and len(summary.skipped) == 2
  assert _mtimes(out / "runs") == before
  with open(out / "metrics.csv") as f:
    assert list(csv.DictReader(f)) == rows

  # A blind study builds from this very workdir (the real `study` command, build only).
  study = subprocess.run(
      [sys.executable, "-m", "videojam_jax.study", f"--eval_dir={out}", "--build_only",
       "--arms=baseline,videojam/inner_w1-5_w2-3_n2_euler_shift1_until1",
       f"--study_dir={tmp_path / 'study'}", "--config.attention.fraction=0.5"],
      cwd=REPO, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=120)
  assert study.returncode == 0, study.stderr[-3000:]
  assert "'pair': 2" in study.stdout
  key = json.loads((tmp_path / "study" / "key.json").read_text())
  assert {t["left_arm"] for t in key["trials"].values() if t["kind"] == "pair"} == {
      "baseline/cfg_w1-5_w2-0_n2_euler_shift1_until1",
      "videojam/inner_w1-5_w2-3_n2_euler_shift1_until1"}


def test_generate_clips_batches_pads_and_pairs_noise():
  """Prompts go in fixed-size batches (last one padded); noise depends on (seed, batch) only."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from videojam_jax.data import text as text_lib  # pylint: disable=g-import-not-at-top
  from videojam_jax.evaluation.evaluators import samples  # pylint: disable=g-import-not-at-top

  calls = []

  def fake_sample(params, ids, mask, rng, *, text_scale=None, motion_scale=None):
    del params, mask, text_scale, motion_scale
    calls.append((ids.shape[0], np.asarray(jax.random.key_data(rng)).tobytes()))
    # Frame value = the caption's first byte (token 1, after BOS), so each clip names its prompt.
    video = np.broadcast_to(((ids[:, 1] - 2) / 127.5 - 1.0)[:, None, None, None, None], (len(ids), 2, 4, 4, 3))
    return video, None

  captions = text_lib.CaptionInputs(tiny_config().model.text)
  prompts = ["a ball", "b box", "c cone"]
  generate = lambda seeds: samples.generate_clips(fake_sample, None, captions, prompts, seeds, 2)
  clips = generate((0, 1))
  assert [(c.prompt_index, c.seed) for c in clips] == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
  assert [size for size, _ in calls] == [2, 2, 2, 2]  # one compiled shape
  for c in clips:
    assert c.motion is None and c.video.dtype == np.uint8
    assert abs(int(c.video[0, 0, 0, 0]) - ord(prompts[c.prompt_index][0])) <= 1
    assert c.prompt == prompts[c.prompt_index]
  assert len({key for _, key in calls}) == 4  # every (seed, batch) draws its own noise
  calls.clear()
  generate((1,))
  again = [key for _, key in calls]
  calls.clear()
  generate((0, 1))
  assert [key for _, key in calls][2:] == again  # seed 1 gets the same noise whatever else runs

