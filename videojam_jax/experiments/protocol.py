"""The paper's protocol at small scale: pretrain a base, fine-tune base vs VideoJAM, compare.

`run(config, workdir)` does what `python -m videojam_jax.protocol` does
(configs/protocol_quickstart.py documents the config):

1. pretrain: the pixel-only base (config.train with model.jam=False) at a constant
   learning rate, in chunks of config.pretrain.chunk_steps, until the held-out video
   loss improves by less than config.pretrain.flat_tolerance (relative) over a chunk,
   or config.pretrain.max_steps;
2. arms: every config.arms entry starts from the pretrained EMA weights and trains
   config.finetune.num_steps more steps with the same batch, data order and
   schedule; an arm with model.jam=True is retrofitted (retrofit.base_to_jam);
3. evaluation: every arm sampled on the same prompts and seeds
   (`evaluation.runner.run` with config.evaluation): baselines with CFG, VideoJAM
   arms with CFG and Inner-Guidance at each config.evaluation.sweep.motion_scale;
4. the table: every metric with its bootstrap 95% interval over clips, the held-out
   loss with its interval over held-out clips, each arm's compute, and each metric's
   paired difference to config.report.reference (same prompts, same noise).

The workdir holds pretrain/, arms/<name>/ (training workdirs), eval/ (clips,
clips.npz per arm and setting, metrics.*, plots, index.html), stages.json (what
each stage did and cost), protocol.csv and protocol.md. Rerunning skips finished
stages: training resumes or finds nothing to do, finished settings are reused.
"""

from __future__ import annotations

import ast
import copy
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from videojam_jax import files
from videojam_jax.evaluation import runner
from videojam_jax.evaluation import statistics
from videojam_jax.evaluation.report import fields
from videojam_jax.evaluation.report import tables
from videojam_jax.model import flops
from videojam_jax.training import loop
from videojam_jax.training import runs

PRETRAIN_DIR = "pretrain"
ARMS_DIR = "arms"
EVAL_DIR = "eval"
STAGES_FILE = "stages.json"
CSV_FILE = "protocol.csv"
MARKDOWN_FILE = "protocol.md"
PLOT_FILE = "protocol.png"


class ProtocolConfigError(ValueError):
  """The protocol config cannot work."""


def parse_overrides(text: str) -> dict[str, Any]:
  """'model.jam=True, loss.motion_weight=0.5' -> {'model.jam': True, ...}.

  Values are Python literals; commas inside brackets belong to the value.
  """
  out: dict[str, Any] = {}
  parts, depth, current = [], 0, ""
  for char in text:
    depth += char in "([{"
    depth -= char in ")]}"
    if char == "," and depth == 0:
      parts.append(current)
      current = ""
    else:
      current += char
  parts.append(current)
  for part in (p.strip() for p in parts):
    if not part:
      continue
    key, sep, value = part.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w.]*", key.strip()):
      raise ProtocolConfigError(f"override {part!r}: write field.path=value")
    try:
      out[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError) as e:
      raise ProtocolConfigError(f"override {part!r}: {value.strip()!r} is not a Python "
                                "literal (strings need quotes)") from e
  return out


def _with_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
                    what: str) -> ml_collections.ConfigDict:
  out = copy.deepcopy(config)
  for key, value in overrides.items():
    *parents, field = key.split(".")
    node = out
    for name in parents:
      node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    # update_from_flattened_dict would add a misspelt field silently: refuse it here.
    if not isinstance(node, ml_collections.ConfigDict) or field not in node:
      raise ProtocolConfigError(f"{what}: {key}={value!r} names no field of config.train")
    try:
      setattr(node, field, value)   # ConfigDict keeps each field's type
    except (TypeError, ValueError) as e:
      raise ProtocolConfigError(f"{what}: {key}={value!r}: {e}") from e
  return out


def pretrain_config(config: ml_collections.ConfigDict, num_steps: int) -> ml_collections.ConfigDict:
  """config.train as the pixel-only base, trained to num_steps at config.pretrain's rate."""
  p = config.pretrain
  return _with_overrides(config.train, {
      "model.jam": False, "train.num_steps": int(num_steps), "train.init_from": "",
      "optim.learning_rate": float(p.learning_rate), "optim.schedule": "constant",
      "optim.warmup_steps": int(p.warmup_steps)}, "pretrain")


def arm_configs(config: ml_collections.ConfigDict, pretrain_dir: str
                ) -> dict[str, ml_collections.ConfigDict]:
  """Each arm's fine-tuning config: config.train + config.finetune + the arm's overrides."""
  if not config.arms:
    raise ProtocolConfigError("config.arms names no arm")
  f = config.finetune
  common = {"train.num_steps": int(f.num_steps), "train.init_from": pretrain_dir,
            "train.init_from_weights": "ema", "optim.learning_rate": float(f.learning_rate),
            "optim.schedule": str(f.schedule), "optim.warmup_steps": int(f.warmup_steps)}
  out = {}
  for name, text in config.arms.items():
    overrides = parse_overrides(str(text))
    fixed = {k for k in overrides if k in common}
    if fixed:
      raise ProtocolConfigError(f"arm {name!r} sets {sorted(fixed)}: every arm trains the same "
                                "steps from the same weights (set config.finetune instead)")
    out[name] = _with_overrides(config.train, {**common, **overrides}, f"arm {name!r}")
  if config.report.reference not in out:
    raise ProtocolConfigError(f"report.reference={config.report.reference!r} is not an arm "
                              f"({sorted(out)})")
  return out


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ProtocolConfigError for a protocol that cannot run as asked."""
  p = config.pretrain
  if p.chunk_steps < 1 or p.max_steps < p.chunk_steps:
    raise ProtocolConfigError(f"pretrain.chunk_steps={p.chunk_steps} must be >= 1 and <= "
                              f"pretrain.max_steps={p.max_steps}")
  if not p.flat_tolerance >= 0:
    raise ProtocolConfigError(f"pretrain.flat_tolerance={p.flat_tolerance} must be >= 0")
  if config.finetune.num_steps < 1:
    raise ProtocolConfigError("finetune.num_steps must be >= 1")
  if config.evaluation.models:
    raise ProtocolConfigError("evaluation.models must be empty: the protocol evaluates its arms")
  arm_configs(config, "<pretrain>")


class _Stages:
  """stages.json: what each stage did, kept across reruns."""

  def __init__(self, path: epath.Path):
    self.path = path
    self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

  def save(self) -> None:
    files.atomic_write(self.path, json.dumps(self.data, indent=1))


def _train(train_config: ml_collections.ConfigDict, workdir: epath.Path) -> float:
  """Trains (or resumes) one run; returns the seconds it took."""
  start = time.time()
  loop.train_and_evaluate(train_config, str(workdir))
  return time.time() - start


def _heldout(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict[str, float]:
  info = runs.run_info("pretrain", str(workdir), config.evaluation.mesh)
  model = runs.load_model(info, "ema")
  return runner.heldout_losses(config.evaluation, model)


def _relative_gain(previous: float, current: float) -> float:
  return (previous - current) / abs(previous) if previous else 0.0


def pretrain(config: ml_collections.ConfigDict, workdir: epath.Path, stages: _Stages) -> str:
  """Stage 1: the base until its held-out video loss is flat; returns its workdir."""
  p = config.pretrain
  out = epath.Path(p.from_workdir).resolve() if p.from_workdir else workdir / PRETRAIN_DIR
  if p.from_workdir:   # another protocol's base, used as it is (never trained further here)
    if not _trained_steps(out):
      raise ProtocolConfigError(f"pretrain.from_workdir={p.from_workdir}: no finished checkpoint")
    theirs = out.parent / STAGES_FILE
    record = json.loads(theirs.read_text()).get("pretrain", {}) if theirs.exists() else {}
    stages.data["pretrain"] = {"train_seconds": 0.0, "history": [], "flat": None, **record,
                               "from_workdir": str(out), "steps": _trained_steps(out)}
    stages.save()
    return str(out)
  record = stages.data.setdefault("pretrain", {"history": [], "train_seconds": 0.0,
                                               "flat": False})
  history = record["history"]
  chunk, max_steps = int(p.chunk_steps), int(p.max_steps)
  while True:
    done = _trained_steps(out)
    measured = history[-1]["step"] if history else 0
    if history and measured == done and (record["flat"] or done >= max_steps):
      logging.info("protocol: the base is pretrained (step %d, %s)", done,
                   "held-out loss flat" if record["flat"] else "pretrain.max_steps")
      break
    # Chunks end at multiples of chunk_steps; a chunk trained but not measured yet (a run
    # interrupted in between) is measured before the next one starts.
    at_boundary = done % chunk == 0 or done == max_steps
    target = done if done > measured and at_boundary else min(max_steps, (done // chunk + 1) * chunk)
    if target > done:
      logging.info("protocol: pretraining the base to step %d", target)
      record["train_seconds"] += _train(pretrain_config(config, target), out)
    losses = _heldout(config, out)
    history.append({"step": target, "video_loss": losses["heldout/video_loss"],
                    "ci": [losses["heldout/video_loss_ci_low"],
                           losses["heldout/video_loss_ci_high"]]})
    gain = _relative_gain(history[-2]["video_loss"], history[-1]["video_loss"]) \
        if len(history) > 1 else math.inf
    logging.info("protocol: base at step %d, held-out video loss %.4f (%s over the chunk)",
                 target, history[-1]["video_loss"],
                 f"{-100 * gain:+.1f}%" if math.isfinite(gain) else "first measurement")
    record["flat"], record["steps"] = bool(gain < float(p.flat_tolerance)), target
    stages.save()
  if not record["flat"]:
    logging.warning("protocol: the base's held-out loss still fell by more than %.1f%% over "
                    "the last chunk at pretrain.max_steps=%d; the comparison starts from a "
                    "base that is not converged", 100 * float(p.flat_tolerance), max_steps)
  return str(out.resolve())


def _trained_steps(workdir: epath.Path) -> int:
  """The newest finished checkpoint's step in a training workdir (0: none yet)."""
  try:
    return runs.latest_step(workdir)
  except runs.RunNotFoundError:
    return 0


def _compute(train_config: ml_collections.ConfigDict, steps: int) -> dict[str, float]:
  per_step = flops.model_flops(train_config)["flops_per_step"]
  return {"steps": int(steps), "clips_seen": int(steps) * int(train_config.train.batch_size),
          "train_pflop": per_step * steps / 1e15}


def finetune(config: ml_collections.ConfigDict, workdir: epath.Path, pretrain_dir: str,
             stages: _Stages) -> dict[str, str]:
  """Stage 2: every arm from the pretrained weights; returns arm name -> workdir."""
  dirs = {}
  for name, arm_config in arm_configs(config, pretrain_dir).items():
    out = workdir / ARMS_DIR / name
    record = stages.data.setdefault("arms", {}).setdefault(name, {"train_seconds": 0.0})
    if _trained_steps(out) < arm_config.train.num_steps:
      logging.info("protocol: fine-tuning arm %s (model.jam=%s) for %d steps", name,
                   arm_config.model.jam, arm_config.train.num_steps)
      record["train_seconds"] += _train(arm_config, out)
    else:
      logging.info("protocol: arm %s is already fine-tuned (%d steps)", name,
                   arm_config.train.num_steps)
    record.update(jam=bool(arm_config.model.jam), overrides=str(config.arms[name]),
                  **_compute(arm_config, arm_config.train.num_steps))
    stages.save()
    dirs[name] = str(out.resolve())
  return dirs


def evaluate(config: ml_collections.ConfigDict, workdir: epath.Path,
             arm_dirs: Mapping[str, str], stages: _Stages) -> runner.EvalSummary:
  """Stage 3: every arm on the same prompts and seeds (finished settings are reused)."""
  eval_config = ml_collections.ConfigDict(config.evaluation.to_dict())   # unlocked copy
  eval_config.models = ml_collections.ConfigDict(dict(arm_dirs))
  start = time.time()
  summary = runner.run(eval_config, str(workdir / EVAL_DIR))
  record = stages.data.setdefault("evaluation", {"seconds": 0.0})
  if summary.generated:
    record["seconds"] += time.time() - start
  stages.save()
  return summary


def _clip_metrics(result: Mapping[str, Any], name: str) -> dict[tuple[int, int], float]:
  return {(c["prompt_index"], c["seed"]): fields.metric_value(c["metrics"].get(name))
          for c in result["clips"]}


def table_rows(results: Sequence[Mapping[str, Any]], stages: Mapping[str, Any],
               reference: str) -> list[dict[str, Any]]:
  """runner's summary rows + each arm's compute + paired differences to the reference arm's
  first setting (its CFG row), per metric: <metric>_diff and its interval."""
  rows = tables.summary_rows(results)
  names = fields.metric_names(results)
  ref = next((r for r in results if r["model"] == reference), None)
  for row, result in zip(rows, results):
    arm = stages.get("arms", {}).get(row["model"], {})
    row.update({f"finetune_{k}": arm.get(k) for k in ("steps", "clips_seen", "train_pflop",
                                                       "train_seconds")})
    if ref is None or result is ref:
      continue
    for name in names:
      ours, theirs = _clip_metrics(result, name), _clip_metrics(ref, name)
      keys = sorted(set(ours) & set(theirs))
      diff = statistics.paired_difference_ci([ours[k] for k in keys], [theirs[k] for k in keys])
      row[f"{name}_diff"], row[f"{name}_diff_ci_low"], row[f"{name}_diff_ci_high"] = diff
  return rows


def _fmt(row: Mapping[str, Any], key: str) -> str:
  return tables.format_interval(row, key, signed=key.endswith("_diff"))


def markdown(rows: Sequence[Mapping[str, Any]], stages: Mapping[str, Any], reference: str,
             metrics: Sequence[str], command: str) -> str:
  """The protocol's report: setup, compute, the metric table and the paired differences."""
  pre = stages.get("pretrain", {})
  lines = [
      "# Protocol: base vs VideoJAM fine-tuned from the same pretrained base", "",
      f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, JAX devices: "
      f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})",
      f"- command: `{command}`" if command else "- command: (library call)",
      f"- pretrain: {pre.get('steps')} steps, held-out video loss flat: {pre.get('flat')} "
      f"(history: " + ", ".join(f"{h['step']}: {h['video_loss']:.4f}"
                                for h in pre.get("history", [])) + f"), "
      f"{pre.get('train_seconds', 0.0):.0f} s",
      f"- evaluation: {stages.get('evaluation', {}).get('seconds', 0.0):.0f} s of sampling and "
      "scoring", "",
      "## Compute per arm (fine-tuning; the pretraining is shared)", "",
      "| arm | VideoJAM | overrides | steps | clips seen | PFLOP (analytic) | seconds |",
      "|---|---|---|---|---|---|---|"]
  for name, arm in stages.get("arms", {}).items():
    lines.append(f"| {name} | {arm.get('jam')} | `{arm.get('overrides')}` | {arm.get('steps')} | "
                 f"{arm.get('clips_seen')} | {arm.get('train_pflop', 0.0):.4g} | "
                 f"{arm.get('train_seconds', 0.0):.0f} |")
  model_keys = list(dict.fromkeys(
      k for row in rows for k in row
      if (k.startswith("heldout/") and k.endswith("_loss"))
      or (k.startswith("caption_swap/") and k.endswith("_ratio"))))
  header = ["arm", "setting", "clips"] + list(metrics) + model_keys
  lines += ["", "## Metrics: mean [bootstrap 95% interval over clips]", "",
            "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [str(row["model"]), str(row["setting"]), str(row["num_clips"])]
    cells += [_fmt({**row, m: row.get(f"{m}_mean")}, m) for m in metrics]
    cells += [_fmt(row, k) for k in model_keys]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", f"## Paired difference to {reference} (first setting), same prompts and noise",
            "", "| arm | setting | " + " | ".join(metrics) + " |",
            "|" + "---|" * (len(metrics) + 2)]
  for row in rows:
    if f"{metrics[0]}_diff" in row:
      lines.append(f"| {row['model']} | {row['setting']} | "
                   + " | ".join(_fmt(row, f"{m}_diff") for m in metrics) + " |")
  return "\n".join(lines) + "\n"


def write_plot(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str],
               path: epath.Path) -> None:
  """One panel per metric: each (arm, setting) mean with its 95% interval."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  labels = [f"{r['model']}\n{r['setting']}" for r in rows]
  columns = min(3, len(metrics))
  lines = -(-len(metrics) // columns)
  fig, axes = plt.subplots(lines, columns, figsize=(4.5 * columns, 3.2 * lines), squeeze=False)
  for ax, metric in zip(axes.flat, metrics):
    means = np.array([fields.metric_value(r.get(f"{metric}_mean")) for r in rows])
    low = np.array([fields.metric_value(r.get(f"{metric}_ci_low")) for r in rows])
    high = np.array([fields.metric_value(r.get(f"{metric}_ci_high")) for r in rows])
    errors = np.nan_to_num(np.stack([means - low, high - means]))
    ax.bar(range(len(rows)), np.nan_to_num(means), yerr=errors, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(rows)), labels, fontsize=6)
    ax.set_title(metric, fontsize=9)
  for ax in list(axes.flat)[len(metrics):]:
    ax.axis("off")
  fig.tight_layout()
  with path.open("wb") as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)


def run(config: ml_collections.ConfigDict, workdir: str, *,
        build_data: Callable[[ml_collections.ConfigDict], Any] | None = None,
        command: str = "") -> dict[str, str]:
  """All stages (finished ones skipped); returns the paths of the table, plot and page."""
  check_config(config)
  root = epath.Path(workdir).resolve()
  root.mkdir(parents=True, exist_ok=True)
  files.atomic_write(root / "protocol_config.json", config.to_json_best_effort(indent=2))
  if build_data is not None:
    build_data(config.train)
  stages = _Stages(root / STAGES_FILE)
  pretrain_dir = pretrain(config, root, stages)
  arm_dirs = finetune(config, root, pretrain_dir, stages)
  summary = evaluate(config, root, arm_dirs, stages)
  reference = str(config.report.reference)
  rows = table_rows(summary.results, stages.data, reference)
  metrics = [m for m in config.report.metrics
             if any(f"{m}_mean" in r for r in rows)]
  tables.write_csv(rows, root / CSV_FILE)
  files.atomic_write(root / MARKDOWN_FILE, markdown(rows, stages.data, reference, metrics,
                                                    command))
  if metrics:
    write_plot(rows, metrics, root / PLOT_FILE)
  logging.info("protocol: wrote %s, %s and %s; the clips are compared in %s",
               root / MARKDOWN_FILE, root / CSV_FILE, root / PLOT_FILE, summary.page)
  return {"markdown": str(root / MARKDOWN_FILE), "csv": str(root / CSV_FILE),
          "plot": str(root / PLOT_FILE), "page": summary.page}
