"""The tiny Wan 2.1 trains, evaluates, samples, resumes and exports through the real commands.

Its captions are umT5 embeddings that `data_pipelines.caption_embeddings` wrote with
the fixture pipeline's tiny umT5 (tests/fixtures/wan/pipeline), as a user's run
on real Wan weights would have them.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import wan_tiny
from data_pipelines import synthetic_dataset
from data_pipelines import caption_embeddings
from tests.conftest import REPO
from tests.conftest import subprocess_env
from videojam_jax.model import dit
from videojam_jax.model import diffusers_format as fmt
from videojam_jax.model import functional
from videojam_jax.model import lora as lora_lib
from videojam_jax.parallel import sharding
from videojam_jax.training import checkpoints
from videojam_jax.training import runs

NUM_STEPS = 4
PIPELINE = REPO / "tests" / "fixtures" / "wan" / "pipeline"
TEXT = dict(source="precomputed", max_length=16, embedding_dim=32)   # the fixture umT5
VIDEO_SHAPE = dit.VideoShape.from_data_config(wan_tiny.get_config().data)


def one_device_plan():
  return sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=-1)))


def wan_config(**model):
  config = wan_tiny.get_config()
  config.model.text.update(TEXT)
  config.model.update(model)
  return config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """(dataset_dir, umT5 caption embeddings .npz)."""
  config = wan_tiny.get_config()
  config.data.dataset_dir = str(tmp_path_factory.mktemp("data"))
  synthetic_dataset.build(config)
  config.model.text.update(TEXT)
  config.data.text_encoder = str(PIPELINE)
  config.data.text_embeddings = str(tmp_path_factory.mktemp("text") / "umt5.npz")
  caption_embeddings.embed_captions(config)
  return config.data.dataset_dir, config.data.text_embeddings


def run(dataset, workdir, *overrides):
  dataset_dir, embeddings = dataset
  command = [sys.executable, "-m", "videojam_jax.train", "--config", "configs/wan_tiny.py",
             f"--workdir={workdir}", f"--config.data.dataset_dir={dataset_dir}",
             f"--config.data.text_embeddings={embeddings}",
             *[f"--config.model.text.{k}={v}" for k, v in TEXT.items()],
             # A constant learning rate (the paper's recipe) keeps num_steps out of the
             # compiled step, so the shared XLA cache serves resumes and later runs too;
             # tensorboardX spares each run the TensorFlow import (clu's writer is
             # tested by tests/test_train_e2e.py).
             "--config.optim.schedule=constant", "--config.train.metric_writer=tensorboardx",
             "--config.compilation_cache_dir=", "--config.train.checkpoint_every=2",
             f"--config.evals.samples.every_steps={NUM_STEPS}",
             f"--config.evals.heldout.every_steps={NUM_STEPS}", *overrides]
  result = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  return result.stderr


@pytest.fixture(scope="module")
def base_run(dataset, tmp_path_factory):
  """A base Wan trained NUM_STEPS steps with held-out loss and samples: what a user's
  downloaded Wan stands for in the retrofit and LoRA tests; (workdir, its log)."""
  base = tmp_path_factory.mktemp("base") / "run"
  return base, run(dataset, base, f"--config.train.num_steps={NUM_STEPS}")


def test_wan_trains_evaluates_samples_and_resumes(dataset, base_run, tmp_path):
  base, log = base_run
  assert json.loads((base / "config.json").read_text())["model"]["family"] == "wan"
  losses = [float(x) for x in re.findall(r"train/loss=([0-9.]+)", log)]
  assert len(losses) == NUM_STEPS and all(np.isfinite(losses))
  assert re.search(rf"\[{NUM_STEPS}\] heldout/video_loss=", log)
  assert re.search(rf"\[{NUM_STEPS}\] samples/.*warping_error=", log)
  out = base / "samples" / f"step_{NUM_STEPS:06d}"
  assert sorted(os.listdir(out)) == ["captions.txt", "grid.png", "sample_00.mp4", "sample_01.mp4"]
  # The checkpoint holds the Wan transformer's parameters under their names.
  params = checkpoints.params_metadata(base, "params")
  assert "transformer" in params and "blocks" in params["transformer"]
  # Resume: two more steps from the saved step (in a copy: the base run stays as it was).
  workdir = tmp_path / "run"
  shutil.copytree(base, workdir)
  log = run(dataset, workdir, f"--config.train.num_steps={NUM_STEPS + 2}")
  steps = [int(s) for s in re.findall(r"\[(\d+)\] train/.*train/loss=", log)]
  assert steps == [NUM_STEPS + 1, NUM_STEPS + 2]
  # Export: a diffusers WanTransformer3DModel folder holding the checkpoint's weights.
  out = tmp_path / "exported"
  result = subprocess.run([sys.executable, "-m", "videojam_jax.export", f"--workdir={workdir}",
                           f"--out={out}", "--weights=params"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((out / "config.json").read_text())
  assert config["_class_name"] == "WanTransformer3DModel" and config["text_dim"] == 32
  saved = checkpoints.load_weights(str(workdir), "params")["transformer"]
  reader = fmt.TensorReader(out)
  kernel = np.asarray(saved["blocks"]["attn2"]["to_k"]["kernel"][1])   # block 1: [in, heads, d]
  np.testing.assert_array_equal(reader.get("blocks.1.attn2.to_k.weight"),
                                kernel.reshape(kernel.shape[0], -1).T)              # torch [out, in]
  np.testing.assert_array_equal(reader.get("scale_shift_table"), saved["scale_shift_table"])
  reader.close()


def test_a_base_wan_run_retrofits_to_wan_videojam_trains_samples_with_inner_guidance_and_exports(
    dataset, base_run, tmp_path):
  base, _ = base_run
  jam = tmp_path / "jam"
  log = run(dataset, jam, "--config.train.num_steps=2", f"--config.train.init_from={base}",
            "--config.train.init_from_weights=params", "--config.model.jam=True",
            "--config.sample.guidance=inner", "--config.evals.samples.every_steps=2",
            "--config.evals.heldout.every_steps=2")
  assert f"initialised from {base}" in log
  assert re.search(r"\[2\] train/.*train/motion_loss=", log)
  assert re.search(r"\[2\] heldout/motion_loss=", log)
  assert re.search(r"\[2\] samples/.*warping_error=", log)
  params = checkpoints.params_metadata(jam, "params")["transformer"]
  assert "motion_patch_embedding" in params and "motion_proj_out" in params
  out = tmp_path / "exported"
  result = subprocess.run([sys.executable, "-m", "videojam_jax.export", f"--workdir={jam}",
                           f"--out={out}"], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((out / "config.json").read_text())
  assert config["in_channels"] == config["out_channels"] == 6      # 3 video + 3 motion
  # The evaluate sweep and its page: base Wan with CFG beside Wan-VideoJAM with
  # Inner-Guidance, same prompts and seeds.
  page = tmp_path / "eval"
  overrides = {"models.baseline": base, "models.videojam": jam, "weights": "params",
               "prompts.num_prompts": 2, "seeds": (0,), "batch_size": 2, "sample.num_steps": 2,
               "sweep.guidance": ("cfg", "inner"), "sweep.motion_scale": (3.0,),
               "metrics.dis_preset": "ultrafast", "report.min_side": 32,
               "compilation_cache_dir": "", "heldout.num_clips": 2, "heldout.batch_size": 2,
               "heldout.times": (0.5,)}
  result = subprocess.run([sys.executable, "-m", "videojam_jax.evaluate", "--config",
                           "configs/eval_quickstart.py", f"--workdir={page}",
                           *[f"--config.{k}={v}" for k, v in overrides.items()]],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "3 setting(s) sampled, 0 reused, 1 skipped" in result.stdout
  html = (page / "index.html").read_text()
  assert "<th>baseline / CFG w1=5</th>" in html and "<th>videojam / Inner-Guidance w1=5 w2=3</th>" in html


def test_lora_wan_videojam_trains_from_a_base_resumes_and_exports_with_adapters_folded(
    dataset, base_run, tmp_path):
  base_run, _ = base_run
  lora = tmp_path / "lora"
  overrides = ["--config.model.jam=True", "--config.model.lora.rank=4",
               "--config.model.lora.alpha=8", "--config.model.lora.frozen_dtype=bfloat16",
               f"--config.train.init_from={base_run}", "--config.train.init_from_weights=params",
               "--config.sample.guidance=inner", "--config.optim.learning_rate=1e-2",
               "--config.evals.samples.every_steps=2", "--config.evals.heldout.every_steps=2"]
  log = run(dataset, lora, "--config.train.num_steps=2", *overrides)
  assert re.search(r"model: [0-9,]+ parameters, [0-9,]+ of them trained \(LoRA", log)
  assert re.search(r"\[2\] samples/.*warping_error=", log)       # evaluators see the whole model
  log = run(dataset, lora, "--config.train.num_steps=4", *overrides)
  assert [int(s) for s in re.findall(r"\[(\d+)\] train/.*train/loss=", log)] == [3, 4]
  # The checkpoint: the frozen base (bfloat16) as the base run left it; adapters trained.
  base = checkpoints.load_weights(str(base_run), "params")["transformer"]
  saved = checkpoints.load_weights(str(lora), "params")["transformer"]
  kernel = saved["blocks"]["attn1"]["to_q"]["kernel"]
  assert kernel.dtype == jnp.bfloat16
  np.testing.assert_array_equal(kernel, base["blocks"]["attn1"]["to_q"]["kernel"].astype(jnp.bfloat16))
  adapter = saved["blocks"]["attn1"]["to_q_lora"]
  assert np.abs(adapter["lora_b"]).max() > 0
  # A LoRA run cannot go into a model without adapters silently.
  with pytest.raises(lora_lib.LoraConfigError, match="export the run"):
    runs.load_params(functional.build(wan_config(jam=True).model, VIDEO_SHAPE, one_device_plan()), str(lora))
  # Export folds the adapters: W + (alpha / rank) A B, as a plain 6-channel transformer.
  out = tmp_path / "exported"
  result = subprocess.run([sys.executable, "-m", "videojam_jax.export", f"--workdir={lora}",
                           f"--out={out}", "--weights=params"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((out / "config.json").read_text())["in_channels"] == 6
  reader = fmt.TensorReader(out)
  a, b = adapter["lora_a"][1].astype(np.float32), adapter["lora_b"][1].astype(np.float32)
  folded = kernel[1].astype(np.float32) + 2.0 * np.einsum("ir,rhd->ihd", a, b)
  np.testing.assert_allclose(reader.get("blocks.1.attn1.to_q.weight"),
                             folded.reshape(folded.shape[0], -1).T, rtol=1e-2, atol=1e-3)
  reader.close()
