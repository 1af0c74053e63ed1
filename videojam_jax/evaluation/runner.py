"""Offline evaluation: trained models x a sweep of sampler settings -> clips, metrics, page.

`run(config, workdir)` does what `python -m videojam_jax.evaluate` does
(configs/eval_quickstart.py documents the config). The workdir gets:

  eval_config.json          the config used
  runs/<model>/<setting>/   clips/*.mp4 (video and motion) and result.json per setting
  metrics.csv, metrics.json mean and std over clips of every metric, per (model, setting)
  plots/metrics_vs_*.png    metrics against each swept numeric setting
  index.html                the clips side by side, with their metrics

Finished settings are kept and skipped on the next run (sweep.ResultStore);
models are loaded only when one of their settings still has to be sampled.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from videojam_jax.evaluation import report as eval_report
from videojam_jax.data import pipeline as input_pipeline
from videojam_jax.training import runs as model_loading
from videojam_jax.evaluation import motion_metrics
from videojam_jax.evaluation import page as report_html
from videojam_jax.sampling import sampler as sampler_lib
from videojam_jax.sampling import samples
from videojam_jax.parallel import sharding
from videojam_jax.evaluation import sweep as sweep_lib

RUNS_DIR = "runs"
CLIPS_DIR = "clips"


@dataclasses.dataclass
class EvalSummary:
  """What `run` did and wrote."""
  results: list[dict[str, Any]]
  generated: list[str]          # job keys sampled by this call
  reused: list[str]             # job keys finished by an earlier call
  skipped: list[sweep_lib.Skipped]
  csv_path: str
  json_path: str
  plots: list[str]
  page: str


def model_infos(config: ml_collections.ConfigDict) -> dict[str, model_loading.RunInfo]:
  """The named runs (empty paths left out), baselines first, then by name."""
  infos = [model_loading.run_info(sweep_lib.check_model_name(name), path, config.mesh)
           for name, path in config.models.items() if path]
  if not infos:
    raise ValueError("config.models names no training workdir")
  infos.sort(key=lambda info: (info.jam, info.name))
  return {info.name: info for info in infos}


def load_prompts(config: ml_collections.ConfigDict, info: model_loading.RunInfo) -> list[str]:
  """config.prompts.captions, or the first num_prompts captions of a dataset split."""
  p = config.prompts
  if p.captions:
    return [str(c) for c in p.captions]
  run_config = model_loading.with_mesh_config(info.config, None)
  if p.dataset_dir:
    run_config.data.dataset_dir = p.dataset_dir
  source, _ = input_pipeline.open_clip_source(run_config, p.split)
  captions = []
  for i in range(min(p.num_prompts, len(source))):
    caption = source[i]["caption"]
    captions.append(caption.decode("utf-8") if isinstance(caption, bytes) else str(caption))
  if not captions:
    raise ValueError(f"split {p.split!r} of {run_config.data.dataset_dir} has no captions")
  return captions


def sweep_settings(config: ml_collections.ConfigDict) -> list[sampler_lib.SamplerSettings]:
  """config.sweep expanded over config.sample (empty axes keep config.sample's value)."""
  base = sampler_lib.settings_from_config(config.sample)
  axes = {name: tuple(values) for name, values in config.sweep.items()
          if values not in ((), [], None)}
  return sweep_lib.expand(base, axes)


def clip_batch_size(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, num_prompts: int) -> int:
  """Clips per sampler call: config.batch_size, but no more than the (padded) prompts."""
  ways = sharding.batch_axis_size(mesh, sharding.get_rules(config.mesh.rules))
  if config.batch_size < 1 or config.batch_size % ways:
    raise sharding.MeshConfigError(f"batch_size={config.batch_size} must be a positive "
                                   f"multiple of the {ways} batch shards of mesh {dict(mesh.shape)}")
  return min(config.batch_size, -(-num_prompts // ways) * ways)


def sample_clips(sample_fn, params: Any, run_config: ml_collections.ConfigDict, prompts: list[str],
                 seeds: tuple[int, ...], batch_size: int) -> list[tuple[int, int, np.ndarray, np.ndarray | None]]:
  """(prompt index, seed, video uint8 [T,H,W,3], motion uint8 or None) for every prompt x seed.

  Prompts go in fixed-size batches (the last one padded by repeating its last
  prompt) so each sampler compiles once; batch c of seed s draws its noise from
  fold_in(key(s), c), so a (prompt, seed) gets the same noise for every setting
  and every model of the same clip shape: columns compare like with like.
  """
  ids, mask = samples.prompt_batch(run_config, prompts)
  clips = []
  for seed in seeds:
    for chunk, start in enumerate(range(0, len(prompts), batch_size)):
      index = list(range(start, min(start + batch_size, len(prompts))))
      padded = index + [index[-1]] * (batch_size - len(index))
      rng = jax.random.fold_in(jax.random.key(seed), chunk)
      video, motion = sample_fn(params, ids[padded], mask[padded], rng)
      video = np.asarray(jax.device_get(video))
      motion = None if motion is None else np.asarray(jax.device_get(motion))
      for row, i in enumerate(index):
        clips.append((i, int(seed), samples.to_uint8(video[row]),
                      None if motion is None else samples.to_uint8(motion[row])))
  return clips


class _Models:
  """Loads each model on first use and keeps only the latest (params can be large)."""

  def __init__(self, infos: dict[str, model_loading.RunInfo], weights: str):
    self._infos, self._weights = infos, weights
    self._loaded: model_loading.LoadedModel | None = None

  def get(self, name: str) -> model_loading.LoadedModel:
    if self._loaded is None or self._loaded.info.name != name:
      self._loaded = None  # free the previous model's arrays before loading the next
      info = self._infos[name]
      logging.info("loading %s (%s weights, step %d) from %s", name, self._weights, info.step,
                   info.workdir)
      self._loaded = model_loading.load_model(info, self._weights)
    return self._loaded


def skip_notes(skipped: list[sweep_lib.Skipped]) -> list[str]:
  """One sentence per (model, reason): which settings were not sampled and why."""
  grouped: dict[tuple[str, str], list[str]] = {}
  for s in skipped:
    grouped.setdefault((s.model, s.reason), []).append(sweep_lib.setting_name(s.settings))
  return [f"Not sampled for {model} ({', '.join(names)}): {reason}"
          for (model, reason), names in grouped.items()]


def _fps(config: ml_collections.ConfigDict, info: model_loading.RunInfo) -> float:
  return float(config.metrics.fps or info.config.sample.fps)


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> EvalSummary:
  """Samples every model x sweep setting not finished yet, then writes tables, plots, page."""
  if jax.process_count() > 1:
    raise NotImplementedError("offline evaluation runs in one process (clips are gathered "
                              "and written by this host)")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "eval_config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2))

  infos = model_infos(config)
  prompts = load_prompts(config, next(iter(infos.values())))
  seeds = tuple(int(s) for s in config.seeds)
  settings = sweep_settings(config)
  jobs, skipped = sweep_lib.plan({name: info.jam for name, info in infos.items()}, settings)
  logging.info("%d prompt(s) x %d seed(s); %d setting(s) x %d model(s): %d to sample, %d skipped",
               len(prompts), len(seeds), len(settings), len(infos), len(jobs), len(skipped))

  def inputs(job: sweep_lib.Job) -> dict[str, Any]:
    """Everything a job's clips and metrics depend on (its fingerprint)."""
    info = infos[job.model]
    return {"workdir": info.workdir, "step": info.step, "weights": config.weights,
            "settings": dataclasses.asdict(job.settings), "prompts": prompts, "seeds": seeds,
            "batch_size": config.batch_size, "dis_preset": config.metrics.dis_preset,
            "fps": _fps(config, info), "min_side": config.report.min_side}

  models = _Models(infos, config.weights)
  samplers: dict[tuple[str, sampler_lib.SamplerSettings], sampler_lib.SampleFn] = {}

  def sampler_for(job: sweep_lib.Job, model: model_loading.LoadedModel) -> sampler_lib.SampleFn:
    """One compiled sampler per model and settings other than w1, w2 (its inputs)."""
    unscaled = dataclasses.replace(job.settings, text_scale=0.0, motion_scale=0.0)
    key = (job.model, unscaled)
    if key not in samplers:
      logging.info("new sampler for %s at %s (reused for other w1, w2)", job.model,
                   sweep_lib.setting_name(job.settings))
      samplers[key] = sampler_lib.make_sampler(model.info.config, model.mesh, unscaled)
    return functools.partial(samplers[key], text_scale=job.settings.text_scale,
                             motion_scale=job.settings.motion_scale)

  def generate(job: sweep_lib.Job, stage: str) -> dict[str, Any]:
    model = models.get(job.model)
    info = model.info
    sigma, fps = float(info.config.data.flow_sigma), _fps(config, info)
    start = time.time()
    sample_fn = sampler_for(job, model)
    batch = clip_batch_size(config, model.mesh, len(prompts))
    clips = sample_clips(sample_fn, model.params, info.config, prompts, seeds, batch)
    sampled = time.time()
    records = []
    for i, seed, video, motion in clips:
      metrics = motion_metrics.compute_all(video, motion, sigma=sigma, fps=fps,
                                           preset=config.metrics.dis_preset)
      name = f"p{i:03d}_seed{seed}"
      cell = report_html.write_cell(os.path.join(stage, CLIPS_DIR), name, video, motion, fps=fps,
                                    sigma=sigma, metrics=metrics, min_side=config.report.min_side)
      records.append({"prompt_index": i, "prompt": prompts[i], "seed": seed,
                      "video": os.path.relpath(cell.video, stage),
                      "motion": None if cell.motion is None else os.path.relpath(cell.motion, stage),
                      "metrics": metrics})
    return {"workdir": info.workdir, "checkpoint_step": info.step, "jam": info.jam,
            "weights": config.weights, "clips": records,
            "seconds": {"sampling_with_compile": sampled - start,
                        "metrics_and_videos": time.time() - sampled}}

  store = sweep_lib.ResultStore(os.path.join(workdir, RUNS_DIR))
  fingerprints = {job: sweep_lib.fingerprint(inputs(job)) for job in jobs}
  done = sweep_lib.run_jobs(jobs, store, fingerprints, generate, progress=progress)

  rows = eval_report.summary_rows(done.results)
  csv_path, json_path = os.path.join(workdir, "metrics.csv"), os.path.join(workdir, "metrics.json")
  eval_report.write_tables(rows, csv_path, json_path)
  plots = eval_report.write_plots(done.results, os.path.join(workdir, "plots"))
  notes = [f"{len(prompts)} prompt(s) x {len(seeds)} seed(s); the same prompt and seed start "
           "from the same video noise in every column."] + skip_notes(skipped)
  page = eval_report.write_page(done.results, store.root, os.path.join(workdir, "index.html"),
                                title=config.report.title, plots=plots, notes=notes)
  logging.info("wrote %s, %s, %d plot(s) and %s", csv_path, json_path, len(plots), page)
  return EvalSummary(done.results, done.generated, done.reused, skipped, csv_path, json_path,
                     plots, page)
