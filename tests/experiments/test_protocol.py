"""The protocol: its config checks, and the real command at test size, rerun to a no-op."""

import csv
import json
import os
import shutil
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from configs import protocol_gpu
from configs import protocol_quickstart
from tests.conftest import REPO
from tests.conftest import BackgroundCommand
from tests.conftest import start_early
from tests.conftest import started_command
from tests.conftest import subprocess_env
from tests.conftest import tiny_config
from videojam_jax.experiments import protocol
from videojam_jax.training import config_checks

CONFIG = "tests/experiments/tiny_protocol_config.py"


def test_overrides_parse_literals_and_keep_commas_inside_brackets():
  assert protocol.parse_overrides("model.jam=True, model.patch_size=(1, 8, 8),"
                                  " train.retrofit_motion_head='zeros'") == {
      "model.jam": True, "model.patch_size": (1, 8, 8), "train.retrofit_motion_head": "zeros"}
  assert protocol.parse_overrides("") == {}
  with pytest.raises(protocol.ProtocolConfigError, match="not a Python literal"):
    protocol.parse_overrides("train.retrofit_motion_head=zeros")
  with pytest.raises(protocol.ProtocolConfigError, match="field.path=value"):
    protocol.parse_overrides("model.jam")


def test_quickstart_protocol_config_is_valid_and_every_arm_trains_alike():
  config = protocol_quickstart.get_config()
  protocol.check_config(config)
  arms = protocol.arm_configs(config, "/runs/pretrain")
  assert set(arms) == {"base", "videojam"}
  assert not arms["base"].model.jam and arms["videojam"].model.jam
  for arm in arms.values():
    config_checks.check_config(arm)
    assert arm.train.init_from == "/runs/pretrain" and arm.train.num_steps == 1000
    assert arm.data == arms["base"].data and arm.train.batch_size == arms["base"].train.batch_size
  pre = protocol.pretrain_config(config, 500)
  assert not pre.model.jam and pre.optim.schedule == "constant" and pre.train.num_steps == 500
  config_checks.check_config(pre)


def test_gpu_protocol_config_is_valid_and_its_arms_differ_only_in_the_motion_head():
  config = protocol_gpu.get_config()
  protocol.check_config(config)
  arms = protocol.arm_configs(config, "/runs/pretrain")
  assert set(arms) == {"base", "videojam"}
  assert arms["videojam"].train.retrofit_motion_head == "zeros"
  for arm in arms.values():
    config_checks.check_config(arm)
    assert arm.model.width == 256 and arm.data.height == 32 and arm.train.batch_size == 32
    assert arm.train.num_steps == 2000 and arm.data == arms["base"].data
  assert config.evaluation.prompts.num_prompts == 128 and tuple(config.evaluation.seeds) == (0, 1)


@pytest.mark.parametrize("change, message", [
    ({"arms.videojam": "model.jam=True, train.num_steps=5"}, "every arm trains the same steps"),
    ({"arms.videojam": "model.no_such_field=1"}, "no_such_field"),
    ({"report.reference": "nobody"}, "is not an arm"),
    ({"pretrain.chunk_steps": 0}, "chunk_steps"),
    ({"finetune.num_steps": 0}, "finetune.num_steps"),
])
def test_impossible_protocols_are_refused_before_anything_runs(change, message):
  config = protocol_quickstart.get_config()
  config.update_from_flattened_dict(change)
  with pytest.raises(protocol.ProtocolConfigError, match=message):
    protocol.check_config(config)


@start_early("protocol_run")
def start_protocol(workdir):
  """The real command on a tiny dataset: pretrain, three arms, evaluation, table."""
  from data_pipelines import synthetic_dataset  # pylint: disable=g-import-not-at-top
  synthetic_dataset.build(tiny_config(str(workdir / "data")))
  return BackgroundCommand(
      [sys.executable, "-m", "videojam_jax.protocol", f"--config={CONFIG}",
       f"--workdir={workdir / 'run'}", f"--config.train.data.dataset_dir={workdir / 'data'}"],
      workdir, env=subprocess_env())


@pytest.fixture(scope="module")
def protocol_run():
  command = started_command("protocol_run")
  returncode, output = command.result(timeout=900)
  assert returncode == 0, output[-5000:]
  return command.workdir


def _mtimes(root):
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, names in os.walk(root) for f in names}


def test_protocol_runs_every_stage_writes_the_table_and_reruns_as_a_no_op(protocol_run):
  run = protocol_run / "run"
  stages = json.loads((run / "stages.json").read_text())
  # Stage 1: two chunks, then flat (tolerance 10): steps 2 and 4 measured, not max_steps=6.
  pre = stages["pretrain"]
  assert [h["step"] for h in pre["history"]] == [2, 4] and pre["flat"] and pre["steps"] == 4
  assert all(h["ci"][0] <= h["video_loss"] <= h["ci"][1] for h in pre["history"])
  # Stage 2: every arm trained 2 steps from the pretrained base, with its compute recorded.
  assert set(stages["arms"]) == {"base", "videojam", "videojam_zero_head"}
  for name, arm in stages["arms"].items():
    assert arm["steps"] == 2 and arm["clips_seen"] == 8 and arm["train_pflop"] > 0
    assert arm["jam"] == (name != "base") and arm["train_seconds"] > 0
    config = json.loads((run / "arms" / name / "config.json").read_text())
    assert config["train"]["init_from"] == str(run / "pretrain")

  # Stage 3: every clip as arrays, with captions and seeds; motions only where the model has them.
  settings = {}
  for dirpath, _, names in os.walk(run / "eval" / "runs"):
    if "clips.npz" in names:
      with np.load(os.path.join(dirpath, "clips.npz")) as npz:
        arrays = {k: npz[k] for k in npz.files}
      meta = json.loads(open(os.path.join(dirpath, "settings.json")).read())
      settings[(meta["model"], meta["settings"]["guidance"], meta["settings"]["motion_scale"])] = arrays
      assert arrays["videos"].dtype == np.uint8 and arrays["videos"].shape == (4, 4, 16, 16, 3)
      assert list(arrays["seeds"]) == [0, 0, 1, 1] and list(arrays["prompt_index"]) == [0, 1, 0, 1]
      assert len(set(arrays["captions"])) == 2
      assert ("motions" in arrays) == (meta["model"] != "base")
      assert meta["settings"]["text_scale"] == 1.0   # w1 the same in every arm
  # CFG ignores w2: its settings collapse into one (w2 = 0).
  assert set(settings) == {("base", "cfg", 0.0), ("videojam", "cfg", 0.0),
                           ("videojam", "inner", 1.0), ("videojam", "inner", 3.0),
                           ("videojam_zero_head", "cfg", 0.0),
                           ("videojam_zero_head", "inner", 1.0),
                           ("videojam_zero_head", "inner", 3.0)}
  # A zero motion head predicts no motion yet (2 steps); the copied head does.
  assert settings[("videojam", "cfg", 0.0)]["motions"].std() > 0

  # The table: every (arm, setting), metrics with intervals, compute, paired differences.
  with open(run / "protocol.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 7 and rows[0]["model"] == "base"
  for row in rows:
    assert row["num_clips"] == "4" and row["finetune_steps"] == "2"
    low, mean, high = (float(row[f"warping_error_{k}"]) for k in ("ci_low", "mean", "ci_high"))
    assert low <= mean <= high
    assert float(row["heldout/video_loss_ci_low"]) <= float(row["heldout/video_loss"])
    assert 0.0 <= float(row["objects_present_mean"]) <= 1.0
    assert (row["warping_error_diff"] == "") == (row["model"] == "base")
    # Each arm's caption-swap ratios: swapped / true held-out loss, > 0, motion for VideoJAM.
    assert float(row["caption_swap/colour_video_loss_ratio"]) > 0
    assert float(row["caption_swap/colour_clips"]) == 4
    assert (row["caption_swap/colour_motion_loss_ratio"] == "") == (row["model"] == "base")
  markdown = (run / "protocol.md").read_text()
  assert "caption_swap/direction_video_loss_ratio" in markdown
  assert "## Compute per arm" in markdown and "| videojam_zero_head | True |" in markdown
  assert "Inner-Guidance w1=1 w2=3" in markdown and "## Paired difference to base" in markdown
  assert (run / "protocol.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  page_html = (run / "eval" / "index.html").read_text()   # GIFs (the config's video_format)
  # 4 clips x (base: video; 2 VideoJAM arms x 3 settings: video and motion)
  assert "<video " not in page_html and page_html.count('.gif"') == 4 * (1 + 2 * 3 * 2)

  # Rerun: nothing is trained, sampled or rewritten below the stage folders.
  before = {p: t for p, t in _mtimes(run).items() if "/arms/" in p or "/pretrain/" in p
            or "/eval/runs/" in p}
  result = subprocess.run(
      [sys.executable, "-m", "videojam_jax.protocol", f"--config={CONFIG}", f"--workdir={run}",
       f"--config.train.data.dataset_dir={protocol_run / 'data'}"],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  after = {p: t for p, t in _mtimes(run).items() if p in before}
  assert after == before
  assert "the base is pretrained (step 4, held-out loss flat)" in result.stderr
  assert result.stderr.count("is already fine-tuned (2 steps)") == 3
  assert "pretraining the base" not in result.stderr and "fine-tuning arm" not in result.stderr
  assert "weights, step" not in result.stderr   # no model loaded for sampling
  assert json.loads((run / "stages.json").read_text())["arms"] == stages["arms"]
  with open(run / "protocol.csv") as f:
    assert [r["warping_error_mean"] for r in csv.DictReader(f)] == [
        r["warping_error_mean"] for r in rows]


def test_gif_clips_are_drawn_again_as_mp4_from_the_arrays(protocol_run, tmp_path):
  """`python -m videojam_jax.rewrite_clips`: a GIF evaluation (as on a machine without
  imageio-ffmpeg) becomes MP4 from its clips.npz; metrics kept, page rebuilt."""
  eval_dir = tmp_path / "eval"
  shutil.copytree(protocol_run / "run" / "eval", eval_dir)
  with open(eval_dir / "metrics.csv") as f:
    metrics_before = list(csv.DictReader(f))
  command = [sys.executable, "-m", "videojam_jax.rewrite_clips", f"--eval_dir={eval_dir}"]
  result = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  results = sorted(eval_dir.glob("runs/*/*/result.json"))
  assert len(results) == 7
  for result_path in results:
    folder = result_path.parent
    clips = json.loads(result_path.read_text())["clips"]
    with np.load(folder / "clips.npz") as npz:
      videos, seeds, prompts = npz["videos"], list(npz["seeds"]), list(npz["prompt_index"])
    for clip in clips:
      assert clip["video"].endswith(".mp4") and (folder / clip["video"]).is_file()
      assert (clip["motion"] is None) == (folder.parent.name == "base")
      frames = iio.imread(folder / clip["video"], plugin="pyav")
      expected = videos[list(zip(prompts, seeds)).index((clip["prompt_index"], clip["seed"]))]
      assert frames.shape == (4, 32, 32, 3)             # 16 px clips upscaled x2 (min_side 32)
      assert np.abs(frames[:, ::2, ::2].astype(int) - expected.astype(int)).mean() < 12
    assert not list(folder.glob("clips/*.gif"))
  page_html = (eval_dir / "index.html").read_text()
  assert ".gif" not in page_html and page_html.count("<video ") == 4 * (1 + 2 * 3 * 2)
  with open(eval_dir / "metrics.csv") as f:
    assert list(csv.DictReader(f)) == metrics_before

  # A folder that is not an evaluation gets a clear error, and nothing is written.
  result = subprocess.run([sys.executable, "-m", "videojam_jax.rewrite_clips",
                           f"--eval_dir={tmp_path / 'nothing'}"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and "has no eval_config.json" in result.stderr
  assert not (tmp_path / "nothing").exists()
