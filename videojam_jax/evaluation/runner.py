"""Offline evaluation: trained models x a sweep of sampler settings -> clips, metrics, page.

`run(config, workdir)` does what `python -m videojam_jax.evaluate` does
(configs/eval_quickstart.py documents the config). The workdir gets:

  eval_config.json          the config used
  runs/<model>/<setting>/   clips/*.mp4 (video and motion), clips.npz (the same clips as
                            uint8 arrays with captions and seeds), settings.json, result.json
  metrics.csv, metrics.json mean, std and bootstrap 95% interval over clips of every
                            metric, per (model, setting)
  plots/metrics_vs_*.png    metrics against each swept numeric setting
  index.html                the clips side by side, with their metrics

Finished settings are kept and skipped on the next run (result_store.ResultStore);
models are loaded only when one of their settings still has to be sampled. The
clips and their metrics come from the same code as the trainer's evaluators
(`evaluators.samples.generate_clips` / `score_clips`), and each model's held-out
loss from `evaluators.heldout_loss` (config.heldout; columns heldout/*). The
tables, plots and page are `evaluation.report`'s.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from typing import Any

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from videojam_jax import files
from videojam_jax.data import pipeline
from videojam_jax.evaluation import evaluators
from videojam_jax.evaluation import report
from videojam_jax.evaluation import object_check
from videojam_jax.evaluation import result_store
from videojam_jax.evaluation import statistics
from videojam_jax.evaluation import sweep as sweep_lib
from videojam_jax.evaluation.evaluators import caption_swap
from videojam_jax.evaluation.evaluators import heldout_loss
from videojam_jax.evaluation.evaluators import samples as samples_eval
from videojam_jax.evaluation.report import page as report_page
from videojam_jax.sampling import sampler as sampler_lib
from videojam_jax.training import runs

RUNS_DIR = "runs"
CLIPS_DIR = "clips"
ARRAYS_FILE = "clips.npz"       # every clip of a (model, setting) as uint8 arrays
SETTINGS_FILE = "settings.json"
EVAL_CONFIG_FILE = "eval_config.json"


@dataclasses.dataclass
class EvalSummary:
  """What `run` did and wrote."""
  results: list[dict[str, Any]]
  generated: list[str]          # job keys sampled by this call
  reused: list[str]             # job keys finished by an earlier call
  skipped: list[sweep_lib.Skipped]
  csv_path: str
  json_path: str
  markdown_path: str
  plots: list[str]
  page: str


def model_infos(config: ml_collections.ConfigDict) -> dict[str, runs.RunInfo]:
  """The named runs (empty paths left out), baselines first, then by name."""
  infos = [runs.run_info(sweep_lib.check_model_name(name), path, config.mesh)
           for name, path in config.models.items() if path]
  if not infos:
    raise ValueError("config.models names no training workdir")
  infos.sort(key=lambda info: (info.jam, info.name))
  return {info.name: info for info in infos}


def load_prompts(config: ml_collections.ConfigDict, info: runs.RunInfo) -> list[str]:
  """config.prompts.captions, or the first num_prompts captions of a dataset split."""
  p = config.prompts
  if p.captions:
    return [str(c) for c in p.captions]
  dataset_dir = p.dataset_dir or info.config.data.dataset_dir
  captions = pipeline.read_captions(dataset_dir, p.split, p.num_prompts)
  if not captions:
    raise ValueError(f"split {p.split!r} of {dataset_dir} has no captions")
  return captions


def sweep_settings(config: ml_collections.ConfigDict) -> list[sampler_lib.SamplerSettings]:
  """config.sweep expanded over config.sample (empty axes keep config.sample's value)."""
  base = sampler_lib.settings_from_config(config.sample)
  axes = {name: tuple(values) for name, values in config.sweep.items()
          if values not in ((), [], None)}
  return sweep_lib.expand(base, axes)


class _Models:
  """Loads each model on first use and keeps only the latest (params can be large)."""

  def __init__(self, infos: dict[str, runs.RunInfo], weights: str):
    self._infos, self._weights = infos, weights
    self._loaded: runs.LoadedModel | None = None

  def get(self, name: str) -> runs.LoadedModel:
    if self._loaded is None or self._loaded.info.name != name:
      self._loaded = None  # free the previous model's arrays before loading the next
      info = self._infos[name]
      logging.info("loading %s (%s weights, step %d) from %s", name, self._weights, info.step,
                   info.workdir)
      self._loaded = runs.load_model(info, self._weights)
    return self._loaded


def skip_notes(skipped: list[sweep_lib.Skipped]) -> list[str]:
  """One sentence per (model, reason): which settings were not sampled and why."""
  grouped: dict[tuple[str, str], list[str]] = {}
  for s in skipped:
    grouped.setdefault((s.model, s.reason), []).append(sweep_lib.setting_name(s.settings))
  return [f"Not sampled for {model} ({', '.join(names)}): {reason}"
          for (model, reason), names in grouped.items()]


def _fps(config: ml_collections.ConfigDict, info: runs.RunInfo) -> float:
  """config.metrics.fps, else the frame rate the run's samples evaluator used."""
  run_samples = info.config.get("evals", {}).get("samples", {})
  return float(config.metrics.fps or run_samples.get("fps", samples_eval.DEFAULT_FPS))


def _eval_context(config: ml_collections.ConfigDict,
                  model: runs.LoadedModel) -> evaluators.EvalContext:
  """The model's experiment for the held-out evaluators, reading config.prompts.dataset_dir
  when one is given (else the run's own data)."""
  exp = model.experiment
  if config.prompts.dataset_dir:
    exp.config.data.dataset_dir = config.prompts.dataset_dir
  return evaluators.EvalContext(exp, None)


def heldout_losses(config: ml_collections.ConfigDict, model: runs.LoadedModel) -> dict[str, float]:
  """The heldout_loss evaluator on a loaded run (config.heldout; num_clips=0: none)."""
  options = ml_collections.ConfigDict(config.heldout.to_dict())
  if int(options.num_clips) <= 0:
    return {}
  evaluator = heldout_loss.Evaluator(options, _eval_context(config, model))
  out = {}
  for name, losses in evaluator.per_clip(model.params).items():   # [clips, times]
    for t, column in zip(evaluator.times, losses.T):
      out[f"heldout/{name}_t{t:g}"] = float(column.mean())
    per_clip = losses.mean(axis=1)
    out[f"heldout/{name}"] = float(per_clip.mean())
    low, high = statistics.bootstrap_ci(per_clip)   # over held-out clips
    out[f"heldout/{name}_ci_low"], out[f"heldout/{name}_ci_high"] = low, high
  return out


def caption_swap_ratios(config: ml_collections.ConfigDict, model: runs.LoadedModel
                        ) -> dict[str, float]:
  """The caption_swap evaluator on a loaded run (config.caption_swap; num_clips=0 or no
  such block: none): swapped / true held-out loss per kind of caption word."""
  block = config.get("caption_swap")
  if block is None or int(block.num_clips) <= 0:
    return {}
  evaluator = caption_swap.Evaluator(ml_collections.ConfigDict(block.to_dict()),
                                     _eval_context(config, model))
  return {f"caption_swap/{name}": value for name, value in evaluator.run(model.params, 0)}


def write_arrays(path: epath.Path, clips: list[samples_eval.Clip]) -> None:
  """Every clip of a setting in one .npz, to re-score without sampling again: videos (and
  motions, VideoJAM models) uint8 [N, T, H, W, 3], captions [N], seeds [N], prompt_index [N]."""
  arrays = {"videos": np.stack([c.video for c in clips]),
            "captions": np.array([c.prompt for c in clips]),
            "seeds": np.array([c.seed for c in clips], np.int64),
            "prompt_index": np.array([c.prompt_index for c in clips], np.int64)}
  if clips[0].motion is not None:
    arrays["motions"] = np.stack([c.motion for c in clips])
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  files.atomic_write(path, buffer.getvalue())


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> EvalSummary:
  """Samples every model x sweep setting not finished yet, then writes tables, plots, page."""
  if jax.process_count() > 1:
    raise NotImplementedError("offline evaluation runs in one process (clips are gathered "
                              "and written by this host)")
  if config.report.video_format not in report_page.VIDEO_FORMATS:
    raise ValueError(f"config.report.video_format={config.report.video_format!r}: must be one "
                     f"of {report_page.VIDEO_FORMATS}")
  workdir = epath.Path(workdir)
  if not files.is_local(workdir):
    raise ValueError(f"evaluate --workdir={workdir}: must be a local folder (the MP4 writer "
                     "needs local files); copy the results to the bucket afterwards")
  workdir = workdir.resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  files.atomic_write(workdir / EVAL_CONFIG_FILE, config.to_json_best_effort(indent=2))

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
    settings = dataclasses.asdict(job.settings)
    if settings["schedule"] == "uniform":   # as before the field existed: old results stay valid
      del settings["schedule"]
    return {"workdir": info.workdir, "step": info.step, "weights": config.weights,
            "settings": settings, "prompts": prompts, "seeds": seeds,
            "batch_size": config.batch_size, "dis_preset": config.metrics.dis_preset,
            "fps": _fps(config, info), "min_side": config.report.min_side,
            "heldout": config.heldout.to_dict(),
            # Only when on, so that results made before the option existed stay valid.
            **({"object_check": True} if config.metrics.object_check else {}),
            **({"caption_swap": config.caption_swap.to_dict()}
               if int(config.get("caption_swap", {}).get("num_clips", 0)) > 0 else {}),
            **({"video_format": config.report.video_format}
               if config.report.video_format != "mp4" else {})}

  models = _Models(infos, config.weights)
  samplers: dict[tuple[str, sampler_lib.SamplerSettings], sampler_lib.Sampler] = {}
  model_metrics: dict[str, dict[str, float]] = {}

  def sampler_for(job: sweep_lib.Job, model: runs.LoadedModel) -> sampler_lib.Sampler:
    """One compiled sampler per model and settings other than w1, w2 (its inputs)."""
    unscaled = dataclasses.replace(job.settings, text_scale=0.0, motion_scale=0.0)
    key = (job.model, unscaled)
    if key not in samplers:
      logging.info("new sampler for %s at %s (reused for other w1, w2)", job.model,
                   sweep_lib.setting_name(job.settings))
      samplers[key] = sampler_lib.Sampler(model.experiment.model, unscaled)
    return samplers[key]

  def generate(job: sweep_lib.Job, stage: epath.Path) -> dict[str, Any]:
    model = models.get(job.model)
    info, exp = model.info, model.experiment
    sigma, fps = float(info.config.data.flow_sigma), _fps(config, info)
    if job.model not in model_metrics:
      model_metrics[job.model] = {**heldout_losses(config, model),
                                  **caption_swap_ratios(config, model)}
    start = time.time()
    batch = samples_eval.clip_batch_size(config.batch_size, len(prompts), exp.plan.batch_ways)
    clips = samples_eval.generate_clips(
        sampler_for(job, model), model.params, exp.captions, prompts, seeds, batch,
        text_scale=job.settings.text_scale, motion_scale=job.settings.motion_scale)
    sampled = time.time()
    scores = samples_eval.score_clips(clips, sigma=sigma, fps=fps, preset=config.metrics.dis_preset)
    if config.metrics.object_check:
      for clip, metrics in zip(clips, scores):
        metrics.update(object_check.clip_scores(clip.video, clip.prompt))
    write_arrays(stage / ARRAYS_FILE, clips)
    files.atomic_write(stage / SETTINGS_FILE, json.dumps(
        {"model": job.model, "workdir": info.workdir, "checkpoint_step": info.step,
         "weights": config.weights, "settings": dataclasses.asdict(job.settings),
         "num_prompts": len(prompts), "seeds": list(seeds),
         # What rewrite_clips needs to draw the clips again from clips.npz.
         "fps": fps, "flow_sigma": sigma}, indent=1))
    records = []
    for clip, metrics in zip(clips, scores):
      name = f"p{clip.prompt_index:03d}_seed{clip.seed}"
      cell = report_page.write_cell(os.path.join(stage, CLIPS_DIR), name, clip.video, clip.motion,
                                    fps=fps, sigma=sigma, metrics=metrics,
                                    min_side=config.report.min_side,
                                    video_format=config.report.video_format)
      records.append({"prompt_index": clip.prompt_index, "prompt": clip.prompt, "seed": clip.seed,
                      "video": os.path.relpath(cell.video, stage),
                      "motion": None if cell.motion is None else os.path.relpath(cell.motion, stage),
                      "metrics": metrics})
    return {"workdir": info.workdir, "checkpoint_step": info.step, "jam": info.jam,
            "weights": config.weights, "clips": records, "model_metrics": model_metrics[job.model],
            "seconds": {"sampling_with_compile": sampled - start,
                        "metrics_and_videos": time.time() - sampled}}

  store = result_store.ResultStore(workdir / RUNS_DIR)
  fingerprints = {job: sweep_lib.fingerprint(inputs(job)) for job in jobs}
  done = result_store.run_jobs(jobs, store, fingerprints, generate, progress=progress)

  notes = [f"{len(prompts)} prompt(s) x {len(seeds)} seed(s); the same prompt and seed start "
           "from the same video noise in every column."] + skip_notes(skipped)
  written = report.write_report(done.results, store.root, workdir, title=config.report.title,
                                notes=notes)
  logging.info("wrote %s, %s, %s, %d plot(s) and %s", written.csv_path, written.json_path,
               written.markdown_path, len(written.plots), written.page)
  return EvalSummary(done.results, done.generated, done.reused, skipped, written.csv_path,
                     written.json_path, written.markdown_path, written.plots, written.page)
