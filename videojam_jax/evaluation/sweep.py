"""Sampler-setting sweeps: expanding axes into settings, pairing them with models, naming them.

A sweep is a mapping from `SamplerSettings` field to the values to try, e.g.
{"guidance": ("cfg", "inner"), "motion_scale": (1.0, 3.0)}; `expand` takes the
Cartesian product over a base setting. Settings that differ only in fields
their guidance mode ignores give identical samples, so they are collapsed to
one canonical setting (CFG ignores w2 and is exactly Inner-Guidance at w2 = 0;
no guidance ignores w1 too). `plan` pairs every setting with every model and
skips the pairs the sampler rejects (Inner-Guidance on a baseline), saying why.
`setting_name` and `Job.key` name the results; `fingerprint` hashes a job's
inputs. Storing and resuming results is `result_store`'s job.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

from videojam_jax import files
from videojam_jax.sampling import sampler as sampler_lib

# Fields a sweep may vary; `batched` only changes speed (for benchmarks).
SWEEPABLE = tuple(f.name for f in dataclasses.fields(sampler_lib.SamplerSettings)
                  if f.name != "batched")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
FINGERPRINT_CHARS = 16  # hex digits of sha256 kept: collisions are no concern at sweep sizes


class SweepError(ValueError):
  """The sweep or the model names cannot be used."""


def canonical(settings: sampler_lib.SamplerSettings) -> sampler_lib.SamplerSettings:
  """The same sampler with the fields its guidance mode ignores set to neutral values.

  cfg == inner at w2 = 0; none == cfg at w1 = 0; inner_guidance_until matters
  only for inner. Canonical settings make equivalent sweep points compare equal.
  """
  if settings.guidance == "cfg":
    return dataclasses.replace(settings, motion_scale=0.0,
                               inner_guidance_until=sampler_lib.ALWAYS_INNER_GUIDANCE)
  if settings.guidance == "none":
    return dataclasses.replace(settings, text_scale=0.0, motion_scale=0.0,
                               inner_guidance_until=sampler_lib.ALWAYS_INNER_GUIDANCE)
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
  """E.g. 'inner_w1-5_w2-3_n25_euler_shift1_until1' (unique per canonical setting; a
  non-uniform time schedule is appended, so older sweeps keep their folder names)."""
  name = (f"{s.guidance}_w1-{_num(s.text_scale)}_w2-{_num(s.motion_scale)}_n{s.num_steps}_"
          f"{s.solver}_shift{_num(s.time_shift)}_until{_num(s.inner_guidance_until)}")
  return name if s.schedule == "uniform" else f"{name}_{s.schedule}"


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
  """A stable hash of everything a result depends on (JSON-serialisable values).

  `files.json_digest` (sha256 of the key-sorted JSON) cut to FINGERPRINT_CHARS
  hex digits. Stored results carry it, so changing either would make every
  finished sweep redo its work.
  """
  return files.json_digest(inputs, FINGERPRINT_CHARS)
