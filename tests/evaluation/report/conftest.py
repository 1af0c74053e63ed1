"""Sweep results as `result_store.run_jobs` returns them, with metrics that tests can check."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from configs import sampling
from videojam_jax.evaluation import result_store
from videojam_jax.evaluation import sweep
from videojam_jax.sampling import sampler as sampler_lib

# configs/sampling.py's settings (the one place their defaults live), 2 steps.
BASE = sampler_lib.settings_from_config(sampling.get_config(), num_steps=2, text_scale=5.0,
                                        motion_scale=3.0)
MODELS = {"baseline": False, "videojam": True}
PROMPTS = ("a red ball <rolls>", "waves")
SEEDS = (0, 1)


def results_for(axes: Mapping[str, Sequence[Any]],
                models: Mapping[str, bool] = MODELS) -> list[dict[str, Any]]:
  """One result per job of `axes` x `models`, clips of PROMPTS x SEEDS.

  Result n's clips have warping_error = n + prompt index (mean n + 0.5, std 0.5)
  and motion_smoothness = 1 - seed / 10 (mean 0.95, std 0.05). Only VideoJAM
  models have a motion video; their motion_epe is 2 + n + prompt index, a
  baseline's is NaN (stored as null), as the metrics give it.
  """
  jobs, _ = sweep.plan(models, sweep.expand(BASE, axes))
  results = []
  for n, job in enumerate(jobs):
    jam = models[job.model]
    clips = []
    for i, prompt in enumerate(PROMPTS):
      for seed in SEEDS:
        name = f"clips/p{i:03d}_seed{seed}"
        metrics = {"warping_error": float(n + i), "motion_smoothness": 1.0 - seed / 10}
        metrics["motion_epe"] = 2.0 + n + i if jam else float("nan")
        clips.append({"prompt_index": i, "prompt": prompt, "seed": seed, "video": f"{name}.mp4",
                      "motion": f"{name}_motion.mp4" if jam else None, "metrics": metrics})
    results.append(result_store.json_safe(
        {"key": job.key, "model": job.model, "settings": dataclasses.asdict(job.settings),
         "checkpoint_step": 3, "clips": clips}))
  return results


@pytest.fixture
def make_results() -> Callable[..., list[dict[str, Any]]]:
  """results_for(axes, models=MODELS)."""
  return results_for
