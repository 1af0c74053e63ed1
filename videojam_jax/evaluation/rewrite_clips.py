"""Draws an evaluation's clip files again from its clips.npz arrays, and rebuilds its page.

An evaluation on a machine without imageio-ffmpeg writes GIFs
(config.report.video_format='gif'), and only the arrays may travel back
(benchmarks/protocol_gpu.sh packs no GIFs). `rewrite(eval_dir, 'mp4')` writes
every clip of every finished result under <eval_dir>/runs/ in the new format,
points the result at the new files and rebuilds metrics.*, the plots and
index.html with the same `report.write_report` the evaluation uses. Metrics are
kept as they are: they were computed from the same arrays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from absl import logging
from etils import epath
import numpy as np
import tqdm

from videojam_jax import files
from videojam_jax.evaluation import report
from videojam_jax.evaluation import result_store
from videojam_jax.evaluation import runner
from videojam_jax.evaluation.report import page as report_page

ARRAYS_FILE, CLIPS_DIR, SETTINGS_FILE = runner.ARRAYS_FILE, runner.CLIPS_DIR, runner.SETTINGS_FILE
EVAL_CONFIG_FILE = runner.EVAL_CONFIG_FILE


class RewriteError(ValueError):
  """The eval folder lacks what the clips are drawn from."""


def _float(value: Any) -> float | None:
  return None if value in (None, "", 0, 0.0) else float(value)


def _drawing(settings: Mapping[str, Any], fps: float | None,
             flow_sigma: float | None, where: str) -> tuple[float, float]:
  """(fps, flow sigma) of a result: settings.json's (written since stop 25), else the given."""
  fps = _float(settings.get("fps")) or fps
  sigma = _float(settings.get("flow_sigma")) or flow_sigma
  if fps is None or sigma is None:
    raise RewriteError(f"{where}: settings.json records no fps / flow_sigma (an evaluation "
                       "from before they were recorded); pass --fps and --flow_sigma (the "
                       "training run's evals.samples.fps and data.flow_sigma)")
  return fps, sigma


def _order(result: Mapping[str, Any], models: list[str]) -> tuple:
  """The runner's column order: models as configured, CFG first, then w2 ascending."""
  settings = result.get("settings", {})
  model = result["model"]
  return (models.index(model) if model in models else len(models),
          settings.get("guidance") != "cfg", float(settings.get("motion_scale", 0.0)),
          float(settings.get("text_scale", 0.0)), result["key"])


def rewrite(eval_dir: epath.PathLike, video_format: str = "mp4", *, min_side: int | None = None,
            fps: float | None = None, flow_sigma: float | None = None,
            progress: bool = True) -> str:
  """Rewrites every result's clips in `video_format`; returns the rebuilt page's path."""
  if video_format not in report_page.VIDEO_FORMATS:
    raise RewriteError(f"video_format={video_format!r}: must be one of "
                       f"{report_page.VIDEO_FORMATS}")
  eval_dir = epath.Path(eval_dir).resolve()
  config_path = eval_dir / EVAL_CONFIG_FILE
  if not config_path.exists():
    raise RewriteError(f"{eval_dir} is not an evaluation folder: it has no {EVAL_CONFIG_FILE}")
  config = json.loads(config_path.read_text())
  min_side = int(min_side or config["report"]["min_side"])
  store = result_store.ResultStore(eval_dir / runner.RUNS_DIR)
  result_paths = sorted(store.root.glob(f"*/*/{result_store.RESULT_FILE}"))
  if not result_paths:
    raise RewriteError(f"{store.root} holds no finished results")
  models = list(config.get("models", {}))
  results = []
  for result_path in tqdm.tqdm(result_paths, desc="rewrite", unit="setting", disable=not progress):
    folder = result_path.parent
    result = json.loads(result_path.read_text())
    where = os.fspath(folder)
    if not (folder / ARRAYS_FILE).exists():
      raise RewriteError(f"{where}: no {ARRAYS_FILE} to draw the clips from")
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    clip_fps, sigma = _drawing(settings, fps, flow_sigma, where)
    with np.load(folder / ARRAYS_FILE) as arrays:
      arrays = {k: arrays[k] for k in arrays.files}
    index = {(int(p), int(s)): i for i, (p, s) in
             enumerate(zip(arrays["prompt_index"], arrays["seeds"]))}
    for clip in result["clips"]:
      key = (int(clip["prompt_index"]), int(clip["seed"]))
      if key not in index:
        raise RewriteError(f"{where}: clip {key} of result.json is not in {ARRAYS_FILE}")
      i = index[key]
      old = [clip["video"]] + ([clip["motion"]] if clip.get("motion") else [])
      name = f"p{key[0]:03d}_seed{key[1]}"
      motion = arrays["motions"][i] if "motions" in arrays and clip.get("motion") else None
      cell = report_page.write_cell(os.path.join(folder, CLIPS_DIR), name, arrays["videos"][i],
                                    motion, fps=clip_fps, sigma=sigma, min_side=min_side,
                                    video_format=video_format)
      clip["video"] = os.path.relpath(cell.video, folder)
      clip["motion"] = None if cell.motion is None else os.path.relpath(cell.motion, folder)
      for path in old:       # the other format's files, if any are here
        if path not in (clip["video"], clip["motion"]):
          (folder / path).unlink(missing_ok=True)
    files.atomic_write(result_path, json.dumps(result, indent=1))
    results.append(result)
  results.sort(key=lambda r: _order(r, models))
  num_clips = len(results[0]["clips"])
  written = report.write_report(
      results, store.root, eval_dir, title=config["report"]["title"],
      notes=[f"{num_clips} clip(s) per setting; the same prompt and seed start from the same "
             f"video noise in every column. Clips drawn again as {video_format} from "
             f"{ARRAYS_FILE}."])
  logging.info("rewrote %d setting(s) as %s; page %s", len(results), video_format, written.page)
  return written.page
