"""Wan 2.1 text to video (videojam_jax/sampling/wan_pipeline.py) against diffusers' WanPipeline.

The fixture pipeline (tests/fixtures/wan/make_pipeline_fixture.py) is a tiny
random umT5 + Wan transformer + Wan VAE saved by WanPipeline.save_pretrained with
FlowMatchEulerDiscreteScheduler(shift=3). diffusers ran it with CFG (guidance
scale 5, empty negative prompt) for 4 steps from recorded initial latents; ours
must give the same final latents and frames.
"""

import dataclasses
import json
import shutil
import subprocess
import sys

import imageio.v3 as iio
import ml_collections
import numpy as np
import pytest

from configs import wan21_generate
from tests.conftest import REPO
from tests.conftest import subprocess_env
from videojam_jax.evaluation import generated_page
from videojam_jax.parallel import sharding
from videojam_jax.sampling import sampler as sampler_lib
from videojam_jax.sampling import wan_pipeline

PIPELINE = REPO / "tests" / "fixtures" / "wan" / "pipeline"


@pytest.fixture(scope="module")
def outputs():
  return dict(np.load(PIPELINE.parent / "pipeline_outputs.npz"))


@pytest.fixture(scope="module")
def pipeline():
  plan = sharding.ShardingPlan.from_config(ml_collections.ConfigDict(dict(data=-1)))
  return wan_pipeline.WanPipeline(PIPELINE, plan, max_sequence_length=16)


def fixture_config(**sample):
  config = wan21_generate.get_config()
  config.pipeline_dir = str(PIPELINE)
  config.sample.num_steps = 4
  config.sample.update(sample)
  return config


def test_scheduler_defaults_are_read_from_the_folder(pipeline):
  assert pipeline.scheduler == wan_pipeline.SchedulerDefaults("flow_match_euler", 3.0)
  settings = wan_pipeline.settings_from_config(fixture_config(), pipeline.scheduler)
  assert (settings.schedule, settings.time_shift, settings.guidance) == ("flow_match_euler", 3.0, "cfg")
  assert settings.text_scale == 4.0                    # guidance_scale 5 = 1 + w1
  chosen = wan_pipeline.settings_from_config(
      fixture_config(schedule="unipc_flow", flow_shift=5.0), pipeline.scheduler)
  assert (chosen.schedule, chosen.time_shift) == ("unipc_flow", 5.0)


def test_matches_the_diffusers_pipeline(pipeline, outputs):
  settings = wan_pipeline.settings_from_config(fixture_config(), pipeline.scheduler)
  noise = outputs["initial_latents"].transpose(0, 2, 3, 4, 1)      # -> channels-last
  video, motion, latents = pipeline.generate(list(outputs["prompts"]), num_frames=5,
                                             height=16, width=16, settings=settings, noise=noise)
  assert motion is None and not pipeline.jam
  reference = outputs["final_latents"].transpose(0, 2, 3, 4, 1)
  err = np.abs(latents - reference).max() / np.abs(reference).max()
  print(f"\npipeline latents: max abs / max |ref| {err:.3g}")
  assert err < 1e-5
  # diffusers' np output is (video / 2 + 0.5) clipped to [0, 1].
  frames_err = np.abs((video + 1) / 2 - outputs["frames"]).max()
  print(f"pipeline frames: max abs {frames_err:.3g}")
  assert video.shape == outputs["frames"].shape == (3, 5, 16, 16, 3)
  assert frames_err < 1e-4
  # Without guidance the result differs: the negative prompt really enters.
  unguided, _ = pipeline.sample_latents(
      list(outputs["prompts"]), num_frames=5, height=16, width=16, noise=noise,
      settings=wan_pipeline.settings_from_config(fixture_config(guidance_scale=1.0),
                                                 pipeline.scheduler))
  assert np.abs(unguided - reference).max() > 100 * np.abs(latents - reference).max()


def test_requests_that_do_not_fit_are_named(pipeline, tmp_path):
  settings = wan_pipeline.settings_from_config(fixture_config(), pipeline.scheduler)
  with pytest.raises(wan_pipeline.PipelineError, match="1 \\+ 4k frames of a multiple of 16"):
    pipeline.sample_latents(["a"], num_frames=6, height=16, width=16, settings=settings)
  with pytest.raises(wan_pipeline.PipelineError, match="1 \\+ 4k frames of a multiple of 16"):
    pipeline.sample_latents(["a"], num_frames=5, height=24, width=16, settings=settings)
  with pytest.raises(sampler_lib.GuidanceError, match="Inner-Guidance needs a VideoJAM model"):
    pipeline.sample_latents(["a"], num_frames=5, height=16, width=16,
                            settings=sampler_lib.SamplerSettings(**{**settings.__dict__,
                                                                    "guidance": "inner"}))
  with pytest.raises(wan_pipeline.PipelineError, match="point at the folder above it"):
    wan_pipeline.check_pipeline_dir(PIPELINE / "transformer")
  shutil.copytree(PIPELINE, tmp_path / "p")
  shutil.rmtree(tmp_path / "p" / "vae")
  with pytest.raises(wan_pipeline.PipelineError, match="lacks the component folder\\(s\\) \\['vae'\\]"):
    wan_pipeline.check_pipeline_dir(tmp_path / "p")


def test_generate_entry_point_writes_mp4s(tmp_path):
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, "-m", "videojam_jax.generate", "--config", "configs/wan21_generate.py",
       f"--workdir={out}", f"--config.pipeline_dir={PIPELINE}",
       "--config.prompts=('a red ball bounces', 'a square spins', 'a disc falls')",
       "--config.num_frames=5", "--config.height=16", "--config.width=32",
       "--config.sample.num_steps=2", "--config.batch_size=2", "--config.dtype=float32",
       "--config.max_sequence_length=16"],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(p.name for p in out.iterdir()) == [
      "sample_000.mp4", "sample_001.mp4", "sample_002.mp4", "samples.json"]
  frames = iio.imread(out / "sample_002.mp4", plugin="pyav")
  assert frames.shape == (5, 16, 32, 3)
  record = json.loads((out / "samples.json").read_text())
  assert [s["prompt"] for s in record["samples"]] == ["a red ball bounces", "a square spins",
                                                       "a disc falls"]
  assert record["settings"]["schedule"] == "flow_match_euler"
  assert "generated 3 / 3 prompts" in result.stderr


@pytest.fixture(scope="module")
def jam_pipeline_dir(tmp_path_factory, pipeline, perturb_params):
  """The fixture pipeline with its transformer retrofitted to Wan-VideoJAM and exported
  (2 x 4 channels); `retrofitted`: motion rows zero as at conversion, else trained-looking."""
  import jax
  from flax import nnx
  from videojam_jax.model import dit, functional
  from videojam_jax.model.wan import video_model, weights
  from videojam_jax.training import runs
  config = pipeline.transformer_config
  shape = dit.VideoShape(2, 2, 2, 4)
  create = lambda rngs: video_model.WanVideoModel(config, video_shape=shape, text_encoder=None,
                                                  jam=True, rngs=rngs)
  graphdef, abstract = functional.abstract_split(lambda: create(nnx.Rngs(0)), pipeline.plan)
  model = functional.FunctionalModel(graphdef, abstract, shape, True, pipeline.plan, create)
  retrofitted = jax.device_get(runs.load_params(model, str(PIPELINE / "transformer")))
  trained = perturb_params(retrofitted, seed=8)
  dirs = {}
  for name, params in (("retrofitted", retrofitted), ("trained", trained)):
    root = tmp_path_factory.mktemp(name) / "p"
    shutil.copytree(PIPELINE, root, ignore=shutil.ignore_patterns("transformer"))
    weights.save_jam_transformer(root / "transformer", config, params["transformer"])
    dirs[name] = root
  return dirs


def test_a_retrofitted_export_samples_the_base_video(jam_pipeline_dir, pipeline, outputs):
  plan = pipeline.plan
  jam = wan_pipeline.WanPipeline(jam_pipeline_dir["retrofitted"], plan, max_sequence_length=16)
  assert jam.jam and jam.transformer_config == pipeline.transformer_config
  settings = wan_pipeline.settings_from_config(fixture_config(guidance="cfg"), jam.scheduler, True)
  noise = outputs["initial_latents"].transpose(0, 2, 3, 4, 1)
  latents, motion = jam.sample_latents(list(outputs["prompts"]), num_frames=5, height=16,
                                       width=16, settings=settings, noise=noise)
  base, _ = pipeline.sample_latents(list(outputs["prompts"]), num_frames=5, height=16, width=16,
                                    settings=settings, noise=noise)
  np.testing.assert_array_equal(latents, base)      # the motion rows are zero: video unchanged
  assert motion is not None and motion.shape == latents.shape


def generate_one(pipeline_dir, out):
  """`generate` of one tiny prompt (seed 0) from `pipeline_dir` into `out`."""
  result = subprocess.run(
      [sys.executable, "-m", "videojam_jax.generate", "--config", "configs/wan21_generate.py",
       f"--workdir={out}", f"--config.pipeline_dir={pipeline_dir}",
       "--config.prompts=('a red ball bounces',)", "--config.num_frames=5",
       "--config.height=16", "--config.width=16", "--config.sample.num_steps=2",
       "--config.dtype=float32", "--config.max_sequence_length=16"],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]


def test_wan_videojam_generates_with_inner_guidance_video_beside_motion(jam_pipeline_dir,
                                                                       pipeline, tmp_path):
  jam = wan_pipeline.WanPipeline(jam_pipeline_dir["trained"], pipeline.plan,
                                 max_sequence_length=16)
  settings = wan_pipeline.settings_from_config(fixture_config(), jam.scheduler, True)
  assert settings.guidance == "inner" and settings.motion_scale == 3.0
  kwargs = dict(num_frames=5, height=16, width=16, seed=3)
  guided, motion = jam.sample_latents(["a red ball bounces"], settings=settings, **kwargs)
  cfg, _ = jam.sample_latents(["a red ball bounces"], **kwargs,
                              settings=dataclasses.replace(settings, guidance="cfg"))
  assert np.abs(guided - cfg).max() > 1e-3          # the motion term changes the result
  out = tmp_path / "out"
  generate_one(jam_pipeline_dir["trained"], out)
  frames = iio.imread(out / "sample_000.mp4", plugin="pyav")
  assert frames.shape == (5, 16, 2 * 16 + 2, 3)      # video | gap | motion
  record = json.loads((out / "samples.json").read_text())
  assert record["wan_videojam"] and record["settings"]["guidance"] == "inner"
  metrics = record["samples"][0]["metrics"]
  assert {"warping_error", "motion_smoothness", "motion_epe"} <= set(metrics)
  assert all(np.isfinite(v) for v in metrics.values())
  # The base pipeline on the same prompt and seed, and the page of both.
  base = tmp_path / "base"
  generate_one(PIPELINE, base)
  html_path = tmp_path / "page" / "index.html"
  result = subprocess.run(
      [sys.executable, "-m", "videojam_jax.compare", f"--out={html_path}",
       f"--samples=base={base}", f"--samples=videojam={out}"],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  html = html_path.read_text()
  assert "<th>base</th><th>videojam</th>" in html and "mean warping_error" in html
  assert "../base/sample_000.mp4" in html and "../out/sample_000.mp4" in html
  other = tmp_path / "other"
  shutil.copytree(base, other)
  record = json.loads((other / "samples.json").read_text())
  record["samples"][0]["seed"] = 7
  (other / "samples.json").write_text(json.dumps(record))
  with pytest.raises(generated_page.ComparisonError, match="different prompts or seeds"):
    generated_page.write_comparison({"base": str(other), "videojam": str(out)},
                                    str(tmp_path / "x.html"))
