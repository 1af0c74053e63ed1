"""Sampler-setting sweeps: expanding them, pairing them with models, resumable results.

A sweep is a mapping from `SamplerSettings` field to the values to try, e.g.
{"guidance": ("cfg", "inner"), "motion_scale": (1.0, 3.0)}; `expand` takes the
Cartesian product over a base setting. Settings that differ only in fields
their guidance mode ignores give identical samples, so they are collapsed to
one canonical setting (CFG ignores w2 and is exactly Inner-Guidance at w2 = 0;
no guidance ignores w1 too). `plan` pairs every setting with every model and
skips the pairs the sampler rejects (Inner-Guidance on a baseline), saying why.

`ResultStore` keeps one folder per (model, setting) with its clips and a
`result.json`. A folder is assembled under a temporary name and renamed into
place only when complete, so an interrupted sweep leaves either a finished
result or nothing; `run_jobs` skips finished results whose inputs (the
fingerprint: checkpoint step, prompts, seeds, ...) are unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from absl import logging
import tqdm

from videojam_jax.sampling import sampler as sampler_lib

# Fields a sweep may vary; `batched` only changes speed (for benchmarks).
SWEEPABLE = tuple(f.name for f in dataclasses.fields(sampler_lib.SamplerSettings)
                  if f.name != "batched")
RESULT_FILE = "result.json"
_STAGING_PREFIX = ".staging-"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SweepError(ValueError):
  """The sweep or the model names cannot be used."""


def canonical(settings: sampler_lib.SamplerSettings) -> sampler_lib.SamplerSettings:
  """The same sampler with the fields its guidance mode ignores set to neutral values.

  cfg == inner at w2 = 0; none == cfg at w1 = 0; inner_guidance_until matters
  only for inner. Canonical settings make equivalent sweep points compare equal.
  """
  defaults = sampler_lib.SamplerSettings()
  if settings.guidance == "cfg":
    return dataclasses.replace(settings, motion_scale=0.0,
                               inner_guidance_until=defaults.inner_guidance_until)
  if settings.guidance == "none":
    return dataclasses.replace(settings, text_scale=0.0, motion_scale=0.0,
                               inner_guidance_until=defaults.inner_guidance_until)
  return settings


def expand(base: sampler_lib.SamplerSettings,
           axes: Mapping[str, Sequence[Any]]) -> list[sampler_lib.SamplerSettings]:
  """All combinations of `axes` over `base`, canonical and without duplicates.

  Order: the product in the order the axes and values are given (later axes
  vary fastest). Each setting is checked for values the sampler accepts for any
  model; model-specific checks are `plan`'s.
  """
  unknown = sorted(set(axes) - set(SWEEPABLE))
  if unknown:
    raise SweepError(f"cannot sweep {unknown}: sweepable fields are {list(SWEEPABLE)}")
  names = list(axes)
  value_lists = []
  for name in names:
    values = axes[name]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
      values = (values,)  # a single value is a one-point axis
    if not values:
      raise SweepError(f"sweep axis {name!r} has no values")
    value_lists.append(tuple(values))
  settings, collapsed = [], 0
  for combo in itertools.product(*value_lists):
    point = canonical(dataclasses.replace(base, **_typed(base, dict(zip(names, combo)))))
    point.validate(jam=True)  # raises for values no model accepts (bad mode, steps < 1, ...)
    if point in settings:
      collapsed += 1
      continue
    settings.append(point)
  if collapsed:
    logging.info("sweep: %d setting(s) collapsed into equivalent ones (CFG ignores "
                 "motion_scale, no guidance ignores both scales)", collapsed)
  return settings


def _typed(base: sampler_lib.SamplerSettings, values: dict[str, Any]) -> dict[str, Any]:
  """Casts swept values to the base field's type (configs may give 3 for 3.0)."""
  return {k: type(getattr(base, k))(v) for k, v in values.items()}


@dataclasses.dataclass(frozen=True)
class Job:
  """One model sampled with one setting."""
  model: str
  settings: sampler_lib.SamplerSettings

  @property
  def key(self) -> str:
    """A readable, filesystem-safe folder path: '<model>/<setting name>'."""
    return f"{self.model}/{setting_name(self.settings)}"


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A (model, setting) pair the sampler cannot run, and why."""
  model: str
  settings: sampler_lib.SamplerSettings
  reason: str


def setting_name(s: sampler_lib.SamplerSettings) -> str:
  """E.g. 'inner_w1-5_w2-3_n25_euler_shift1_until1' (unique per canonical setting)."""
  return (f"{s.guidance}_w1-{_num(s.text_scale)}_w2-{_num(s.motion_scale)}_n{s.num_steps}_"
          f"{s.solver}_shift{_num(s.time_shift)}_until{_num(s.inner_guidance_until)}")


def _num(x: float) -> str:
  """Short but exact: 5.0 -> '5', 0.25 -> '0.25', 1/3 -> '0.3333333333333333'."""
  short = f"{x:g}"
  return short if float(short) == x else repr(float(x))


def check_model_name(name: str) -> str:
  """Model names become folder names and column labels: keep them simple."""
  if not _NAME_PATTERN.match(name):
    raise SweepError(f"model name {name!r} must match {_NAME_PATTERN.pattern}")
  return name


def plan(models: Mapping[str, bool], settings: Sequence[sampler_lib.SamplerSettings],
         ) -> tuple[list[Job], list[Skipped]]:
  """Every (model, setting) pair; `models` maps name -> is a VideoJAM model.

  Pairs the sampler rejects for that model (`SamplerSettings.validate`) are
  returned as `Skipped`, each logged with the reason.
  """
  jobs, skipped = [], []
  for name, jam in models.items():
    check_model_name(name)
    for setting in settings:
      try:
        setting.validate(jam)
      except sampler_lib.GuidanceError as e:
        skipped.append(Skipped(name, setting, str(e)))
        logging.warning("skipping %s for model %r: %s", setting_name(setting), name, e)
        continue
      jobs.append(Job(name, setting))
  return jobs, skipped


def fingerprint(inputs: Mapping[str, Any]) -> str:
  """A stable hash of everything a result depends on (JSON-serialisable values)."""
  text = json.dumps(inputs, sort_keys=True, default=str)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class ResultStore:
  """Finished (model, setting) results under `root`, one folder each."""

  def __init__(self, root: str):
    self.root = os.path.abspath(root)

  def path(self, job: Job) -> str:
    return os.path.join(self.root, *job.key.split("/"))

  def load(self, job: Job, expected_fingerprint: str | None = None) -> dict[str, Any] | None:
    """The finished result of `job`, or None if absent or made from other inputs."""
    result_path = os.path.join(self.path(job), RESULT_FILE)
    if not os.path.exists(result_path):
      return None
    with open(result_path, encoding="utf-8") as f:
      result = json.load(f)
    if expected_fingerprint is not None and result.get("fingerprint") != expected_fingerprint:
      logging.info("%s: inputs changed since it was generated (checkpoint, prompts, seeds ...)",
                   job.key)
      return None
    return result

  @contextlib.contextmanager
  def staging(self, job: Job) -> Iterator[str]:
    """A fresh folder to build `job`'s result in; on success it replaces the final one.

    The caller writes its files into the yielded folder; `save` writes
    result.json there. If the block raises, the folder is removed.
    """
    final = self.path(job)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    stage = os.path.join(parent, f"{_STAGING_PREFIX}{os.path.basename(final)}.{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    try:
      yield stage
      if not os.path.exists(os.path.join(stage, RESULT_FILE)):
        raise RuntimeError(f"{job.key}: staged result has no {RESULT_FILE}")
      # A folder cannot be renamed over a non-empty one: drop the stale result
      # first. A crash in between leaves no result, which simply means "redo".
      shutil.rmtree(final, ignore_errors=True)
      os.replace(stage, final)
    finally:
      shutil.rmtree(stage, ignore_errors=True)

  @staticmethod
  def save(stage: str, result: Mapping[str, Any]) -> None:
    """Writes result.json into a staging folder (the last file written)."""
    tmp = os.path.join(stage, RESULT_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(json_safe(result), f, indent=1, allow_nan=False)
    os.replace(tmp, os.path.join(stage, RESULT_FILE))

  def clean_staging(self) -> int:
    """Removes folders left by interrupted runs; returns how many."""
    removed = 0
    if not os.path.isdir(self.root):
      return 0
    for parent, dirs, _ in os.walk(self.root):
      for d in list(dirs):
        if d.startswith(_STAGING_PREFIX):
          shutil.rmtree(os.path.join(parent, d), ignore_errors=True)
          dirs.remove(d)
          removed += 1
    return removed


def json_safe(value: Any) -> Any:
  """NaN/inf -> None (strict JSON), numpy scalars -> Python numbers, tuples -> lists."""
  if isinstance(value, Mapping):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if hasattr(value, "item") and callable(value.item):  # numpy scalar
    value = value.item()
  if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
    return None
  return value


@dataclasses.dataclass
class RunSummary:
  """What `run_jobs` did: results in job order, and which jobs it generated or reused."""
  results: list[dict[str, Any]]
  generated: list[str]
  reused: list[str]


GenerateFn = Callable[[Job, str], dict[str, Any]]


def run_jobs(jobs: Sequence[Job], store: ResultStore, fingerprints: Mapping[Job, str],
             generate: GenerateFn, *, progress: bool = True) -> RunSummary:
  """Runs every job without a finished result; reuses the others.

  generate(job, stage_dir) writes the job's files into stage_dir and returns
  its result dict (JSON-serialisable); `fingerprints[job]` is stored with it.
  """
  stale = store.clean_staging()
  if stale:
    logging.info("removed %d unfinished result folder(s) of an interrupted run", stale)
  summary = RunSummary([], [], [])
  bar = tqdm.tqdm(jobs, desc="sweep", unit="setting", disable=not progress)
  for job in bar:
    bar.set_postfix_str(job.key)
    result = store.load(job, fingerprints[job])
    if result is not None:
      summary.reused.append(job.key)
    else:
      with store.staging(job) as stage:
        result = dict(generate(job, stage))
        result.update(key=job.key, model=job.model, fingerprint=fingerprints[job],
                      settings=dataclasses.asdict(job.settings))
        store.save(stage, result)
      summary.generated.append(job.key)
    summary.results.append(json_safe(result))  # as a reused result reads back
  bar.close()
  logging.info("sweep: %d setting(s) generated, %d reused from an earlier run",
               len(summary.generated), len(summary.reused))
  return summary
