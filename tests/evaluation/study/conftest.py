"""A small `evaluate` workdir written by the evaluator's own writers: two arms, real clips.

Arm `baseline/cfg_...` holds rendered synthetic scenes; arm `videojam/inner_...` the same
scenes with their frames perturbed (so the two differ), with motion panels. The layout
(runs/<model>/<setting>/result.json, clips/*.mp4) is what evaluation/runner.py writes.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data_pipelines import synthetic_physics
from videojam_jax.evaluation import result_store
from videojam_jax.evaluation.report import page as report_page

ARM_A = "baseline/cfg_w1-5_w2-0_n25_euler_shift1_until1"
ARM_B = "videojam/inner_w1-5_w2-3_n25_euler_shift1_until1"
NUM_PROMPTS, SEEDS = 6, (0,)


ARM_C = "videojam/cfg_w1-5_w2-0_n25_euler_shift1_until1"


def write_eval_dir(root: str, num_prompts: int = NUM_PROMPTS, seeds=SEEDS,
                   arms=((ARM_A, False), (ARM_B, True))) -> str:
  """Writes the arms' (key, has motion) results under root/runs; returns root."""
  for key, jam in arms:
    folder = os.path.join(root, "runs", *key.split("/"))
    os.makedirs(folder, exist_ok=True)
    records = []
    for p in range(num_prompts):
      clip = synthetic_physics.render_clip(p, 8, 16, 16, max_objects=1)
      for seed in seeds:
        video = clip.video
        if jam:   # a different clip for the other arm, of the same prompt
          noise = np.random.default_rng(100 + p + seed).integers(-40, 40, video.shape)
          video = np.clip(video.astype(int) + noise, 0, 255).astype(np.uint8)
        name = f"p{p:03d}_seed{seed}"
        cell = report_page.write_cell(os.path.join(folder, "clips"), name, video,
                                      clip.video if jam else None, fps=8.0, min_side=32)
        records.append({"prompt_index": p, "prompt": clip.caption, "seed": seed,
                        "video": os.path.relpath(cell.video, folder),
                        "motion": cell.motion and os.path.relpath(cell.motion, folder),
                        "metrics": {}})
    result = {"key": key, "model": key.split("/")[0], "fingerprint": "f" + key[:3],
              "clips": records}
    with open(os.path.join(folder, result_store.RESULT_FILE), "w", encoding="utf-8") as f:
      json.dump(result, f)
  return root


@pytest.fixture(scope="session")
def eval_dir(tmp_path_factory) -> str:
  return write_eval_dir(str(tmp_path_factory.mktemp("eval")))
